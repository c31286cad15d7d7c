"""What an edge is made of: its files, its first-boot cloud-config, and the scripts
that update and check it later.

The files that change when services or the tunnel change (``node_files``) are
rendered once and delivered as a ``bundle`` piped into ``push_script`` over SSH; the
cloud-config of a fresh node carries the part that needs no secret.  Because the
provider's user data is ignored after creation (and Pulumi keeps an ignored input on a
replacement too), changing a service never replaces a VPS, and every node, new or
rebuilt, reaches the current configuration through its first push.

The provider serves the user data to the VM for as long as it exists, so nothing in it
stays valid: no WireGuard key (wg0.conf comes with the first push), and only a bootstrap
host key, which the ``<edge>-boot`` step retires (``boot_command``).
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import shlex
from collections.abc import Mapping, Sequence

import yaml

from components.config.keys import fix_key
from components.model import edge_contract, platforms
from components.model.deployed import DeployedEdge
from components.model.fleet import EdgeSpec, FleetConfig
from components.model.platforms.base import ImageTraits
from components.renderers import (
    alerts,
    contract,
    edge_dns,
    forwarding,
    metrics,
    nftables,
    protection,
    templates,
    traefik,
)
from components.renderers.bundle import NodeFile

USER_DATA_LIMIT = min(platform.user_data_limit for platform in platforms.REGISTRY.values())
"""The smallest user-data limit of any provider: what a stack must fit to run anywhere."""
PLAIN_TEXT_BUDGET = 24 * 1024
"""Up to this size the files stay plain text in the cloud-config, readable in an
offline render; above it the larger files are gzipped to keep room under the limit."""
COMPRESS_FILES_OVER = 1024

AUTO_UPGRADES_PATH = "/etc/apt/apt.conf.d/20auto-upgrades"
UNATTENDED_PATH = "/etc/apt/apt.conf.d/52cgnat-edge-unattended-upgrades"
HOST_KEYS_HOOK_PATH = "/etc/apt/apt.conf.d/53cgnat-edge-host-keys"


METRICS_INSTALL = (
    "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus-node-exporter"
)


class UserDataTooLarge(ValueError):
    """The rendered cloud-config would be refused by the provider.  The message is a
    config problem (``cgnat-edge:services: ...; fix``): the program checks every edge's
    user-data before its first resource (``components/preflight.py``)."""


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings as literal blocks, so the files inside the rendered
    cloud-config read as they will on disk."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def _dump(data: object, header: str) -> str:
    return header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def wg_endpoint_hook() -> str:
    """The script behind wg0.conf's PostUp/PreDown (``edge_contract.WG_ENDPOINT_HOOK``)."""
    return templates.render("wg-endpoint.sh")


def image_traits(edge: EdgeSpec) -> ImageTraits:
    """What the edge's image needs beyond the Debian 12 defaults (its provider knows)."""
    return platforms.get(edge.provider).image_traits(edge.image)


def reboot_time(edge: EdgeSpec) -> str:
    """Unattended-upgrade reboots one edge per hour from 02:30 UTC on, so the fleet
    keeps serving while each edge takes its kernel update."""
    return f"{(1 + edge.index) % 24:02d}:30"


