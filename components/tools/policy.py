"""Policy check over an offline render: the mistakes a preview diff hides in plain sight.

A reviewer reading ``pulumi preview`` sees a firewall rule change, not that the new
port belongs to no declared service; sees an output change, not that it now carries a
private key every later ``pulumi stack output`` prints; sees edges, not that all of them
sit at one provider while the stack promised to survive a provider outage.  These rules
decide that from plain data (the render's ``resources.json``, ``outputs.json`` and
``secret_outputs.json``) so they run the same in the tests, in CI before every preview,
and on a laptop without cloud credentials.

The same rules (``RULES``) are a CrossGuard policy pack too (``policy/``, through
``components/tools/policy_pack.py``), for ``pulumi preview --policy-pack policy/`` in CI
and for Pulumi users who already run packs; this command stays for what the pack cannot
do: check a stack offline, without the Pulumi CLI, cloud credentials or a preview.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import providers
from components.config import stack
from components.config.keys import NAMESPACE
from components.model.fleet import FleetConfig
from components.renderers import edge_dns
from components.tools import offline, render

SECRET_MARKER = "[secret]"
SSH_PORT = 22

FIREWALLS = {p.firewall_resource_type: p for p in providers.REGISTRY.values()}
SERVERS = {p.server_resource_type: p for p in providers.REGISTRY.values()}

_WG_KEY = r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]="
# "PrivateKey = ..." (wg-quick), "privateKey": "..." (JSON), private_key: ... (YAML):
# the key's *name* says private; the 44-character shape alone would also match the
# public keys that outputs are meant to carry.
_NAMED_PRIVATE_KEY = re.compile(
    r"""(?i)(?:private|preshared)[_-]?key["']?\s*[:=]\s*["']?(?P<key>""" + _WG_KEY + r")(?![A-Za-z0-9+/=])"
)
_PEM_PRIVATE = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_LONG_BASE64 = re.compile(r"^[A-Za-z0-9+/]{40,}={0,2}$")


@dataclass(frozen=True)
class Violation:
    rule: str
    subject: str
    """The resource (type and name) or output path the finding is about."""
    message: str
    """What is wrong and how to fix it."""

    def __str__(self) -> str:
        return f"[{self.rule}] {self.subject}: {self.message}"


# ---------------------------------------------------------------------------
# (a) ports nobody declared
# ---------------------------------------------------------------------------


def _port_span(value: Any) -> tuple[int, int] | None:
    """'443', 443, '1000-2000' -> inclusive span; 'any', 'all', empty or garbage -> every port (None),
    so a rule the check cannot read counts as the widest it could be."""
    text = str(value).strip().lower() if value is not None else ""
    if text in ("", "any", "all"):
        return None
    low, _, high = text.partition("-")
    try:
        lo, hi = int(low), int(high or low)
    except ValueError:
        return None
    return (lo, hi)


def _describe_span(span: tuple[int, int] | None) -> str:
    return "every port" if span is None else f"ports {span[0]}-{span[1]}"


def _networks(values: Iterable[Any]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network | str]:
    out: list[Any] = []
    for v in values or []:
        try:
            out.append(ipaddress.ip_network(str(v), strict=False))
        except ValueError:
            out.append(str(v))
    return out


def _inbound_rules(resource: Mapping[str, Any]) -> Iterator[tuple[str, Any, list[Any]]]:
    """(protocol, port spec, sources) of every inbound rule, whichever provider."""
    provider = FIREWALLS.get(str(resource.get("type")))
    if provider is not None:
        for rule in provider.inbound_rules(resource.get("inputs") or {}):
            yield rule.protocol, rule.port, rule.sources


def _subject(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('type')} {resource.get('name')}"


