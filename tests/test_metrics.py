"""Metrics: the edge's endpoint on its tunnel address and nowhere else, pushed only;
the script that writes the edge's own series (run for real against stand-ins for
``wg``, ``nft``, the health agent, PowerDNS and Traefik, its output checked by
``promtool check metrics``); home's scrape config (``promtool check config``) and
Grafana dashboard.  tests/test_metrics_lab.py scrapes real edges."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from components.model import edge_contract
from components.model.deployed import DeployedEdge
from components.model.keys import generate_keypair
from components.renderers import bootstrap, home_configs, metrics, metrics_home, nftables, templates
from components.tools import home_files
from tests.support import require_tool

HOME_KEY, EDGE_KEY = generate_keypair()[0], generate_keypair()[1]


def _edge(cfg, name="fsn"):
    return next(e for e in cfg.edges if e.name == name)


def test_the_node_exporter_listens_on_the_tunnel_address_and_home_alone_may_ask(fleet_config):
    fsn = _edge(fleet_config)
    args = metrics.arguments(fleet_config, fsn)
    assert "--web.listen-address=10.254.0.5:9100 " in args and "--collector.disable-defaults" in args
    assert f"--collector.textfile.directory={edge_contract.METRICS_DIR}" in args
    ruleset = nftables.ruleset(fleet_config)
    port_rules = [line.strip() for line in ruleset.splitlines() if "9100" in line]
    assert port_rules == [
        'iifname "wg0" ip saddr { 10.254.0.0/24, 192.168.1.0/24 } tcp dport 9100 accept',
        f'iifname "wg0" ip6 saddr {{ {fleet_config.tunnel.ipv6_prefix} }} tcp dport 9100 accept',
    ]


def test_the_operator_may_forward_to_the_endpoint_and_nowhere_else(fleet_config):
    files = {f.path: f.content for f in bootstrap.node_files(fleet_config, _edge(fleet_config, "ams"), "")}
    sshd = files[edge_contract.SSHD_DROPIN]
    assert "AllowTcpForwarding local\nPermitOpen 10.254.0.9:9100\nPermitListen none\n" in sshd


def test_the_metrics_files_come_with_the_push_only(fleet_config):
    fsn = _edge(fleet_config)
    pushed = {f.path for f in bootstrap.node_files(fleet_config, fsn, "")}
    assert set(metrics.PUSHED_ONLY) <= pushed
    doc = yaml.safe_load(bootstrap.user_data(fleet_config, fsn))
    assert not {f["path"] for f in doc["write_files"]} & set(metrics.PUSHED_ONLY)
    assert ["sh", "-c", bootstrap.METRICS_INSTALL] in doc["runcmd"]
    assert "--no-install-recommends prometheus-node-exporter" in bootstrap.METRICS_INSTALL


# -- the script on the edge ------------------------------------------------------------

FAKE_WG = """#!/bin/sh
[ "$FAIL" = wg ] && exit 1
printf 'cHJpdg==\\tcHVi\\t51820\\toff\\n'
printf 'HOME=\\t(none)\\t203.0.113.1:40000\\t10.254.0.6/32\\t%s\\t1234\\t5678\\t25\\n' "$HANDSHAKE"
"""
FAKE_NFT = """#!/bin/sh
[ "$FAIL" = nft ] && exit 1
case "$*" in
  *counters*) echo '{"nftables": [{"metainfo": {}},
    {"counter": {"family": "inet", "table": "cgnat_edge", "name": "forward_game", "packets": 11, "bytes": 900}},
    {"counter": {"family": "inet", "table": "cgnat_edge", "name": "geo_drop_aq", "packets": 7, "bytes": 420}}]}' ;;
  *chain*) echo '{"nftables": [{"chain": {}}, {"rule": {"expr": [{"match": {}}, {"counter": {"packets": 3, "bytes": 180}}, {"drop": null}]}}]}' ;;
