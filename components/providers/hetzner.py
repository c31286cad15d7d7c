"""Hetzner Cloud: arm64 CAX servers behind Primary IPs and a cloud firewall."""

from __future__ import annotations

import pulumi
import pulumi_hcloud as hcloud

from components.model.config import EdgeSpec, FleetConfig
from components.providers.base import USER_DATA_IGNORED, Machine, firewall_rules, labels, server_name


def ssh_keys(cfg: FleetConfig, parent: pulumi.Resource) -> list[pulumi.Output[str]]:
    """Uploaded once per stack: Hetzner refuses the same key twice in one project."""
    return [
        hcloud.SshKey(
            f"hetzner-ssh-key-{i}",
            name=f"cgnat-edge-{cfg.stack}-{i}",
            public_key=key,
            labels={"app": "cgnat-edge", "stack": cfg.stack},
            opts=pulumi.ResourceOptions(parent=parent),
        ).id
        for i, key in enumerate(cfg.ssh.public_keys)
    ]


def create_machine(
    cfg: FleetConfig,
    edge: EdgeSpec,
    user_data: pulumi.Input[str],
    ssh_key_ids: list[pulumi.Output[str]],
    parent: pulumi.Resource,
) -> Machine:
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
            opts=child,
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
                port=str(rule.port) if rule.port is not None else None,
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
        opts=pulumi.ResourceOptions(parent=parent, ignore_changes=USER_DATA_IGNORED),
    )
    return Machine(
        server=server,
        server_id=server.id,
        ipv4=ips["ipv4"].ip_address,
        ipv6=server.ipv6_address,
        reachable_after=[server],
    )
