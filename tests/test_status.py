"""``cgnat-edge status`` against the lab's edges, over real SSH with the pinned host key.

The command runs in the lab's operator namespace (where pulumi would run), reads the
rendered stack outputs from a file, and must see a healthy fleet as healthy, then a
broken tunnel, a stopped Traefik and a drifted file each as what it is."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dns.query
import pytest

from components import cli
from components.lab import protection as lab_protection
from components.lab.netns import wait_for
from components.model import edge_contract
from components.model.keys import generate_host_key
from components.renderers import protection, traefik
from components.tools import offline, policy, render, status
from tests.support import DEV_STACK, ROOT, require_tool

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
@pytest.mark.lab
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
        # The lab stack runs CrowdSec: its units as the first boot's setup leaves them.
        assert f["crowdsec"] == {"crowdsec.service": True, "crowdsec-firewall-bouncer.service": True}, f
        assert f["traefikVersion"] == traefik.VERSION
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
@pytest.mark.lab
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

    def judge(geo_status: dict | None, crowdsec: dict | None = None, wanted: str = "off") -> status.EdgeStatus:
        st = status.EdgeStatus("fsn", "203.0.113.10")
        facts = {"now": now, "geo": {"config": config, "status": geo_status}, "crowdsec": crowdsec}
        facts["desired"] = {"crowdsec": wanted}
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
    assert p.what == (
        "CrowdSec should run and does not: crowdsec-firewall-bouncer.service is not running; nobody is banned"
    )
    assert status._crowdsec_cell(st.facts["crowdsec"]) == "FAIL"
    # Turned on for a fleet whose edge never got it (the bouncer is not even enabled there).
    (p,) = judge(good, None, wanted="offline").problems
    assert p.what == (
        "CrowdSec should run (crowdsec offline) and does not: it was never set up on this edge; nobody is banned"
    )
    assert p.fix.startswith("push again: `pulumi up --target-replace $(") and "::fsn-config" in p.fix
    assert status._crowdsec_cell(judge(good, None, wanted="offline").facts["crowdsec"]) == "FAIL"
    assert judge(good, None, wanted="off").problems == []
    # A fleet without country filters or CrowdSec has nothing to say about them.
    config["countries"] = []
    st = judge(None, None)
    assert st.problems == [] and "geo" not in st.facts and status._geo_cell(st.facts.get("geo")) == "-"


@pytest.mark.netns
@pytest.mark.lab
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


# Without the lab: fake edges behind the runner, nothing on the network.

FILES = {"/etc/wireguard/wg0.conf": "a" * 64}
OUTPUTS = {
    "edges": {
        name: {"ipv4": ip, "sshUser": "root", "hostPublicKey": "ssh-ed25519 AAAA", "pushedFiles": FILES}
        for name, ip in (("fsn", "203.0.113.10"), ("ams", "198.51.100.20"))
    }
}
ESCAPES = ("\x1b", "\x9b", "\x07", "\u202e", "\x7f")


def healthy_facts(**changes) -> dict:
    now = time.time()
    peer = f"peer=\t(none)\t192.0.2.1:51820\t10.254.0.1/32\t{int(now) - 5}\t100\t200\toff"
    return {
        "now": now,
        "cloudInit": [0, "status: done\n", ""],
        "wg": [0, f"key=\tpub=\t51820\toff\n{peer}\n", ""],
        "slots": {"traefik@a.service": True, "traefik@b.service": False},
        "ping": [0, "OK", ""],
        "verify": [0, "", ""],
        "files": dict(FILES),
        "upgrades": now - 60,
        "rebootRequired": False,
        "desired": None,
        "geo": {"config": None, "status": None},
        "crowdsec": None,
        **changes,
    }


def test_a_traefik_other_than_the_pinned_release_is_reported():
    def judge(version_answer: list) -> status.EdgeStatus:
        st = status.EdgeStatus("fsn", "203.0.113.10")
        desired = {"traefik": {"version": "3.7.15"}}
        facts = healthy_facts(desired=desired, traefikVersion=version_answer)
        status._judge(st, {"pushedFiles": dict(FILES)}, facts, "ssh root@203.0.113.10")
        return st

    st = judge([0, json.dumps({"Version": "3.6.2", "Codename": "x"}), ""])
    assert [p.what for p in st.problems] == ["Traefik 3.6.2 runs, the stack pins 3.7.15"]
    assert st.facts["traefikVersion"] == "3.6.2"
    assert judge([0, json.dumps({"Version": "3.7.15"}), ""]).problems == []
    # An API that does not answer is the "not serving" row's to report, not a version mismatch.
    assert judge([7, "", "connection refused"]).problems == []


def _answer(stdout: str, code: int = 0, stderr: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], code, stdout, stderr)


def fake_probes(answers: dict, **kwargs) -> status.Probes:
    """A runner answering as ``answers[address]`` does (a CompletedProcess, or a callable);
    certificates, resolver and nameservers that must not be asked."""

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        answer = answers[argv[argv.index("--") + 1]]
        return answer() if callable(answer) else answer

    def nothing(*args):
        raise AssertionError(f"asked the network: {args}")

    return status.Probes(run=run, cert=nothing, ask=nothing, resolve=lambda host: [], **kwargs)


def _problems_of(edges: list[status.EdgeStatus], name: str) -> list[str]:
    return [p.what for e in edges if e.edge == name for p in e.problems]


def test_the_outputs_of_a_render_are_refused_without_contacting_anything(tmp_path, capsys, monkeypatch):
    out = tmp_path / "dev"
    assert cli.main(["render", "--stack-file", str(DEV_STACK), "--out", str(out)]) == 0
    capsys.readouterr()

    def contacted(*args, **kwargs):
        raise AssertionError(f"status contacted something: {args}")

    for module, name in (
        (subprocess, "Popen"),
        (socket, "create_connection"),
        (socket, "getaddrinfo"),
        (socket.socket, "connect"),
        (socket.socket, "sendto"),
        (dns.query, "udp"),
    ):
        monkeypatch.setattr(module, name, contacted)
    for source in (out, out / "outputs.json"):
        assert cli.main(["status", str(source), "--json"]) == 2
        got = capsys.readouterr()
        assert got.out == ""
        assert got.err.startswith(
            "cgnat-edge status: these outputs were written by `cgnat-edge render` (stack dev): "
            "the mock engine's keys and documentation addresses, nothing is deployed there; after `pulumi up`, "
        ), got.err
        assert "`pulumi stack output --json --show-secrets`" in got.err and "Traceback" not in got.err
    # A program output never carries the marker; policy reads the render without it.
    assert render.RENDER_MARKER in json.loads((out / "outputs.json").read_text())
    assert render.RENDER_MARKER not in policy.load_render(out)[1]


@pytest.mark.parametrize(
    "answer, problem",
    [
        (RuntimeError("runner broke"), "the check of this edge failed: RuntimeError: runner broke"),
        (
            subprocess.TimeoutExpired(["ssh"], status.SSH_TIMEOUT_S),
            "no answer over SSH within 60 s: the login or the status script hangs",
        ),
        (_answer("<html>not json", stderr="bash: python3: command not found\n"), "the edge's status script failed"),
        (_answer(json.dumps([1, 2])), "the edge's status script answered what this version cannot read"),
        (_answer(json.dumps(healthy_facts(cloudInit=5))), "the edge's status script answered what"),
        (_answer(json.dumps(healthy_facts(crowdsec=["x"]))), "the edge's status script answered what"),
        (_answer(json.dumps(healthy_facts(slots="traefik"))), "the edge's status script answered what"),
    ],
    ids=["raises", "timeout", "garbage", "list", "wrong-type", "crowdsec-list", "slots-str"],
)
def test_one_broken_edge_is_its_own_row_and_the_others_are_checked(answer, problem):
    def fsn() -> subprocess.CompletedProcess:
        if isinstance(answer, Exception):
            raise answer
        return answer

    probes = fake_probes({"203.0.113.10": fsn, "198.51.100.20": _answer(json.dumps(healthy_facts()))})
    edges, hosts = status.status(OUTPUTS, probes=probes)
    assert [e.edge for e in edges] == ["fsn", "ams"]  # the outputs' order
    (what,) = _problems_of(edges, "fsn")
    assert what.startswith(problem), what
    ams = edges[1]
    assert ams.reachable and ams.problems == [] and ams.facts["cloudInit"] == "done"
    assert ams.facts["traefik"] == "traefik@a.service" and ams.facts["handshakeAge"] < 60
    table = status.table(edges, hosts)
    assert f"fsn: {what}" in table and "1 problem(s)" in table
    assert json.loads(status.as_json(edges, hosts))["ok"] is False


def test_a_hanging_edge_is_cut_at_the_bound(monkeypatch):
    release = threading.Event()

    def hang() -> subprocess.CompletedProcess:
        release.wait(30)
        return _answer(json.dumps(healthy_facts()))

    probes = fake_probes(
        {"203.0.113.10": hang, "198.51.100.20": _answer(json.dumps(healthy_facts()))}, edge_deadline=0.5
    )
    lines: list[str] = []
    start = time.monotonic()
    edges, _hosts = status.status(OUTPUTS, probes=probes, progress=lines.append)
    took = time.monotonic() - start
    release.set()
    assert took < 3, took
    assert _problems_of(edges, "fsn") == ["no result within 0.5 s: the SSH check hangs"]
    assert edges[1].reachable and edges[1].problems == []
    assert "fsn: no result after 0.5 s, given up" in lines


def test_the_system_resolver_is_bounded(monkeypatch):
    monkeypatch.setattr(status, "RESOLVE_TIMEOUT_S", 0.2)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args: time.sleep(5))
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no answer within 0\.2 s"):
        status._system_answers("git.example.org")
    assert time.monotonic() - start < 2
    (host,) = status.check_dns(["git.example.org"], OUTPUTS["edges"])
    assert host.problems[0].what.startswith("DNS answers nothing for git.example.org (the system resolver gave no")


def test_what_an_edge_sends_reaches_the_terminal_without_its_escapes(monkeypatch, capsys):
    hostile = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202eevil\x7f"
    facts = healthy_facts(
        cloudInit=[1, f"status: {hostile}\n", ""],
        slots={f"traefik{hostile}": True},
        verify=[1, f"wg0 differs {hostile}\n", ""],
    )
    answers = {
        "203.0.113.10": _answer(json.dumps(facts)),
        "198.51.100.20": _answer("", 255, f"ssh: connect to host: {hostile}\n"),
    }
    probes = fake_probes(answers)
    monkeypatch.setattr(status, "Probes", lambda: probes)  # what the command uses
    for args in ([], ["--json"]):
        monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(OUTPUTS)))
        assert cli.main(["status", "-", *args]) == 1
        got = capsys.readouterr()
        for escape in ESCAPES:
            assert escape not in got.out and escape not in got.err, (escape, got)
        assert "owned" in got.out and "evil" in got.out  # shown, not obeyed
    # Written out, so the operator sees that the edge sent them.
    assert status.visible(hostile) == "\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u202eevil\\x7f"
    assert status.visible({"k\x1b": ["\tv\n\x00"]}) == {"k\\x1b": ["\tv\n\\x00"]}


def test_progress_goes_to_stderr_and_stdout_stays_the_report(monkeypatch, capsys):
    answers = {a: _answer(json.dumps(healthy_facts())) for a in ("203.0.113.10", "198.51.100.20")}
    probes = fake_probes(answers)
    monkeypatch.setattr(status, "Probes", lambda: probes)  # what the command uses
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(OUTPUTS)))
    assert cli.main(["status", "-", "--json"]) == 0
    got = capsys.readouterr()
    assert json.loads(got.out)["ok"] is True and "status:" not in got.out
    lines = got.err.splitlines()
    assert "status: fsn: ssh root@203.0.113.10 ..." in lines and "status: ams: ssh root@198.51.100.20 ..." in lines
    assert any(re.fullmatch(r"status: fsn: ssh ok \(\d+\.\d s\)", line) for line in lines), lines
    assert all(line.startswith("status: ") for line in lines), lines


def test_certificates_are_judged_per_edge_and_a_hanging_handshake_is_cut(monkeypatch):
    for bound in ("TLS_TIMEOUT_S", "RESOLVE_TIMEOUT_S", "NAMESERVER_TIMEOUT_S"):
        monkeypatch.setattr(status, bound, 0.1)
    desired = {"traefik": {"routers": {"http": {"git": "Host(`git.example.org`)"}}}}
    answer = _answer(json.dumps(healthy_facts(desired=desired)))
    release = threading.Event()
    in_60_days = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=60, hours=1)

    def cert(address: str, hostname: str) -> datetime.datetime:
        assert hostname == "git.example.org"
        if address == "203.0.113.10":
            release.wait(30)
        return in_60_days

    probes = fake_probes({"203.0.113.10": answer, "198.51.100.20": answer})
    probes = dataclasses.replace(probes, cert=cert, resolve=lambda host: ["203.0.113.10", "198.51.100.20"])
    start = time.monotonic()
    edges, hosts = status.status(OUTPUTS, probes=probes)
    took = time.monotonic() - start
    release.set()
    assert took < 3, took
    assert _problems_of(edges, "fsn") == ["no certificate for git.example.org on :443 (no TLS answer in time)"]
    assert edges[0].facts["certDays"] == {"git.example.org": None}
    assert edges[1].problems == [] and edges[1].facts["certDays"] == {"git.example.org": 60}
    assert [(h.hostname, h.answers, h.problems) for h in hosts] == [
        ("git.example.org", ["203.0.113.10", "198.51.100.20"], [])
    ]


def test_the_alert_daemon_and_its_channels_are_judged_from_its_state_file():
    now = 1_800_000_000
    ssh = "ssh root@203.0.113.10"

    def judge(on: bool, state: Any) -> status.EdgeStatus:
        st = status.EdgeStatus("fsn", "203.0.113.10")
        status.judge_alerts(st, {"now": now, "alerts": {"on": on, "state": state}}, ssh)
        return st

    assert judge(False, None).problems == [] and "alerts" not in judge(False, None).facts
    (p,) = judge(True, None).problems
    assert p.what == "alerts are on, but the alert daemon has written no state: no alert can be sent"
    assert (
        p.fix
        == f"{ssh} sudo systemctl restart cgnat-edge-alerts.service; {ssh} sudo journalctl -u cgnat-edge-alerts.service"
    )

    healthy = {
        "edge": "fsn",
        "leader": "fsn",
        "updated": now - 1,
        "incidents": {"tunnel-down:ams": {"since": now - 300}},
        "channels": {
            "webhook": {"delivered": 3, "lastOk": now - 600, "lastError": None, "lastErrorAt": None, "queued": 0},
            "ntfy": {
                "delivered": 2,
                "lastOk": now - 900,
                "lastError": "URLError: <urlopen error timed out>",
                "lastErrorAt": now - 1000,
                "queued": 0,
            },
        },
    }
    st = judge(True, healthy)
    assert st.problems == [], "an error followed by a delivery is recovered"
    assert st.facts["alerts"]["incidents"] == {"tunnel-down:ams": 300}
    assert st.facts["alerts"]["state"] == "1 open" and st.facts["alerts"]["channels"]["webhook"]["lastOkAge"] == 600

    failing = copy.deepcopy(healthy)
    failing["channels"]["ntfy"].update(lastErrorAt=now - 5, queued=2)
    (p,) = judge(True, failing).problems
    assert p.what == (
        "alert channel ntfy fails (URLError: <urlopen error timed out>), 2 message(s) waiting; it last delivered 900s ago"
    )
    assert p.fix.startswith("check cgnat-edge:alertNtfyUrl and that the edge can reach it; ")

    stale = {**healthy, "updated": now - 120}
    st = judge(True, stale)
    (p,) = st.problems
    assert p.what == "the alert daemon last looked 120s ago: no alert can be sent"
    assert st.facts["alerts"]["state"] == "FAIL"
    assert "FAIL" in status.table([st], []).splitlines()[1]
