"""Hetzner Cloud's resources: servers behind Primary IPs and a cloud firewall."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from components.model.firewall import firewall_rules
from components.model.fleet import EdgeSpec, FleetConfig
from components.model.platforms import hetzner as platform
from components.providers.base import (
    USER_DATA_IGNORED,
    InboundRule,
    Machine,
    Provider,
    get,
    labels,
    server_name,
    stack_key_name,
)

if TYPE_CHECKING:
    import pulumi


class Hetzner(platform.Hetzner, Provider):
    resource_prefix = "hcloud:"
    server_resource_type = "hcloud:index/server:Server"
    firewall_resource_type = "hcloud:index/firewall:Firewall"

    def ssh_keys(
        self, cfg: FleetConfig, public_key: pulumi.Output[str], parent: pulumi.Resource
    ) -> list[pulumi.Output[str]]:
        import pulumi
        import pulumi_hcloud as hcloud

        key = hcloud.SshKey(
            "hetzner-ssh-key",
            name=stack_key_name(cfg),
            public_key=public_key,
            labels=labels(cfg),
            opts=pulumi.ResourceOptions(parent=parent),
        )
        return [key.id]

    def create_machine(
        self,
        cfg: FleetConfig,
        edge: EdgeSpec,
        user_data: pulumi.Input[str],
        ssh_key_ids: list[pulumi.Output[str]],
        parent: pulumi.Resource,
    ) -> Machine:
        import pulumi
        import pulumi_hcloud as hcloud

        child = pulumi.ResourceOptions(parent=parent)
        tags = labels(cfg, edge.name)
        # Primary IPs outlive the server (auto_delete off), so a rebuilt server keeps its
        # addresses and neither DNS nor the home router's Endpoint has to change.
        ips = {
            family: hcloud.PrimaryIp(
                f"{edge.name}-{family}",
                name=f"{server_name(cfg, edge.name)}-{family}",
                type=family,
                location=edge.location.code,
                assignee_type="server",
                auto_delete=False,
                labels=tags,
                opts=pulumi.ResourceOptions(parent=parent, protect=True),
            )
            for family in ("ipv4", "ipv6")
        }
        firewall = hcloud.Firewall(
            f"{edge.name}-firewall",
            name=server_name(cfg, edge.name),
            labels=tags,
            rules=[
                hcloud.FirewallRuleArgs(
                    direction="in",
                    protocol=rule.protocol,
                    port=rule.port,
                    source_ips=list(rule.sources),
                    description=rule.description,
                )
                for rule in firewall_rules(cfg)
            ],
            opts=child,
        )
        server = hcloud.Server(
            f"{edge.name}-server",
            name=server_name(cfg, edge.name),
            server_type=edge.server_type.name,
            image=edge.image,
            location=edge.location.code,
            ssh_keys=ssh_key_ids,
            firewall_ids=[firewall.id.apply(int)],
            public_nets=[
                hcloud.ServerPublicNetArgs(
                    ipv4_enabled=True,
                    ipv4=ips["ipv4"].id.apply(int),
                    ipv6_enabled=True,
                    ipv6=ips["ipv6"].id.apply(int),
                )
            ],
            user_data=user_data,
            labels=tags,
            # The name is unique in the project and the Primary IPs can be assigned to one
            # server at a time: a replacement must wait for the old server to go.
            opts=pulumi.ResourceOptions(parent=parent, ignore_changes=USER_DATA_IGNORED, delete_before_replace=True),
        )
        return Machine(
            server=server,
            server_id=server.id,
            ipv4=ips["ipv4"].ip_address,
            ipv6=server.ipv6_address,
            reachable_after=[server],
        )

    def dns_records(
        self,
        resource_name: str,
        cfg: FleetConfig,
        relative_name: str,
        rtype: str,
        family: list[tuple[str, pulumi.Input[str]]],
        opts: pulumi.ResourceOptions,
    ) -> list[pulumi.CustomResource]:
        """One RRSet per name and type (the Cloud API's unit), a record per edge;
        adding an edge updates the RRSet in place."""
        import pulumi_hcloud as hcloud

        return [
            hcloud.ZoneRrset(
                resource_name,
                zone=cfg.dns.zone,
                name=relative_name,
                type=rtype,
                ttl=cfg.dns.ttl,
                records=[
                    hcloud.ZoneRrsetRecordArgs(value=value, comment=f"cgnat-edge {edge}") for edge, value in family
                ],
                labels=labels(cfg),
                opts=opts,
            )
        ]

    def mock_resource(self, typ: str, n: int, rid: str, inputs: Mapping[str, Any]) -> tuple[str, dict]:
        if typ == "hcloud:index/primaryIp:PrimaryIp":
            if inputs.get("type") == "ipv6":
                net = ipaddress.IPv6Network((0x20010DB8_0000_0000_0000_0000_0000_0000 | (n % 0xFFFF) << 80, 64))
                return rid, {"ipAddress": str(net.network_address), "ipNetwork": str(net)}
            return rid, {"ipAddress": f"203.0.113.{n % 250 + 2}"}
        if typ == self.server_resource_type:
            return rid, {
                "status": "running",
                "ipv6Address": f"2001:db8:{n % 0xFFFF:x}::1",
                "ipv4Address": f"203.0.113.{n % 250 + 2}",
            }
        return rid, {}

    def inbound_rules(self, inputs: Mapping[str, Any]) -> Iterator[InboundRule]:
        for rule in get(inputs, "rules") or []:
            if str(get(rule, "direction") or "in").lower() == "in":
                yield InboundRule(
                    str(get(rule, "protocol") or "").lower(),
                    get(rule, "port"),
                    list(get(rule, "sourceIps", "source_ips") or []),
                )

    def unfirewalled(self, server: Mapping[str, Any], resources: list[dict]) -> str | None:
        inputs = server.get("inputs") or {}
        siblings = {r.get("type") for r in resources if r.get("parent") == server.get("parent")}
        if get(inputs, "firewallIds", "firewall_ids") or self.firewall_resource_type in siblings:
            return None
        return "has no Hetzner Cloud firewall; pass firewall_ids with a firewall built from base.firewall_rules"


PROVIDER: Hetzner = Hetzner()