esac
"""
PAGES = {
    "/health": json.dumps(
        {
            "edge": "fsn",
            "checks": {
                "blog": {"ok": True, "detail": "tls", "age": 0.4, "seconds": 0.0125},
                "ports": {"ok": False, "detail": "tcp: refused", "age": 0.2, "seconds": 0.003},
            },
        }
    ),
    "/pdns": "# TYPE pdns_auth_udp_queries counter\npdns_auth_udp_queries 40\npdns_auth_udp_answers 39\n"
    "pdns_auth_tcp_queries 2\npdns_auth_tcp_answers 2\npdns_auth_servfail_packets 0\n",
    "/traefik": "# HELP traefik_config_reloads_total Config reloads.\n# TYPE traefik_config_reloads_total counter\n"
    "traefik_config_reloads_total 3\n# HELP go_goroutines Goroutines.\n# TYPE go_goroutines gauge\ngo_goroutines 9\n",
}


@pytest.fixture
def pages():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = PAGES.get(self.path)
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write((body or "").encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _run_script(tmp_path: Path, url: str, fail: str = "") -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("wg", FAKE_WG), ("nft", FAKE_NFT)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "wg0.conf").write_text("[Interface]\nPrivateKey = x\n\n[Peer]\n# home\nPublicKey = HOME=\n")
    cfg = {
        "out": str(tmp_path / "out" / "cgnat_edge.prom"),
        "interface": "wg0",
        "wgConf": str(tmp_path / "wg0.conf"),
        "health": f"{url}/health",
        "healthPublic": False,
        "checks": {"blog": "blog", "ports": "ports", "gone": "gone"},
        "pdns": f"{url}/pdns",
        "traefik": f"{url}/traefik",
        "nftTable": "inet cgnat_edge",
        "crowdsecChains": ["ip cgnat_edge_crowdsec bans"],
    }
    (tmp_path / "metrics.json").write_text(json.dumps(cfg))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAIL": fail, "HANDSHAKE": "1700000000"}
    script = tmp_path / "cgnat-edge-metrics"
    script.write_text(templates.text("cgnat-edge-metrics.py"))
    subprocess.run([sys.executable, str(script), str(tmp_path / "metrics.json")], env=env, check=True, timeout=30)
    return Path(cfg["out"]).read_text()


def test_the_script_writes_every_source_in_the_text_format(tmp_path, pages):
    require_tool("promtool")
    text = _run_script(tmp_path, pages)
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    lines = set(text.splitlines())
    assert {
        'cgnat_edge_wireguard_latest_handshake_seconds{peer="home"} 1700000000',
        'cgnat_edge_wireguard_received_bytes_total{peer="home"} 1234',
        'cgnat_edge_wireguard_sent_bytes_total{peer="home"} 5678',
        'cgnat_edge_check_up{check="blog"} 1',
        'cgnat_edge_check_duration_seconds{check="blog"} 0.0125',
        'cgnat_edge_check_up{check="ports"} 0',
        'cgnat_edge_forward_connections_total{service="game"} 11',
        'cgnat_edge_country_drops_total{country="AQ"} 7',
        'cgnat_edge_crowdsec_drops_total{family="ip"} 3',
        'cgnat_edge_dns_queries_total{proto="udp"} 40',
        'cgnat_edge_dns_answers_total{proto="tcp"} 2',
        "traefik_config_reloads_total 3",
    } <= lines, text
    age = next(line for line in lines if line.startswith("cgnat_edge_wireguard_handshake_age_seconds"))
    assert float(age.split()[-1]) > 10_000_000  # since 2023-11-14
    assert not any("gone" in line or line.startswith("go_") or "servfail" in line for line in lines)
    assert {
        f'cgnat_edge_metrics_source_up{{source="{s}"}} 1' for s in ("wireguard", "health", "nft", "pdns", "traefik")
    } <= lines


def test_a_source_that_fails_is_reported_and_the_others_stay(tmp_path, pages):
    text = _run_script(tmp_path, pages, fail="nft")
    assert 'cgnat_edge_metrics_source_up{source="nft"} 0' in text
    assert 'cgnat_edge_metrics_source_up{source="wireguard"} 1' in text and "cgnat_edge_check_up" in text
    assert "cgnat_edge_country_drops_total" not in text


# -- home -------------------------------------------------------------------------------


@pytest.fixture
def home_out(fleet_config, tmp_path):
    ips = {"fsn": "203.0.113.10", "ams": "203.0.113.20"}
    peers = [DeployedEdge(e, ips[e.name], None, EDGE_KEY) for e in fleet_config.edges]
    configs = home_configs.render(fleet_config, peers, HOME_KEY)
    out = tmp_path / "home"
    home_files.write({"homeConfigs": json.loads(json.dumps(configs))}, out)
    return out


def test_home_gets_a_scrape_config_promtool_loads(home_out):
    require_tool("promtool")
    path = home_out / metrics_home.SCRAPE_FILE
    done = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    job = yaml.safe_load(path.read_text())["scrape_configs"][0]
    assert job["static_configs"] == [
        {"targets": ["10.254.0.5:9100"], "labels": {"edge": "fsn"}},
        {"targets": ["10.254.0.9:9100"], "labels": {"edge": "ams"}},
    ]


def test_the_dashboard_has_a_row_per_edge_of_its_series(home_out):
    doc = json.loads((home_out / metrics_home.DASHBOARD_FILE).read_text())
    rows = [p for p in doc["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == ["edge fsn", "edge ams"]
    script = templates.text("cgnat-edge-metrics.py")
    for row in rows:
        edge = row["title"].split()[1]
        below = [p for p in doc["panels"] if p["type"] != "row" and p["gridPos"]["y"] == row["gridPos"]["y"] + 1]
        assert [p["title"] for p in below] == [
            f"{t} ({edge})" for t in ("Tunnel", "Services", "Traffic", "HTTP requests", "Drops", "DNS answers")
        ]
        for target in (t for p in below for t in p["targets"]):
            assert f'edge="{edge}"' in target["expr"], target
            for name in re.findall(r"([a-z_]+)\{", target["expr"]):
                # The script's own series are named in it; the others are the node exporter's
                # and Traefik's (tests/test_metrics_lab.py finds every one on a lab edge).
                assert name.startswith(("node_", "traefik_")) or f'"{name}"' in script, name


def test_an_endpoint_that_is_no_address_is_refused_before_anything_is_written(fleet_config, tmp_path):
    peers = [DeployedEdge(e, "203.0.113.10", None, EDGE_KEY) for e in fleet_config.edges]
    configs = json.loads(json.dumps(home_configs.render(fleet_config, peers, HOME_KEY)))
    configs["structured"]["tunnels"][0]["metrics"] = "evil.example:9100\nscrape_configs: []"
    with pytest.raises(home_files.HomeConfigError) as err:
        home_files.write({"homeConfigs": configs}, tmp_path / "home")
    assert "structured.tunnels[0].metrics" in str(err.value) and "address:port" in str(err.value)
    assert not (tmp_path / "home").exists()
