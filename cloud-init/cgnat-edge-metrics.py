#!/usr/bin/python3
"""cgnat-edge metrics: the edge's own series, for the node exporter's textfile collector.

Run by cgnat-edge-metrics.timer every 15 s, as root (``wg show`` and ``nft list`` need
it).  Each source is read on its own; one that fails reports
``cgnat_edge_metrics_source_up{source=...} 0`` and the others are still written.  The
file is replaced whole (rename), so the node exporter never reads half of it.

Config: /etc/cgnat-edge/metrics.json (rendered by components/renderers/metrics.py).
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

CONFIG = sys.argv[1] if len(sys.argv) > 1 else "/etc/cgnat-edge/metrics.json"
TIMEOUT_S = 3
FORWARD_PREFIX = "forward_"
GEO_PREFIX = "geo_drop_"
TRAEFIK_LINE = re.compile(r"^(# (HELP|TYPE) )?traefik_")
PDNS_COUNTERS = {
    "pdns_auth_udp_queries": ("cgnat_edge_dns_queries_total", "udp"),
    "pdns_auth_tcp_queries": ("cgnat_edge_dns_queries_total", "tcp"),
    "pdns_auth_udp_answers": ("cgnat_edge_dns_answers_total", "udp"),
    "pdns_auth_tcp_answers": ("cgnat_edge_dns_answers_total", "tcp"),
}
HELP = {
    "cgnat_edge_wireguard_latest_handshake_seconds": ("gauge", "Unix time of the peer's latest handshake (0: none)."),
    "cgnat_edge_wireguard_handshake_age_seconds": ("gauge", "Seconds since the peer's latest handshake."),
    "cgnat_edge_wireguard_received_bytes_total": ("counter", "Bytes received from the peer."),
    "cgnat_edge_wireguard_sent_bytes_total": ("counter", "Bytes sent to the peer."),
    "cgnat_edge_check_up": ("gauge", "1 when the health agent's check passes through this edge."),
    "cgnat_edge_check_duration_seconds": ("gauge", "How long the check's last round took."),
    "cgnat_edge_forward_connections_total": ("counter", "New connections (UDP: flows) DNATed to the service."),
    "cgnat_edge_country_drops_total": ("counter", "Packets dropped by the country filters."),
    "cgnat_edge_crowdsec_drops_total": ("counter", "Packets dropped from CrowdSec's banned sources."),
    "cgnat_edge_dns_queries_total": ("counter", "Queries PowerDNS received."),
    "cgnat_edge_dns_answers_total": ("counter", "Answers PowerDNS sent."),
    "cgnat_edge_metrics_source_up": ("gauge", "1 when the source could be read."),
}


def label(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=TIMEOUT_S).stdout


def fetch(url):
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
        return r.read().decode()


def peer_names(path):
    """PublicKey -> the comment under its [Peer] line (``home``, ``road warrior x``)."""
    names, comment = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line == "[Peer]":
                comment = None
            elif line.startswith("#") and comment is None:
                comment = line.lstrip("# ").strip()
            elif line.replace(" ", "").startswith("PublicKey="):
                names[line.split("=", 1)[1].strip()] = comment
    return names


def wireguard(cfg, now):
    names = peer_names(cfg["wgConf"])
    lines = run("wg", "show", cfg["interface"], "dump").splitlines()[1:]
    for line in lines:
        key, _, _, _, handshake, received, sent, _ = line.split("\t")
        peer = {"peer": names.get(key) or key[:8]}
        yield "cgnat_edge_wireguard_latest_handshake_seconds", peer, int(handshake)
        if int(handshake):
            yield "cgnat_edge_wireguard_handshake_age_seconds", peer, max(0, int(now) - int(handshake))
        yield "cgnat_edge_wireguard_received_bytes_total", peer, int(received)
        yield "cgnat_edge_wireguard_sent_bytes_total", peer, int(sent)


def health(cfg, _now):
    if cfg["healthPublic"]:
        # dnsMode records: the agent tells anyone up or down alone, this script too.
        for check_id, name in cfg["checks"].items():
            try:
                up = fetch(f"{cfg['health']}/{check_id}").startswith("up")
            except urllib.error.HTTPError as exc:
                up = False if exc.code == 503 else None
            if up is not None:
                yield "cgnat_edge_check_up", {"check": name}, int(up)
        return
    checks = json.loads(fetch(cfg["health"]))["checks"]
    for check_id, name in cfg["checks"].items():
        result = checks.get(check_id)
        if result is None:
            continue
        yield "cgnat_edge_check_up", {"check": name}, int(bool(result["ok"]))
        if "seconds" in result:
            yield "cgnat_edge_check_duration_seconds", {"check": name}, result["seconds"]


def nft(cfg, _now):
    family, table = cfg["nftTable"].split()
    listing = json.loads(run("nft", "-j", "list", "counters", "table", family, table))["nftables"]
    for item in (i["counter"] for i in listing if "counter" in i):
        name = item["name"]
        if name.startswith(FORWARD_PREFIX):
            yield "cgnat_edge_forward_connections_total", {"service": name[len(FORWARD_PREFIX) :]}, item["packets"]
        elif name.startswith(GEO_PREFIX):
            yield "cgnat_edge_country_drops_total", {"country": name[len(GEO_PREFIX) :].upper()}, item["packets"]
    for chain in cfg["crowdsecChains"]:
        family, table, name = chain.split()
        rules = json.loads(run("nft", "-j", "list", "chain", family, table, name))["nftables"]
        packets = sum(
            e["counter"]["packets"]
            for r in rules
            if "rule" in r
            for e in r["rule"]["expr"]
            if isinstance(e, dict) and "counter" in e
        )
        yield "cgnat_edge_crowdsec_drops_total", {"family": family}, packets


def pdns(cfg, _now):
    for line in fetch(cfg["pdns"]).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in PDNS_COUNTERS:
            name, proto = PDNS_COUNTERS[parts[0]]
            yield name, {"proto": proto}, int(float(parts[1]))


def render(cfg, now):
    """(the edge's series as text, Traefik's as text)."""
    series, up = {}, {}
    sources = {"wireguard": wireguard, "health": health, "nft": nft}
    if cfg.get("pdns"):
        sources["pdns"] = pdns
    for source, read in sources.items():
        try:
            found = list(read(cfg, now))
        except Exception as exc:  # one source down must not hide the others
            print(f"cgnat-edge-metrics: {source}: {exc or type(exc).__name__}", file=sys.stderr)
            up[source] = 0
            continue
        up[source] = 1
        for name, labels, value in found:
            series.setdefault(name, []).append((labels, value))
    try:
        traefik = "".join(line + "\n" for line in fetch(cfg["traefik"]).splitlines() if TRAEFIK_LINE.match(line))
        up["traefik"] = 1
    except Exception as exc:
        print(f"cgnat-edge-metrics: traefik: {exc or type(exc).__name__}", file=sys.stderr)
        traefik, up["traefik"] = "", 0
    for source, ok in up.items():
        series.setdefault("cgnat_edge_metrics_source_up", []).append(({"source": source}, ok))
    out = []
    for name, samples in series.items():
        kind, text = HELP[name]
        out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            inner = ",".join(f'{k}="{label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{inner}}} {value}")
    return "".join(line + "\n" for line in out) + traefik


def main():
    with open(CONFIG) as f:
        cfg = json.load(f)
    text = render(cfg, time.time())
    os.makedirs(os.path.dirname(cfg["out"]), exist_ok=True)
    tmp = f"{cfg['out']}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, cfg["out"])


if __name__ == "__main__":
    main()
