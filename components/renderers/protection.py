"""Protection on the edge: country sets in nftables, CrowdSec, sign-in in Traefik.

Country filters are nftables rules on the public ports, in a prerouting base chain of
the edge's own table that runs before the forward services' DNAT and before the input
chain accepts a port: a dropped packet never reaches Traefik or home, whatever the mode.  The sets start empty and are filled by
``cloud-init/geo-sets.py`` (a timer), which keeps one cached file per country; the
ruleset includes those files, so a reload of the ruleset (every push) brings the last
good sets straight back.  CrowdSec's firewall bouncer runs in set-only mode: the
ruleset declares its tables, sets and a prerouting chain that drops banned sources
before the forward services' DNAT too (the bouncer's own chains hook input only); the
bouncer only fills the sets.  A reload of the ruleset empties them, so the push
restarts the bouncer, which loads every current ban again as it starts.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import yaml

from components.model import edge_contract
from components.model.fleet import FleetConfig, Mode, ServiceSpec, effective_geo
from components.model.protection import CrowdSec, GeoPolicy
from components.renderers import templates
from components.renderers.nft_literals import one_or_set

GEO_SCRIPT_PATH = "/usr/local/sbin/cgnat-edge-geo-sets"
TABLE = ("inet", "cgnat_edge")

CROWDSEC_SETUP_PATH = edge_contract.CROWDSEC_SETUP
CROWDSEC_ACQUIS_PATH = "/etc/crowdsec/acquis.d/cgnat-edge.yaml"
CROWDSEC_SETS = (
    ("ip", "cgnat_edge_crowdsec", "crowdsec-blacklists", "ipv4_addr"),
    ("ip6", "cgnat_edge_crowdsec6", "crowdsec6-blacklists", "ipv6_addr"),
)
"""(family, table, set, type) the bouncer fills.  One table per family, as the bouncer
reads its drop counters and set sizes (its metrics) with ``nft list chain ip|ip6 ...``;
not its default table names, whose chains it would delete on a restart."""
CROWDSEC_TABLES = tuple(f"{family} {table}" for family, table, _, _ in CROWDSEC_SETS)
CROWDSEC_CHAIN = "bans"
BOUNCER_SETTINGS_PATH = edge_contract.BOUNCER_SETTINGS
"""Merged by the setup into the bouncer's ``.yaml.local`` (which holds its API key)."""
ACCESS_LOG = "/var/lib/traefik/access.log"
"""Traefik's access log, in its state directory: the only place its unit lets it write."""
LOGROTATE_PATH = "/etc/logrotate.d/cgnat-edge-traefik"
PUSHED_ONLY = (
    edge_contract.GEO_CONFIG,
    GEO_SCRIPT_PATH,
    f"{edge_contract.SYSTEMD_DIR}/{edge_contract.GEO_UNIT}.service",
    f"{edge_contract.SYSTEMD_DIR}/{edge_contract.GEO_UNIT}.timer",
)
"""Arrive with the first push (which enables the timer), right after boot: the
user data stays small for the stacks that use no country filters."""


def set_name(country: str, family: int) -> str:
    return f"geo{family}_{country.lower()}"


def geo_rules(cfg: FleetConfig) -> list[tuple[str, tuple[int, ...], GeoPolicy]]:
    """(protocol, public ports, countries) for every filtered port group."""
    groups: dict[tuple[str, GeoPolicy], set[int]] = {}
    for s in cfg.services:
        policy = effective_geo(s, cfg.protection)
        if not policy.active:
            continue
        ports = {80, 443} if s.mode.by_hostname else set(s.ports)
        groups.setdefault((str(s.protocol), policy), set()).update(ports)
    return [(proto, tuple(sorted(ports)), policy) for (proto, policy), ports in groups.items()]


def countries(cfg: FleetConfig) -> list[str]:
    return sorted({c for _, _, policy in geo_rules(cfg) for c in policy.countries})


def cache_file(country: str) -> str:
    return f"{edge_contract.GEO_STATE_DIR}/{country.lower()}.nft"


