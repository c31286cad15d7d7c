"""The PowerDNS rendering, served by a real pdns_server (bind backend, LUA records on)
inside a network namespace this test creates.  The edges are documentation-range
addresses on that namespace's loopback, each with a stand-in for the edge's health
agent on port 8053 answering 200 or 503 per check, as the real agent does after
probing the service through that edge's Traefik, tunnel and home; the server's own
``ifurlup`` checks decide the answers.  Nothing leaves the namespace.

Measured behaviour of PowerDNS 4.7 without the geoip backend: ``pickclosest`` logs
that GeoIP is not launched, places every address at 0,0 and so picks at random
among the healthy edges; with every edge down, ``backupSelector='all'`` answers with
all of them, and so does the very first query, before any check has run."""

from __future__ import annotations

import contextlib
import copy
import http.server
import socket
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from components import config as config_module
from components.lab.netns import Node, wait_for
from components.model.deployed import DeployedEdge
from components.renderers import geodns
from tests.support import namespaces, require_tool

pytestmark = pytest.mark.netns

EDGES = {"fsn": ("203.0.113.10", "2001:db8:1::10"), "ams": ("198.51.100.20", "2001:db8:2::20")}
DNS_ADDRESS, DNS_PORT = "127.0.0.1", 5300


def listen(node: Node, address: str, port: int) -> socket.socket:
    """A listening socket of this process inside the node: an edge that is "up"."""

    def make():
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(64)
        return sock

    return node.call(make)


def query(node: Node, qname: str, rdtype: str = "A", timeout: float = 3.0) -> tuple[str, list[str]]:
    sock = node.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.setblocking(False)  # dnspython applies its timeout only to non-blocking sockets
    with sock:
        response = dns.query.udp(
            dns.message.make_query(qname, rdtype), DNS_ADDRESS, port=DNS_PORT, timeout=timeout, sock=sock
        )
    answers = sorted(
        r.to_text() for rrset in response.answer if rrset.rdtype == dns.rdatatype.from_text(rdtype) for r in rrset
    )
    return dns.rcode.to_text(response.rcode()), answers


@pytest.fixture
def netns():
    """One node whose loopback carries every edge address and the DNS server."""
    with namespaces() as lab:
        node = lab.node("dns")
        node.addresses("lo", [a for v4, v6 in EDGES.values() for a in (f"{v4}/32", f"{v6}/128")])
        yield node


@pytest.fixture
def fleet(raw_config):
    """The example services on one edge in Germany and one in the Netherlands."""
    raw = copy.deepcopy(raw_config)
    raw["edges"] = [
        {"name": "fsn", "provider": "hetzner", "location": "fsn1", "index": 1},
        {"name": "ams", "provider": "digitalocean", "location": "ams3", "index": 2},
    ]
    cfg = config_module.parse(raw, stack="dev")
    endpoints = [DeployedEdge(e, *EDGES[e.name]) for e in cfg.edges]
    return cfg, geodns.policy(cfg, endpoints)


def zone_text(cfg, lua_lines: str) -> str:
    return (
        f"$ORIGIN {cfg.dns.zone}.\n$TTL 3600\n"
        f"@ IN SOA ns1 hostmaster 1 3600 600 604800 60\n@ IN NS ns1\nns1 IN A 192.0.2.53\n" + lua_lines
    )


