"""The PowerDNS rendering, served by a real pdns_server (bind backend, LUA records on)
inside a network namespace this test creates.  The edges are documentation-range
addresses on that namespace's loopback; an edge is "up" while the test holds a
listening socket on its port there, so the server's own health checks decide the
answers.  Nothing leaves the namespace.

Measured behaviour of PowerDNS 4.7 without the geoip backend: ``pickclosest`` logs
that GeoIP is not launched, places every address at 0,0 and so picks at random
among the healthy edges; with every edge down, ``backupSelector='all'`` answers with
all of them, and so does the very first query, before any check has run."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import http.server
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from conftest import require_root, require_tool
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from components.model import config as config_module
from components.model.deployed import DeployedEdge
from components.renderers import geodns

pytestmark = pytest.mark.netns

EDGES = {"fsn": ("203.0.113.10", "2001:db8:1::10"), "ams": ("198.51.100.20", "2001:db8:2::20")}
DNS_ADDRESS, DNS_PORT = "127.0.0.1", 5300
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
NETNS_PREFIX = "cgn-pdns-"
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """pdns_server gets SIGTERM when the test process dies, even when a timeout kills
    it before the fixture's finalizer can run."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _remove_stale_namespaces() -> None:
    """Namespaces are named after the test process; drop those whose process is gone
    (killed before its finalizers ran), never one that is still in use."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        parts = name[len(NETNS_PREFIX) :].split("-")
        if not name.startswith(NETNS_PREFIX) or len(parts) != 2 or not parts[0].isdigit():
            continue
        if (
            not Path(f"/proc/{parts[0]}").exists()
            and not subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.strip()
        ):
            subprocess.run(["ip", "netns", "del", name], check=False)


def in_netns(name: str, fn):
    """Run ``fn`` on a thread that has entered the namespace; sockets it creates stay
    there, so the test process itself can talk inside the namespace."""
    box: dict = {}

    def run():
        try:
            with open(f"/run/netns/{name}") as handle:
                if _libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Namespace:
    def __init__(self, name: str):
        self.name = name

    def sh(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def listen(self, address: str, port: int) -> socket.socket:
        def make():
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(64)
            return sock

        return in_netns(self.name, make)

    def query(self, qname: str, rdtype: str = "A", timeout: float = 3.0) -> tuple[str, list[str]]:
        sock = in_netns(self.name, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
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
    require_root()
    require_tool("ip")
    _remove_stale_namespaces()
    ns = Namespace(f"{NETNS_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}")
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    try:
        ns.sh("link", "set", "lo", "up")
        for v4, v6 in EDGES.values():
            ns.sh("addr", "add", f"{v4}/32", "dev", "lo")
            ns.sh("addr", "add", f"{v6}/128", "dev", "lo", "nodad")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


@pytest.fixture
def fleet(raw_config):
    """The example services on one edge in Germany and one in the Netherlands."""
    raw = copy.deepcopy(raw_config)
    raw["edges"] = [
        {"name": "fsn", "provider": "hetzner", "location": "fsn1"},
        {"name": "ams", "provider": "digitalocean", "location": "ams3"},
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
    log = (tmp_path / "pdns.log").open("w")
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns.name,
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
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if netns.query(cfg.dns.zone, "SOA", timeout=0.5)[0] == "NOERROR":
                    break
            except Exception:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("pdns_server did not come up:\n" + (tmp_path / "pdns.log").read_text())
            time.sleep(0.2)
        yield netns, cfg, tmp_path / "pdns.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def many_edges_lines(raw_config) -> str:
    """A LUA record long enough to be split into two zone-file strings."""
    raw = copy.deepcopy(raw_config)
    raw.update(edges=[{"name": f"e{i}", "provider": "digitalocean", "location": "fra1"} for i in range(8)], ha=False)
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
    lines = [l for l in geodns.powerdns_lua(records, big).splitlines() if not l.startswith(";")]
    assert any('" "' in l for l in lines), "expected a record split into several strings"
    return "\n".join(lines) + "\n"


def picks(netns: Namespace, qname: str, count: int, timeout: float = 20.0) -> dict[str, int]:
    """How often each address is the single answer in ``count`` queries, counted once
    the health checks have run (before that, the backup set of every edge comes back)."""
    deadline = time.monotonic() + timeout
    while len(netns.query(qname)[1]) != 1:
        assert time.monotonic() < deadline, f"{qname} never answered a single edge"
        time.sleep(0.2)
    seen: dict[str, int] = {}
    for _ in range(count):
        rcode, answer = netns.query(qname)
        assert rcode == "NOERROR" and len(answer) == 1, (rcode, answer)
        seen[answer[0]] = seen.get(answer[0], 0) + 1
    return seen


def wait_for(netns: Namespace, qname: str, rdtype: str, expected: list[str], timeout: float = 20.0) -> list[str]:
    """Poll until the answer is ``expected`` three times running (checks run every
    second); return the last answer so a failure shows what the server said."""
    deadline = time.monotonic() + timeout
    streak, answer = 0, None
    while time.monotonic() < deadline:
        rcode, answer = netns.query(qname, rdtype)
        streak = streak + 1 if (rcode, answer) == ("NOERROR", expected) else 0
        if streak == 3:
            return answer
        time.sleep(0.3)
    return answer


# -- HTTPS health endpoint for ifurlup -----------------------------------------


def self_signed(tmp_path: Path, hostname: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@contextlib.contextmanager
def https_edge(netns: Namespace, address: str, status: int, tmp_path: Path, hostname: str):
    """An HTTPS server on ``address``:443 answering ``status`` to every GET."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.server.paths.append((self.headers.get("Host"), self.path))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    cert, key = self_signed(tmp_path, hostname)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer((address, 443), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = context.wrap_socket(netns.listen(address, 443), server_side=True)
    server.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- tests --------------------------------------------------------------------