def nft_table_lines(cfg: FleetConfig) -> list[str]:
    """Sets and chains inside the edge's table (indented for nftables.ruleset)."""
    rules = geo_rules(cfg)
    if not rules:
        return []
    lines = [
        "",
        "    # Country filters (allowCountries/denyCountries): filled by cgnat-edge-geo-sets.",
    ]
    for country in countries(cfg):
        for family, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            lines.append(f"    set {set_name(country, family)} {{ type {kind}; flags interval; }}")
    # Dropped packets per denied country, and from outside every allow list (the metrics).
    lines += [f"    counter {name} {{ }}" for name in drop_counters(cfg)]
    lines += [
        "    chain geo {",
        "        # Before the forward services' DNAT and before the input chain accepts a port:",
        "        # a dropped visitor never reaches Traefik or home.",
        "        type filter hook prerouting priority dstnat - 10; policy accept;",
        f'        iifname "{edge_contract.WG_INTERFACE}" accept',
        "        ct state established,related accept",
    ]
    for i, (proto, ports, _) in enumerate(rules):
        lines.append(f"        {proto} dport {_port_expr(ports)} jump geo_{i}")
    lines.append("    }")
    for i, (_, _, policy) in enumerate(rules):
        verdict = "return" if policy.allow else "drop"
        what = "allow " if policy.allow else "deny "
        lines.append(f"    chain geo_{i} {{  # {what}{', '.join(policy.countries)}")
        for country in policy.countries:
            count = "" if policy.allow else f"counter name {drop_counter(country)} "
            lines.append(f"        ip saddr @{set_name(country, 4)} {count}{verdict}")
            lines.append(f"        ip6 saddr @{set_name(country, 6)} {count}{verdict}")
        if policy.allow:
            lines.append(f"        counter name {drop_counter(None)} drop")
        lines.append("    }")
    return lines


DROP_COUNTER_PREFIX = "geo_drop_"


def drop_counter(country: str | None) -> str:
    """The named counter of a denied country's drops; ``None``: of an allow list's."""
    return f"{DROP_COUNTER_PREFIX}{country.lower() if country else 'unlisted'}"


def drop_counters(cfg: FleetConfig) -> list[str]:
    rules = geo_rules(cfg)
    denied = sorted({c for _, _, policy in rules if not policy.allow for c in policy.countries})
    return [drop_counter(c) for c in denied] + ([drop_counter(None)] if any(p.allow for _, _, p in rules) else [])


def _port_expr(ports: tuple[int, ...]) -> str:
    """``443``, or ``{ 80, 443, 27015-27030 }``: consecutive ports as one range."""
    spans: list[list[int]] = []
    for port in ports:
        if spans and port == spans[-1][1] + 1:
            spans[-1][1] = port
        else:
            spans.append([port, port])
    items = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in spans]
    return one_or_set(items)


def nft_after_table(cfg: FleetConfig) -> list[str]:
    """The last good country sets, included after the table declares them.  A pattern
    with a wildcard matches nothing without error: before the first fetch the sets
    stay empty (allow lists then let nobody in, deny lists drop nobody).  Then the
    CrowdSec tables."""
    return [f'include "{cache_file(c)}*"' for c in countries(cfg)] + nft_crowdsec_tables(cfg)


def nft_crowdsec_tables(cfg: FleetConfig) -> list[str]:
    """The tables the bouncer fills (set-only): every packet from a banned source is
    dropped in prerouting, before the forward services' DNAT and before the input
    chain, whatever the port or mode (SSH too, as the bouncer's own input chain did)."""
    if cfg.protection.crowdsec == CrowdSec.OFF:
        return []
    lines = []
    for family, table, name, kind in CROWDSEC_SETS:
        lines += [
            "",
            f"# CrowdSec bans: the firewall bouncer (set-only) fills @{name}.",
            f"table {family} {table} {{",
            f"    set {name} {{ type {kind}; flags timeout; }}",
            f"    chain {CROWDSEC_CHAIN} {{",
            "        type filter hook prerouting priority dstnat - 20; policy accept;",
            f"        {family} saddr @{name} counter drop",
            "    }",
            "}",
        ]
    return lines


def crowdsec_sets(cfg: FleetConfig) -> list[str]:
    """``family table set`` of every set the bouncer fills (the verifier ignores their elements)."""
    if cfg.protection.crowdsec == CrowdSec.OFF:
        return []
    return [f"{family} {table} {name}" for family, table, name, _ in CROWDSEC_SETS]


