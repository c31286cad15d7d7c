"""The stack configuration, parsed and validated in one place.

Everything the program builds is derived from the ``FleetConfig`` returned here.  The
parser sees plain values (what ``pulumi config`` stores), collects every problem it
finds and raises one ``ConfigError`` naming each key and its fix, so a bad stack file
fails before a single resource is registered.  Components receive the typed objects,
never ``pulumi.Config``.  Each section has its module; the checks here span sections.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.config import acme, alerts, dns, edges, home, protection, road_warriors, services, ssh, tunnel
from components.config.keys import DNS_PROVIDERS, KEYS, NAMESPACE, fix_key
from components.config.parser import Parser
from components.model import platforms
from components.model.firewall import firewall_rules
from components.model.fleet import DnsMode, EdgeSpec, FleetConfig, HomeRole, HomeSpec, IPNetwork, Mode, TunnelSpec
from components.model.road_warriors import RoadWarriorsSpec


class ConfigError(Exception):
    """Raised with every problem found; each line names the key and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"cgnat-edge: the stack configuration has {len(problems)} problem(s); nothing was created:\n{lines}"
        )


def parse(
    raw: Mapping[str, Any], *, project: str = NAMESPACE, stack: str = "dev", base_dir: Path | None = None
) -> FleetConfig:
    """Validate ``raw`` (key without namespace -> value) into a ``FleetConfig``.
    ``base_dir``: where relative paths (``dnsGeoipDatabase``) start; the stack file's
    folder (default: the working directory, where Pulumi runs the program)."""
    p = Parser(raw)

    for key in raw:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            p.fail(
                key,
                "is not a known key"
                + (f"; did you mean {fix_key(close[0])}?" if close else f"; known keys are {', '.join(KEYS)}"),
            )

    domain = p.hostname("domain", p.get("domain"), None) if p.get("domain") else None

    edge_items = p.get("edges")
    edge_specs = edges.parse(p, edge_items)
    ha = p.get("ha")
    edges.check_ha(p, ha, edge_specs, edge_items)
    tunnel_spec = tunnel.parse(p, project, stack, len(edge_specs))
    _check_indexes_fit(p, edge_specs, edge_items, tunnel_spec)
    home_spec = home.parse(p)
    _check_tunnel_outside_lan(p, tunnel_spec, home_spec)
    ssh_spec = ssh.parse(p)
    acme_spec = acme.parse(p)
    service_specs = services.parse(p, p.get("services"), domain, tunnel_spec, home_spec)
    protect = protection.parse_fleet(p)
    protection.check_shared_ports(p, service_specs, protect)
    warriors = road_warriors.parse(
        p,
        p.get("roadWarriors"),
        p.get("roadWarriorPool"),
        p.get("roadWarriorDns"),
        home_spec,
        tunnel_spec,
        p.get("roadWarriorPort"),
        service_specs,
    )
    if home_spec.role == HomeRole.HOST and any(s.mode is Mode.FORWARD for s in service_specs):
        p.warn(
            "homeRole",
            "is host: forwarded connections to other LAN hosts are masqueraded by the WireGuard box, so only a "
            "target on the box itself sees the visitor's address",
        )
    acme.check_email(p, acme_spec, service_specs)
    dns_spec = dns.parse(p, domain, service_specs, base_dir or Path.cwd(), edge_specs)
    if dns_spec.mode is DnsMode.EDGES and tunnel_spec.listen_port in dns.EDGE_DNS_PORTS:
        p.fail(
            "wireguardPort",
            f"udp {tunnel_spec.listen_port} is used by {dns.EDGE_DNS_PORTS[tunnel_spec.listen_port]}; pick another "
            "port, e.g. 51820",
        )
    _check_edge_subnets(p, edge_specs, tunnel_spec, home_spec, warriors)
    alerts_spec = alerts.parse(p)

    if p.problems:
        raise ConfigError(p.problems)
    assert domain is not None
    cfg = FleetConfig(
        project=project,
        stack=stack,
        domain=domain,
        edges=tuple(edge_specs),
        services=tuple(service_specs),
        tunnel=tunnel_spec,
        home=home_spec,
        ssh=ssh_spec,
        dns=dns_spec,
        acme=acme_spec,
        ha=ha,
        warnings=tuple(p.warnings),
        protection=protect,
        road_warriors=warriors,
        alerts=alerts_spec,
    )
    _check_fleet(p, cfg)
    if p.problems:
        raise ConfigError(p.problems)
    return cfg


