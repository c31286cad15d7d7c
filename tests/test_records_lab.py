"""dnsMode records in the lab: the push starts the health agent on every edge, a
checker outside the fleet (the lab's visitor, standing in for a user's PowerDNS or a
Route 53 checker) can ask it, and it reports a dead tunnel while the edge's Traefik keeps
running: what the ``powerdnsLua`` and Route 53 renderings' checks rely on."""

from __future__ import annotations

import time

import pytest

from components.lab import runner
from components.lab.build import build
from components.lab.rendered import render_stack
from components.renderers import geodns
from tests.support import ROOT, require_root, require_tool

pytestmark = pytest.mark.netns

STACK = ROOT / "tests" / "fixtures" / "Pulumi.lab.yaml"


@pytest.fixture(scope="module")
def el(tmp_path_factory):
    require_root()
    require_tool(*runner.TOOLS)
    rendered = render_stack(
        STACK,
        tmp_path_factory.mktemp("records-lab") / "render",
        project_file=ROOT / "Pulumi.yaml",
        config_overrides={"dnsMode": "records", "dnsEdgeZone": None},
    )
    assert not rendered.cfg.dns.edge_served
    edge_lab = build(rendered)
    try:
        yield edge_lab
    finally:
        edge_lab.close()


def _status(el, edge: str, check: str) -> str:
    """The agent's HTTP status for ``check``, asked from the visitor's node."""
    url = f"http://{el.edges[edge].public_ip}:{geodns.HEALTH_PORT}/health/{check}"
    done = el.nodes["client"].run(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", url, check=False
    )  # fmt: skip
    return done.stdout.strip()


def _wait(condition, timeout: float = 30) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.2)
    return None


def test_agent_runs_in_records_mode_and_sees_a_dead_tunnel(el):
    checks = sorted({geodns.check_id(service) for _host, service in geodns.hostnames(el.cfg)})
    names = sorted(el.edges)
    assert _wait(lambda: all(_status(el, e, c) == "200" for e in names for c in checks)) is not None, {
        (e, c): _status(el, e, c) for e in names for c in checks
    }
    victim, other = names[-1], names[0]
    iface = el.home_interface(victim)
    el.home.run("wg-quick", "down", iface)
    try:
        down_s = _wait(lambda: all(_status(el, victim, c) == "503" for c in checks))
        assert down_s is not None and down_s <= 15, {c: _status(el, victim, c) for c in checks}
        assert all(_status(el, other, c) == "200" for c in checks)
    finally:
        el.home.run("wg-quick", "up", iface)
    up_s = _wait(lambda: all(_status(el, victim, c) == "200" for c in checks))
    assert up_s is not None and up_s <= 15, {c: _status(el, victim, c) for c in checks}