def check_ports(cfg: FleetConfig, resources: list[dict]) -> list[Violation]:
    violations = []
    declared = {p: set(cfg.public_ports(p)) for p in ("tcp", "udp")}
    # The health agents (every DNS mode): open in the provider firewall, narrowed by nftables.
    declared["tcp"].add(edge_dns.HEALTH_PORT)
    ssh_sources = list(cfg.ssh.allowed_cidrs)
    for resource in resources:
        if resource.get("type") not in FIREWALLS:
            continue
        for protocol, port, sources in _inbound_rules(resource):
            if protocol == "icmp":
                continue  # no ports; path MTU discovery needs it
            if protocol not in ("tcp", "udp"):
                violations.append(
                    Violation(
                        "undeclared-port",
                        _subject(resource),
                        f"inbound protocol {protocol or '(none)'!r} is open, but edges only serve tcp and udp; remove the rule",
                    )
                )
                continue
            span = _port_span(port)
            allowed = declared[protocol] | ({SSH_PORT} if protocol == "tcp" else set())
            if span == (SSH_PORT, SSH_PORT) and protocol == "tcp":
                wider = [s for s in _networks(sources) if not _within(s, ssh_sources)]
                if wider:
                    violations.append(
                        Violation(
                            "undeclared-port",
                            _subject(resource),
                            f"tcp port 22 (SSH) is open to {', '.join(map(str, wider))}, outside "
                            f"{NAMESPACE}:sshAllowedCidrs ({', '.join(map(str, ssh_sources))}); "
                            "add the prefix to sshAllowedCidrs or take it out of the rule",
                        )
                    )
                continue
            lo, hi = span if span is not None else (1, 65535)
            undeclared = [p for p in range(lo, hi + 1) if p not in allowed]
            if not undeclared:
                continue
            if span is not None and lo == hi:
                what = f"{protocol} port {lo} is open inbound but no service declares it"
                fix = f"declare a {protocol} service with port {lo} in {NAMESPACE}:services or remove the rule"
            else:
                what = (
                    f"inbound {protocol} is open on {_describe_span(span)}, {len(undeclared)} of them declared by no "
                    f"service (first: {', '.join(map(str, undeclared[:3]))})"
                )
                fix = "open each declared port on its own instead of a range"
            violations.append(
                Violation(
                    "undeclared-port",
                    _subject(resource),
                    f"{what}; {fix} (declared {protocol}: {', '.join(map(str, sorted(allowed))) or 'none'})",
                )
            )
    return violations


def _within(net: Any, allowed: list[Any]) -> bool:
    if isinstance(net, str):
        return False
    return any(net.version == a.version and net.subnet_of(a) for a in allowed)


def check_firewalled(resources: list[dict]) -> list[Violation]:
    """A machine without a provider firewall exposes whatever happens to listen."""
    violations = []
    for r in resources:
        provider = SERVERS.get(str(r.get("type")))
        why = provider.unfirewalled(r, resources) if provider else None
        if why:
            violations.append(Violation("unfirewalled-machine", _subject(r), why))
    return violations


# ---------------------------------------------------------------------------
# (b) private keys in plain sight
# ---------------------------------------------------------------------------


def _is_private_key_name(name: str) -> bool:
    flat = re.sub(r"[^a-z]", "", name.lower())
    return "privatekey" in flat or "presharedkey" in flat


def _key_findings(value: Any, path: str, under_private_name: bool = False) -> Iterator[tuple[str, str]]:
    """(path, what) for every private key found in ``value``."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _key_findings(v, f"{path}.{k}" if path else str(k), _is_private_key_name(str(k)))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _key_findings(v, f"{path}[{i}]", under_private_name)
    elif isinstance(value, str) and value != SECRET_MARKER:
        if _PEM_PRIVATE.search(value):
            yield path, "a PEM/OpenSSH private key block"
        elif _NAMED_PRIVATE_KEY.search(value):
            yield path, "a WireGuard private or preshared key"
        elif under_private_name and _LONG_BASE64.match(value.strip()):
            yield path, "a private key value"


def check_outputs(outputs: Mapping[str, Any], secret_outputs: set[str]) -> list[Violation]:
    violations = []
    for name, value in outputs.items():
        if name in secret_outputs:
            continue
        for path, what in _key_findings(value, name, _is_private_key_name(name)):
            violations.append(
                Violation(
                    "private-key-in-output",
                    f"output {path}",
                    f"holds {what} in a plain stack output, printed by every `pulumi stack output`; "
                    f"wrap it with pulumi.Output.secret(...) or export only the public key",
                )
            )
    return violations


def check_inputs(resources: list[dict]) -> list[Violation]:
    """A plain input lands unencrypted in the state file and in every preview diff."""
    violations = []
    for r in resources:
        for path, what in _key_findings(r.get("inputs") or {}, ""):
            violations.append(
                Violation(
                    "private-key-in-input",
                    f"{_subject(r)} input {path}",
                    f"holds {what} as a plain input (unencrypted in state, shown in previews); "
                    "pass it as a secret (pulumi.Output.secret or a secret config value)",
                )
            )
    return violations


# ---------------------------------------------------------------------------
# The rules, as both front-ends run them
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StackData:
    """What the rules read, however it was obtained: from an offline render (the
    command) or from the engine during a preview (the policy pack, policy/)."""

    cfg: FleetConfig
    resources: list[dict]
    """Rows shaped like the render's resources.json: type, name, urn, parent, inputs."""
    outputs: Mapping[str, Any]
    secret_outputs: set[str]


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    check: Callable[[StackData], list[Violation]]


