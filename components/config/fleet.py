"""The stack configuration as one ``FleetConfig``: every section, then the whole fleet.

The sections run in one order and report into one parser, so a stack file with several
mistakes gets them all in one ``ConfigError``, in the order of the file's concerns,
before a single resource is registered.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components import providers
from components.config import acme, dns, edges, home, protection, road_warriors, services, ssh, tunnel
from components.config.keys import KEYS, NAMESPACE, dns_providers, fix_key
from components.config.parser import ConfigError, Parser
from components.model.fleet import FleetConfig, HomeRole, Mode
from components.providers.base import firewall_rules


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
    fleet_edges = edges.parse(p, edge_items)
    ha = p.get("ha")
    edges.check_ha(p, ha, fleet_edges, edge_items)
    fleet_tunnel = tunnel.parse(p, project, stack, len(fleet_edges))
    edges.check_indexes_fit(p, fleet_edges, edge_items, fleet_tunnel)
    fleet_home = home.parse(p)
    tunnel.check_outside_lan(p, fleet_tunnel, fleet_home)
    fleet_ssh = ssh.parse(p)
    fleet_acme = acme.parse(p)
    fleet_services = services.parse(p, p.get("services"), domain, fleet_tunnel, fleet_home)
    protect = protection.parse_fleet(p)
    protection.check_shared_ports(p, fleet_services, protect)
    warriors = road_warriors.parse(
        p,
        p.get("roadWarriors"),
        p.get("roadWarriorPool"),
        p.get("roadWarriorDns"),
        fleet_home.lan_prefixes,
        fleet_tunnel,
    )
    if fleet_home.role is HomeRole.HOST and any(s.mode is Mode.FORWARD for s in fleet_services):
        p.warn(
            "homeRole",
            "is host: forwarded connections to other LAN hosts are masqueraded by the WireGuard box, so only a "
            "target on the box itself sees the visitor's address",
        )
    acme.check_email(p, fleet_acme, fleet_services)
    fleet_dns = dns.parse(p, domain, fleet_services, base_dir or Path.cwd())

    if p.problems:
        raise ConfigError(p.problems)
    assert domain is not None
    cfg = FleetConfig(
        project=project,
        stack=stack,
        domain=domain,
        edges=tuple(fleet_edges),
        services=tuple(fleet_services),
        tunnel=fleet_tunnel,
        home=fleet_home,
        ssh=fleet_ssh,
        dns=fleet_dns,
        acme=fleet_acme,
        ha=ha,
        warnings=tuple(p.warnings),
        protection=protect,
        road_warriors=warriors,
    )
    _check_fleet(p, cfg)
    if p.problems:
        raise ConfigError(p.problems)
    return cfg


def _check_fleet(p: Parser, cfg: FleetConfig) -> None:
    """Rules over the whole fleet, checked once every part parsed."""
    for name in cfg.providers:
        provider = providers.REGISTRY[name]
        rules = provider.firewall_rule_count(firewall_rules(cfg))
        if rules > provider.firewall_rule_limit:
            p.fail(
                "services",
                f"the declared tcp/udp ports need {rules} rules in each {provider.label} firewall, over its limit of "
                f"{provider.firewall_rule_limit}; give services consecutive ports (they merge into one range rule) "
                "or declare fewer port services",
            )
        provider.check_fleet([e for e in cfg.edges if e.provider == name], p.fail)
    if cfg.dns.managed and not providers.REGISTRY[cfg.dns.provider].manages_dns:
        p.fail("dnsProvider", f"{cfg.dns.provider} hosts no DNS zones; use one of {', '.join(dns_providers())}")
