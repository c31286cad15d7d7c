"""Edge-served DNS (dnsMode edges): the rendered pdns.conf and zone served by a real
pdns_server in a network namespace, with stand-in health agents on the edges'
addresses deciding the answers; the real health agent against a real listener; the
nftables ruleset of a push checked by nft.  Addresses: documentation ranges only,
on the namespace's loopback."""

from __future__ import annotations

import contextlib
import copy
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import dns.zone
import pytest

from components import config as config_module
from components.lab.netns import Node, wait_for
from components.model import edge_contract
from components.model.deployed import DeployedEdge
from components.renderers import edge_dns, nftables, templates
from tests import mmdb
from tests.support import namespaces, require_root, require_tool

EDGES = {"fsn": ("203.0.113.10", "2001:db8:1::10"), "ams": ("198.51.100.20", None)}
DNS_PORT = 5301


@pytest.fixture
def cfg(raw_config):
    return config_module.parse(copy.deepcopy(raw_config), stack="dev")


@pytest.fixture
def fleet(cfg):
    return [DeployedEdge(e, *EDGES[e.name]) for e in cfg.edges]


def test_each_edge_lists_itself_first_and_all_serve_the_same_names(cfg, fleet):
    fsn, ams = cfg.edges
    zones = {e.name: edge_dns.zone(cfg, e, fleet) for e in (fsn, ams)}
    assert "ifurlup('http://cgnat-edge-health:8053/health/cloud', {'203.0.113.10', '198.51.100.20'}" in zones["fsn"]
    assert "ifurlup('http://cgnat-edge-health:8053/health/cloud', {'198.51.100.20', '203.0.113.10'}" in zones["ams"]
    assert "selector='all', backupSelector='all'" in zones["fsn"]
    names = {z: sorted(line.split()[0] for line in text.splitlines() if " LUA " in line) for z, text in zones.items()}
    assert names["fsn"] == names["ams"]
    assert "cloud.edge.example.org." in names["fsn"] and "edge.example.org." in names["fsn"]
    # The apex of the edge zone carries the port services' name: no CNAME needed for it.
    delegation = edge_dns.delegation(cfg, fleet)
    assert {"name": "edge.example.org", "type": "NS", "ttl": 3600, "values": ["ns-fsn.edge.example.org", "ns-ams.edge.example.org"]} in delegation  # fmt: skip
    assert {"name": "cloud.example.org", "type": "CNAME", "ttl": 3600, "values": ["cloud.edge.example.org"]} in delegation  # fmt: skip
    assert not any(r["name"] == "edge.example.org" and r["type"] == "CNAME" for r in delegation)
    # The paste-ready form is a valid zone file for the parent (dnspython parses it).
    parent = "$ORIGIN example.org.\n@ 3600 IN SOA ns hostmaster 1 3600 600 604800 60\n@ 3600 IN NS ns\n"
    zone = dns.zone.from_text(parent + edge_dns.delegation_text(cfg, fleet), origin="example.org")
    assert {r.target.derelativize(zone.origin).to_text() for r in zone.find_rdataset("edge", "NS")} == {
        "ns-fsn.edge.example.org.",
        "ns-ams.edge.example.org.",
    }
    assert (
        zone.find_rdataset("photos", "CNAME")[0].target.derelativize(zone.origin).to_text()
        == "photos.edge.example.org."
    )
    conf = edge_dns.pdns_conf(cfg)
    assert "disable-axfr=yes" in conf and "api=no" in conf and "include-dir" not in conf


