"""The health agent under hostile askers, as the real script on 127.0.0.1 (no root): idle
connections by the hundred, an oversized request, and what a public (dnsMode records)
answer gives away.  The checks' target is a listener on loopback, so nothing leaves the
machine."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import config as config_module
from components.lab.netns import wait_for
from components.model import edge_contract
from components.model.deployed import DeployedEdge
from components.renderers import edge_dns, geodns, templates
from tests.support import require_tool

READ_TIMEOUT_S = 3.0
"""The agent's READ_TIMEOUT_S: an idle connection is closed after it."""
MAX_CONNECTIONS = 256
RSS_LIMIT_KB = 40 * 1024
"""Well under the unit's MemoryMax=64M; the agent idles near 20 MB."""
ANSWER_BOUND_S = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class Agent:
    def __init__(self, proc: subprocess.Popen, port: int, check: str):
        self.proc, self.port, self.check = proc, port, check

    def get(self, path: str) -> tuple[int, str, float]:
        """(status, body, seconds) of one GET, as a DNS health checker asks."""
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                status, body = r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read().decode()
        return status, body, time.monotonic() - started


@pytest.fixture
def target() -> Iterator[socket.socket]:
    """A tcp service on loopback for the agent to check."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    with s:
        yield s


def _start(tmp_path: Path, target: socket.socket, public: bool) -> Iterator[Agent]:
    port = _free_port()
    check = "3f2a9c0d41b7e65c8a90d1e2" if public else "svc"
    conf = {
        "edge": "t",
        "public": public,
        "port": port,
        "interval": 1,
        "timeout": 1,
        "https": "127.0.0.1:1",
        "checks": {check: [{"kind": "tcp", "host": "127.0.0.1", "port": target.getsockname()[1]}]},
    }
    (tmp_path / "health.json").write_text(json.dumps(conf))
    script = tmp_path / "agent.py"
    script.write_text(templates.text("cgnat-edge-health.py"))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "health.json")], stdout=subprocess.DEVNULL)
    agent = Agent(proc, port, check)
    try:
        wait_for(lambda: _status_or_zero(agent) == 200, timeout=10, message="the agent reports its target up")
        yield agent
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _status_or_zero(agent: Agent) -> int:
    try:
        return agent.get(f"/health/{agent.check}")[0]
    except OSError:
        return 0


@pytest.fixture
def agent(tmp_path, target) -> Iterator[Agent]:
    yield from _start(tmp_path, target, public=False)


@pytest.fixture
def public_agent(tmp_path, target) -> Iterator[Agent]:
    yield from _start(tmp_path, target, public=True)


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that send nothing, like a slow-loris client."""
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        yield socks
    finally:
        for s in socks:
            s.close()