def _check_fleet(p: Parser, cfg: FleetConfig) -> None:
    """Rules over the whole fleet, checked once every part parsed."""
    for name in cfg.providers:
        provider = platforms.REGISTRY[name]
        rules = provider.firewall_rule_count(firewall_rules(cfg))
        if rules > provider.firewall_rule_limit:
            p.fail(
                "services",
                f"the declared tcp/udp ports need {rules} rules in each {provider.label} firewall, over its limit of "
                f"{provider.firewall_rule_limit}; give services consecutive ports (they merge into one range rule) "
                "or declare fewer port services",
            )
        provider.check_fleet([e for e in cfg.edges if e.provider == name], p.fail)
    if cfg.dns.managed and not platforms.REGISTRY[cfg.dns.provider].manages_dns:
        p.fail("dnsProvider", f"{cfg.dns.provider} hosts no DNS zones; use one of {', '.join(DNS_PROVIDERS)}")


def _check_indexes_fit(p: Parser, edge_specs: list[EdgeSpec], items: list[Any] | None, tunnel_spec: TunnelSpec) -> None:
    """An index past the tunnel prefix has no /30 to take; caught here it is a config
    error, later it would stop ``pulumi up`` halfway, after resources were created."""
    if p.has_problem("tunnelIpv4Prefix"):
        return
    room = 2 ** (30 - tunnel_spec.ipv4_prefix.prefixlen) - 1
    position: dict[Any, int] = {}
    for i, item in enumerate(items or []):
        if isinstance(item, dict):
            position.setdefault(item.get("name"), i)
    for edge in edge_specs:
        if edge.index > room:
            p.fail(
                f"edges[{position[edge.name]}].index",
                f"{edge.index} does not fit in {fix_key('tunnelIpv4Prefix')} {tunnel_spec.ipv4_prefix}, which has room "
                f"for indexes 1 to {room} (one /30 each); use a free index in that range or a shorter prefix",
            )


def _check_tunnel_outside_lan(p: Parser, tunnel_spec: TunnelSpec, home_spec: HomeSpec) -> None:
    """A tunnel prefix inside a home LAN prefix makes the edges route tunnel traffic into
    the LAN and the home route LAN traffic into a tunnel; neither side can tell them apart."""
    for i, lan in enumerate(home_spec.lan_prefixes):
        tunnel_net = tunnel_spec.ipv4_prefix if lan.version == 4 else tunnel_spec.ipv6_prefix
        if tunnel_net is None or not tunnel_net.overlaps(lan):
            continue
        if lan.version == 4:
            free = next(
                (
                    c
                    for c in tunnel.SPARE_TUNNEL_PREFIXES
                    if not any(c.overlaps(other) for other in home_spec.lan_prefixes)
                ),
                None,
            )
            fix = f"set {fix_key('tunnelIpv4Prefix')} to a prefix outside your LAN" + (
                f", e.g. `pulumi config set {fix_key('tunnelIpv4Prefix')} {free}`" if free else ""
            )
            p.fail("tunnelIpv4Prefix", f"{tunnel_net} overlaps {fix_key('homeLanPrefixes')}[{i}] {lan}; {fix}")
        else:
            p.fail(
                "tunnelIpv6Prefix",
                f"{tunnel_net} overlaps {fix_key('homeLanPrefixes')}[{i}] {lan}; set {fix_key('tunnelIpv6Prefix')} to a ULA /64 outside it, or set {fix_key('tunnelIpv6')} false",
            )


def _check_edge_subnets(
    p: Parser,
    edge_specs: list[EdgeSpec],
    tunnel_spec: TunnelSpec,
    home_spec: HomeSpec,
    warriors: RoadWarriorsSpec | None,
) -> None:
    """A prefix the edges route into the tunnel must not cover the subnet an edge's own
    address is in: its default route goes through that subnet's gateway."""
    prefixes: list[tuple[str, IPNetwork]] = [("tunnelIpv4Prefix", tunnel_spec.ipv4_prefix)]
    prefixes += [(f"homeLanPrefixes[{i}]", lan) for i, lan in enumerate(home_spec.lan_prefixes)]
    if warriors:
        prefixes.append(("roadWarriorPool", warriors.pool))
    for name in sorted({e.provider for e in edge_specs}):
        own = platforms.REGISTRY[name].private_prefix
        if not own:
            continue
        subnet = ipaddress.ip_network(own)
        users = ", ".join(e.name for e in edge_specs if e.provider == name)
        for key, net in prefixes:
            if net.version == subnet.version and net.overlaps(subnet):
                fix = (
                    "the program fixes that subnet, so put those edges on another provider"
                    if key.startswith("homeLanPrefixes")
                    else f"pick a prefix outside {subnet}"
                )
                p.fail(
                    key,
                    f"{net} overlaps {subnet}, the subnet of the {platforms.REGISTRY[name].label} edges' own "
                    f"addresses ({users}), which their routes into the tunnel would take over; {fix}",
                )