@pytest.fixture
def pdns(netns, fleet, raw_config, tmp_path: Path):
    """pdns_server inside the namespace, serving the rendered LUA records."""
    require_tool("pdns_server")
    cfg, records = fleet
    extra = many_edges_lines(raw_config)
    (tmp_path / "zone").write_text(zone_text(cfg, geodns.powerdns_lua(records, cfg) + extra))
    (tmp_path / "named.conf").write_text(f'zone "{cfg.dns.zone}" {{ type master; file "{tmp_path / "zone"}"; }};\n')
    log = tmp_path / "pdns.log"
    proc = netns.spawn(
        "pdns_server",
        "--no-config",
        "--daemon=no",
        "--guardian=no",
        "--launch=bind",
        f"--bind-config={tmp_path / 'named.conf'}",
        f"--socket-dir={tmp_path}",
        f"--local-address={DNS_ADDRESS}",
        f"--local-port={DNS_PORT}",
        "--enable-lua-records=yes",
        "--lua-health-checks-interval=1",
        "--security-poll-suffix=",
        "--cache-ttl=0",
        "--query-cache-ttl=0",
        "--negquery-cache-ttl=0",
        "--disable-syslog",
        "--loglevel=6",
        log=log,
    )

    def serving() -> bool:
        with contextlib.suppress(Exception):
            return query(netns, cfg.dns.zone, "SOA", timeout=0.5)[0] == "NOERROR"
        return False

    with contextlib.suppress(AssertionError):
        wait_for(lambda: proc.poll() is not None or serving(), timeout=15, interval=0.2, message="pdns_server")
    assert proc.poll() is None and serving(), "pdns_server did not come up:\n" + log.read_text()
    yield netns, cfg, log


def many_edges_lines(raw_config) -> str:
    """A LUA record long enough to be split into two zone-file strings."""
    raw = copy.deepcopy(raw_config)
    raw.update(
        edges=[{"name": f"e{i}", "provider": "digitalocean", "location": "fra1", "index": i + 1} for i in range(8)],
        ha=False,
    )
    big = config_module.parse(raw, stack="dev")
    endpoints = [
        DeployedEdge(e, f"198.51.100.{100 + i}", f"2001:db8:aaaa:bbbb:cccc:dddd:eeee:{i + 1:x}")
        for i, e in enumerate(big.edges)
    ]
    records = [
        dict(r, hostname=f"many.{big.dns.zone}")
        for r in geodns.policy(big, endpoints)
        if r["hostname"] == f"blog.{big.dns.zone}"
    ]
    lines = [line for line in geodns.powerdns_lua(records, big).splitlines() if not line.startswith(";")]
    assert any('" "' in line for line in lines), "expected a record split into several strings"
    return "\n".join(lines) + "\n"


def picks(netns: Node, qname: str, count: int, timeout: float = 20.0) -> dict[str, int]:
    """How often each address is the single answer in ``count`` queries, counted once
    the health checks have run (before that, the backup set of every edge comes back)."""
    wait_for(lambda: len(query(netns, qname)[1]) == 1, timeout, 0.2, message=f"{qname} to answer a single edge")
    seen: dict[str, int] = {}
    for _ in range(count):
        rcode, answer = query(netns, qname)
        assert rcode == "NOERROR" and len(answer) == 1, (rcode, answer)
        seen[answer[0]] = seen.get(answer[0], 0) + 1
    return seen


def settles(netns: Node, qname: str, rdtype: str, expected: list[str], timeout: float = 20.0) -> None:
    """Poll until the answer is ``expected`` three times running (checks run every
    second); a failure shows the last answers the server gave."""
    answers: list[tuple[str, list[str]]] = []

    def three_in_a_row() -> bool:
        answers.append(query(netns, qname, rdtype))
        return answers[-3:] == [("NOERROR", expected)] * 3

    try:
        wait_for(three_in_a_row, timeout, 0.3, message=f"{qname} {rdtype} to settle on {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answers: {answers[-3:]}") from None


# -- stand-in health agents -----------------------------------------------------


