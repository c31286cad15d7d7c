"""DNS: who holds the zone (``dnsProvider``), the records' TTL, and whether the edges
serve a zone of their own (``dnsMode``)."""

from __future__ import annotations

from pathlib import Path

from components.config import geoip
from components.config.keys import DNS_PROVIDERS, fix_key
from components.config.parser import Parser
from components.model.fleet import NO_DNS_PROVIDER, DnsMode, DnsSpec, EdgeSpec, ServiceSpec

EDGE_DNS_PORTS = {53: "DNS (dnsMode edges)"}
"""Taken only in this mode; the health agent's port is taken in every mode (``services.RESERVED_TCP_PORTS``)."""


MAX_NAME = 253
"""The longest name DNS carries, written without its final dot."""


def parse(p: Parser, domain: str | None, services: list[ServiceSpec], base_dir: Path, edges: list[EdgeSpec]) -> DnsSpec:
    provider = p.get("dnsProvider")
    if provider not in DNS_PROVIDERS:
        p.fail("dnsProvider", f"{provider!r} is not supported; use one of {', '.join(DNS_PROVIDERS)}")
    zone = p.get("dnsZone") or domain or ""
    if p.get("dnsZone") and domain:
        zone = p.hostname("dnsZone", zone, None) or ""
        if zone and not (domain == zone or domain.endswith("." + zone)):
            p.fail("dnsZone", f"{zone} does not contain the domain {domain}; use the zone {domain} is delegated in")
    ttl = p.get("dnsTtl")
    if not 30 <= ttl <= 86400:
        p.fail(
            "dnsTtl", f"{ttl} is out of range; use 30 to 86400 seconds (short, e.g. 60, so a dead edge drops out fast)"
        )
    at = _positions(p)
    mode, edge_zone = _mode(p, domain, zone, provider, services, at)
    if edge_zone and domain:
        _check_edge_zone_names(p, domain, edge_zone, services, edges, at)
    geoip_database = geoip.parse(p, mode, base_dir)
    return DnsSpec(provider, zone, ttl, mode, edge_zone, geoip_database)


def _mode(
    p: Parser, domain: str | None, zone: str, provider: str, services: list[ServiceSpec], at: dict[str, int]
) -> tuple[DnsMode, str]:
    """``dnsMode`` and the zone the edges own.  The edges can own a zone only where its
    parent can hold their NS and glue records: inside the domain, and with a
    ``dnsProvider`` strictly inside the provider's zone (the program writes the
    delegation there; a zone cannot delegate itself)."""
    text = p.get("dnsMode")
    if text not in tuple(DnsMode):
        p.fail("dnsMode", f"{text!r} is not a DNS mode; use records (plain records) or edges (the edges serve DNS)")
        return DnsMode.RECORDS, ""
    mode = DnsMode(text)
    if p.raw.get("dnsEdgeZone") not in (None, "") and mode != DnsMode.EDGES:
        p.fail("dnsEdgeZone", f"is set but {fix_key('dnsMode')} is {mode}; set dnsMode to edges or remove it")
    if mode != DnsMode.EDGES or not domain:
        return mode, ""
    text = p.get("dnsEdgeZone") or f"edge.{domain}"
    edge_zone = p.hostname("dnsEdgeZone", text, None)
    if edge_zone is None:
        return mode, ""
    if not (edge_zone == domain or edge_zone.endswith("." + domain)):
        p.fail(
            "dnsEdgeZone",
            f"{edge_zone} is outside the domain {domain}, so its delegation and the hostnames' CNAMEs cannot point "
            f"into it; use a name under {domain}, e.g. edge.{domain}",
        )
        return mode, ""
    if provider != NO_DNS_PROVIDER and edge_zone == zone:
        p.fail(
            "dnsEdgeZone",
            f"{edge_zone} is the {provider} zone itself, which cannot delegate itself to the edges; use a subzone "
            f"such as edge.{zone}, or set {fix_key('dnsProvider')} none and delegate {zone} at the registrar",
        )
    if edge_zone != domain:
        for s in services:
            if domain in s.hostnames:
                p.fail(
                    f"services[{at[s.name]}].hostnames",
                    f"{domain} is the apex of the domain, which cannot be a CNAME into {edge_zone}; use a name "
                    f"such as www.{domain}, or set {fix_key('dnsEdgeZone')} {domain} to hand the whole domain over",
                )
    for s in services:
        taken = [port for port in s.ports if port in EDGE_DNS_PORTS] if not s.mode.by_hostname else []
        if taken:
            p.fail(
                f"services[{at[s.name]}].port",
                f"{s.protocol} port {taken[0]} is used by {EDGE_DNS_PORTS[taken[0]]}; pick another public port",
            )
    return mode, edge_zone


def _positions(p: Parser) -> dict[str, int]:
    """Where each service stands in the stack's list (a service refused earlier leaves a gap)."""
    items = p.raw.get("services")
    found: dict[str, int] = {}
    for i, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            found.setdefault(item["name"], i)
    return found


def _check_edge_zone_names(
    p: Parser, domain: str, edge_zone: str, services: list[ServiceSpec], edges: list[EdgeSpec], at: dict[str, int]
) -> None:
    """The names the edges' zone holds for itself (its apex with SOA and NS, and each
    edge's name server ``ns-<edge>.<zone>`` with its glue) are not free for services,
    and every name the zone serves or is CNAMEd into must fit in DNS."""
    infra = ["hostmaster", *(f"ns-{e.name}" for e in edges)]  # the SOA's mailbox and the NS names
    longest = max(infra, key=len)
    if len(longest) + 1 + len(edge_zone) > MAX_NAME:
        p.fail(
            "dnsEdgeZone",
            f"{edge_zone} leaves no room for the zone's own names: {longest}.{edge_zone} has "
            f"{len(longest) + 1 + len(edge_zone)} characters, over DNS's {MAX_NAME}; use a shorter zone such as "
            f"edge.{domain}",
        )
    nameservers = {f"ns-{e.name}.{edge_zone}": e.name for e in edges}
    for s in services:
        key = f"services[{at[s.name]}].hostnames"
        for host in s.hostnames:
            if host == edge_zone and edge_zone != domain:
                p.fail(
                    key,
                    f"{host} is the apex of the edges' zone ({fix_key('dnsEdgeZone')}), which holds the zone's SOA "
                    "and NS records and is the name its parent delegates to the edges; give the service a name "
                    f"inside or beside the zone, e.g. www.{domain}, or set {fix_key('dnsEdgeZone')} to another name",
                )
            elif host in nameservers:
                p.fail(
                    key,
                    f"{host} is the name server of edge {nameservers[host]!r}, whose address records the edges' zone "
                    "and its delegation hold; give the service another name",
                )
            elif len(served := _served(domain, edge_zone, host)) > MAX_NAME:
                p.fail(
                    key,
                    f"{host} is served in the edges' zone as {served[:40]}..., {len(served)} characters, over DNS's "
                    f"{MAX_NAME}; use a shorter hostname or a shorter {fix_key('dnsEdgeZone')}",
                )


def _served(domain: str, edge_zone: str, host: str) -> str:
    """The name ``host`` has in the edges' zone (``renderers.edge_dns.served_name``)."""
    if host in (domain, edge_zone) or host.endswith("." + edge_zone):
        return host
    return f"{host[: -len(domain) - 1]}.{edge_zone}"