@pytest.mark.netns
def test_push_ruleset_rate_limits_dns_and_keeps_the_agent_to_the_fleet(cfg, fleet, tmp_path):
    require_tool("nft")
    first_boot = nftables.ruleset(cfg)
    pushed = nftables.ruleset(cfg, edge_dns.fleet_addresses(fleet))
    assert "dport 53" not in first_boot  # DNS opens with the push that brings the zone
    assert "ip saddr { 198.51.100.20, 203.0.113.10 } tcp dport 8053 accept" in pushed
    assert "udp dport 53 update @dns_v4 { ip saddr limit rate over 50/second burst 100 packets } drop" in pushed
    assert "8053 accept" not in pushed.replace("tcp dport 8053 accept", "")  # no unrestricted 8053
    path = tmp_path / "nftables.conf"
    path.write_text(pushed)
    done = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_agent_follows_its_target(tmp_path):
    """The real agent script: up while the tcp target listens, down (503) within a few
    seconds of it going away, up again when it is back."""
    target = socket.socket()
    target.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    target.bind(("127.0.0.1", 0))
    target.listen(16)
    target_port = target.getsockname()[1]
    port = _free_port()
    conf = {
        "edge": "t",
        "port": port,
        "interval": 1,
        "timeout": 1,
        "https": "127.0.0.1:1",
        "checks": {"svc": [{"kind": "tcp", "host": "127.0.0.1", "port": target_port}]},
    }
    (tmp_path / "health.json").write_text(json.dumps(conf))
    agent = tmp_path / "agent.py"
    agent.write_text(templates.text("cgnat-edge-health.py"))
    proc = subprocess.Popen([sys.executable, str(agent), str(tmp_path / "health.json")], stdout=subprocess.DEVNULL)

    def status() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/svc", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    try:
        wait_for(lambda: status() == 200, timeout=10, message="agent reports the target up")
        target.close()
        started = time.monotonic()
        wait_for(lambda: status() == 503, timeout=10, message="agent reports the target down")
        assert time.monotonic() - started < 5
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            assert json.load(r)["checks"]["svc"]["ok"] is False
        assert status() == 503
        again = socket.socket()
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", target_port))
        again.listen(16)
        with again:
            wait_for(lambda: status() == 200, timeout=10, message="agent reports the target up again")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------
# The rendered zone, served by pdns_server, decided by stand-in agents
# ---------------------------------------------------------------------------


class _Agents:
    """What each edge's agent says, by (edge address, check): 200 unless set to 503."""

    def __init__(self):
        self.down: set[tuple[str, str]] = set()


def _serve_agent(node: Node, address: str, agents: _Agents) -> http.server.HTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            check = self.path.removeprefix("/health/")
            code = 503 if (address, check) in agents.down else 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = node.call(lambda: http.server.ThreadingHTTPServer((address, edge_dns.HEALTH_PORT), Handler))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _ask(node: Node, name: str) -> list[str]:
    sock = node.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.setblocking(False)
    with sock:
        response = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=DNS_PORT, timeout=2, sock=sock)
    assert dns.rcode.to_text(response.rcode()) == "NOERROR"
    return [r.to_text() for rrset in response.answer for r in rrset]


