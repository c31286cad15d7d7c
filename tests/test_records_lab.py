"""dnsMode records in the lab: the push starts the health agent on every edge, a
checker outside the fleet (the lab's visitor, standing in for a user's PowerDNS or a
Route 53 checker) can ask it, and it reports a dead tunnel while the edge's Traefik keeps
running: what the ``powerdnsLua`` and Route 53 renderings' checks rely on."""

from __future__ import annotations

import pytest

from components.lab import attacks
from components.lab.netns import wait_for
from components.renderers import geodns

pytestmark = [pytest.mark.netns, pytest.mark.lab]


LAB_OVERRIDES = {"dnsMode": "records", "dnsEdgeZone": None}


def _status(el, edge: str, check: str) -> str:
    """The agent's HTTP status for ``check``, asked from the visitor's node."""
    url = f"http://{el.edges[edge].public_ip}:{geodns.HEALTH_PORT}/health/{check}"
    done = el.nodes["client"].run(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", url, check=False
    )  # fmt: skip
    return done.stdout.strip()


def test_agent_runs_in_records_mode_and_sees_a_dead_tunnel(el):
    assert not el.cfg.dns.edge_served
    checks = sorted({geodns.check_id(el.cfg, service) for _host, service in geodns.hostnames(el.cfg)})
    names = sorted(el.edges)
    wait_for(lambda: all(_status(el, e, c) == "200" for e in names for c in checks), 30, 0.2, "every agent's 200")
    victim, other = names[-1], names[0]
    iface = el.home_interface(victim)
    el.home.run("wg-quick", "down", iface)
    try:
        wait_for(lambda: all(_status(el, victim, c) == "503" for c in checks), 15, 0.2, f"{victim}'s 503")
        assert all(_status(el, other, c) == "200" for c in checks)
    finally:
        el.home.run("wg-quick", "up", iface)
    wait_for(lambda: all(_status(el, victim, c) == "200" for c in checks), 15, 0.2, f"{victim}'s 200 again")


def test_public_answers_are_up_or_down_alone(el):
    """Asked from outside the fleet, the agent names no service and no home address."""
    edge = el.edges[sorted(el.edges)[0]]
    check = geodns.check_id(el.cfg, geodns.hostnames(el.cfg)[0][1])
    base = f"http://{edge.public_ip}:{geodns.HEALTH_PORT}"
    wait_for(lambda: _status(el, edge.name, check) == "200", 30, 0.2, "the agent's 200")
    assert el.nodes["client"].run("curl", "-s", "-m", "2", f"{base}/health/{check}").stdout == "up\n"
    overview = el.nodes["client"].run(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", f"{base}/health"
    )
    assert overview.stdout.strip() == "404"
    assert not any(s.name in check for s in el.cfg.services)


def test_agent_flood_from_the_internet(el):
    """dnsMode records: the agent is open to everyone; 200 idle connections from the
    visitor neither stop it nor slow the checks another checker asks."""
    row = attacks.agent_flood(el)
    assert row.ok, row.detail
