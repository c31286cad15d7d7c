"""What the program and the edge's own programs agree on: where each file lives on an
edge, what its units are called, and how a push bundle is laid out.

The renderers write files to these paths; the programs that run on the edge
(``cloud-init/push.sh``, ``cloud-init/verify.py``) read them from ``CONTRACT_SH`` and
``CONTRACT_JSON``, generated from this module (``components/renderers/contract.py``)
and shipped with every push, so a path is written down once.  Every upper-case
``str`` or ``tuple`` here is part of what the edge receives, under its lower-case name.
"""

from __future__ import annotations

CONTRACT_DIR = "/usr/local/lib/cgnat-edge"
CONTRACT_SH = f"{CONTRACT_DIR}/contract.sh"
"""Sourced by the shell programs: ``name=value`` lines, arrays for tuples."""
CONTRACT_JSON = f"{CONTRACT_DIR}/contract.json"
"""Read by the Python programs: the same names and values."""

BUNDLE_MANIFEST = "MANIFEST"
"""The bundle's first member: ``mode<TAB>owner:group<TAB>path`` per file."""
BUNDLE_FILES = "files"
"""The bundle holds each file at ``files/<absolute path>``."""

STATE_DIR = "/var/lib/cgnat-edge"
"""The push's own state: the last bundle's MANIFEST and the files it replaced."""
PUSH_DIR = f"{STATE_DIR}/pushes"
"""One folder per push (its bundle until it ends, journal, log and verdict), the lock
and the script the boot-time recovery runs; push.sh names it itself, as it needs it
before the bundle that brings the contract is unpacked."""
PUSH_RECOVER_UNIT = "cgnat-edge-push-recover.service"
"""Runs at boot: puts back the files of a push the restart cut off, and verifies."""
PUSH_RESULT = f"{STATE_DIR}/push-result.json"
"""How the last push ended (ok or rolled-back, when, why), readable by the alert daemon."""
DESIRED = "/etc/cgnat-edge/desired.json"
VERIFY = "/usr/local/sbin/cgnat-edge-verify"
INSTALL_TRAEFIK = "/usr/local/sbin/cgnat-edge-install-traefik"
TRAEFIK_RELEASE = "/etc/cgnat-edge/traefik-release"
"""``SHA256 URL`` of the pinned Traefik release for this edge's architecture: a push
whose running executable differs installs it (install-traefik.sh), as the first boot did."""

SYSTEMD_DIR = "/etc/systemd/system"

WG_INTERFACE = "wg0"
WG_CONF = f"/etc/wireguard/{WG_INTERFACE}.conf"
WG_ENDPOINT_HOOK = "/usr/local/sbin/cgnat-edge-wg-endpoint"
WG_ENDPOINT_UNIT = "cgnat-edge-wg-endpoint"
WG_ENDPOINT_TIMER = f"{WG_ENDPOINT_UNIT}.timer"

NFT_CONF = "/etc/nftables.conf"
NFT_TABLE = "cgnat_edge"
"""The ruleset's own table (``inet``): missing means the ruleset is not loaded."""

TRAEFIK_BINARY = "/usr/local/bin/traefik"
"""Where install-traefik.sh puts the pinned executable (traefik@.service runs it)."""
TRAEFIK_STATIC = "/etc/traefik/traefik.yaml"
TRAEFIK_DYNAMIC_DIR = "/etc/traefik/dynamic"
TRAEFIK_DYNAMIC = f"{TRAEFIK_DYNAMIC_DIR}/cgnat-edge.yaml"
TRAEFIK_STATE_DIR = "/var/lib/traefik"
TRAEFIK_UNIT = f"{SYSTEMD_DIR}/traefik@.service"
TRAEFIK_SLOTS = ("traefik@a.service", "traefik@b.service")
"""A static change starts the other slot beside the running one (cloud-init/push.sh)."""
LEGACY_TRAEFIK = "traefik.service"
"""The one unit before the two slots; a push replaces it."""
TRAEFIK_PING = "127.0.0.1:8082"
"""Traefik's ping and API entrypoint, on loopback only."""
TRAEFIK_API = f"http://{TRAEFIK_PING}/api"

