"""DigitalOcean's resources: Droplets behind a reserved IP and a cloud firewall."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from components.model.firewall import ANYWHERE, firewall_rules
from components.model.fleet import EdgeSpec, FleetConfig
from components.model.platforms import digitalocean as platform
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


def tags(cfg: FleetConfig, edge_name: str | None = None) -> list[str]:
    """The common labels as DigitalOcean tags (it has no key/value labels)."""
    return [f"{key}:{value}" for key, value in labels(cfg, edge_name).items()]


class DigitalOcean(platform.DigitalOcean, Provider):
    resource_prefix = "digitalocean:"
    server_resource_type = "digitalocean:index/droplet:Droplet"
    firewall_resource_type = "digitalocean:index/firewall:Firewall"

    def ssh_keys(
        self, cfg: FleetConfig, public_key: pulumi.Output[str], parent: pulumi.Resource
    ) -> list[pulumi.Output[str]]:
        import pulumi
        import pulumi_digitalocean as do

        key = do.SshKey(
            "digitalocean-ssh-key",
            name=stack_key_name(cfg),
            public_key=public_key,
            opts=pulumi.ResourceOptions(parent=parent),
        )
        return [key.fingerprint]

    def create_machine(
        self,
        cfg: FleetConfig,
        edge: EdgeSpec,
        user_data: pulumi.Input[str],
        ssh_key_ids: list[pulumi.Output[str]],
        parent: pulumi.Resource,
    ) -> Machine:
        import pulumi
        import pulumi_digitalocean as do

        pulumi.log.warn(
            f"edge {edge.name!r}: DigitalOcean sells no arm64 Droplets, so it runs {edge.server_type.name} "
            f"({edge.server_type.arch}); everything the node runs is installed for its own architecture."
        )
        child = pulumi.ResourceOptions(parent=parent)
        droplet = do.Droplet(
            f"{edge.name}-droplet",
            name=server_name(cfg, edge.name),
            image=edge.image,
            region=edge.location.code,
            size=edge.server_type.name,
            ipv6=True,
            monitoring=False,
            droplet_agent=False,
            graceful_shutdown=True,
            ssh_keys=ssh_key_ids,
            tags=tags(cfg, edge.name),
            user_data=user_data,
            opts=pulumi.ResourceOptions(parent=parent, ignore_changes=USER_DATA_IGNORED),
        )
        # The reserved IP is its own resource and only its assignment follows the Droplet,
        # so replacing the Droplet keeps the public IPv4.
        reserved = do.ReservedIp(
            f"{edge.name}-reserved-ip",
            region=edge.location.code,
            opts=pulumi.ResourceOptions(parent=parent, protect=True),
        )
        assignment = do.ReservedIpAssignment(
            f"{edge.name}-reserved-ip-assignment",
            ip_address=reserved.ip_address,
            droplet_id=droplet.id.apply(int),
            opts=child,
        )
        firewall = do.Firewall(
            f"{edge.name}-firewall",
            name=server_name(cfg, edge.name),
            droplet_ids=[droplet.id.apply(int)],
            inbound_rules=[
                do.FirewallInboundRuleArgs(
                    protocol=rule.protocol,
                    port_range=rule.port,
                    source_addresses=list(rule.sources),
                )
                for rule in firewall_rules(cfg)
            ],
            # A DigitalOcean firewall without outbound rules blocks all egress, which
            # would break apt, ACME and the WireGuard replies.
            outbound_rules=[
                do.FirewallOutboundRuleArgs(
                    protocol=protocol,
                    port_range="all" if protocol != "icmp" else None,
                    destination_addresses=list(ANYWHERE),
                )
                for protocol in platform.OUTBOUND
            ],
            opts=child,
        )
        return Machine(
            server=droplet,
            server_id=droplet.id,
            ipv4=reserved.ip_address,
            ipv6=droplet.ipv6_address,
            reachable_after=[droplet, assignment, firewall],
            # A reserved IP takes inbound traffic; the Droplet's own connections leave from
            # its own address (per DigitalOcean's documentation), the one the other edges
            # see its health checks come from.
            source_ipv4=droplet.ipv4_address,
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
        """DigitalOcean keeps one record per value, so one resource per edge."""
        import pulumi_digitalocean as do

        return [
            do.DnsRecord(
                f"{resource_name}-{edge}",
                domain=cfg.dns.zone,
                name=relative_name,
                type=rtype,
                value=value,
                ttl=cfg.dns.ttl,
                opts=opts,
            )
            for edge, value in family
        ]

    def mock_resource(self, typ: str, n: int, rid: str, inputs: Mapping[str, Any]) -> tuple[str, dict]:
        if typ == self.server_resource_type:
            return rid, {
                "ipv4Address": f"198.51.100.{n % 120 + 2}",
                "ipv6Address": f"2001:db8:d0:{n % 0xFFFF:x}::1",
                "status": "active",
                "urn": f"do:droplet:{rid}",
            }
        if typ == "digitalocean:index/reservedIp:ReservedIp":
            address = f"198.51.100.{n % 120 + 130}"
            return address, {"ipAddress": address, "urn": f"do:reservedip:{rid}"}
        if typ == "digitalocean:index/sshKey:SshKey":
            blob = base64.b64decode(inputs["publicKey"].split()[1])
            return rid, {"fingerprint": ":".join(f"{b:02x}" for b in hashlib.md5(blob).digest())}
        return rid, {}

    def inbound_rules(self, inputs: Mapping[str, Any]) -> Iterator[InboundRule]:
        for rule in get(inputs, "inboundRules", "inbound_rules") or []:
            yield InboundRule(
                str(get(rule, "protocol") or "").lower(),
                get(rule, "portRange", "port_range"),
                list(get(rule, "sourceAddresses", "source_addresses") or []),
            )

    def unfirewalled(self, server: Mapping[str, Any], resources: list[dict]) -> str | None:
        firewalls = [r for r in resources if r.get("type") == self.firewall_resource_type]
        if any(r.get("parent") == server.get("parent") for r in firewalls):
            return None
        server_tags = set(get(server.get("inputs") or {}, "tags") or [])
        if any(server_tags & set(get(r.get("inputs") or {}, "tags") or []) for r in firewalls):
            return None
        return "has no DigitalOcean firewall; create a digitalocean.Firewall with its droplet_ids next to it"


PROVIDER: DigitalOcean = DigitalOcean()
