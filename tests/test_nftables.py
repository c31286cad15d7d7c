"""The edge firewall, checked by nft and then enforced in a namespace and probed.

The edge lives in one namespace, the internet in another, joined by a veth pair on
203.0.113.0/24; the probes are real connections whose fate the ruleset decides.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import require_root, require_tool

from components.model import config as config_module
from components.renderers import nftables

EDGE = "203.0.113.1"
ALLOWED_ADMIN = "203.0.113.2"  # inside sshAllowedCidrs
STRANGER = "203.0.113.200"  # outside it

pytestmark = pytest.mark.netns


def _raw(raw_config: dict) -> dict:
    raw = copy.deepcopy(raw_config)
    raw["sshAllowedCidrs"] = ["203.0.113.0/25", "2001:db8:1::/64"]
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


class Pair:
    """Two namespaces joined by a veth pair: the edge and the internet."""

    def __init__(self, tag: str):
        self.edge = f"cgnat-nft-edge-{tag}"
        self.net = f"cgnat-nft-net-{tag}"
        self.procs: list[subprocess.Popen] = []

    def sh(self, ns: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, **kw)

    def start(self, ns: str, *cmd: str) -> None:
        self.procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", ns, *cmd],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for ns in (self.edge, self.net):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def pair():
    require_root()
    require_tool("ip", "nft", "socat")
    p = Pair(str(os.getpid()))
    try:
        for ns in (p.edge, p.net):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            p.sh(ns, "ip", "link", "set", "lo", "up", check=True)
        subprocess.run(
            ["ip", "link", "add", "e0", "netns", p.edge, "type", "veth", "peer", "name", "n0", "netns", p.net],
            check=True,
        )
        p.sh(p.edge, "ip", "addr", "add", f"{EDGE}/24", "dev", "e0", check=True)
        p.sh(p.edge, "ip", "link", "set", "e0", "up", check=True)
        for addr in (ALLOWED_ADMIN, STRANGER):
            p.sh(p.net, "ip", "addr", "add", f"{addr}/24", "dev", "n0", check=True)
        p.sh(p.net, "ip", "link", "set", "n0", "up", check=True)
        yield p
    finally:
        p.close()


PROBE = r"""
import socket, sys
kind, source, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
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
    path = tmp_path / "nftables.conf"
    path.write_text(nftables.ruleset(cfg))
    loaded = pair.sh(pair.edge, "nft", "-f", str(path))
    assert loaded.returncode == 0, loaded.stderr
    assert "policy drop" in pair.sh(pair.edge, "nft", "list", "chain", "inet", "cgnat_edge", "input").stdout

    undeclared_tcp, undeclared_udp = 8080, 5353
    for port in (22, 2222, 443, undeclared_tcp):
        pair.start(pair.edge, "socat", f"TCP-LISTEN:{port},bind={EDGE},reuseaddr,fork", "EXEC:cat")
    for port in (2456, undeclared_udp):
        pair.start(pair.edge, "socat", f"UDP4-RECVFROM:{port},bind={EDGE},fork", "EXEC:cat")
    time.sleep(0.5)

    def probe(kind: str, source: str, port: int) -> str:
        return pair.sh(pair.net, sys.executable, "-c", PROBE, kind, source, EDGE, str(port), timeout=10).stdout.strip()

    assert probe("tcp", STRANGER, 2222) == "open"
    assert probe("tcp", STRANGER, 443) == "open"
    assert probe("udp", STRANGER, 2456) == "open"
    assert probe("tcp", ALLOWED_ADMIN, 22) == "open"
    assert probe("tcp", STRANGER, 22) == "dropped"
    assert probe("tcp", STRANGER, undeclared_tcp) == "dropped"
    assert probe("udp", STRANGER, undeclared_udp) == "dropped"
    # Without the ruleset the same undeclared port answers: the drop above is the
    # firewall's doing, not a missing listener.
    pair.sh(pair.edge, "nft", "flush", "ruleset", check=True)
    assert probe("tcp", STRANGER, undeclared_tcp) == "open"