@pytest.mark.netns
def test_rendered_zone_answers_with_the_edges_whose_agent_says_up(cfg, fleet, tmp_path: Path):
    require_root()
    require_tool("pdns_server")
    fsn = cfg.edges[0]
    (tmp_path / "zone.db").write_text(edge_dns.zone(cfg, fsn, fleet))
    (tmp_path / "named.conf").write_text(
        edge_dns.named_conf(cfg).replace(edge_contract.PDNS_ZONE, str(tmp_path / "zone.db"))
    )
    conf = edge_dns.pdns_conf(cfg).replace(edge_dns.NAMED_CONF_PATH, str(tmp_path / "named.conf"))
    conf = conf.replace("local-address=0.0.0.0, ::", "local-address=127.0.0.1").replace(
        "local-port=53", f"local-port={DNS_PORT}"
    )
    (tmp_path / "pdns.conf").write_text(conf)
    agents = _Agents()
    with namespaces() as lab:
        node = lab.node("dns")
        node.addresses("lo", ["203.0.113.10/32", "198.51.100.20/32"])
        servers = [_serve_agent(node, address, agents) for address in ("203.0.113.10", "198.51.100.20")]
        proc = node.spawn(
            "pdns_server", f"--config-dir={tmp_path}", f"--socket-dir={tmp_path}", "--daemon=no", "--guardian=no",
            "--disable-syslog", log=tmp_path / "pdns.log",
        )  # fmt: skip
        try:

            def answers(name: str) -> list[str]:
                with contextlib.suppress(Exception):
                    return _ask(node, name)
                return []

            both = ["203.0.113.10", "198.51.100.20"]  # fsn's zone: itself first
            wait_for(lambda: answers("cloud.edge.example.org") == both, timeout=15, message="pdns serving")
            # ams's path for cloud breaks: after the checks notice, only fsn answers for it.
            agents.down.add(("198.51.100.20", "cloud"))
            started = time.monotonic()
            wait_for(lambda: answers("cloud.edge.example.org") == ["203.0.113.10"], timeout=15, message="ams excluded")
            assert time.monotonic() - started < 10
            assert answers("blog.edge.example.org") == both  # other names unaffected
            # Every edge down for a name: answer with all of them, never with nothing.
            agents.down.add(("203.0.113.10", "cloud"))
            wait_for(lambda: sorted(answers("cloud.edge.example.org")) == sorted(both), timeout=15, message="all")
            agents.down.clear()
            wait_for(lambda: answers("cloud.edge.example.org") == both, timeout=15, message="recovery")
            assert answers("ns-ams.edge.example.org") == ["198.51.100.20"]
            # No zone transfer for anyone.
            sock = node.call(lambda: socket.create_connection(("127.0.0.1", DNS_PORT), timeout=3))
            with sock:
                refused = dns.query.tcp(
                    dns.message.make_query("edge.example.org", "AXFR"), "127.0.0.1", sock=sock, timeout=3
                )
            assert dns.rcode.to_text(refused.rcode()) in ("NOTAUTH", "REFUSED") and not refused.answer
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            for server in servers:
                server.shutdown()
                server.server_close()


# ---------------------------------------------------------------------------
# dnsGeoipDatabase: nearest edge first, by EDNS Client Subnet or the source
# ---------------------------------------------------------------------------

GEO = {
    "192.0.2.0/24": (48.14, 11.58),  # Munich: nearest fsn (Falkenstein)
    "198.51.100.0/24": (51.92, 4.48),  # Rotterdam: nearest ams
    "203.0.113.0/24": (50.08, 14.44),  # Prague: nearest fsn
}


def _ask_geo(node: Node, name: str, ecs: str | None, source: str = "127.0.0.1") -> list[str]:
    options = [dns.edns.ECSOption.from_text(ecs)] if ecs else []
    query = dns.message.make_query(name, "A", use_edns=0, options=options)
    sock = node.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.bind((source, 0))
    sock.setblocking(False)
    with sock:
        response = dns.query.udp(query, "127.0.0.1", port=DNS_PORT, timeout=2, sock=sock)
    assert dns.rcode.to_text(response.rcode()) == "NOERROR"
    return [r.to_text() for rrset in response.answer for r in rrset]


def test_geoip_zone_sorts_by_distance_only_with_a_database(raw_config, tmp_path):
    db = tmp_path / "city.mmdb"
    db.write_bytes(mmdb.write({prefix: mmdb.city(*ll) for prefix, ll in GEO.items()}))
    plain = config_module.parse(copy.deepcopy(raw_config), stack="dev")
    geo = config_module.parse({**copy.deepcopy(raw_config), "dnsGeoipDatabase": "city.mmdb"}, base_dir=tmp_path)
    assert geo.dns.geoip_database == str(db)
    fleet = [DeployedEdge(e, *EDGES[e.name]) for e in geo.edges]
    assert "latlon()" in edge_dns.zone(geo, geo.edges[0], fleet)
    assert "latlon()" not in edge_dns.zone(plain, plain.edges[0], fleet)
    conf = edge_dns.pdns_conf(geo)
    assert "launch+=geoip" in conf and f"geoip-database-files=mmdb:{edge_dns.GEOIP_PATH}" in conf
    assert "edns-subnet-processing=yes" in conf and "geoip" not in edge_dns.pdns_conf(plain)
    assert "pdns-backend-geoip" in edge_dns.packages(geo) and "pdns-backend-geoip" not in edge_dns.packages(plain)