def desired_state(cfg: FleetConfig, edge: EdgeSpec, host_public_key: str | None) -> dict:
    """What ``cgnat-edge-verify`` compares the running edge with, beside the files it
    reads itself (wg0.conf, the ruleset): the parts no file on the edge states plainly."""
    dynamic = traefik.dynamic_config(cfg)
    return {
        "edge": edge.name,
        "interface": edge_contract.WG_INTERFACE,
        "wgConf": edge_contract.WG_CONF,
        "nftConf": edge_contract.NFT_CONF,
        "nftFilledSets": protection.crowdsec_sets(cfg) + nftables.filled_sets(),
        "traefik": {
            "version": traefik.VERSION,
            "slots": list(edge_contract.TRAEFIK_SLOTS),
            "entryPoints": {name: ep["address"] for name, ep in traefik.static_config(cfg)["entryPoints"].items()},
            "routers": {
                proto: {name: r.get("rule", "") for name, r in dynamic.get(proto, {}).get("routers", {}).items()}
                for proto in ("http", "tcp", "udp")
            },
            "services": {
                proto: {
                    name: sorted(srv.get("url") or srv.get("address") for srv in svc["loadBalancer"]["servers"])
                    for name, svc in dynamic.get(proto, {}).get("services", {}).items()
                }
                for proto in ("http", "tcp", "udp")
            },
        },
        "ssh": {
            "user": cfg.ssh.user,
            "authorizedKeysFile": f"{edge_contract.AUTHORIZED_KEYS_DIR}/%u",
            "authorizedKeys": list(cfg.ssh.public_keys),
            "hostKey": edge_contract.HOST_KEY,
            "installKey": edge_contract.INSTALL_KEY,
            "hostPublicKey": host_public_key or "",
        },
        "crowdsec": str(cfg.protection.crowdsec),
    }


def node_files(
    cfg: FleetConfig,
    edge: EdgeSpec,
    wg_conf: str,
    host_key: tuple[str, str] | None = None,
    fleet: Sequence[DeployedEdge[str]] | None = None,
    alert_secrets: Mapping[str, str] | None = None,
) -> list[NodeFile]:
    """Every file on ``edge`` that depends on the stack: the desired state a push
    installs and ``cgnat-edge-verify`` checks the running edge against.

    ``host_key`` (OpenSSH private, public) is the pinned SSH host key; with it the
    bundle also carries the key itself, so a rotated key reaches the server.
    ``alert_secrets``: the alert channels' secrets by key (``program.alert_secrets``)."""
    permit_root = "prohibit-password" if cfg.ssh.user == "root" else "no"
    header = f"# Generated by cgnat-edge for edge {edge.name}; changes here are overwritten on the next push.\n"
    files = [
        NodeFile(edge_contract.WG_CONF, wg_conf if wg_conf.endswith("\n") else wg_conf + "\n", "0600"),
        NodeFile(
            edge_contract.NFT_CONF,
            nftables.ruleset(
                cfg, edge_dns.fleet_addresses(fleet) if fleet is not None and cfg.dns.edge_served else None
            ),
            "0644",
        ),
        NodeFile(edge_contract.TRAEFIK_STATIC, _dump(traefik.static_config(cfg), header), "0644"),
        # Basic-auth hashes live here: readable by Traefik, not by everyone.
        NodeFile(edge_contract.TRAEFIK_DYNAMIC, _dump(traefik.dynamic_config(cfg), header), "0640", "root:traefik"),
        NodeFile(edge_contract.TRAEFIK_UNIT, templates.render("traefik@.service"), "0644"),
        NodeFile(edge_contract.WG_ENDPOINT_HOOK, wg_endpoint_hook(), "0755"),
        NodeFile(
            f"{edge_contract.SYSTEMD_DIR}/{edge_contract.WG_ENDPOINT_UNIT}.service",
            templates.render(f"{edge_contract.WG_ENDPOINT_UNIT}.service"),
            "0644",
        ),
        NodeFile(
            f"{edge_contract.SYSTEMD_DIR}/{edge_contract.WG_ENDPOINT_UNIT}.timer",
            templates.render(f"{edge_contract.WG_ENDPOINT_UNIT}.timer"),
            "0644",
        ),
        NodeFile(
            edge_contract.SSHD_DROPIN,
            templates.render(
                "sshd-hardening.conf.j2",
                permit_root_login=permit_root,
                host_key=edge_contract.HOST_KEY,
                install_key=edge_contract.INSTALL_KEY,
                authorized_keys=edge_contract.AUTHORIZED_KEYS_DIR,
                metrics=metrics.address(cfg, edge),
            ),
            "0644",
        ),
        NodeFile(
            f"{edge_contract.AUTHORIZED_KEYS_DIR}/{cfg.ssh.user}",
            "# cgnat-edge: sshPublicKeys; a key removed there is removed here on the next push.\n"
            + "".join(f"{k}\n" for k in cfg.ssh.public_keys),
            "0644",
        ),
        NodeFile(AUTO_UPGRADES_PATH, templates.render("20auto-upgrades"), "0644"),
        NodeFile(
            UNATTENDED_PATH,
            templates.render(
                "52cgnat-edge-upgrades.j2",
                reboot_time=reboot_time(edge),
                security_origins=image_traits(edge).security_origins,
            ),
            "0644",
        ),
        NodeFile(HOST_KEYS_HOOK_PATH, templates.text("53cgnat-edge-host-keys"), "0644"),
        NodeFile(edge_contract.VERIFY, templates.text("verify.py"), "0755"),
        # A new pinned release reaches a running edge through the push, checked as at first boot.
        NodeFile(edge_contract.INSTALL_TRAEFIK, templates.render("install-traefik.sh"), "0755"),
        NodeFile(
            edge_contract.TRAEFIK_RELEASE, f"{traefik.binary_sha256(edge.arch)} {traefik.release_url(edge.arch)}\n"
        ),
        NodeFile(edge_contract.CROWDSEC_RECONCILE, templates.text("crowdsec-reconcile.sh"), "0755"),
        *contract.node_files(),
        NodeFile(
            edge_contract.DESIRED,
            json.dumps(desired_state(cfg, edge, host_key[1] if host_key else None), indent=1) + "\n",
            "0644",
        ),
    ]
    if cfg.dns.edge_served and fleet is not None:
        # The zone names every edge's address, so these arrive with the first push.
        files += [NodeFile(path, content, mode) for path, content, mode in edge_dns.node_files(cfg, edge, fleet)]
    elif not cfg.dns.edge_served:
        # dnsMode records: the same health agent, for the PowerDNS and Route 53 renderings'
        # end-to-end checks (geodns); with the first push, like everything it checks.
        files += [NodeFile(path, content, mode) for path, content, mode in edge_dns.agent_files(cfg, edge)]
    files += [NodeFile(path, content, mode) for path, content, mode in protection.node_files(cfg)]
    files += metrics.node_files(cfg, edge)
    if fleet is not None:
        # Every edge's address is in its config, so the daemon arrives with the first push.
        files += alerts.node_files(cfg, edge, fleet, alert_secrets or {})
    if forwarding.needs_ip_forward(cfg):
        files.append(NodeFile(edge_contract.FORWARD_SYSCTL, forwarding.SYSCTL, "0644"))
    if host_key is not None:
        private, public = host_key
        files += [
            NodeFile(edge_contract.HOST_KEY, private if private.endswith("\n") else private + "\n", "0600"),
            NodeFile(f"{edge_contract.HOST_KEY}.pub", public if public.endswith("\n") else public + "\n", "0644"),
        ]
    return files


