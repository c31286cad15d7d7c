"""The edge firewall, checked by nft and then enforced in a namespace and probed.

The edge lives in one namespace, the internet in another, joined by a veth pair on
203.0.113.0/24; the probes are real connections whose fate the ruleset decides.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time

import pytest

from components import config as config_module
from components.lab.netns import wait_for
from components.renderers import nftables
from tests.support import namespaces, require_tool

EDGE = "203.0.113.1"
ALLOWED_ADMIN = "203.0.113.2"  # inside sshAllowedCidrs
STRANGER = "203.0.113.200"  # outside it

pytestmark = pytest.mark.netns


def _raw(raw_config: dict) -> dict:
    raw = copy.deepcopy(raw_config)
    raw["sshAllowedCidrs"] = ["203.0.113.0/25", "2001:db8:1::/64"]
    raw["dnsMode"] = "records"  # the edge-DNS rules (port 53, the agent) are tested in test_edge_dns.py
    return raw


@pytest.fixture
def cfg(raw_config):
    return config_module.parse(_raw(raw_config), stack="dev")


def test_ruleset_passes_nft_check(cfg, tmp_path):
    require_tool("nft")
    path = tmp_path / "nftables.conf"
    path.write_text(nftables.ruleset(cfg))
    res = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_ruleset_opens_exactly_the_public_ports(cfg):
    text = nftables.ruleset(cfg)
    tcp = ", ".join(map(str, cfg.public_ports("tcp")))
    udp = ", ".join(map(str, cfg.public_ports("udp")))
    assert f"tcp dport {{ {tcp} }} accept" in text
    assert f"udp dport {{ {udp} }} accept" in text
    assert str(cfg.tunnel.listen_port) in udp
    assert "ip saddr { 203.0.113.0/25 } tcp dport 22 accept" in text
    assert "ip6 saddr { 2001:db8:1::/64 } tcp dport 22 accept" in text
    assert "hook forward priority filter; policy drop;" in text
    assert 'oifname "wg0" tcp flags syn / syn,rst tcp option maxseg size set rt mtu' in text


@pytest.fixture
def pair():
    """Two namespaces joined by a veth pair: the edge and the internet."""
    with namespaces("nft", "socat", "ss") as lab:
        edge, net = lab.node("edge"), lab.node("net")
        lab.link(edge, "e0", [f"{EDGE}/24"], net, "n0", [f"{ALLOWED_ADMIN}/24", f"{STRANGER}/24"])
        yield edge, net


PROBE = r"""
import socket, sys
kind, source, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
s.settimeout(1.5)
s.bind((source, 0))
try:
    s.connect((host, port))
    s.send(b"probe")
    print("open" if s.recv(10) == b"probe" else "odd")
except (socket.timeout, TimeoutError):
    print("dropped")
except ConnectionRefusedError:
    print("refused")
