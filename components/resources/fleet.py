"""The whole edge fleet: every node, the home peer's identity, and what the user needs
from the outside (home router configs, DNS records, the monthly bill)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pulumi

from components import providers
from components.model import catalog
from components.model.deployed import DeployedEdge
from components.model.fleet import FleetConfig
from components.renderers import edge_dns, geodns, home_configs, tunnel
from components.resources.edge_node import EdgeNode, EdgeNodeArgs
from components.resources.keys import StackSshKey, WireGuardKey
from components.resources.managed_dns import ManagedDns, ManagedDnsArgs


def monthly_cost(cfg: FleetConfig) -> dict:
    """Per currency, since the providers bill in different ones; no conversion guessed."""
    per_edge: dict[str, dict] = {}
    totals: dict[str, float] = defaultdict(float)
    for e in cfg.edges:
        provider = providers.get(e.provider)
        amount, note = provider.edge_cost(e)
        per_edge[e.name] = {"amount": amount, "currency": provider.currency} | ({"note": note} if note else {})
        totals[provider.currency] += amount
    return {
        "totals": {currency: round(amount, 2) for currency, amount in sorted(totals.items())},
        "perEdge": per_edge,
        "pricesRead": catalog.PRICES_READ,
        "note": "List prices without VAT, server plus its persistent IPv4; traffic beyond the included allowance is extra.",
    }


def dns_outputs(cfg: FleetConfig, fleet: list[DeployedEdge[str]]) -> dict:
    """The ``dns`` output: the renderings of every mode, and with dnsMode edges the
    delegation the parent zone needs (``edgeServed``)."""
    out = geodns.outputs(cfg, fleet)
    if cfg.dns.edge_served:
        out["edgeServed"] = edge_dns.outputs(cfg, fleet)
    return out


def _deployed(cfg: FleetConfig, values: list, sources: list) -> list[DeployedEdge[str]]:
    return [
        DeployedEdge(edge, ipv4, ipv6, source_ipv4=source)
        for edge, (ipv4, ipv6, _key), source in zip(cfg.edges, values, sources, strict=True)
    ]


def _failed(error: Exception) -> pulumi.Output[list[DeployedEdge[str]]]:
    """An output that fails with ``error``: what the edges waiting on the fleet get when
    building it failed."""

    def fail(_: object) -> list[DeployedEdge[str]]:
        raise error

    return pulumi.Output.from_input(None).apply(fail)


@dataclass(frozen=True)
class EdgeFleetArgs:
    cfg: FleetConfig
    ssh_private_key: pulumi.Input[str] | None = None
    crowdsec_enroll_key: pulumi.Input[str] | None = None
    alert_secrets: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """The alert channels' secrets by key (``program.alert_secrets``)."""


