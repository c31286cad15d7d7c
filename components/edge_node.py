"""One edge: a VPS on some provider, its WireGuard identity, and the SSH steps that keep
its configuration current after the first boot."""

from __future__ import annotations

import hashlib

import pulumi
import pulumi_command as command

from . import bootstrap, digitalocean, hetzner, tunnel
from .config import EdgeSpec, FleetConfig
from .wireguard_key import WireGuardKey

PROVIDERS = {"hetzner": hetzner, "digitalocean": digitalocean}


class EdgeNode(pulumi.ComponentResource):
    """Provider-agnostic edge; the provider module only builds the machine itself."""

    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str]
    public_key: pulumi.Output[str]

    def __init__(
        self,
        cfg: FleetConfig,
        edge: EdgeSpec,
        home_public_key: pulumi.Input[str],
        ssh_key_ids: list[pulumi.Output[str]],
        ssh_private_key: pulumi.Input[str] | None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("cgnat-edge:index:EdgeNode", edge.name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # The key is a sibling of the server, not derived from it: rebuilding the VPS
        # keeps the edge's WireGuard identity, so the home router needs no change.
        key = WireGuardKey(f"{edge.name}-wireguard-key", opts=child)
        wg_conf = pulumi.Output.secret(
            pulumi.Output.all(key.private_key, home_public_key).apply(
                lambda keys: tunnel.edge_wg_conf(cfg, edge, keys[0], keys[1])
            )
        )
        user_data = pulumi.Output.secret(wg_conf.apply(lambda conf: bootstrap.user_data(cfg, edge, conf)))
        machine = PROVIDERS[edge.provider].create_machine(cfg, edge, user_data, ssh_key_ids, parent=self)

        connection = command.remote.ConnectionArgs(
            host=machine.ipv4,
            user=cfg.ssh.user,
            private_key=ssh_private_key,
            dial_error_limit=40,
            per_dial_timeout=15,
        )
        # First boot: wait for cloud-init to finish.  Re-runs only for a new server.
        booted = command.remote.Command(
            f"{edge.name}-cloud-init",
            connection=connection,
            create=bootstrap.cloud_init_wait_script(),
            triggers=[machine.server_id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[machine.server]),
        )
        # Every change to services, tunnel or SSH keys lands here, in place, and the
        # script ends only when WireGuard is up and Traefik answers.
        bundle = pulumi.Output.secret(
            wg_conf.apply(lambda conf: bootstrap.bundle(bootstrap.node_files(cfg, edge, conf)))
        )
        command.remote.Command(
            f"{edge.name}-config",
            connection=connection,
            create=bootstrap.push_script(),
            stdin=bundle,
            triggers=[machine.server_id, bundle.apply(lambda b: hashlib.sha256(b.encode()).hexdigest())],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[booted]),
        )

        self.ipv4 = machine.ipv4
        self.ipv6 = machine.ipv6
        self.public_key = key.public_key
        self.register_outputs({"ipv4": self.ipv4, "ipv6": self.ipv6, "publicKey": self.public_key})
