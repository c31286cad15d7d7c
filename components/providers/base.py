"""What every provider implementation hands back to ``EdgeNode``.

Keeping the provider modules behind this one shape is what lets a third provider be
added without touching the fleet, DNS or home-config code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from components.model.config import FleetConfig


@dataclass
class Machine:
    server: pulumi.CustomResource
    server_id: pulumi.Output[str]
    ipv4: pulumi.Output[str]
    """Address that survives a replacement of the server (Primary IP / reserved IP)."""
    ipv6: pulumi.Output[str]
    reachable_after: list[pulumi.Resource]
    """What must exist before SSH to ``ipv4`` can work (e.g. the IP's assignment)."""


@dataclass(frozen=True)
class FirewallRule:
    protocol: str  # tcp, udp, icmp
    port: int | None
    sources: tuple[str, ...]
    description: str


ANYWHERE = ("0.0.0.0/0", "::/0")

USER_DATA_IGNORED = ["userData", "sshKeys"]
"""Both force a new server at either provider.  Fresh nodes get the current cloud-init;
running nodes get changes pushed over SSH (see ``EdgeNode``), so editing a service or
adding an SSH key never rebuilds a VPS or moves its address."""


def firewall_rules(cfg: FleetConfig) -> list[FirewallRule]:
    """The provider firewall mirrors the host's nftables rules: same ports, same sources."""
    rules = [FirewallRule("tcp", 22, tuple(str(c) for c in cfg.ssh.allowed_cidrs), "SSH")]
    for protocol in ("tcp", "udp"):
        for port in cfg.public_ports(protocol):
            rules.append(FirewallRule(protocol, port, ANYWHERE, _describe(cfg, protocol, port)))
    rules.append(FirewallRule("icmp", None, ANYWHERE, "ICMP (path MTU discovery, ping)"))
    return rules


def _describe(cfg: FleetConfig, protocol: str, port: int) -> str:
    if protocol == "udp" and port == cfg.tunnel.listen_port:
        return "WireGuard"
    if protocol == "tcp" and port in (80, 443):
        return "HTTP" if port == 80 else "HTTPS"
    names = [s.name for s in cfg.services if s.protocol == protocol and s.port == port]
    return f"service {', '.join(names)}"


def labels(cfg: FleetConfig, edge_name: str) -> dict[str, str]:
    return {"app": "cgnat-edge", "stack": cfg.stack, "edge": edge_name}


def server_name(cfg: FleetConfig, edge_name: str) -> str:
    """Provider-side name: deterministic, so the console shows what the stack owns."""
    return f"cgnat-edge-{cfg.stack}-{edge_name}"


def ids_as_int(ids: Sequence[pulumi.Output[str]]) -> list[pulumi.Output[int]]:
    return [i.apply(int) for i in ids]
