"""``cgnat-edge status`` against the lab's edges, over real SSH with the pinned host key.

The command runs in the lab's operator namespace (where pulumi would run), reads the
rendered stack outputs from a file, and must see a healthy fleet as healthy, then a
broken tunnel, a stopped Traefik and a drifted file each as what it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.lab import protection as lab_protection
from components.lab.netns import wait_for
from components.model import edge_contract
from components.model.keys import generate_host_key
from components.renderers import protection
from components.tools import offline, status
from tests.support import ROOT, require_tool

DRIFTED = "/etc/apt/apt.conf.d/20auto-upgrades"
COUNTRY_FILE = lab_protection.rir_file({"AQ": ["2001:db8:a0::/48"]})
"""AQ (the lab stack's denied country) holds no address the lab uses."""


@pytest.fixture(scope="module")
def el(el):
    """The shared lab, with what a fleet has by the time ``status`` looks at it."""
    for edge in el.edges.values():
        # The lab's edges share the machine's /var/lib/apt: the timer's stamp stands in.
        edge.node.run("mkdir", "-p", "/var/lib/apt/periodic")
        edge.node.write("/var/lib/apt/periodic/unattended-upgrades-stamp", "", 0o644)
    # Home dials out once its tunnels are up: a fleet is healthy from its first handshake on.
    wait_for(lambda: all(el.handshake_time(e) > 0 for e in el.edges), 60, 0.5, "home's handshakes")
    return el


@pytest.fixture(scope="module")
def mirror(el):
    """The registries' statistics from the lab's mirror, loaded by each edge's timer."""
    served = lab_protection.Mirror(el, el.cfg.protection.geo_sources[0])
    served.publish(COUNTRY_FILE)
    for edge in el.edges.values():
        edge.fire_timer(edge_contract.GEO_UNIT)
    return served


def _status(el, tmp_path: Path, edges: dict | None = None) -> tuple[int, dict, str]:
    outputs = tmp_path / f"outputs-{len(list(tmp_path.iterdir()))}.json"
    outputs.write_text(
        json.dumps({"edges": edges or offline.reveal(el.rendered.edges), "dns": el.rendered.run.output("dns")})
    )
    key = tmp_path / "operator-key"
    if not key.exists():
        key.write_text(el.rendered.operator_key[0])
        key.chmod(0o600)
    # The lab's certificate lives two days: warn only below one.
    args = ["status", str(outputs), "--identity", str(key), "--cert-warn-days", "1"]
    table = el.operator.run(sys.executable, "-m", "components.cli", *args, check=False, timeout=180)
    done = el.operator.run(sys.executable, "-m", "components.cli", *args, "--json", check=False, timeout=180)
    assert done.stdout.startswith("{"), done.stderr
    return done.returncode, json.loads(done.stdout), table.stdout + table.stderr


def _problems(report: dict, edge: str) -> list[str]:
    return [p["what"] for e in report["edges"] if e["edge"] == edge for p in e["problems"]]


@pytest.mark.netns
def test_status_sees_a_healthy_fleet_then_each_fault(el, mirror, tmp_path):
    # The edges' health agents and nameservers need a few seconds after the lab starts.
    wait_for(lambda: _status(el, tmp_path)[0] == 0, 60, 2, "the fleet to be healthy")
    code, report, table = _status(el, tmp_path)
    assert code == 0, table
    assert report["ok"]
    for e in report["edges"]:
        f = e["facts"]
        assert e["reachable"] and f["cloudInit"] == "done" and f["drifted"] == []
        assert f["traefik"] == "traefik@a.service"
        assert f["handshakeAge"] is not None and f["handshakeAge"] < 180 and f["rxBytes"] > 0
        assert f["homeEndpoint"]
        assert f["httpHosts"] and all(days is not None and days >= 1 for days in f["certDays"].values())
        assert f["geo"]["state"] == "ok" and f["geo"]["loaded"] == ["AQ"] and f["geo"]["fetchedAge"] < 600, f
        assert f["crowdsec"] is None  # the lab's edges run no CrowdSec unless --protection
    edge_ips = sorted(e["ipv4"] for e in offline.reveal(el.rendered.edges).values())
    assert report["hostnames"] and all(h["answers"] == edge_ips for h in report["hostnames"])
    # The lab stack's edges serve the zone: each one's own nameserver lists every edge, itself first.
    for h in report["hostnames"]:
        assert sorted(h["nameservers"]) == sorted(el.edges), h
        for name, got in h["nameservers"].items():
            assert sorted(got) == edge_ips and got[0] == el.edges[name].public_ip, h
    assert "every edge serves what was pushed" in table

    fsn, ams = el.edges["fsn"], el.edges["ams"]
    fsn.node.run("ip", "link", "del", "wg0")  # a broken tunnel
    fsn.node.sh(f"echo '// edited by hand' >> {DRIFTED}")  # a drifted file
    ams._stop("traefik@a.service")  # a stopped Traefik
    mirror.publish(COUNTRY_FILE + "lab|AQ|ipv4|192.0.2.0|1|20260101|allocated|x\n", digest_of=COUNTRY_FILE)
    assert fsn.node.run(protection.GEO_SCRIPT_PATH, "--force", check=False).returncode == 1  # a corrupt download

    code, report, table = _status(el, tmp_path)
    assert code == 1
    fsn_problems, ams_problems = _problems(report, "fsn"), _problems(report, "ams")
    assert any(p.startswith("WireGuard wg0 is down") for p in fsn_problems), fsn_problems
    assert f"files differ from the last push: {DRIFTED}" in fsn_problems
    assert not any("Traefik" in p for p in fsn_problems)
    assert any(p.startswith("Traefik is not serving (stopped") for p in ams_problems), ams_problems
    assert not any("WireGuard" in p or "files differ" in p or "country" in p for p in ams_problems)
    geo = [p for p in fsn_problems if p.startswith("the country lists fail to refresh")]
    assert len(geo) == 1 and "MD5" in geo[0] and "stay in force" in geo[0], fsn_problems
    fsn_facts = next(e["facts"] for e in report["edges"] if e["edge"] == "fsn")
    assert fsn_facts["geo"]["state"] == "failing" and fsn_facts["geo"]["loaded"] == ["AQ"]
    assert "systemctl start cgnat-edge-geo-sets.service" in table
    assert "fix: ssh root@" in table and "systemctl restart traefik@a.service" in table
    assert "--target-replace" in table

    # The edges' own nameservers drop fsn (its tunnel is gone) within their check interval.
    def fsn_out() -> bool:
        _code, report, _table = _status(el, tmp_path)
        return any(
            p["what"].startswith("edge fsn is out of the answers for")
            for h in report["hostnames"]
            for p in h["problems"]
        )

    wait_for(fsn_out, 30, 2, "status to see fsn out of the edges' answers")


@pytest.mark.netns
def test_status_refuses_a_host_key_that_does_not_match_and_names_an_unreachable_edge(el, tmp_path):
    edges = offline.reveal(el.rendered.edges)
    edges["fsn"] = {**edges["fsn"], "hostPublicKey": generate_host_key()[1]}
    edges["ams"] = {**edges["ams"], "ipv4": "203.0.113.250"}  # nothing answers there
    code, report, table = _status(el, tmp_path, edges)
    assert code == 1
    assert any(p.startswith("host key mismatch") for p in _problems(report, "fsn")), table
    assert any(p.startswith("unreachable over SSH") for p in _problems(report, "ams")), table
    assert not any(e["reachable"] for e in report["edges"])


def test_status_without_pulumi_says_so(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "components.cli", "status"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 2
    assert "the Pulumi CLI is not installed" in done.stderr and "Traceback" not in done.stderr


def test_status_refuses_outputs_without_host_keys(tmp_path):
    old = tmp_path / "outputs.json"
    old.write_text(json.dumps({"edges": {"fsn": {"ipv4": "203.0.113.10"}}}))
    done = subprocess.run(
        [sys.executable, "-m", "components.cli", "status", str(old)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 2 and "run `pulumi up` once with this version" in done.stderr


def test_an_edge_missing_from_its_peers_answers_is_named_with_its_fix():
    edges = {
        "fsn": {"ipv4": "203.0.113.10", "sshUser": "root"},
        "ams": {"ipv4": "198.51.100.20", "sshUser": "root"},
    }
    dns_output = {
        "edgeServed": {"delegation": [{"name": "git.example.org", "type": "CNAME", "values": ["git.edge.example.org"]}]}
    }
    answers = {"203.0.113.10": ["198.51.100.20"], "198.51.100.20": ["198.51.100.20"]}
    (host,) = status.check_dns([], edges, dns_output, ask=lambda server, name: answers[server], resolve=lambda host: [])
    assert host.nameservers == {"ams": ["198.51.100.20"], "fsn": ["198.51.100.20"]}
    what = [p.what for p in host.problems]
    assert "edge fsn is out of the answers for git.example.org: its check through the tunnel to home fails" in what
    assert not any("edge ams is out" in w for w in what) and not any("disagree" in w for w in what)

    answers["198.51.100.20"] = "REFUSED"
    (host,) = status.check_dns([], edges, dns_output, ask=lambda server, name: answers[server], resolve=lambda host: [])
    assert any(
        w.startswith("edge ams's nameserver (198.51.100.20) gives REFUSED") for w in [p.what for p in host.problems]
    )
    # Every edge in every answer: nothing to say about the nameservers.
    answers.update(
        {"203.0.113.10": ["203.0.113.10", "198.51.100.20"], "198.51.100.20": ["198.51.100.20", "203.0.113.10"]}
    )
    (host,) = status.check_dns([], edges, dns_output, ask=lambda server, name: answers[server], resolve=lambda host: [])
    assert not [p for p in host.problems if "nameserver" in p.what or "out of the answers" in p.what]


def test_country_sets_and_crowdsec_are_judged_from_what_the_edge_reports():
    now = 1_800_000_000
    config = {"countries": ["RU", "CN"]}

    def judge(geo_status: dict | None, crowdsec: dict | None = None) -> status.EdgeStatus:
        st = status.EdgeStatus("fsn", "203.0.113.10")
        facts = {"now": now, "geo": {"config": config, "status": geo_status}, "crowdsec": crowdsec}
        status._judge_protection(st, facts, "ssh root@203.0.113.10")
        return st

    good = {"ok": True, "fetched": now - 3600, "loaded": now - 3600, "countries_loaded": ["CN", "RU"]}
    st = judge(good, {"crowdsec.service": True, "crowdsec-firewall-bouncer.service": True})
    assert st.problems == [] and st.facts["geo"]["state"] == "ok" and st.facts["geo"]["fetchedAge"] == 3600

    st = judge(None)
    assert st.facts["geo"]["state"] == "empty"
    assert st.problems[0].what.startswith("the country sets are empty, never loaded (the refresh has not run)")
    assert "systemctl start cgnat-edge-geo-sets.service" in st.problems[0].fix

    failing = {**good, "ok": False, "error": "https://x: HTTP 503", "failing_since": now - 7200}
    (p,) = judge(failing).problems
    assert p.what == (
        "the country lists fail to refresh for 7200s: https://x: HTTP 503; the sets loaded 3600s ago stay in force"
    )
    (p,) = judge({**good, "fetched": now - 4 * 86400}).problems
    assert p.what == f"the country lists were last fetched {4 * 86400}s ago"
    (p,) = judge({**good, "countries_loaded": ["RU"]}).problems
    assert p.what == "the loaded country sets (RU) are not the stack's (CN, RU)" and p.fix.endswith("--force")

    st = judge(good, {"crowdsec.service": True, "crowdsec-firewall-bouncer.service": False})
    (p,) = st.problems
    assert p.what == "CrowdSec is enabled but crowdsec-firewall-bouncer.service is not running: nobody is banned"
    assert status._crowdsec_cell(st.facts["crowdsec"]) == "FAIL"
    # A fleet without country filters or CrowdSec has nothing to say about them.
    config["countries"] = []
    st = judge(None, None)
    assert st.problems == [] and "geo" not in st.facts and status._geo_cell(st.facts.get("geo")) == "-"


@pytest.mark.netns
def test_the_login_from_the_outputs_cannot_become_an_ssh_option(tmp_path):
    """sshUser and the address come from the stack's outputs; ssh itself (``-G`` prints
    what it would do and connects nowhere) must read them as a user and a host, never as
    an option such as a ProxyCommand."""
    require_tool("ssh")

    def ssh_g(user: str) -> subprocess.CompletedProcess:
        argv = status.ssh_argv(user, "192.0.2.10", tmp_path / "known", None, "true")
        return subprocess.run([argv[0], "-G", *argv[1:]], capture_output=True, text=True)

    plain = ssh_g("deploy")
    config = dict(line.split(" ", 1) for line in plain.stdout.splitlines() if " " in line)
    assert (config["user"], config["hostname"]) == ("deploy", "192.0.2.10")
    hostile = ssh_g(f"-oProxyCommand=touch {tmp_path}/ran")
    assert hostile.returncode == 255 and "invalid characters" in hostile.stderr
    assert "proxycommand" not in hostile.stdout and not (tmp_path / "ran").exists()
