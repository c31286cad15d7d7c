"""The provider firewalls' rules as data: the same open ports and sources as the
edge's own nftables ruleset, so the two walls cannot disagree.

Each provider writes these into its own firewall resource (``components/providers/``);
the config check counts them against each provider's rule limit."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from components.model.fleet import FleetConfig
from components.model.ports import HEALTH_AGENT_PORT


@dataclass(frozen=True)
class FirewallRule:
    protocol: str  # tcp, udp, icmp
    ports: tuple[int, int] | None
    """Inclusive port range; None for ICMP."""
    sources: tuple[str, ...]
    description: str

    @property
    def port(self) -> str | None:
        """The range as both providers' APIs write it: ``443`` or ``27015-27030``."""
        if self.ports is None:
            return None
        low, high = self.ports
        return str(low) if low == high else f"{low}-{high}"


ANYWHERE = ("0.0.0.0/0", "::/0")


def _ranges(ports: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive ports merged: a game's 27015-27030 is one firewall rule, not 16."""
    merged: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if merged and merged[-1][1] == port - 1:
            merged[-1] = (merged[-1][0], port)
        else:
            merged.append((port, port))
    return merged


def firewall_rules(cfg: FleetConfig) -> list[FirewallRule]:
    """The provider firewall mirrors the host's nftables rules: same ports, same sources."""
    rules = [FirewallRule("tcp", (22, 22), tuple(str(c) for c in cfg.ssh.allowed_cidrs), "SSH")]
    for protocol in ("tcp", "udp"):
        # (first port, place, name) in port order, so each span finds its services by
        # bisection: thousands of services stay linear, not services x spans.
        starts = sorted((s.port, i, s.name) for i, s in enumerate(cfg.services) if s.protocol == protocol)
        for span in _ranges(cfg.public_ports(protocol)):
            rules.append(FirewallRule(protocol, span, ANYWHERE, _describe(cfg, protocol, span, starts)))
    # The edges' health agents: in dnsMode edges only the other edges pass (nftables on
    # the edge holds the fleet's addresses, which the provider firewall cannot know up
    # front); in dnsMode records every checker, rate-limited per source by nftables.
    rules.append(
        FirewallRule("tcp", (HEALTH_AGENT_PORT, HEALTH_AGENT_PORT), ANYWHERE, "health agent (DNS health checks)")
    )
    rules.append(FirewallRule("icmp", None, ANYWHERE, "ICMP (path MTU discovery, ping)"))
    return rules


def _describe(cfg: FleetConfig, protocol: str, span: tuple[int, int], starts: list[tuple[int, int, str]]) -> str:
    low, high = span
    if protocol == "udp" and low == high == cfg.tunnel.listen_port:
        return "WireGuard"
    if protocol == "udp" and cfg.road_warriors and low == high == cfg.road_warriors.port:
        return "road warriors (WireGuard to home)"
    if protocol == "tcp" and low == high and low in (80, 443):
        return "HTTP" if low == 80 else "HTTPS"
    inside = starts[bisect.bisect_left(starts, (low,)) : bisect.bisect_left(starts, (high + 1,))]
    names = [name for _, _, name in sorted(inside, key=lambda entry: entry[1])]
    if protocol == "udp" and cfg.road_warriors and low <= cfg.road_warriors.port <= high:
        names.insert(0, "road warriors")
    if protocol == "udp" and low <= cfg.tunnel.listen_port <= high:
        names.insert(0, "WireGuard")
    return f"service {', '.join(names)}"
