"""``cgnat-edge``: the commands around the Pulumi program (render, home configs, policy, lab)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.model.config import ConfigError


def _stack_file(args: argparse.Namespace) -> Path:
    path = Path(args.stack_file) if args.stack_file else Path(args.project_dir) / f"Pulumi.{args.stack}.yaml"
    if not path.is_file():
        raise SystemExit(
            f"cgnat-edge: no stack file {path}; pass --stack NAME (reads Pulumi.NAME.yaml) or --stack-file PATH"
        )
    if not (path.parent / "Pulumi.yaml").is_file():
        raise SystemExit(f"cgnat-edge: {path.parent} has no Pulumi.yaml; run from the project folder")
    return path


def _add_stack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stack", default="dev", help="stack name; reads Pulumi.<stack>.yaml (default: dev)")
    p.add_argument("--stack-file", help="explicit path to a Pulumi.<stack>.yaml")
    p.add_argument("--project-dir", default=".", help="folder holding Pulumi.yaml (default: .)")


def cmd_render(args: argparse.Namespace) -> int:
    from components.tools import render

    stack_file = _stack_file(args)
    out = Path(args.out or f"build/{stack_file.name.removeprefix('Pulumi.').removesuffix('.yaml')}")
    run, written = render.render(stack_file, out, show_secrets=args.show_secrets)
    for level, message in run.logs:
        print(f"{level}: {message}", file=sys.stderr)
    print(f"rendered {len(run.resources)} resources, {len(written)} files into {out}/")
    print("note: keys in a render are throwaway; `pulumi up` creates and keeps its own.")
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from components.tools import policy

    return policy.main_for_stack(_stack_file(args))


def cmd_lab(args: argparse.Namespace) -> int:
    from components.lab import edge_lab as lab

    try:
        ok, report = lab.run(_stack_file(args), changes=args.changes, report=Path(args.report) if args.report else None)
    except lab.LabError as exc:
        print(f"cgnat-edge lab: {exc}", file=sys.stderr)
        return 1
    print(report)
    print(
        "lab: every service answered through every edge" if ok else "lab: FAILED, see the rows marked FAIL",
        file=sys.stderr,
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cgnat-edge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="run the program offline (mock clouds) and write every generated artifact")
    _add_stack_args(p)
    p.add_argument("--out", help="output folder (default: build/<stack>)")
    p.add_argument("--show-secrets", action="store_true", help="also reveal secret stack outputs in outputs.json")
    p.set_defaults(func=cmd_render)

    # Parsed by home_files.run itself (see below); listed here for --help.
    sub.add_parser("home-config", help="write the home router's configs (wg-quick, OpenWrt, RouterOS, JSON) to files")

    p = sub.add_parser("policy", help="render the stack offline and fail on policy violations")
    _add_stack_args(p)
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser(
        "lab", help="(root) boot the stack's rendered configs in network namespaces and send traffic through every edge"
    )
    _add_stack_args(p)
    p.add_argument("--changes", action="store_true", help="then push every kind of change into the running edges")
    p.add_argument("--report", help="write every check as JSON to this file")
    p.set_defaults(func=cmd_lab)

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["home-config"]:
        from components.tools import home_files

        return home_files.run(argv[1:])
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