def _users(cfg: FleetConfig) -> list[object]:
    users: list[object] = ["default"]
    if cfg.ssh.user != "root":
        users.append(
            {
                "name": cfg.ssh.user,
                "shell": "/bin/bash",
                "lock_passwd": True,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "ssh_authorized_keys": list(cfg.ssh.public_keys),
            }
        )
    users.append(
        {
            "name": "traefik",
            "system": True,
            "shell": "/usr/sbin/nologin",
            "homedir": edge_contract.TRAEFIK_STATE_DIR,
            "no_create_home": True,
            "lock_passwd": True,
        }
    )
    return users


ALWAYS_COMPRESSED = (
    edge_contract.TRAEFIK_UNIT,
    edge_contract.WG_ENDPOINT_HOOK,
    edge_contract.INSTALL_TRAEFIK,
    protection.CROWDSEC_SETUP_PATH,
)
"""Files that are the same on every edge travel gzipped, leaving the user-data room to
the stack's own files (which stay readable text up to ``PLAIN_TEXT_BUDGET``)."""
NOT_IN_USER_DATA = (
    edge_contract.VERIFY,
    edge_contract.TRAEFIK_RELEASE,
    edge_contract.CROWDSEC_RECONCILE,
    edge_contract.DESIRED,
    edge_contract.CONTRACT_SH,
    edge_contract.CONTRACT_JSON,
    edge_contract.HOST_KEY,
    f"{edge_contract.HOST_KEY}.pub",
    edge_contract.WG_CONF,
    edge_contract.TRAEFIK_DYNAMIC,
    *protection.PUSHED_ONLY,
    *edge_dns.AGENT_FILES,
    *metrics.PUSHED_ONLY,
)
"""The user data is readable from the provider's metadata for the VM's whole life, so
the tunnel's private key, the pinned host key and Traefik's routers (basic-auth hashes
among them; useless before the tunnel is up) arrive only with the first push, which the
same ``pulumi up`` runs right after boot; so do the verifier, its desired state, the
edge contract, the pinned Traefik release and the CrowdSec reconciler (which only the
push and the verifier read)."""


