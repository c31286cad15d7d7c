"""The edges' metrics in the lab (``cgnat-edge lab --alerts``): ``metrics:scrape``, each
edge's endpoint scraped from home through its tunnel, with every series the edges
promise and every series the home dashboard asks for, and the WireGuard handshake age
growing once home's tunnel is cut (read through the operator's SSH forward, the
documented way past a dead tunnel); ``metrics:closed``, the endpoint unreachable from
the internet and from the visitor, even by a neighbour that routes the edge's tunnel
address to it."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from pathlib import Path

from components.lab.edge_lab import EdgeLab
from components.lab.netns import Node, wait_for
from components.lab.report import Check
from components.model import edge_contract
from components.model.fleet import EdgeSpec, Mode
from components.model.protection import CrowdSec
from components.renderers import forwarding, metrics, metrics_home, protection

SSH_FORWARD_PORT = 19100
CUT_S = 5
"""How long home's tunnel stays cut before the age is read again."""
_SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
_QUERIED = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


def parse(text: str) -> dict[str, float]:
    """Series (name with labels) -> value, from the Prometheus text format."""
    out = {}
    for line in text.splitlines():
        m = _SERIES.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def families(series: dict[str, float]) -> set[str]:
    return {s.split("{", 1)[0] for s in series}


def dashboard_families(structured: dict) -> set[str]:
    """Every series name a panel of the home dashboard queries."""
    names = set()
    for text in _queries(structured):
        names |= set(_QUERIED.findall(text)) - {"rate"}
    return names


def _queries(structured: dict) -> list[str]:
    doc = json.loads(metrics_home.dashboard(structured))
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def promised(el: EdgeLab) -> set[str]:
    """The series every edge of this stack must export (docs/metrics.md)."""
    cfg = el.cfg
    names = {
        "cgnat_edge_wireguard_handshake_age_seconds",
        "cgnat_edge_wireguard_received_bytes_total",
        "cgnat_edge_wireguard_sent_bytes_total",
        "cgnat_edge_check_up",
        "cgnat_edge_metrics_source_up",
        "node_memory_MemAvailable_bytes",
        "node_cpu_seconds_total",
        "traefik_config_reloads_total",
    }
    if cfg.dns.edge_served:
        names |= {"cgnat_edge_check_duration_seconds", "cgnat_edge_dns_queries_total", "cgnat_edge_dns_answers_total"}
    if forwarding.services(cfg):
        names.add("cgnat_edge_forward_connections_total")
    if protection.drop_counters(cfg):
        names.add("cgnat_edge_country_drops_total")
    if cfg.protection.crowdsec != CrowdSec.OFF:
        names.add("cgnat_edge_crowdsec_drops_total")
    if any(s.mode is Mode.HTTP for s in cfg.services):
        names.add("traefik_entrypoint_requests_total")
    return names


def _spec(el: EdgeLab, name: str) -> EdgeSpec:
    return next(e for e in el.cfg.edges if e.name == name)


def _get(node: Node, url: str, timeout: float = 3) -> str | None:
    done = node.run("curl", "-fsS", "--max-time", str(timeout), url, check=False)
    return done.stdout if done.returncode == 0 else None


def refresh(el: EdgeLab) -> None:
    """What each edge's timer does every 15 s, now."""
    for edge in el.edges.values():
        edge.fire_timer(edge_contract.METRICS_UNIT)


def _scrape_all(el: EdgeLab) -> dict[str, dict[str, float] | None]:
    refresh(el)
    return {
        name: (lambda t: parse(t) if t is not None else None)(
            _get(el.home, f"http://{metrics.address(el.cfg, _spec(el, name))}/metrics")
        )
        for name in sorted(el.edges)
    }


def _ssh_forward(el: EdgeLab, name: str) -> dict[str, float] | None:
    """The endpoint through the operator's SSH forward (docs/metrics.md)."""
    edge = el.edges[name]
    target = metrics.address(el.cfg, _spec(el, name))
    forward = ("-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{SSH_FORWARD_PORT}:{target}")
    ssh = threading.Thread(target=lambda: el.operator_ssh(edge, "sleep 8", options=forward, timeout=30), daemon=True)
    ssh.start()
    url = f"http://127.0.0.1:{SSH_FORWARD_PORT}/metrics"
    text: list[str] = []

    def answered() -> bool:
        got = _get(el.operator, url)
        if got:
            text.append(got)
        return bool(got)

    try:
        wait_for(answered, timeout=6, interval=0.3, message="the SSH forward")
    except AssertionError:  # wait_for's timeout: no answer through the forward
        return None
    finally:
        ssh.join(timeout=15)
    return parse(text[0])


