"""DigitalOcean: x86-64 Droplets (it sells no arm64) behind a reserved IP and a cloud firewall."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from components.model.catalog import Location, ServerType
from components.model.fleet import EdgeSpec, FleetConfig
from components.providers.base import (
    ANYWHERE,
    USER_DATA_IGNORED,
    InboundRule,
    Machine,
    Provider,
    firewall_rules,
    get,
    labels,
    server_name,
    stack_key_name,
)

if TYPE_CHECKING:
    import pulumi

_OUTBOUND = ("tcp", "udp", "icmp")


def _location(code: str, city: str, country: str, continent: str, lat: float, lon: float) -> Location:
    return Location("digitalocean", code, city, country, continent, lat, lon)


_LOCATIONS = (
    _location("nyc1", "New York", "US", "NA", 40.71, -74.01),
    _location("nyc3", "New York", "US", "NA", 40.71, -74.01),
    _location("sfo3", "San Francisco", "US", "NA", 37.77, -122.42),
    _location("atl1", "Atlanta", "US", "NA", 33.75, -84.39),
    _location("tor1", "Toronto", "CA", "NA", 43.65, -79.38),
    _location("ams3", "Amsterdam", "NL", "EU", 52.37, 4.90),
    _location("fra1", "Frankfurt", "DE", "EU", 50.11, 8.68),
    _location("lon1", "London", "GB", "EU", 51.51, -0.13),
    _location("sgp1", "Singapore", "SG", "AS", 1.35, 103.82),
    _location("blr1", "Bangalore", "IN", "AS", 12.97, 77.59),
    _location("syd1", "Sydney", "AU", "OC", -33.87, 151.21),
)
_ALL = frozenset(loc.code for loc in _LOCATIONS)


def _type(name: str, vcpus: int, ram: float, disk: int, price: float) -> ServerType:
    return ServerType("digitalocean", name, "x86_64", vcpus, ram, disk, price, "USD", _ALL)


def tags(cfg: FleetConfig, edge_name: str | None = None) -> list[str]:
    """The common labels as DigitalOcean tags (it has no key/value labels)."""
    return [f"{key}:{value}" for key, value in labels(cfg, edge_name).items()]


class DigitalOcean(Provider):
    name = "digitalocean"
    label = "DigitalOcean"
    currency = "USD"
    ipv4_monthly = 0.0  # a reserved IP is free while assigned
    default_server_type = "s-1vcpu-1gb"
    default_image = "debian-12-x64"
    images = ("debian-12-x64",)
    locations = _LOCATIONS
    # DigitalOcean sells no arm64 Droplets; these are its shared-CPU Basic plans.
    server_types = (
        _type("s-1vcpu-512mb-10gb", 1, 0.5, 10, 4.00),
        _type("s-1vcpu-1gb", 1, 1, 25, 6.00),
        _type("s-1vcpu-2gb", 1, 2, 50, 12.00),
        _type("s-2vcpu-2gb", 2, 2, 60, 18.00),
    )
    user_data_limit = 64 * 1024
    firewall_rule_limit = 50  # inbound and outbound rules together
    fixed_firewall_rules = len(_OUTBOUND)
    manages_dns = True
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
                for protocol in _OUTBOUND
            ],
            opts=child,
        )
        return Machine(
            server=droplet,
            server_id=droplet.id,
            ipv4=reserved.ip_address,
            ipv6=droplet.ipv6_address,
            reachable_after=[droplet, assignment, firewall],
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


PROVIDER = DigitalOcean()