def _write_files(files: list[NodeFile], compress: bool) -> list[dict[str, object]]:
    entries = []
    for f in files:
        # Deferred: written after the packages are installed (so no package default
        # replaces them) and after users-groups has created the traefik owner.
        entry: dict[str, object] = {"path": f.path, "permissions": f.mode, "owner": f.owner, "defer": True}
        data = f.content.encode()
        if (compress and len(data) > COMPRESS_FILES_OVER) or f.path in ALWAYS_COMPRESSED:
            entry["encoding"] = "gz+b64"
            entry["content"] = base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode()
        else:
            entry["content"] = f.content
        entries.append(entry)
    return entries


def user_data(cfg: FleetConfig, edge: EdgeSpec, bootstrap_key: tuple[str, str] | None = None) -> str:
    """The ``#cloud-config`` document that turns a fresh image into this edge, with its
    firewall up and its tunnel down until the first push brings wg0.conf.

    ``bootstrap_key`` (OpenSSH private, public) becomes the edge's only SSH host key
    until the ``<edge>-boot`` step retires it, so that step's connection can already
    verify the server.  Raises ``UserDataTooLarge`` when the provider would refuse it."""
    doc = yaml.safe_load(templates.text("base.yaml"))
    doc["ssh_authorized_keys"] = list(cfg.ssh.public_keys)
    if cfg.dns.edge_served:
        doc["packages"] = [*doc["packages"], *edge_dns.packages(cfg)]
    if bootstrap_key is not None:
        # The image's own host keys are deleted; with ssh_keys given, cloud-init
        # generates no others, so sshd can only present the pinned one.
        doc["ssh_deletekeys"] = True
        doc["ssh_keys"] = {"ed25519_private": bootstrap_key[0], "ed25519_public": bootstrap_key[1]}
    # Root keeps key-only access when pulumi logs in as root (sshd: prohibit-password).
    doc["disable_root"] = cfg.ssh.user != "root"
    doc["users"] = _users(cfg)

    files = [f for f in node_files(cfg, edge, "") if f.path not in NOT_IN_USER_DATA]
    doc["write_files"] = _write_files(files, compress=False)
    doc["runcmd"] = [
        [edge_contract.INSTALL_TRAEFIK, traefik.binary_sha256(edge.arch), traefik.release_url(edge.arch)],
        ["systemctl", "daemon-reload"],
        # Traefik watches this folder; the first push brings its routers.
        ["install", "-d", "-m", "0755", edge_contract.TRAEFIK_DYNAMIC_DIR],
        *(["sh", "-c", command] for command in image_traits(edge).firewall_takeover),
        ["systemctl", "enable", "--now", "nftables.service"],
        # Started by the first push, which brings wg0.conf; enabled now for every boot after.
        ["systemctl", "enable", "wg-quick@wg0.service"],
        ["systemctl", "enable", "--now", edge_contract.TRAEFIK_SLOTS[0]],
        ["systemctl", "enable", "--now", f"{edge_contract.WG_ENDPOINT_UNIT}.timer"],
        *protection.runcmd(cfg),
        # Here, not in packages: without its recommended collectors package, whose
        # timers would run a dozen scripts for hardware an edge does not have.
        ["sh", "-c", METRICS_INSTALL],
        # An openssh-server upgrade during the first boot (package_upgrade) recreates
        # RSA/ECDSA keys before the apt hook that removes them is in place.
        ["sh", "-c", "rm -f /etc/ssh/ssh_host_rsa_key* /etc/ssh/ssh_host_ecdsa_key* /etc/ssh/ssh_host_dsa_key*"],
        # The install key, made here and never copied off (the boot step reports its public half).
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ecdsa",
            "-b",
            "256",
            "-N",
            "",
            "-C",
            "cgnat-edge-install",
            "-f",
            edge_contract.INSTALL_KEY,
        ],
        ["systemctl", "reload-or-restart", "ssh.service"],
    ]
    text = _dump(doc, "#cloud-config\n")
    if len(text.encode()) > PLAIN_TEXT_BUDGET:
        doc["write_files"] = _write_files(files, compress=True)
        text = _dump(doc, "#cloud-config\n")
    size = len(text.encode())
    provider = platforms.get(edge.provider)
    if size > provider.user_data_limit:
        raise UserDataTooLarge(
            f"{fix_key('services')}: the user-data of edge {edge.name!r} would be {size} bytes, over the "
            f"{provider.user_data_limit}-byte user-data limit of {provider.label} by {size - provider.user_data_limit} "
            f"bytes ({len(cfg.services)} services); declare fewer services or split the services over two stacks"
        )
    return text