PEAK_RSS = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def memory(el: EdgeLab, name: str) -> tuple[float, float]:
    """(the node exporter's resident MB after a scrape, the script's peak resident MB)."""
    edge = el.edges[name]
    proc = edge.units[edge_contract.NODE_EXPORTER_UNIT]
    status = Path(f"/proc/{proc.pid}/status").read_text()
    rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    script = ("python3", edge_contract.METRICS_SCRIPT, edge_contract.METRICS_CONF)
    peak_kb = int(edge.node.run("python3", "-c", PEAK_RSS, *script).stdout.split()[-1])
    return rss_kb / 1024, peak_kb / 1024


def _handshake(series: dict[str, float] | None, key: str) -> float | None:
    if series is None:
        return None
    return series.get(f'cgnat_edge_wireguard_{key}{{peer="home"}}')


def scrape_row(el: EdgeLab) -> Check:
    if shutil.which("prometheus-node-exporter") is None:
        return Check("metrics:scrape", False, None, "series", "prometheus-node-exporter is not installed (.ci/run)")
    want = promised(el) | dashboard_families(el.rendered.home)
    scraped = _scrape_all(el)
    problems, counts = [], {}
    for name, series in scraped.items():
        if series is None:
            problems.append(f"{name}: no answer from home through the tunnel")
            continue
        counts[name] = len(series)
        missing = sorted(want - families(series))
        down = sorted(s for s, v in series.items() if s.startswith("cgnat_edge_metrics_source_up") and v != 1)
        if missing:
            problems.append(f"{name}: lacks {', '.join(missing)}")
        if down:
            problems.append(f"{name}: {', '.join(down)}")
    exporter_mb, script_mb = memory(el, sorted(el.edges)[0]) if not problems else (0.0, 0.0)
    # The last edge's tunnel: cut at home; its age goes on growing, read over SSH.
    victim = sorted(el.edges)[-1]
    before = _handshake(scraped.get(victim), "latest_handshake_seconds")
    iface = el.home_interface(victim)
    el.home.run("wg-quick", "down", iface)
    try:
        time.sleep(CUT_S)
        el.edges[victim].fire_timer(edge_contract.METRICS_UNIT)
        through_tunnel = _get(el.home, f"http://{metrics.address(el.cfg, _spec(el, victim))}/metrics", timeout=2)
        forwarded = _ssh_forward(el, victim)
    finally:
        el.home.run("wg-quick", "up", iface)
    after, age = _handshake(forwarded, "latest_handshake_seconds"), _handshake(forwarded, "handshake_age_seconds")
    if through_tunnel is not None:
        problems.append(f"{victim}: answered home with its tunnel cut")
    if forwarded is None:
        problems.append(f"{victim}: no answer through the operator's SSH forward")
    elif not (before and after == before and age is not None and age >= CUT_S):
        problems.append(
            f"{victim}: handshake {before} before the cut, {after} and age {age} s {CUT_S} s after (want the same, "
            f"age >= {CUT_S})"
        )
    detail = (
        "; ".join(problems)
        if problems
        else (
            f"from home through each tunnel: {', '.join(f'{n} {c}' for n, c in counts.items())} series, "
            f"all {len(want)} promised and dashboard families; {victim}'s tunnel cut {CUT_S} s: handshake age "
            f"{age:.0f} s through the operator's SSH forward, nothing through the tunnel; node exporter "
            f"{exporter_mb:.1f} MB resident, the script {script_mb:.1f} MB at its peak"
        )
    )
    return Check("metrics:scrape", not problems, sum(counts.values()), "series", detail)


def _reached(node: Node, host: str) -> bool:
    """Any answer on the metrics port, or a refusal (something listens or rejects)."""

    def connect() -> bool:
        try:
            with socket.create_connection((host, metrics.PORT), timeout=2):
                return True
        except ConnectionRefusedError:
            return True
        except OSError:
            return False

    return node.call(connect)


def closed_row(el: EdgeLab) -> Check:
    """From the internet router and from the visitor, to each edge's public address and
    to its tunnel address (routed to the edge, as a neighbour on its network could):
    the packets are dropped, nothing answers."""
    inet = el.nodes["inet"]
    reached, tried = [], 0
    for name, edge in sorted(el.edges.items()):
        tunnel_ip = metrics.address(el.cfg, _spec(el, name)).rsplit(":", 1)[0]
        inet.run("ip", "route", "replace", f"{tunnel_ip}/32", "via", edge.public_ip)
        try:
            for who, node in (("internet", inet), ("visitor", el.client)):
                for host in (edge.public_ip, tunnel_ip):
                    tried += 1
                    if _reached(node, host):
                        reached.append(f"{who} -> {name} {host}:{metrics.PORT}")
        finally:
            inet.run("ip", "route", "del", f"{tunnel_ip}/32", check=False)
    detail = (
        f"reached: {', '.join(reached)}"
        if reached
        else f"{tried} attempts from the internet and the visitor (public and tunnel addresses): all dropped"
    )
    return Check("metrics:closed", not reached, tried - len(reached), "dropped", detail)


def run_metrics(el: EdgeLab) -> list[Check]:
    return [scrape_row(el), closed_row(el)]