def _closed_by_peer(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_connections_neither_block_checks_nor_grow_memory(agent):
    baseline = _rss_kb(agent.proc.pid)
    with idle_connections(agent.port, 200) as socks:
        time.sleep(0.5)  # every one accepted and held
        for _ in range(5):
            status, _body, seconds = agent.get(f"/health/{agent.check}")
            assert status == 200
            assert seconds < ANSWER_BOUND_S
        rss = _rss_kb(agent.proc.pid)
        assert rss < RSS_LIMIT_KB, f"VmRSS {rss} kB with 200 idle connections (idle: {baseline} kB)"
        # The idle ones are closed once the read timeout is up; the agent stays.
        deadline = time.monotonic() + READ_TIMEOUT_S + 3
        assert all(_closed_by_peer(s, max(0.1, deadline - time.monotonic())) for s in socks)
    assert agent.proc.poll() is None
    assert agent.get(f"/health/{agent.check}")[0] == 200


def test_beyond_the_cap_the_oldest_connections_go(agent):
    extra = 40
    with idle_connections(agent.port, MAX_CONNECTIONS + extra) as socks:
        status, _body, seconds = agent.get(f"/health/{agent.check}")
        assert status == 200 and seconds < ANSWER_BOUND_S
        # The oldest made room (for the newest idle ones and the check); the newest are held.
        assert sum(_closed_by_peer(s, 0.3) for s in socks[: extra + 1]) == extra + 1
        assert not any(_closed_by_peer(s, 0.05) for s in socks[-20:])
        assert _rss_kb(agent.proc.pid) < RSS_LIMIT_KB
    assert agent.proc.poll() is None


def test_an_oversized_request_is_refused(agent):
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as s:
        s.sendall(b"GET /health/" + b"a" * 4096)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert agent.get(f"/health/{agent.check}")[0] == 200


def test_only_get_of_a_known_check(agent):
    assert agent.get("/health/nope")[0] == 404
    assert agent.get("/other")[0] == 404
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as s:
        s.sendall(b"POST /health/svc HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.1 405 ")


def test_a_public_answer_is_up_or_down_alone(public_agent, target):
    """dnsMode records: anyone may ask, and learns whether the check passes, nothing else
    (not the target's address or port, not the checks there are)."""
    port = str(target.getsockname()[1])
    status, body, _ = public_agent.get(f"/health/{public_agent.check}")
    assert (status, body) == (200, "up\n")
    assert public_agent.get("/health")[0] == 404
    assert public_agent.get("/health/")[0] == 404
    target.close()
    wait_for(lambda: public_agent.get(f"/health/{public_agent.check}")[:2] == (503, "down\n"), 10, 0.2, "503 down")
    for path in ("/health", f"/health/{public_agent.check}", "/health/svc"):
        _status, body, _ = public_agent.get(path)
        assert "127.0.0.1" not in body and port not in body and "tcp" not in body, body


def test_records_mode_checks_are_opaque_and_the_renderings_ask_them(raw_config):
    raw = {**raw_config, "dnsMode": "records", "dnsEdgeZone": None}
    cfg = config_module.parse(raw, stack="dev")
    addresses = {"fsn": ("203.0.113.10", None), "ams": ("198.51.100.20", None)}
    records = geodns.policy(cfg, [DeployedEdge(e, *addresses[e.name]) for e in cfg.edges])
    names = [s.name for s in cfg.services] + [geodns.PORTS_CHECK]
    paths = {c["path"] for r in records for c in r["health_checks"]}
    assert paths and not any(name in path for name in names for path in paths), paths
    for edge in cfg.edges:
        agent = edge_dns.agent_config(cfg, edge)
        assert agent["public"] is True
        assert {p.removeprefix("/health/") for p in paths} <= set(agent["checks"])
        assert not set(names) & set(agent["checks"])
    # dnsMode edges (only the fleet may ask): readable names, details for the status tool.
    edges_cfg = config_module.parse(raw_config, stack="dev")
    assert edge_dns.agent_config(edges_cfg, edges_cfg.edges[0])["public"] is False
    assert "cloud" in edge_dns.agent_config(edges_cfg, edges_cfg.edges[0])["checks"]


def _unit_settings() -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in templates.text(edge_contract.HEALTH_UNIT).splitlines():
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            current[key] = value
    return sections


def test_the_unit_restarts_forever_within_bounds():
    """A crash or an OOM kill is followed by a start, however often: a unit past its
    start limit would stay down, and DNS failover with it."""
    unit = _unit_settings()
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"
    service = unit["Service"]
    assert service["Restart"] == "always" and service["RestartSec"] == "2s"
    assert service["MemoryMax"] == "64M" and service["TasksMax"] == "256"


@pytest.mark.netns
def test_the_unit_verifies(tmp_path):
    require_tool("systemd-analyze")
    path = tmp_path / edge_contract.HEALTH_UNIT
    script = tmp_path / "agent.py"
    script.write_text(templates.text("cgnat-edge-health.py"))
    script.chmod(0o755)
    path.write_text(templates.text(edge_contract.HEALTH_UNIT).replace(edge_contract.HEALTH_AGENT, str(script)))
    res = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