"""


def test_ruleset_enforced_in_a_namespace(cfg, pair, tmp_path):
    edge, net = pair
    path = tmp_path / "nftables.conf"
    path.write_text(nftables.ruleset(cfg))
    loaded = edge.run("nft", "-f", str(path), check=False)
    assert loaded.returncode == 0, loaded.stderr
    assert "policy drop" in edge.run("nft", "list", "chain", "inet", "cgnat_edge", "input").stdout

    undeclared_tcp, undeclared_udp = 8080, 5353
    for port in (22, 2222, 443, undeclared_tcp):
        edge.spawn("socat", f"TCP-LISTEN:{port},bind={EDGE},reuseaddr,fork", "EXEC:cat")
    for port in (2456, undeclared_udp):
        edge.spawn("socat", f"UDP4-RECVFROM:{port},bind={EDGE},fork", "EXEC:cat")
    listening = [f"{EDGE}:{port}" for port in (22, 2222, 443, undeclared_tcp, 2456, undeclared_udp)]
    wait_for(
        lambda: set(listening) <= set(edge.run("ss", "-Hlntu", check=False).stdout.split()),
        message="socat listening on every port",
    )

    def probe(kind: str, source: str, port: int) -> str:
        return net.run(
            sys.executable, "-c", PROBE, kind, source, EDGE, str(port), check=False, timeout=10
        ).stdout.strip()

    assert probe("tcp", STRANGER, 2222) == "open"
    assert probe("tcp", STRANGER, 443) == "open"
    assert probe("udp", STRANGER, 2456) == "open"
    assert probe("tcp", ALLOWED_ADMIN, 22) == "open"
    assert probe("tcp", STRANGER, 22) == "dropped"
    assert probe("tcp", STRANGER, undeclared_tcp) == "dropped"
    assert probe("udp", STRANGER, undeclared_udp) == "dropped"
    # Without the ruleset the same undeclared port answers: the drop above is the
    # firewall's doing, not a missing listener.
    edge.run("nft", "flush", "ruleset")
    assert probe("tcp", STRANGER, undeclared_tcp) == "open"


BURST = r"""
import select, socket, sys, time
source, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
socks = []
for _ in range(n):  # every SYN leaves within milliseconds, before the limit refills much
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.bind((source, 0))
    s.connect_ex((host, port))
    socks.append(s)
time.sleep(0.8)  # answered SYNs are connected by now; dropped ones retransmit only after 1 s
_, writable, _ = select.select([], socks, [], 0)
print(sum(1 for s in writable if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0))
"""


def test_health_agent_is_open_to_every_checker_rate_limited_per_source(cfg, pair, tmp_path):
    """dnsMode records: Route 53's and the user's own checkers cannot be listed, so the
    agent's port is open to all; a source opening connections faster than
    ``HEALTH_RATE`` loses the excess, other sources are unaffected."""
    edge, net = pair
    path = tmp_path / "nftables.conf"
    path.write_text(nftables.ruleset(cfg))
    loaded = edge.run("nft", "-f", str(path), check=False)
    assert loaded.returncode == 0, loaded.stderr
    edge.spawn("socat", f"TCP-LISTEN:8053,bind={EDGE},reuseaddr,fork,backlog=200", "EXEC:cat")
    wait_for(lambda: f"{EDGE}:8053" in edge.run("ss", "-Hlnt", check=False).stdout, message="socat on 8053")

    def burst(source: str, n: int) -> int:
        return int(net.run(sys.executable, "-c", BURST, source, EDGE, "8053", str(n), timeout=20).stdout)

    assert burst(STRANGER, 5) == 5  # a checker is let in, from anywhere
    time.sleep(3)  # the limit refills (20/s) before the flood
    opened = burst(STRANGER, 120)
    assert 30 <= opened <= 70, opened  # burst 40 (+ refill while the SYNs go out), never all 120
    assert burst(ALLOWED_ADMIN, 5) == 5  # per source: another checker is not starved


METADATA_V4, METADATA_V6 = "169.254.169.254", "fd00:c1::a9fe:a9fe"  # Oracle's pair; the others use the v4 one
ASK = r"""
import socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
s.settimeout(1.5)
try:
    s.connect((host, port))
    s.send(b"probe")
    print("open" if s.recv(10) == b"probe" else "odd")
except (socket.timeout, TimeoutError):
    print("dropped")
except OSError as e:
    print("refused", e.errno)
