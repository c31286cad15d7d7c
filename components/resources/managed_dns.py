"""The edges' A/AAAA records, created in the DNS zone the user keeps at a provider that
hosts zones (``dnsProvider``), so a new or replaced edge is in DNS without anyone
touching a zone file.

Neither provider routes by geography, so every name answers with every edge (round
robin) - the same set as the ``default`` records of ``geodns.policy``, with the same
TTL; clients move on to the next address when an edge is dead.  The zone itself
belongs to the user (it holds their mail, their other names, their delegation):
this component only adds records to it and never creates or deletes the zone.

Resource names come from the hostname, the type and - where each value is its own
resource - the edge name, never from a position in a list, so adding an edge adds
resources instead of renaming existing ones.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from components import providers
from components.model.deployed import DeployedEdge
from components.model.fleet import FleetConfig
from components.renderers import edge_dns, geodns

TYPE_TOKEN = "cgnat-edge:index:ManagedDns"


def relative_name(hostname: str, zone: str) -> str:
    """``hostname`` relative to ``zone``, ``@`` for the apex, as both APIs want it."""
    hostname, zone = hostname.rstrip(".").lower(), zone.rstrip(".").lower()
    if hostname == zone:
        return "@"
    if not hostname.endswith("." + zone):
        raise ValueError(f"{hostname} is not inside the zone {zone}")
    return hostname[: -len(zone) - 1]


def _with_values(summary: dict[str, Any], values: list[str]) -> dict[str, Any]:
    return {**summary, "values": list(values)}


def _delegation(
    name: str,
    cfg: FleetConfig,
    eps: list[DeployedEdge[pulumi.Output[str]]],
    provider: Any,
    opts: pulumi.ResourceOptions,
) -> list[pulumi.CustomResource]:
    """dnsMode edges: the parent zone's part (``edge_dns.delegation``): NS for the edge
    zone, glue for each edge's nameserver, a CNAME into the edge zone per hostname."""
    zone = cfg.dns.zone
    created: list[pulumi.CustomResource] = []
    ns = [(e.name, f"{edge_dns.nameserver(cfg, e.spec)}.") for e in sorted(eps, key=lambda e: e.spec.index)]
    created += provider.dns_records(
        f"{name}-{cfg.dns.edge_zone}-ns", cfg, relative_name(cfg.dns.edge_zone, zone), "NS", ns, opts
    )
    for e in eps:
        for rtype in ("A", "AAAA"):
            value = e.address(rtype)
            if value is not None:
                host = edge_dns.nameserver(cfg, e.spec)
                created += provider.dns_records(
                    f"{name}-{host}-{rtype.lower()}", cfg, relative_name(host, zone), rtype, [(e.name, value)], opts
                )
    for host, served, _check in edge_dns.names(cfg):
        if served != host:
            created += provider.dns_records(
                f"{name}-{host}-cname", cfg, relative_name(host, zone), "CNAME", [("cname", f"{served}.")], opts
            )
    return created


@dataclass(frozen=True)
class ManagedDnsArgs:
    cfg: FleetConfig
    edges: Sequence[DeployedEdge[pulumi.Output[str]]]


class ManagedDns(pulumi.ComponentResource):
    """Round-robin A/AAAA records for every exposed hostname in ``cfg.dns.zone``.

    Does nothing when ``cfg.dns.provider`` is ``none``.  ``records`` resolves to a
    list of ``{hostname, name, type, ttl, values}`` for the stack outputs."""

    records: pulumi.Output[list[dict[str, Any]]]
    record_resources: list[pulumi.CustomResource]
    """The record resources, for ``depends_on`` elsewhere (e.g. waiting for DNS
    before asking for certificates)."""

    def __init__(self, name: str, args: ManagedDnsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE_TOKEN, name, None, opts)
        cfg, eps = args.cfg, list(args.edges)
        self.record_resources = []
        child = pulumi.ResourceOptions(parent=self)
        summaries: list[pulumi.Output[dict[str, Any]]] = []
        provider = providers.REGISTRY.get(cfg.dns.provider)
        if provider is not None and cfg.dns.edge_served:
            self.record_resources += _delegation(name, cfg, eps, provider, child)
        elif provider is not None:
            for hostname, _service in geodns.hostnames(cfg):
                rel = relative_name(hostname, cfg.dns.zone)
                for rtype in ("A", "AAAA"):
                    family: list[tuple[str, pulumi.Input[str]]] = [
                        (e.name, value) for e in eps if (value := e.address(rtype)) is not None
                    ]
                    if not family:
                        continue
                    resource_name = f"{name}-{hostname}-{rtype.lower()}"
                    self.record_resources += provider.dns_records(resource_name, cfg, rel, rtype, family, child)
                    summary = {"hostname": hostname, "name": rel, "type": rtype, "ttl": cfg.dns.ttl}
                    values = pulumi.Output.all(*[value for _, value in family])
                    summaries.append(values.apply(functools.partial(_with_values, summary)))
        self.records = pulumi.Output.all(*summaries).apply(list) if summaries else pulumi.Output.from_input([])
        self.register_outputs({"records": self.records})