class EdgeFleet(pulumi.ComponentResource):
    edges: pulumi.Output[dict]
    home_configs: pulumi.Output[dict]
    dns: pulumi.Output[dict]
    monthly_cost: dict

    def __init__(self, name: str, args: EdgeFleetArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("cgnat-edge:index:EdgeFleet", name, None, opts)
        cfg = args.cfg
        child = pulumi.ResourceOptions(parent=self)

        home_private_key: pulumi.Output[str] | None
        if cfg.home.public_key:
            home_public_key = pulumi.Output.from_input(cfg.home.public_key)
            home_private_key = None
        else:
            home_key = WireGuardKey("home-wireguard-key", opts=child)
            home_public_key, home_private_key = home_key.public_key, home_key.private_key

        # Road warriors without a public key get one made here, kept as a Pulumi secret.
        # Only home and the device's own file need them: no edge holds a device key.
        rw_private: dict[str, pulumi.Output[str] | None] = {}
        for rw in cfg.road_warriors.peers if cfg.road_warriors else ():
            if rw.public_key:
                rw_private[rw.name] = None
            else:
                rw_private[rw.name] = WireGuardKey(f"road-warrior-{rw.name}-wireguard-key", opts=child).private_key

        stack_key = StackSshKey("stack-ssh-key", opts=child)
        key_ids = {name: providers.get(name).ssh_keys(cfg, stack_key.public_key, self) for name in cfg.providers}
        # One edge at a time: each config step waits for the previous edge's verified one.
        nodes: list[EdgeNode] = []
        # dnsMode edges: each edge's zone names every edge, known once all machines exist.
        fleet: pulumi.Output[list[DeployedEdge[str]]] | None = None
        resolve_fleet: Callable[[pulumi.Output[list[DeployedEdge[str]]]], None] | None = None
        if cfg.dns.edge_served or cfg.alerts:
            fleet, resolve_fleet = pulumi.deferred_output()
        try:
            for edge in cfg.edges:
                nodes.append(
                    EdgeNode(
                        edge.name,
                        EdgeNodeArgs(
                            cfg,
                            edge,
                            home_public_key,
                            key_ids[edge.provider],
                            ssh_private_key=args.ssh_private_key,
                            after=nodes[-1].config_step if nodes else None,
                            fleet=fleet,
                            crowdsec_enroll_key=args.crowdsec_enroll_key,
                            alert_secrets=args.alert_secrets,
                        ),
                        child,
                    )
                )

            endpoints = pulumi.Output.all(*[pulumi.Output.all(n.ipv4, n.ipv6, n.public_key) for n in nodes])
        except Exception as error:
            if resolve_fleet is not None:
                # The edges built so far wait on the whole fleet; unanswered, the run would
                # wait for ever instead of ending with this error.
                resolve_fleet(_failed(error))
            raise
        if resolve_fleet is not None:
            sources = pulumi.Output.all(*[n.source_ipv4 for n in nodes])
            resolve_fleet(pulumi.Output.all(endpoints, sources).apply(lambda values: _deployed(cfg, *values)))
        access = pulumi.Output.all(*[pulumi.Output.all(n.host_public_key, n.pushed_files) for n in nodes])

        def summary(values: list) -> dict:
            out = {}
            for edge, (ipv4, ipv6, public_key), (host_key, pushed) in zip(cfg.edges, *values, strict=True):
                addrs = tunnel.addresses(cfg.tunnel, edge)
                out[edge.name] = {
                    "provider": edge.provider,
                    "location": edge.location.code,
                    "city": edge.location.city,
                    "country": edge.location.country,
                    "arch": edge.arch,
                    "serverType": edge.server_type.name,
                    "ipv4": ipv4,
                    "ipv6": ipv6,
                    "tunnelIpv4": str(addrs.edge_v4.ip),
                    "tunnelIpv6": str(addrs.edge_v6.ip) if addrs.edge_v6 else None,
                    "wireguardPublicKey": public_key,
                    "wireguardEndpoint": f"{ipv4}:{cfg.tunnel.listen_port}",
                    # For `cgnat-edge status`: how to log in, the key to pin, the files last pushed.
                    "sshUser": cfg.ssh.user,
                    "hostPublicKey": host_key,
                    "pushedFiles": pushed,
                }
            return out

        self.edges = pulumi.Output.all(endpoints, access).apply(summary)

        def deployed(values: list) -> list[DeployedEdge[str]]:
            return [
                DeployedEdge(edge, ipv4, ipv6, public_key)
                for edge, (ipv4, ipv6, public_key) in zip(cfg.edges, values, strict=True)
            ]

        self.home_configs = pulumi.Output.secret(
            pulumi.Output.all(endpoints, home_private_key, pulumi.Output.all(**rw_private)).apply(
                lambda values: home_configs.render(cfg, deployed(values[0]), values[1], values[2])
            )
        )
        self.dns = endpoints.apply(lambda values: dns_outputs(cfg, deployed(values)))
        if cfg.dns.managed:
            ManagedDns(
                "dns",
                ManagedDnsArgs(
                    cfg, [DeployedEdge(edge, n.ipv4, n.ipv6) for edge, n in zip(cfg.edges, nodes, strict=True)]
                ),
                opts=child,
            )

        self.monthly_cost = monthly_cost(cfg)
        self.register_outputs(
            {"edges": self.edges, "homeConfigs": self.home_configs, "dns": self.dns, "monthlyCost": self.monthly_cost}
        )
