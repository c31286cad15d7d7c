"""``cgnat-edge``: the commands around the Pulumi program (render, home configs, policy,
package schema, lab, rehearse, status).

One parser for every command, so options, stack selection and errors behave the same
everywhere.  Exit status: 0 done, 1 the command ran and found a problem (a policy
violation, a failed lab check), 2 it could not run (bad input, a missing tool); the
reason is one message on stderr, never a traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.config import ConfigError, stack
from components.lab import rehearse, runner, vm_lab
from components.lab.errors import LabError
from components.tools import home_files, package_schema, policy, render, status

DEFAULT_STACK = "dev"


class _Unusable(Exception):
    """Input or environment the command cannot work with; the message names the fix."""


def _stack(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The stack file and the project file the options select (None: the Pulumi.yaml
    beside the stack file).  A stack file kept elsewhere (the lab fixture in tests/)
    belongs to the project in the current folder."""
    project_file = Path(args.project_dir) / "Pulumi.yaml" if args.project_dir else None
    if args.stack_file:
        stack_file = Path(args.stack_file)
        beside = (stack_file.parent / "Pulumi.yaml").is_file()
        if project_file is None and not beside and Path("Pulumi.yaml").is_file():
            project_file = Path("Pulumi.yaml")
        return stack_file, project_file
    return stack.find(args.stack or DEFAULT_STACK, args.project_dir or "."), project_file