"""


def test_only_root_on_the_edge_reaches_the_metadata_service_and_nothing_routed_does(cfg, tmp_path):
    """A fake metadata service at the providers' addresses, beyond the edge as the real
    one is.  Root on the edge (cloud-init) gets an answer; a service user gets refused,
    except for the resolver and NTP Oracle runs on the same address; a client routed
    through the edge (a visitor, a road warrior with ``internet: true``) gets nothing,
    even with a rule after the drop that accepts everything."""
    with namespaces("nft", "socat", "ss", "setpriv") as lab:
        client, edge, net = lab.node("client"), lab.node("edge"), lab.node("net")
        lab.link(edge, "e0", [f"{EDGE}/24", "2001:db8:1::1/64"], net, "n0", [f"{ALLOWED_ADMIN}/24", "2001:db8:1::2/64"])
        lab.link(
            client, "c0", ["198.51.100.2/24", "2001:db8:2::2/64"], edge, "v0", ["198.51.100.1/24", "2001:db8:2::1/64"]
        )
        net.addresses("lo", [f"{METADATA_V4}/32", f"{METADATA_V6}/128"])
        edge.forward()
        edge.route(METADATA_V4, "via", ALLOWED_ADMIN)
        edge.route(METADATA_V6, "via", "2001:db8:1::2")
        client.route("default", "via", "198.51.100.1")
        client.route("default", "via", "2001:db8:2::1")
        net.route("198.51.100.0/24", "via", EDGE)
        net.route("2001:db8:2::/64", "via", "2001:db8:1::1")
        net.spawn("socat", f"TCP-LISTEN:80,bind={METADATA_V4},reuseaddr,fork", "EXEC:cat")
        net.spawn("socat", f"TCP6-LISTEN:80,bind=[{METADATA_V6}],reuseaddr,fork", "EXEC:cat")
        net.spawn("socat", f"TCP-LISTEN:80,bind={ALLOWED_ADMIN},reuseaddr,fork", "EXEC:cat")
        net.spawn("socat", f"UDP4-RECVFROM:53,bind={METADATA_V4},fork", "EXEC:cat")
        wanted = {f"{METADATA_V4}:80", f"[{METADATA_V6}]:80", f"{ALLOWED_ADMIN}:80", f"{METADATA_V4}:53"}
        wait_for(lambda: wanted <= set(net.run("ss", "-Hlntu", check=False).stdout.split()), message="socat listening")

        path = tmp_path / "nftables.conf"
        path.write_text(nftables.ruleset(cfg))
        loaded = edge.run("nft", "-f", str(path), check=False)
        assert loaded.returncode == 0, loaded.stderr
        # Whatever a later rule lets through (a road warrior's exit, a forward service),
        # the metadata drop comes first.
        edge.run("nft", "add", "rule", "inet", "cgnat_edge", "forward", "accept")

        def ask(node, kind: str, host: str, port: int, *, user: str | None = None) -> str:
            argv = ["python3", "-c", ASK, kind, host, str(port)]
            if user:
                argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
            return node.run(*argv, check=False, timeout=10).stdout.strip()

        nobody = "65534"
        assert ask(edge, "tcp", METADATA_V4, 80) == "open"  # root: cloud-init still reads its datasource
        assert ask(edge, "tcp", METADATA_V6, 80) == "open"
        assert ask(edge, "tcp", METADATA_V4, 80, user=nobody).startswith("refused")
        assert ask(edge, "tcp", METADATA_V6, 80, user=nobody).startswith("refused")
        assert ask(edge, "udp", METADATA_V4, 53, user=nobody) == "open"  # Oracle's resolver
        assert ask(edge, "tcp", ALLOWED_ADMIN, 80, user=nobody) == "open"  # only the metadata service is shut
        assert ask(client, "tcp", ALLOWED_ADMIN, 80) == "open"  # the edge routes the client
        assert ask(client, "tcp", METADATA_V4, 80) == "dropped"
        assert ask(client, "tcp", METADATA_V6, 80) == "dropped"
        # Without the ruleset the same requests are answered: the refusals are its doing.
        edge.run("nft", "flush", "ruleset")
        assert ask(edge, "tcp", METADATA_V4, 80, user=nobody) == "open"
        assert ask(client, "tcp", METADATA_V4, 80) == "open"
        assert ask(client, "tcp", METADATA_V6, 80) == "open"