@pytest.mark.netns
def test_geoip_answers_nearest_healthy_edge_first(raw_config, tmp_path: Path):
    require_root()
    require_tool("pdns_server")
    if not Path("/usr/lib/aarch64-linux-gnu/pdns/libgeoipbackend.so").exists() and not list(
        Path("/usr/lib").glob("*/pdns/libgeoipbackend.so")
    ):
        pytest.skip("pdns-backend-geoip is not installed (.ci/run installs it)")
    db = tmp_path / "city.mmdb"
    db.write_bytes(mmdb.write({prefix: mmdb.city(*ll) for prefix, ll in GEO.items()}))
    cfg = config_module.parse({**copy.deepcopy(raw_config), "dnsGeoipDatabase": str(db)}, stack="dev")
    fleet = [DeployedEdge(e, *EDGES[e.name]) for e in cfg.edges]
    fsn = cfg.edges[0]
    (tmp_path / "zone.db").write_text(edge_dns.zone(cfg, fsn, fleet))
    (tmp_path / "named.conf").write_text(
        edge_dns.named_conf(cfg).replace(edge_contract.PDNS_ZONE, str(tmp_path / "zone.db"))
    )
    (tmp_path / "geoip-zones.yaml").write_text(edge_dns.geoip_zones())
    conf = (
        edge_dns.pdns_conf(cfg)
        .replace(edge_dns.NAMED_CONF_PATH, str(tmp_path / "named.conf"))
        .replace(edge_dns.GEOIP_PATH, str(db))
        .replace(edge_dns.GEOIP_ZONES_PATH, str(tmp_path / "geoip-zones.yaml"))
        .replace("local-address=0.0.0.0, ::", "local-address=127.0.0.1")
        .replace("local-port=53", f"local-port={DNS_PORT}")
    )
    (tmp_path / "pdns.conf").write_text(conf)
    agents = _Agents()
    fsn_ip, ams_ip = "203.0.113.10", "198.51.100.20"
    with namespaces() as lab:
        node = lab.node("dns")
        node.addresses("lo", [f"{fsn_ip}/32", f"{ams_ip}/32"])
        servers = [_serve_agent(node, address, agents) for address in (fsn_ip, ams_ip)]
        proc = node.spawn(
            "pdns_server", f"--config-dir={tmp_path}", f"--socket-dir={tmp_path}", "--daemon=no", "--guardian=no",
            "--disable-syslog", log=tmp_path / "pdns.log",
        )  # fmt: skip
        try:

            def answers(ecs: str | None, source: str = "127.0.0.1") -> list[str]:
                with contextlib.suppress(Exception):
                    return _ask_geo(node, "cloud.edge.example.org", ecs, source)
                return []

            wait_for(lambda: len(answers(None)) == 2, timeout=15, message="pdns serving both edges")
            # The first answers come before any check has reported (every edge, as the
            # backup); wait until both edges' checks have come back healthy.
            time.sleep(edge_dns.CHECK_INTERVAL_S + edge_dns.CHECK_TIMEOUT_S)
            wait_for(lambda: answers("192.0.2.0/24") == [fsn_ip, ams_ip], timeout=15, message="both checked up")
            # Both healthy: nearest first, the other after, by the client subnet.
            assert answers("198.51.100.0/24") == [ams_ip, fsn_ip]
            assert answers("203.0.113.0/24") == [fsn_ip, ams_ip]
            # No ECS: the resolver's own address is located.
            assert answers(None, source=ams_ip) == [ams_ip, fsn_ip]
            assert answers(None, source=fsn_ip) == [fsn_ip, ams_ip]
            # A subnet the database does not place: the edge's own order (itself first).
            assert answers("100.64.0.0/24") == [fsn_ip, ams_ip]
            # The nearest edge unhealthy: it leaves the answer, the next nearest stays.
            agents.down.add((ams_ip, "cloud"))
            wait_for(lambda: answers("198.51.100.0/24") == [fsn_ip], timeout=15, message="ams excluded")
            agents.down.clear()
            wait_for(lambda: answers("198.51.100.0/24") == [ams_ip, fsn_ip], timeout=15, message="ams back")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            for server in servers:
                server.shutdown()
                server.server_close()
            print((tmp_path / "pdns.log").read_text()[-3000:])