def test_answer_follows_the_healthy_edge(pdns):
    netns, cfg, log = pdns
    fsn4, fsn6 = EDGES["fsn"]
    ams4, ams6 = EDGES["ams"]
    # Only fsn listens on 443 (blog is an http service: ifportup on 443).
    fsn_sockets = [netns.listen(fsn4, 443), netns.listen(fsn6, 443)]
    try:
        assert wait_for(netns, "blog.example.org", "A", [fsn4]) == [fsn4]
        assert wait_for(netns, "blog.example.org", "AAAA", [fsn6]) == [fsn6]
        ams_sockets = [netns.listen(ams4, 443), netns.listen(ams6, 443)]
    finally:
        for s in fsn_sockets:
            s.close()
    try:
        # fsn goes away, ams comes up: the answer switches.
        assert wait_for(netns, "blog.example.org", "A", [ams4]) == [ams4]
        assert wait_for(netns, "blog.example.org", "AAAA", [ams6]) == [ams6]
    finally:
        for s in ams_sockets:
            s.close()
    text = log.read_text()
    assert f"declaring TCP/IP {fsn4}:443 DOWN" in text
    assert f"declaring TCP/IP {ams4}:443 UP" in text


def test_all_down_answers_every_edge(pdns):
    netns, _, _ = pdns
    expected = sorted([EDGES["fsn"][0], EDGES["ams"][0]])
    time.sleep(2.5)  # let the checks run and fail
    assert wait_for(netns, "blog.example.org", "A", expected) == expected


def test_pickclosest_without_geoip_is_random_among_healthy(pdns):
    netns, _, log = pdns
    fsn4, ams4 = EDGES["fsn"][0], EDGES["ams"][0]
    sockets = [netns.listen(fsn4, 2222), netns.listen(ams4, 2222)]
    try:
        # edge.example.org is checked on 2222 (the lowest tcp service port).
        seen = picks(netns, "edge.example.org", 60)
    finally:
        for s in sockets:
            s.close()
    # Random, not closest: both come back (all 60 from one edge has odds 2 * 2**-60).
    assert set(seen) == {fsn4, ams4}, seen
    assert "GeoIPBackend functionality, but backend not launched" in log.read_text()


def test_ifurlup_checks_the_health_path(pdns, tmp_path):
    netns, cfg, log = pdns
    fsn4, ams4 = EDGES["fsn"][0], EDGES["ams"][0]
    # Both edges accept TLS on 443, but only fsn's home answers /status.php with 200.
    with (
        https_edge(netns, fsn4, 200, tmp_path, "cloud.example.org") as fsn,
        https_edge(netns, ams4, 503, tmp_path, "cloud.example.org"),
    ):
        assert wait_for(netns, "cloud.example.org", "A", [fsn4]) == [fsn4]
        # The port check alone would accept both: blog answers with either.
        assert set(picks(netns, "blog.example.org", 60)) == {fsn4, ams4}
        assert ("cloud.example.org", "/status.php") in fsn.paths


def test_long_record_split_into_strings_is_served(pdns):
    netns, _, _ = pdns
    # Nothing listens there, so after the checks the backup set (all 8) comes back;
    # every address parsed means the split strings were joined into valid Lua.
    expected = sorted(f"2001:db8:aaaa:bbbb:cccc:dddd:eeee:{i:x}" for i in range(1, 9))
    assert wait_for(netns, "many.example.org", "AAAA", expected) == expected