def bouncer_settings() -> str:
    """The bouncer's nftables settings: fill the ruleset's sets, make no chains."""
    v4, v6 = ({"enabled": True, "set-only": True, "table": t, "chain": CROWDSEC_CHAIN} for _, t, _, _ in CROWDSEC_SETS)
    doc = {
        "blacklists_ipv4": CROWDSEC_SETS[0][2],
        "blacklists_ipv6": CROWDSEC_SETS[1][2],
        "nftables": {"ipv4": v4, "ipv6": v6},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def geo_config(cfg: FleetConfig) -> dict[str, Any]:
    return {
        "sources": list(cfg.protection.geo_sources),
        "countries": countries(cfg),
        "table": list(TABLE),
        "state": edge_contract.GEO_STATE_DIR,
    }


def forward_auth_middleware(s: ServiceSpec) -> dict[str, dict[str, Any]]:
    fa = s.forward_auth
    if fa is None:
        return {}
    return {
        f"{s.name}-signin": {
            "forwardAuth": {
                "address": fa.address,
                # Traefik sets X-Forwarded-* itself (the entrypoints trust no client's),
                # and the provider needs them to know which URL to send the user back to.
                "trustForwardHeader": True,
                "authResponseHeaders": list(fa.response_headers),
            }
        }
    }


def traefik_static(cfg: FleetConfig) -> dict[str, Any]:
    """Extra static configuration: an access log for CrowdSec to read."""
    if cfg.protection.crowdsec == CrowdSec.OFF or not any(s.mode is Mode.HTTP for s in cfg.services):
        return {}
    return {"accessLog": {"filePath": ACCESS_LOG, "format": "common", "bufferingSize": 0}}


def crowdsec_acquisition(cfg: FleetConfig) -> str:
    docs = [
        "# cgnat-edge: what CrowdSec reads on this edge (sshd comes from Debian's acquis.yaml).",
        f"filenames:\n  - {ACCESS_LOG}\nlabels:\n  type: traefik\n",
    ]
    return docs[0] + "\n" + docs[1]


def node_files(cfg: FleetConfig) -> list[tuple[str, str, str]]:
    """(path, content, mode) of the protection files on every edge."""
    files = [
        (edge_contract.GEO_CONFIG, json.dumps(geo_config(cfg), indent=1) + "\n", "0644"),
        (GEO_SCRIPT_PATH, templates.text("geo-sets.py"), "0755"),
        (
            f"{edge_contract.SYSTEMD_DIR}/{edge_contract.GEO_UNIT}.service",
            templates.text(f"{edge_contract.GEO_UNIT}.service"),
            "0644",
        ),
        (
            f"{edge_contract.SYSTEMD_DIR}/{edge_contract.GEO_UNIT}.timer",
            templates.text(f"{edge_contract.GEO_UNIT}.timer"),
            "0644",
        ),
    ]
    if cfg.protection.crowdsec != CrowdSec.OFF:
        files += [
            (CROWDSEC_SETUP_PATH, templates.text("crowdsec-setup.sh"), "0755"),
            (CROWDSEC_ACQUIS_PATH, crowdsec_acquisition(cfg), "0644"),
            (BOUNCER_SETTINGS_PATH, bouncer_settings(), "0644"),
            (
                LOGROTATE_PATH,
                f"{ACCESS_LOG} {{\n  daily\n  rotate 7\n  compress\n  missingok\n  notifempty\n  copytruncate\n}}\n",
                "0644",
            ),
        ]
    return files


def enroll_command(edge: str) -> str:
    """Enrols the edge in the CrowdSec console with the key on stdin, read by the
    enrolment script itself: never on a command line (not the one pulumi logs, not
    cscli's, which /proc shows every user).  The agent picks the enrolment up on reload."""
    script = templates.text("crowdsec-enroll.py")
    return (
        f"python3 -c {shlex.quote(script)} {shlex.quote(edge)} cgnat-edge "
        f"&& systemctl reload-or-restart {edge_contract.CROWDSEC_UNIT}"
    )


def runcmd(cfg: FleetConfig) -> list[list[str]]:
    cmds: list[list[str]] = []
    if cfg.protection.crowdsec != CrowdSec.OFF:
        cmds.append([CROWDSEC_SETUP_PATH, str(cfg.protection.crowdsec), BOUNCER_SETTINGS_PATH])
    return cmds
