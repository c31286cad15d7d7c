"""One edge: a VPS on some provider, its WireGuard identity, and the SSH steps that keep
its configuration current after the first boot."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_command as command

from components import providers
from components.config import geoip
from components.model.deployed import DeployedEdge
from components.model.fleet import EdgeSpec, FleetConfig
from components.renderers import alerts, bootstrap, bundle, edge_dns, protection, tunnel
from components.resources.keys import SshHostKey, WireGuardKey


@dataclass(frozen=True)
class EdgeNodeArgs:
    cfg: FleetConfig
    edge: EdgeSpec
    home_public_key: pulumi.Input[str]
    ssh_key_ids: list[pulumi.Output[str]]
    ssh_private_key: pulumi.Input[str] | None = None
    after: pulumi.Resource | None = None
    """The previous edge's config step; this edge's push starts only once that edge
    verifiably runs the new configuration (one edge at a time)."""
    fleet: pulumi.Output[list[DeployedEdge[str]]] | None = None
    """Every edge with its addresses (dnsMode edges: the zone and the health agent's
    allow list name them all), resolved once every machine exists."""
    crowdsec_enroll_key: pulumi.Input[str] | None = None
    alert_secrets: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)


class EdgeNode(pulumi.ComponentResource):
    """Provider-agnostic edge; the provider module only builds the machine itself."""

    ipv4: pulumi.Output[str]
    ipv6: pulumi.Output[str]
    public_key: pulumi.Output[str]

    def __init__(self, name: str, args: EdgeNodeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("cgnat-edge:index:EdgeNode", name, None, opts)
        cfg, edge, after, fleet = args.cfg, args.edge, args.after, args.fleet
        child = pulumi.ResourceOptions(parent=self)

        # The key is a sibling of the server, not derived from it: rebuilding the VPS
        # keeps the edge's WireGuard identity, so the home router needs no change.
        key = WireGuardKey(f"{edge.name}-wireguard-key", opts=child)
        # The provider's metadata serves the user data, and this key with it, for the
        # server's whole life: it lets only the <edge>-boot step check the server, which
        # then removes it.  Before the edge had a pinned key of its own (below), this one
        # was its host key under the name in the alias; its rotation no longer applies.
        bootstrap_key = SshHostKey(
            f"{edge.name}-ssh-bootstrap-key",
            opts=pulumi.ResourceOptions(
                parent=self, aliases=[pulumi.Alias(name=f"{edge.name}-ssh-host-key")], ignore_changes=["rotation"]
            ),
        )
        host_key = SshHostKey(f"{edge.name}-ssh-pinned-host-key", rotation=cfg.ssh.host_key_rotation, opts=child)
        wg_conf: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(key.private_key, args.home_public_key).apply(
                lambda keys: tunnel.edge_wg_conf(cfg, edge, keys[0], keys[1])
            )
        )
        user_data: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(bootstrap_key.private_key, bootstrap_key.public_key).apply(
                lambda values: bootstrap.user_data(cfg, edge, (values[0], values[1]))
            )
        )
        machine = providers.get(edge.provider).create_machine(cfg, edge, user_data, args.ssh_key_ids, parent=self)

        def pinned(host_public_key: pulumi.Input[str]) -> command.remote.ConnectionArgs:
            return command.remote.ConnectionArgs(
                host=machine.ipv4,
                user=cfg.ssh.user,
                private_key=args.ssh_private_key,
                host_key=host_public_key,
                dial_error_limit=40,
                per_dial_timeout=15,
            )

        connection = pinned(host_key.public_key)
        # First boot: once cloud-init is done, the bootstrap key leaves the edge, and the
        # install key the edge made is reported here.  Re-runs only for a new server.
        booted = command.remote.Command(
            f"{edge.name}-boot",
            connection=pinned(bootstrap_key.public_key),
            create=bootstrap.boot_command(cfg.ssh.user),
            triggers=[machine.server_id],
            opts=pulumi.ResourceOptions(parent=self, depends_on=machine.reachable_after),
        )
        # The pinned host key reaches the server over a connection pinned to the install
        # key, which the edge keeps beside it: valid whether the edge is new (no pinned
        # key yet) or has the key this one rotates out (sshHostKeyRotation).
        install_key = booted.stdout.apply(bootstrap.reported_install_key)
        host_private_key: pulumi.Output[str] = pulumi.Output.secret(host_key.private_key)
        rotated = command.remote.Command(
            f"{edge.name}-host-key",
            connection=pinned(install_key),
            create=bootstrap.as_root(cfg.ssh.user, bootstrap.host_key_script()),
            stdin=host_private_key,
            triggers=[host_key.public_key, install_key],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[booted, *([after] if after else [])]),
        )
        # Every later change to services, tunnel or SSH keys lands here, in place (no
        # rebuild, same IP), and the step ends only when the edge serves again.
        secrets = pulumi.Output.all(**args.alert_secrets) if args.alert_secrets else None
        pushed: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(
                wg_conf, host_key.private_key, host_key.public_key, fleet if fleet is not None else None, secrets
            ).apply(
                lambda values: bundle.encode(
                    bootstrap.node_files(
                        cfg, edge, values[0], (values[1], values[2]), fleet=values[3], alert_secrets=values[4]
                    )
                )
            )
        )
        geoip_step = self._geoip_copy(cfg, edge, connection, [booted, rotated])
        self.config_step = command.remote.Command(
            f"{edge.name}-config",
            connection=connection,
            create=bootstrap.config_command(cfg.ssh.user),
            stdin=pushed,
            triggers=[machine.server_id, pushed.apply(lambda b: hashlib.sha256(b.encode()).hexdigest())],
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[booted, rotated, *geoip_step, *([after] if after else [])]
            ),
        )

        if args.crowdsec_enroll_key is not None:
            # Once per server (and per key): the console lists the edge by its name.
            enroll_key: pulumi.Output[str] = pulumi.Output.secret(args.crowdsec_enroll_key)
            command.remote.Command(
                f"{edge.name}-crowdsec-enroll",
                connection=connection,
                create=bootstrap.as_root(cfg.ssh.user, protection.enroll_command(edge.name)),
                stdin=enroll_key,
                triggers=[machine.server_id, enroll_key],
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.config_step]),
            )

        self.ipv4 = machine.ipv4
        self.ipv6 = machine.ipv6
        self.source_ipv4: pulumi.Output[str | None] = pulumi.Output.from_input(machine.source_ipv4)
        self.public_key = key.public_key
        self.host_public_key = host_key.public_key
        # What `cgnat-edge status` compares the edge's files with: digests only, so the
        # output needs no secret; none of the alert channels' file, whose password may be
        # weak enough to find from its digest.
        self.pushed_files: pulumi.Output[dict] = pulumi.Output.unsecret(
            pulumi.Output.all(
                wg_conf, host_key.private_key, host_key.public_key, fleet if fleet is not None else None
            ).apply(
                lambda values: {
                    f.path: hashlib.sha256(f.content.encode()).hexdigest()
                    for f in bootstrap.node_files(cfg, edge, values[0], (values[1], values[2]), fleet=values[3])
                    if f.path != alerts.CHANNEL_FILE
                }
            )
        )
        self.register_outputs({"ipv4": self.ipv4, "ipv6": self.ipv6, "publicKey": self.public_key})

    def _geoip_copy(
        self, cfg: FleetConfig, edge: EdgeSpec, connection: command.remote.ConnectionArgs, after: list[pulumi.Resource]
    ) -> list[pulumi.Resource]:
        """``dnsGeoipDatabase`` to the edge, before the push whose pdns.conf reads it: too
        big for user data or the bundle, so copied as a file; state keeps its SHA-256
        (the trigger), so a re-downloaded database is copied again and nothing else."""
        if not cfg.dns.geoip_database:
            return []
        digest = geoip.sha256(cfg.dns.geoip_database)
        staged = f"/tmp/cgnat-edge-geoip-{digest[:16]}.mmdb"
        copied = command.remote.CopyToRemote(
            f"{edge.name}-geoip-copy",
            connection=connection,
            source=pulumi.FileAsset(cfg.dns.geoip_database),
            remote_path=staged,
            triggers=[digest],
            opts=pulumi.ResourceOptions(parent=self, depends_on=after),
        )
        install = (
            f"install -D -m 0644 {staged} {edge_dns.GEOIP_PATH} && rm -f {staged} && systemctl try-restart pdns.service"
        )
        installed = command.remote.Command(
            f"{edge.name}-geoip",
            connection=connection,
            create=bootstrap.as_root(cfg.ssh.user, install),
            triggers=[digest],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[copied]),
        )
        return [installed]
