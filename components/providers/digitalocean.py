"""DigitalOcean: x86-64 Droplets (it sells no arm64) behind a reserved IP and a cloud firewall."""

from __future__ import annotations

import pulumi
import pulumi_digitalocean as do

from components.model.config import EdgeSpec, FleetConfig
from components.providers.base import USER_DATA_IGNORED, Machine, firewall_rules, server_name


def ssh_keys(cfg: FleetConfig, parent: pulumi.Resource) -> list[pulumi.Output[str]]:
    """Uploaded once per stack: DigitalOcean refuses the same fingerprint twice."""
    return [
        do.SshKey(
            f"digitalocean-ssh-key-{i}",
            name=f"cgnat-edge-{cfg.stack}-{i}",
            public_key=key,
            opts=pulumi.ResourceOptions(parent=parent),
        ).fingerprint
        for i, key in enumerate(cfg.ssh.public_keys)
    ]


def _tags(cfg: FleetConfig, edge: EdgeSpec) -> list[str]:
    return ["cgnat-edge", f"cgnat-edge-{cfg.stack}", f"cgnat-edge-{cfg.stack}-{edge.name}"]


def create_machine(
    cfg: FleetConfig,
    edge: EdgeSpec,
    user_data: pulumi.Input[str],
    ssh_key_ids: list[pulumi.Output[str]],
    parent: pulumi.Resource,
) -> Machine:
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
        tags=_tags(cfg, edge),
        user_data=user_data,
        opts=pulumi.ResourceOptions(parent=parent, ignore_changes=USER_DATA_IGNORED),
    )
    # The reserved IP is its own resource and only its assignment follows the Droplet,
    # so replacing the Droplet keeps the public IPv4.
    reserved = do.ReservedIp(f"{edge.name}-reserved-ip", region=edge.location.code, opts=child)
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
                port_range=str(rule.port) if rule.port is not None else None,
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
                destination_addresses=["0.0.0.0/0", "::/0"],
            )
            for protocol in ("tcp", "udp", "icmp")
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