SSH_UNIT = "ssh.service"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/50-cgnat-edge.conf"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
INSTALL_KEY = "/etc/ssh/cgnat-edge-install_ecdsa_key"
"""Made on the edge at its first boot and never copied off it: the second
host key, of another type, that only the step installing ``HOST_KEY`` pins, so that
step can connect whichever ``HOST_KEY`` the edge has (none, or one being rotated)."""
INSTALL_KEY_TYPE = "ecdsa-sha2-nistp256"
AUTHORIZED_KEYS_DIR = "/etc/ssh/cgnat-edge-authorized-keys"
"""sshd's AuthorizedKeysFile (one file per user): the stack's keys, and nothing else."""

PDNS_DIR = "/etc/powerdns"
PDNS_ZONE = f"{PDNS_DIR}/cgnat-edge/zone.db"
PDNS_UNIT = "pdns.service"
HEALTH_AGENT = "/usr/local/sbin/cgnat-edge-health"
HEALTH_CONF = "/etc/cgnat-edge/health.json"
HEALTH_UNIT = "cgnat-edge-health.service"

ALERTS_DAEMON = "/usr/local/sbin/cgnat-edge-alerts"
ALERTS_CONF = "/etc/cgnat-edge/alerts.json"
ALERT_CHANNELS = "/etc/cgnat-edge/alert-channels.json"
"""The channels' secrets, root-only; the unit hands them to the daemon as a credential."""
ALERTS_UNIT = "cgnat-edge-alerts.service"
ALERTS_STATE = "/var/lib/cgnat-edge-alerts/state.json"
"""Open incidents and each channel's last delivery (``status`` reads it)."""

METRICS_SCRIPT = "/usr/local/sbin/cgnat-edge-metrics"
METRICS_CONF = "/etc/cgnat-edge/metrics.json"
METRICS_UNIT = "cgnat-edge-metrics"
METRICS_TIMER = f"{METRICS_UNIT}.timer"
METRICS_DIR = "/var/lib/cgnat-edge-metrics"
"""The node exporter's textfile folder: the script writes the edge's own series here."""
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
NODE_EXPORTER_UNIT = "prometheus-node-exporter.service"
"""Debian's unit, with the edge's arguments and a drop-in of the edge's."""
NODE_EXPORTER_ARGS = "/etc/default/prometheus-node-exporter"
NODE_EXPORTER_DROPIN = f"{SYSTEMD_DIR}/{NODE_EXPORTER_UNIT}.d/cgnat-edge.conf"

FORWARD_SYSCTL = "/etc/sysctl.d/60-cgnat-edge-forward.conf"
"""Only with forward services: IPv4 forwarding on."""

GEO_CONFIG = "/etc/cgnat-edge/geo.json"
GEO_UNIT = "cgnat-edge-geo-sets"
GEO_TIMER = f"{GEO_UNIT}.timer"
GEO_STATE_DIR = f"{STATE_DIR}/geo"
GEO_STATUS = f"{GEO_STATE_DIR}/status.json"
CROWDSEC_UNIT = "crowdsec.service"
BOUNCER_UNIT = "crowdsec-firewall-bouncer.service"
CROWDSEC_SETUP = "/usr/local/sbin/cgnat-edge-crowdsec"
"""Installs and starts CrowdSec (cloud-init/crowdsec-setup.sh): run by the first boot
and, when CrowdSec is turned on for a running edge, by the push."""
CROWDSEC_RECONCILE = "/usr/local/sbin/cgnat-edge-crowdsec-reconcile"
"""Run by every push: CrowdSec set up, running and its bouncer pulling, or stopped."""
BOUNCER_SETTINGS = "/etc/cgnat-edge/crowdsec-bouncer.yaml"

UPGRADES_STAMP = "/var/lib/apt/periodic/unattended-upgrades-stamp"
REBOOT_REQUIRED = "/var/run/reboot-required"


def values() -> dict[str, str | tuple[str, ...]]:
    """Everything above, by the name the edge's programs use."""
    return {
        name.lower(): value for name, value in globals().items() if name.isupper() and isinstance(value, str | tuple)
    }