@contextlib.contextmanager
def agents(netns: Node, addresses: list[str]):
    """An agent on each address's port 8053: 200 for every check unless the
    (address, check) pair is in the yielded ``down`` set, then 503."""
    down: set[tuple[str, str]] = set()
    asked: list[tuple[str, str | None, str]] = []
    servers = []

    def serve(address: str) -> http.server.ThreadingHTTPServer:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                check = self.path.removeprefix("/health/")
                asked.append((address, self.headers.get("Host"), self.path))
                self.send_response(503 if (address, check) in down else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
            daemon_threads = True

        server = Server((address, geodns.HEALTH_PORT), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = listen(netns, address, geodns.HEALTH_PORT)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    try:
        servers = [serve(a) for a in addresses]
        yield down, asked
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


# -- tests --------------------------------------------------------------------


def test_a_dead_tunnel_leaves_the_answer(pdns):
    """fsn's Traefik keeps accepting on 443 (the old ``ifportup(443)`` check would keep
    it in), but its agent reports ``blog`` down, as it does when fsn's tunnel to home
    is dead: fsn leaves blog's answers, for both families, and returns on recovery.
    The other names keep both edges (a check per service)."""
    netns, _, _ = pdns
    fsn4, fsn6 = EDGES["fsn"]
    ams4, ams6 = EDGES["ams"]
    traefik = [listen(netns, a, 443) for a in (fsn4, fsn6)]
    try:
        with agents(netns, [fsn4, fsn6, ams4, ams6]) as (down, asked):
            assert set(picks(netns, "blog.example.org", 40)) == {fsn4, ams4}
            down.update({(fsn4, "blog"), (fsn6, "blog")})
            started = time.monotonic()
            settles(netns, "blog.example.org", "A", [ams4])
            excluded_s = time.monotonic() - started
            settles(netns, "blog.example.org", "AAAA", [ams6])
            assert set(picks(netns, "cloud.example.org", 40)) == {fsn4, ams4}  # another service: unaffected
            down.clear()
            started = time.monotonic()
            wait_for(lambda: query(netns, "blog.example.org")[1] == [fsn4], 15, 0.1, message="fsn back in blog")
            recovered_s = time.monotonic() - started
            assert set(picks(netns, "blog.example.org", 40)) == {fsn4, ams4}
    finally:
        for sock in traefik:
            sock.close()
    # Two failures 1 s apart, each fetch at most 2 s: well inside the 15 s goal.
    assert excluded_s < 8, excluded_s
    assert recovered_s < 8, recovered_s
    # pdns fetched each edge's agent at that edge's address; the URL's host is the Host header.
    assert (fsn4, f"cgnat-edge-health:{geodns.HEALTH_PORT}", "/health/blog") in asked
    assert (f"{ams6}", f"cgnat-edge-health:{geodns.HEALTH_PORT}", "/health/blog") in asked


def test_all_down_answers_every_edge(pdns):
    netns, _, _ = pdns
    fsn4, ams4 = EDGES["fsn"][0], EDGES["ams"][0]
    with agents(netns, [fsn4, ams4]) as (down, _):
        down.update({(fsn4, "blog"), (ams4, "blog")})
        time.sleep(3.5)  # let the checks run and fail twice
        settles(netns, "blog.example.org", "A", sorted([fsn4, ams4]))


def test_pickclosest_without_geoip_is_random_among_healthy(pdns):
    netns, _, log = pdns
    fsn4, ams4 = EDGES["fsn"][0], EDGES["ams"][0]
    with agents(netns, [fsn4, ams4]) as (down, _):
        # edge.example.org is for the tcp/udp services: the agent's ``ports`` check.
        seen = picks(netns, "edge.example.org", 60)
        down.add((fsn4, "ports"))
        settles(netns, "edge.example.org", "A", [ams4])
    # Random, not closest: both come back (all 60 from one edge has odds 2 * 2**-60).
    assert set(seen) == {fsn4, ams4}, seen
    assert "GeoIPBackend functionality, but backend not launched" in log.read_text()


def test_long_record_split_into_strings_is_served(pdns):
    netns, _, _ = pdns
    # Nothing listens there, so after the checks the backup set (all 8) comes back;
    # every address parsed means the split strings were joined into valid Lua.
    expected = sorted(f"2001:db8:aaaa:bbbb:cccc:dddd:eeee:{i:x}" for i in range(1, 9))
    settles(netns, "many.example.org", "AAAA", expected)