RULES = (
    Rule(
        "undeclared-port",
        "Every inbound port of a provider firewall belongs to a declared service (or SSH from sshAllowedCidrs).",
        lambda d: check_ports(d.cfg, d.resources),
    ),
    Rule(
        "unfirewalled-machine",
        "Every edge machine sits behind its provider's firewall.",
        lambda d: check_firewalled(d.resources),
    ),
    Rule(
        "private-key-in-output",
        "No plain stack output carries a private key.",
        lambda d: check_outputs(d.outputs, d.secret_outputs),
    ),
    Rule(
        "private-key-in-input",
        "No plain resource input carries a private key.",
        lambda d: check_inputs(d.resources),
    ),
)
"""Every rule, in the order the command reports them; the policy pack makes one policy of each."""


def check(
    cfg: FleetConfig, resources: list[dict], outputs: Mapping[str, Any], secret_outputs: set[str]
) -> list[Violation]:
    """Every rule, in a stable order; an empty list means the stack may be previewed."""
    data = StackData(cfg, resources, outputs, set(secret_outputs))
    return [v for rule in RULES for v in rule.check(data)]


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


class RenderDirError(Exception):
    """The folder is not a render; the message says how to make one."""


def load_config(stack_file: Path, project_file: Path | None = None) -> FleetConfig:
    """The stack's config as the program parses it; encrypted values are unreadable
    offline and irrelevant to these rules."""
    return stack.load(stack_file, project_file).parse()


def load_render(directory: Path) -> tuple[list[dict], dict, set[str]]:
    directory = Path(directory)
    missing = [n for n in ("resources.json", "outputs.json", "secret_outputs.json") if not (directory / n).is_file()]
    if missing:
        raise RenderDirError(
            f"{directory} has no {', '.join(missing)}; run `cgnat-edge render --stack <stack> --out {directory}` first"
        )
    resources = _read_json(directory / "resources.json", list, dict)
    outputs = _read_json(directory / "outputs.json", dict, object)
    outputs.pop(render.RENDER_MARKER, None)  # the render's, not an output of the program
    secret_outputs = _read_json(directory / "secret_outputs.json", list, str)
    return resources, outputs, set(secret_outputs)


def _read_json(path: Path, kind: type[list] | type[dict], item: type) -> Any:
    """A render file of the shape ``cgnat-edge render`` writes, or an error saying to render again."""
    try:
        value = json.loads(path.read_bytes())
    except ValueError:
        value = None
    if not isinstance(value, kind) or not all(isinstance(v, item) for v in value):
        raise RenderDirError(
            f"{path} is not what `cgnat-edge render` writes; render again with "
            f"`cgnat-edge render --stack <stack> --out {path.parent}`"
        )
    return value


def report(violations: list[Violation], what: str, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    if violations:
        print(f"policy: {what}: {len(violations)} violation(s):", file=err)
        for v in violations:
            print(f"  - {v}", file=err)
        return 1
    print(f"policy: {what}: no violations", file=out)
    return 0


def main_for_stack(stack_file: Path, project_file: Path | None = None) -> int:
    """Render the stack offline (mock clouds, no credentials) and check it."""
    stack_file = Path(stack_file)
    cfg = load_config(stack_file, project_file)
    run = offline.run_program(stack_file, project_file=project_file)
    resources = render.resource_table(run)
    outputs = offline.masked(run.outputs)
    violations = check(cfg, resources, outputs, set(run.secret_outputs()))
    return report(violations, f"stack {cfg.stack} ({len(resources)} resources, {len(outputs)} outputs)")


def _check_render_is_of(cfg: FleetConfig, resources: list[dict], stack_file: Path, render_dir: Path) -> None:
    """A render checked against another stack's config would pass or fail for the wrong
    reasons; every URN names the stack and project it was rendered from."""
    rendered = {tuple([*str(r.get("urn", "")).split("::"), "", ""][:2]) for r in resources}
    wanted = (f"urn:pulumi:{cfg.stack}", cfg.project)
    if rendered != {wanted}:
        found = ", ".join(sorted(f"stack {s.removeprefix('urn:pulumi:')!r} of project {p!r}" for s, p in rendered))
        raise RenderDirError(
            f"{render_dir} is a render of {found or 'nothing'}, not of stack {cfg.stack!r} of project "
            f"{cfg.project!r}; render this stack (`cgnat-edge render --stack-file {stack_file} --out {render_dir}`) "
            "or check the render against its own stack file"
        )


def main_for_render(stack_file: Path, render_dir: Path, project_file: Path | None = None) -> int:
    """Check a folder written earlier by ``cgnat-edge render`` against the stack's config."""
    cfg = load_config(stack_file, project_file)
    resources, outputs, secret_outputs = load_render(render_dir)
    _check_render_is_of(cfg, resources, stack_file, render_dir)
    violations = check(cfg, resources, outputs, secret_outputs)
    return report(violations, f"{render_dir} ({len(resources)} resources, {len(outputs)} outputs)")