def _add_stack_args(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    # No argparse default: argparse lets an option given with its default value past the exclusive group.
    which.add_argument("--stack", help=f"stack name; reads Pulumi.<stack>.yaml (default: {DEFAULT_STACK})")
    which.add_argument("--stack-file", help="explicit path to a Pulumi.<stack>.yaml")
    p.add_argument("--project-dir", help="folder holding Pulumi.yaml and the stack files (default: .)")


def cmd_render(args: argparse.Namespace) -> int:
    stack_file, project_file = _stack(args)
    out = Path(args.out or f"build/{stack.stack_name(stack_file)}")
    run, written = render.render(stack_file, out, show_secrets=args.show_secrets, project_file=project_file)
    for level, message in run.logs:
        print(f"{level}: {message}", file=sys.stderr)
    print(f"rendered {len(run.resources)} resources, {len(written)} files into {out}/")
    print("note: keys in a render are throwaway; `pulumi up` creates and keeps its own.")
    return 0


def cmd_home_config(args: argparse.Namespace) -> int:
    configs = home_files.load(home_files.read_source(args.source))
    # Checked before anything is written: a typo must not leave a half-done folder.
    qr_text = home_files.wg_quick(configs, args.qr_terminal) if args.qr_terminal else None
    for path in home_files.write({home_files.OUTPUT_KEY: configs}, Path(args.out), args.qr):
        print(path)
    if qr_text is not None:
        sys.stdout.write(home_files.qr_terminal(qr_text))
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    stack_file, project_file = _stack(args)
    if args.render_dir:
        return policy.main_for_render(stack_file, Path(args.render_dir), project_file)
    return policy.main_for_stack(stack_file, project_file)


def cmd_package_schema(args: argparse.Namespace) -> int:
    if args.write:
        for path in package_schema.write():
            print(f"wrote {path.relative_to(package_schema.ROOT)}")
        return 0
    stale = package_schema.stale()
    for path in stale:
        print(
            f"{path.relative_to(package_schema.ROOT)} is stale; regenerate: {package_schema.REGENERATE}",
            file=sys.stderr,
        )
    return 1 if stale else 0


def cmd_lab(args: argparse.Namespace) -> int:
    stack_file, project_file = _stack(args)
    try:
        ok, report = runner.run(
            stack_file,
            project_file,
            changes=args.changes,
            faults=args.faults,
            protection=args.protection,
            forward=args.forward,
            attacks=args.attacks,
            pushes=args.pushes,
            alerts=args.alerts,
            report=Path(args.report) if args.report else None,
        )
    except LabError as exc:
        raise _Unusable(exc) from None
    print(report)
    print(
        "lab: every service answered through every edge" if ok else "lab: FAILED, see the rows marked FAIL",
        file=sys.stderr,
    )
    return 0 if ok else 1


def cmd_rehearse(args: argparse.Namespace) -> int:
    stack_file, project_file = _stack(args)
    try:
        ok, checks = (vm_lab.run if args.vm else rehearse.run)(
            stack_file,
            project_file,
            only=args.edge,
            report=Path(args.report) if args.report else None,
            cache=Path(args.cache) if args.cache else None,
            keep=args.keep,
        )
    except rehearse.RehearsalError as exc:
        raise _Unusable(exc) from None
    print(rehearse.table(checks))
    print(
        f"rehearse: every edge's first boot{' as a machine' if args.vm else ''} did what its user-data says"
        if ok
        else "rehearse: FAILED, see the rows marked FAIL",
        file=sys.stderr,
    )
    return 0 if ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    try:
        edges, hosts = status.status(
            status.load(args.source),
            Path(args.identity) if args.identity else None,
            cert_warn_days=args.cert_warn_days,
            progress=lambda line: print(f"status: {line}", file=sys.stderr, flush=True),
        )
    except status.StatusError as exc:
        raise _Unusable(exc) from None
    print(status.as_json(edges, hosts) if args.json else status.table(edges, hosts))
    return 1 if any(e.problems for e in edges) or any(h.problems for h in hosts) else 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="cgnat-edge",
        description="The commands around the cgnat-edge Pulumi program: offline render, home router configs, "
        "policy check, network-namespace lab, first-boot rehearsal, fleet status.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("render", help="run the program offline (mock clouds) and write every generated artifact")
    _add_stack_args(p)
    p.add_argument("--out", help="output folder (default: build/<stack>)")
    p.add_argument("--show-secrets", action="store_true", help="also reveal secret stack outputs in outputs.json")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "home-config", help="write the home router's configs (wg-quick, OpenWrt, RouterOS, JSON), mode 0600"
    )
    p.add_argument(
        "source",
        nargs="?",
        help="saved `pulumi stack output --json --show-secrets`, or a render folder made with --show-secrets; "
        "'-' reads stdin; default: ask the Pulumi CLI for the selected stack's outputs",
    )
    p.add_argument(
        "--out",
        default="home-configs",
        help="directory to write: a new one is made with mode 0700; in an existing one the files this command "
        "writes are replaced, its mode and other files stay",
    )
    p.add_argument("--qr", action="store_true", help="also write a PNG QR code of each wg-quick file")
    p.add_argument(
        "--qr-terminal",
        metavar="EDGE",
        help="print the wg-quick file of EDGE (or a road warrior's, DEVICE/EDGE) as a QR code on the terminal",
    )
    p.set_defaults(func=cmd_home_config)

    p = sub.add_parser("policy", help="render the stack offline and fail on policy violations")
    _add_stack_args(p)
    p.add_argument(
        "--render-dir", metavar="DIR", help="check this folder from `cgnat-edge render` instead of rendering again"
    )
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser(
        "package-schema",
        help="check (or --write) the component package's args.py and schema.json against the key table",
    )
    p.add_argument("--write", action="store_true", help="regenerate them")
    p.set_defaults(func=cmd_package_schema)

    p = sub.add_parser(
        "lab", help="(root) boot the stack's rendered configs in network namespaces and send traffic through every edge"
    )
    _add_stack_args(p)
    p.add_argument("--changes", action="store_true", help="then push every kind of change into the running edges")
    p.add_argument(
        "--faults",
        action="store_true",
        help="then break an edge, a tunnel and a service (dnsMode edges) and time the nameservers' failover",
    )
    p.add_argument(
        "--protection",
        action="store_true",
        help="then check country filters, CrowdSec bans and forward-auth sign-in with real packets",
    )
    p.add_argument(
        "--forward",
        action="store_true",
        help="then prove the forward services: visitor's real address, replies through the edge they came in by",
    )
    p.add_argument(
        "--attacks",
        action="store_true",
        help="then flood the edges' public side (the health agent with idle connections) and check they hold",
    )
    p.add_argument(
        "--pushes",
        action="store_true",
        help="then push under faults (the SSH connection cut, the edge restarted mid-change, two pushes at once) and what reaches a running edge only by a push (CrowdSec turned on, a new pinned Traefik)",
    )
    p.add_argument(
        "--alerts",
        action="store_true",
        help="with a webhook and an SMTP relay in the lab: break a tunnel, a service, an edge and a certificate, "
        "time the alerts; then scrape the metrics from home through the tunnels, closed to the internet",
    )
    p.add_argument("--report", help="write every check as JSON to this file")
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser(
        "rehearse",
        help="(root) boot each edge's user-data with the real cloud-init in a Debian 12 chroot, and check it",
    )
    _add_stack_args(p)
    p.add_argument("--report", help="write every check as JSON to this file")
    p.add_argument("--edge", action="append", help="only this edge (repeatable; default: every edge)")
    p.add_argument(
        "--cache",
        help="where the Debian root and packages are cached (default: $CGNAT_EDGE_CACHE or /var/cache/cgnat-edge)",
    )
    p.add_argument("--keep", action="store_true", help="keep the booted roots (under the cache folder) to look into")
    p.add_argument(
        "--vm",
        action="store_true",
        help="boot every edge as a QEMU virtual machine of its own architecture instead of in a chroot",
    )
    p.set_defaults(func=cmd_rehearse)

    p = sub.add_parser("status", help="log in to every deployed edge (pinned host key) and report what is wrong")
    p.add_argument(
        "source",
        nargs="?",
        help="saved `pulumi stack output --json --show-secrets`; '-' reads stdin; "
        "default: ask the Pulumi CLI for the selected stack's outputs",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts instead of the table")
    p.add_argument("--identity", metavar="FILE", help="SSH private key to log in with (default: ssh's own)")
    p.add_argument(
        "--cert-warn-days",
        type=int,
        default=14,
        help="report certificates expiring within this many days (default: 14)",
    )
    p.set_defaults(func=cmd_status)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)  # already "cgnat-edge: ..." with one line per problem
    except (stack.StackFileError, home_files.HomeConfigError, policy.RenderDirError, _Unusable) as exc:
        print(f"cgnat-edge {args.command}: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"cgnat-edge {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
