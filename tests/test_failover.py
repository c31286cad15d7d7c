"""``cgnat-edge lab --faults``: the edges' own nameservers stop sending visitors to an
edge that is down, to an edge whose tunnel to home is down (while its Traefik and DNS
keep running), and fall back to every edge for a service that is down everywhere;
each measured from the fault to the answers of every edge's nameserver, and back.

The tested path is tests/fixtures/Pulumi.lab.yaml (documentation addresses only; the
example dev stack uses 192.168.1.0/24 at home, which the lab does not put on its
wires), in the example's DNS mode: dnsMode edges."""

from __future__ import annotations

import json

import pytest

from components.lab import failover, runner
from tests.support import DEV_STACK, LAB_STACK, PROJECT, require_root, require_tool

pytestmark = [pytest.mark.netns, pytest.mark.lab]


@pytest.mark.parametrize(
    "stack",
    [
        LAB_STACK,  # the edges own the whole domain: the visitor asks them straight
        DEV_STACK,  # `cgnat-edge lab --stack dev --faults`: a subzone, through the parent's delegation
    ],
    ids=["whole-domain", "dev-subzone"],
)
def test_faults_report_failover_within_the_bound(stack, tmp_path):
    require_root()
    require_tool(*runner.TOOLS)
    if stack != LAB_STACK:
        require_tool("pdns_recursor")
    report_file = tmp_path / "report.json"
    ok, text = runner.run(stack, project_file=PROJECT, out=tmp_path, faults=True, report=report_file)
    rows = {c["name"]: c for c in json.loads(report_file.read_text())["checks"]}
    print(text)
    assert ok, text
    # The visitor resolved every name through the edges' nameservers: straight, or from
    # the parent zone's CNAME and delegation on (the parent holds no address for them).
    dns_rows = [n for n in rows if n.startswith("smoke:dns:")]
    assert "smoke:dns:blog.example.org:A records" in dns_rows and all(rows[n]["ok"] for n in dns_rows), dns_rows
    for name in ("failover:edge-down", "failover:tunnel-down", "failover:service-down", "failover:recovery"):
        row = rows[name]
        assert row["ok"] and row["unit"] == "s", row
        assert isinstance(row["value"], float) and 0 < row["value"] <= failover.BOUND_S, row
    assert "asked every edge" in rows["failover:tunnel-down"]["detail"]
    assert "every agent reports blog down" in rows["failover:service-down"]["detail"]