def push_script() -> str:
    """Bash that applies a ``bundle`` read from stdin on a running edge (as root)."""
    return templates.text("push.sh")


def host_key_script() -> str:
    """Bash that installs the pinned host key read from stdin (the ``<edge>-host-key`` step)."""
    return templates.text("host-key.sh")


def boot_command(user: str) -> str:
    """What the ``<edge>-boot`` step runs over the connection pinned to the bootstrap key:
    wait for cloud-init, then remove the bootstrap key and print the public half of the
    install key the edge made at first boot, last (``reported_install_key``).

    Kept small and free of anything that changes often: a change to this command re-runs
    the step on every edge, over a connection pinned to a key they no longer have."""
    return as_root(user, templates.text("retire-bootstrap-key.sh"))


def reported_install_key(stdout: str | None) -> str:
    """The install key's public half from the ``<edge>-boot`` step's output ("" before
    the step has run, as in a preview)."""
    lines = [line for line in (stdout or "").splitlines() if line.startswith(f"{edge_contract.INSTALL_KEY_TYPE} ")]
    return lines[-1].strip() if lines else ""


def as_root(user: str, script: str) -> str:
    """The scripts need root; a non-root login gets passwordless sudo from cloud-init."""
    run = f"bash -c {shlex.quote(script)}"
    return run if user == "root" else f"sudo -n {run}"


def config_command(user: str, readiness_timeout_s: int = 600) -> str:
    """What the ``<edge>-config`` step runs over SSH, with the bundle on stdin: apply
    and verify (rolling back on failure), then wait until the edge serves."""
    return f"{as_root(user, push_script())} && {as_root(user, readiness_script(readiness_timeout_s))}"


PUSH_ID = re.compile(r"^cgnat-edge push: push id ([0-9A-Za-z-]+)$", re.MULTILINE)
"""The push script's first line: the id of the push folder on the edge."""


def push_wait_command(user: str, push_id: str) -> str:
    """Waits, over a new connection, for push ``push_id``'s verdict (its log, then its
    exit status): what a client whose connection dropped mid-push runs."""
    if not re.fullmatch(r"[0-9A-Za-z-]+", push_id):
        raise ValueError(f"not a push id: {push_id!r}")
    return f"{as_root(user, push_script())} _ wait {push_id}"


def readiness_script(timeout_s: int = 600) -> str:
    """Bash that waits until the edge serves, or fails naming the step that did not."""
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
    return templates.render(
        "readiness.sh.j2",
        timeout_s=int(timeout_s),
        interface=edge_contract.WG_INTERFACE,
        ping_url=f"http://{edge_contract.TRAEFIK_PING}/ping",
        verify=edge_contract.VERIFY,
        traefik=edge_contract.TRAEFIK_BINARY,
    )
