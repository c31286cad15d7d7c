"""DNS: who holds the zone (``dnsProvider``), the records' TTL, and whether the edges
serve a zone of their own (``dnsMode``)."""

from __future__ import annotations

from pathlib import Path

from components.config import geoip
from components.config.keys import DNS_PROVIDERS, fix_key
from components.config.parser import Parser
from components.model.fleet import NO_DNS_PROVIDER, DnsMode, DnsSpec, ServiceSpec

EDGE_DNS_PORTS = {53: "DNS (dnsMode edges)"}
"""Taken only in this mode; the health agent's port is taken in every mode (``services.RESERVED_TCP_PORTS``)."""


def parse(p: Parser, domain: str | None, services: list[ServiceSpec], base_dir: Path) -> DnsSpec:
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
    mode, edge_zone = _mode(p, domain, zone, provider, services)
    geoip_database = geoip.parse(p, mode, base_dir)
    return DnsSpec(provider, zone, ttl, mode, edge_zone, geoip_database)


def _mode(p: Parser, domain: str | None, zone: str, provider: str, services: list[ServiceSpec]) -> tuple[DnsMode, str]:
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
        for i, s in enumerate(services):
            if domain in s.hostnames:
                p.fail(
                    f"services[{i}].hostnames",
                    f"{domain} is the apex of the domain, which cannot be a CNAME into {edge_zone}; use a name "
                    f"such as www.{domain}, or set {fix_key('dnsEdgeZone')} {domain} to hand the whole domain over",
                )
    for i, s in enumerate(services):
        taken = [port for port in s.ports if port in EDGE_DNS_PORTS] if not s.mode.by_hostname else []
        if taken:
            p.fail(
                f"services[{i}].port",
                f"{s.mode} port {taken[0]} is used by {EDGE_DNS_PORTS[taken[0]]}; pick another public port",
            )
    return mode, edge_zone
