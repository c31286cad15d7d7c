"""The alert daemon on every edge (``cloud-init/cgnat-edge-alerts.py``): what it watches,
when a fault becomes an alert, and where alerts go.

Pushed only, never in user data: the channels' secrets must not sit in the provider's
metadata, and the daemon needs every edge's address, known once all machines exist.
The secrets go into a root-only file of their own, which systemd hands the daemon (a
dynamic user) as a credential; the rest is plain configuration."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from components.model import alerts as model
from components.model import edge_contract
from components.model.deployed import DeployedEdge
from components.model.fleet import EdgeSpec, FleetConfig, Mode
from components.model.protection import CrowdSec
from components.renderers import edge_dns, protection, templates
from components.renderers.bundle import NodeFile

INTERVAL_S = 2
"""Each daemon asks every agent this often: the agents re-check every second, so more
often would only repeat answers."""
TIMEOUT_S = 3
"""An agent answers from memory at once; three seconds is a lost packet and its retry."""
HTTPS_PORT = 443
"""Where the edge's own Traefik serves every ``http`` service (its ``websecure``
entrypoint): the daemon asks it on loopback for the certificate of each hostname."""
UNIT_PATH = f"{edge_contract.SYSTEMD_DIR}/{edge_contract.ALERTS_UNIT}"
CHANNEL_FILE = edge_contract.ALERT_CHANNELS


def _agent(edge: DeployedEdge[str], me: EdgeSpec) -> str:
    """Where ``me`` asks ``edge``'s agent: its own on loopback, the others' on their
    public address (their nftables admit the fleet)."""
    host = "127.0.0.1" if edge.name == me.name else edge.ipv4
    return f"http://{host}:{edge_dns.HEALTH_PORT}"


def daemon_config(cfg: FleetConfig, edge: EdgeSpec, fleet: Sequence[DeployedEdge[str]]) -> dict[str, Any]:
    assert cfg.alerts is not None
    smtp = cfg.alerts.smtp
    return {
        "stack": f"{cfg.project}/{cfg.stack}",
        "edge": edge.name,
        "edges": [
            {"name": e.name, "index": e.spec.index, "agent": _agent(e, edge)}
            for e in sorted(fleet, key=lambda e: e.spec.index)
        ],
        "tunnelCheck": edge_dns.tunnel_check(cfg),
        "services": {s.name: edge_dns.check_id(cfg, s) for s in cfg.services},
        "after": cfg.alerts.after_s,
        "reminder": cfg.alerts.reminder_s,
        "certs": sorted({h for s in cfg.services if s.mode is Mode.HTTP for h in s.hostnames}),
        "certDays": cfg.alerts.cert_days,
        "certPort": HTTPS_PORT,
        "push": edge_contract.PUSH_RESULT,
        "reboot": {"file": edge_contract.REBOOT_REQUIRED, "hours": model.REBOOT_WAIT_H},
        "upgrades": {"stamp": edge_contract.UPGRADES_STAMP, "hours": model.UPGRADES_STALE_H},
        "geo": {"status": edge_contract.GEO_STATUS, "hours": model.REFRESH_STALE_H}
        if protection.countries(cfg)
        else None,
        "crowdsec": [edge_contract.CROWDSEC_UNIT, edge_contract.BOUNCER_UNIT]
        if cfg.protection.crowdsec != CrowdSec.OFF
        else None,
        "interval": INTERVAL_S,
        "timeout": TIMEOUT_S,
        "state": edge_contract.ALERTS_STATE,
        "smtp": {
            "host": smtp.host,
            "port": smtp.port,
            "security": str(smtp.security),
            "from": smtp.sender,
            "to": list(smtp.recipients),
            "user": smtp.user,
        }
        if smtp
        else None,
    }


def channels(cfg: FleetConfig, secrets: Mapping[str, str]) -> dict[str, str]:
    """The secret half: ``secrets`` is key -> value of the alert keys that are set."""
    assert cfg.alerts is not None
    names = {"alertNtfyUrl": "ntfy", "alertWebhookUrl": "webhook", "alertSmtpPassword": "smtpPassword"}
    return {name: secrets[key].strip() for key, name in names.items() if secrets.get(key)}


def node_files(
    cfg: FleetConfig, edge: EdgeSpec, fleet: Sequence[DeployedEdge[str]], secrets: Mapping[str, str]
) -> list[NodeFile]:
    """The daemon's files on ``edge``; none when no channel is set."""
    if cfg.alerts is None:
        return []
    return [
        NodeFile(edge_contract.ALERTS_DAEMON, templates.text("cgnat-edge-alerts.py"), "0755"),
        NodeFile(edge_contract.ALERTS_CONF, json.dumps(daemon_config(cfg, edge, fleet), indent=1) + "\n", "0644"),
        NodeFile(CHANNEL_FILE, json.dumps(channels(cfg, secrets), indent=1, sort_keys=True) + "\n", "0600"),
        NodeFile(UNIT_PATH, templates.text(edge_contract.ALERTS_UNIT), "0644"),
    ]


PUSHED_ONLY = (edge_contract.ALERTS_DAEMON, edge_contract.ALERTS_CONF, CHANNEL_FILE, UNIT_PATH)
