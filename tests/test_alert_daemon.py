"""The alert daemon's decisions, with the real script imported as a module: faults from
the agents' answers, incidents opened, reminded and resolved once, the leader that
sends, and delivery retried with backoff in order, on its own thread.  The daemon
itself against real agents, on loopback: one alert and one "resolved" for the fleet."""

from __future__ import annotations

import http.server
import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from components.lab.netns import wait_for
from components.renderers import templates

_spec = importlib.util.spec_from_file_location("cgnat_edge_alerts", templates.DIRECTORY / "cgnat-edge-alerts.py")
assert _spec and _spec.loader
alerts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(alerts)

CFG: dict[str, Any] = {
    "stack": "cgnat-edge/test",
    "edge": "fsn",
    "edges": [
        {"name": "fsn", "index": 1, "agent": "http://127.0.0.1:1"},
        {"name": "ams", "index": 2, "agent": "http://192.0.2.2:8053"},
        {"name": "hel", "index": 3, "agent": "http://192.0.2.3:8053"},
    ],
    "tunnelCheck": "_tunnel",
    "services": {"cloud": "cloud", "blog": "blog"},
    "after": 60,
    "reminder": 3600,
    "interval": 2,
    "timeout": 3,
    "state": "/nonexistent",
    "smtp": None,
}
NOW = 1000.0


def views(**edges: tuple[bool | None, dict[str, bool]] | None) -> dict[str, Any]:
    """Each edge's view: (tunnel, services) as just answered, or None: never answered."""
    out = {}
    for e in CFG["edges"]:
        view = alerts.View()
        given = edges.get(e["name"], (True, {"cloud": True, "blog": True}))
        if given is not None:
            view.answered, (view.tunnel, view.services), view.seen = NOW, given, True
        out[e["name"]] = view
    return out


# -- faults and the leader -------------------------------------------------------------------


def test_a_healthy_fleet_has_no_fault_and_the_first_edge_leads():
    v = views()
    assert alerts.faults(CFG, v, NOW) == set()
    assert alerts.leader(CFG, v, NOW) == "fsn"


def test_a_tunnel_down_is_that_edges_fault_and_not_its_services():
    v = views(ams=(False, {"cloud": False, "blog": False}))
    assert alerts.faults(CFG, v, NOW) == {"tunnel-down:ams"}


def test_a_service_is_down_only_when_every_edge_with_a_tunnel_says_so():
    down = {"cloud": False, "blog": True}
    assert alerts.faults(CFG, views(fsn=(True, down), ams=(True, down)), NOW) == set()
    assert alerts.faults(CFG, views(fsn=(True, down), ams=(True, down), hel=(True, down)), NOW) == {
        "service-down:cloud"
    }
    # hel's tunnel is down: its view of cloud does not count either way.
    assert alerts.faults(CFG, views(fsn=(True, down), ams=(True, down), hel=(False, {})), NOW) == {
        "service-down:cloud",
        "tunnel-down:hel",
    }


def test_an_edge_that_stops_answering_is_down_after_the_stale_rounds_and_hands_over_the_lead():
    v = views()
    v["fsn"].answered = NOW - 60  # this daemon's own agent is silent: never its own edge-down
    v["ams"].answered = NOW - 5  # answered two looks ago: still up
    v["hel"].answered = NOW - (alerts.STALE_ROUNDS * CFG["interval"] + CFG["timeout"])
    assert alerts.faults(CFG, v, NOW) == {"edge-down:hel"}
    as_ams = {**CFG, "edge": "ams"}
    v["fsn"].answered = NOW - 60
    assert alerts.leader(as_ams, v, NOW) == "ams", "fsn is gone: the next index leads"
    assert alerts.faults(as_ams, v, NOW) == {"edge-down:fsn", "edge-down:hel"}
    assert alerts.leader(CFG, v, NOW) == "fsn", "fsn counts itself: it is running"


def test_an_edge_never_seen_is_not_yet_deployed_not_down():
    """The first ``pulumi up`` pushes one edge after the other: the first edge's daemon
    must not report the next ones, whose agents come with their own push."""
    v = views(hel=None)
    assert v["hel"].seen is False
    assert alerts.faults(CFG, v, NOW) == set()
    assert alerts.leader(CFG, v, NOW) == "fsn"
    v["hel"].seen = True  # it answered once, before this daemon's restart (the state file says so)
    assert alerts.faults(CFG, v, NOW) == {"edge-down:hel"}


def test_look_asks_the_tunnel_first_and_skips_the_services_of_a_silent_edge():
    asked: list[str] = []

    def silent(url: str, timeout: float) -> bool | None:
        asked.append(url)
        return None

    view, lock = alerts.View(), threading.Lock()
    alerts.look(CFG["edges"][1], CFG, view, lock, asker=silent)
    assert asked == ["http://192.0.2.2:8053/health/_tunnel"] and view.answered is None

    def answers(url: str, timeout: float) -> bool | None:
        asked.append(url)
        return not url.endswith("/blog")

    alerts.look(CFG["edges"][1], CFG, view, lock, asker=answers)
    assert view.tunnel is True and view.services == {"cloud": True, "blog": False} and view.answered


# -- incidents ---------------------------------------------------------------------------------


def test_an_incident_opens_after_the_threshold_reminds_and_resolves_once():
    inc = alerts.Incidents(after=60, reminder=3600, interval=2)
    key = "tunnel-down:ams"
    events = []
    for t in range(0, 7300, 2):
        events += inc.update({key}, NOW + t)
    for t in range(7300, 7320, 2):
        events += inc.update(set(), NOW + t)
    assert [(e[0], e[1]) for e in events] == [
        ("firing", key),
        ("reminder", key),
        ("reminder", key),
        ("resolved", key),
    ]
    firing, first, second, resolved = events
    assert firing[2] == NOW and firing[3] == NOW + 60
    assert (first[3], second[3]) == (NOW + 3660, NOW + 7260)
    assert resolved[2:] == (NOW, NOW + 7300), "resolved: from when it began to when it cleared"


def test_a_fault_shorter_than_the_threshold_is_no_incident():
    inc = alerts.Incidents(after=60, reminder=0, interval=2)
    events = []
    for t in range(0, 300, 2):
        # down for 58 s, up for 4 s, again and again: never 60 s in a row
        events += inc.update({"edge-down:hel"} if t % 62 < 58 else set(), NOW + t)
    assert events == []


def test_a_flapping_fault_stays_one_incident():
    inc = alerts.Incidents(after=10, reminder=0, interval=2)
    key = "service-down:cloud"
    events = []
    for t in range(0, 200, 2):
        # one good answer every 10 s: fewer than CLEAR_ROUNDS in a row
        events += inc.update(set() if t % 10 == 0 and t > 20 else {key}, NOW + t)
    assert [e[0] for e in events] == ["firing"]
    for t in range(200, 200 + 2 * alerts.CLEAR_ROUNDS + 2, 2):
        events += inc.update(set(), NOW + t)
    assert [e[0] for e in events] == ["firing", "resolved"]


def test_no_reminders_with_reminder_zero():
    inc = alerts.Incidents(after=5, reminder=0, interval=2)
    events = [e for t in range(0, 100_000, 50) for e in inc.update({"edge-down:hel"}, NOW + t)]
    assert [e[0] for e in events] == ["firing"]


def test_restored_incidents_are_not_announced_again_but_resolve():
    inc = alerts.Incidents(after=60, reminder=3600, interval=2)
    inc.restore(
        {"tunnel-down:ams": {"since": NOW - 500}, "bogus:x": {"since": 1}, "edge-down:hel": {}}, NOW, alerts.WHAT
    )
    assert set(inc.open) == {"tunnel-down:ams"}
    assert inc.update({"tunnel-down:ams"}, NOW + 2) == []
    events = [e for t in range(4, 20, 2) for e in inc.update(set(), NOW + t)]
    assert [(e[0], e[1], e[2]) for e in events] == [("resolved", "tunnel-down:ams", NOW - 500)]


# -- messages ----------------------------------------------------------------------------------


def test_messages_say_what_where_since_when_and_what_to_do():
    fire = alerts.message(CFG, ("firing", "tunnel-down:ams", 1_700_000_000, 1_700_000_062))
    assert fire["title"] == "[cgnat-edge/test] Home's tunnel to edge ams is down"
    assert fire["message"].startswith("Since 2023-11-14 22:13:20 UTC (62 s). Visitors reaching ams")
    assert "wg show" in fire["message"] and fire["message"].endswith("(Reported by edge fsn.)")
    done = alerts.message(CFG, ("resolved", "service-down:cloud", 1_700_000_000, 1_700_000_600))
    assert done["title"] == "[cgnat-edge/test] Resolved: service cloud answers again"
    assert "lasted 10 min" in done["message"] and done["status"] == "resolved"
    edge = alerts.message(CFG, ("reminder", "edge-down:hel", 1_700_000_000, 1_700_021_600))
    assert edge["title"] == "[cgnat-edge/test] Still: Edge hel is unreachable from the other edges"
    body = alerts.webhook_body(fire)
    assert body["content"] == body["text"] == f"{fire['title']}\n{fire['message']}" and body["priority"] == 8
    url, ntfy = alerts.ntfy_request("https://ntfy.example.org/edge-alerts", fire)
    assert url == "https://ntfy.example.org/" and ntfy["topic"] == "edge-alerts" and ntfy["priority"] == 4


# -- delivery ----------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_ceiling():
    assert [alerts.backoff(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_a_failing_channel_retries_in_order_and_records_its_errors():
    clock = [NOW]
    slept: list[float] = []
    received: list[str] = []
    failures = [3]

    def send(msg: dict) -> None:
        if failures[0]:
            failures[0] -= 1
            raise ConnectionRefusedError("connection refused")
        received.append(msg["title"])

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    channel = alerts.Channel("webhook", send, clock=lambda: clock[0], sleep=sleep)
    channel.put({"title": "one"})
    channel.put({"title": "two"})
    assert channel.state["queued"] == 2
    channel.deliver_next()
    channel.deliver_next()
    assert received == ["one", "two"], "in order, each once"
    assert slept == [5, 10, 20]
    assert channel.state["delivered"] == 2 and channel.state["queued"] == 0
    assert channel.state["lastError"] == "ConnectionRefusedError: connection refused"
    assert channel.state["lastErrorAt"] == NOW + 15 and channel.state["lastOk"] == NOW + 35


def test_a_message_older_than_a_day_is_given_up():
    clock = [NOW]

    def never(msg: dict) -> None:
        raise TimeoutError("timed out")

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    channel = alerts.Channel("ntfy", never, clock=lambda: clock[0], sleep=sleep)
    channel.put({"title": "lost"})
    channel.deliver_next()
    assert channel.state["queued"] == 0 and channel.state["delivered"] == 0
    assert alerts.GIVE_UP_S < clock[0] - NOW < alerts.GIVE_UP_S + alerts.BACKOFF_MAX_S + 1


def test_a_blocked_channel_blocks_neither_the_caller_nor_another_channel():
    release = threading.Event()
    fast: list[str] = []

    def stuck(msg: dict) -> None:
        release.wait(10)

    slow_channel = alerts.Channel("smtp", stuck)
    fast_channel = alerts.Channel("ntfy", lambda m: fast.append(m["title"]))
    for c in (slow_channel, fast_channel):
        threading.Thread(target=c.run, daemon=True).start()
    started = time.monotonic()
    for c in (slow_channel, fast_channel):
        c.put({"title": "alert"})
    assert time.monotonic() - started < 0.1
    wait_for(lambda: fast == ["alert"], 5, message="the other channel delivers")
    assert slow_channel.state["delivered"] == 0
    release.set()
    wait_for(lambda: slow_channel.state["delivered"] == 1, 5, message="the stuck channel delivers once released")


def test_channels_come_from_the_secrets_that_are_set():
    names = [c.name for c in alerts.channels(CFG, {"webhook": "https://hooks.example.org/x"})]
    assert names == ["webhook"]
    smtp = {**CFG, "smtp": {"host": "smtp.example.org", "port": 587, "security": "starttls"}}
    assert [c.name for c in alerts.channels(smtp, {"ntfy": "https://ntfy.sh/t"})] == ["ntfy", "smtp"]


# -- the daemon, on loopback ---------------------------------------------------------------------


class _Agent(http.server.BaseHTTPRequestHandler):
    """A health agent whose answers the test sets: ``up`` maps check -> bool."""

    up: ClassVar[dict[str, bool]] = {}

    def do_GET(self) -> None:
        ok = self.up.get(self.path.removeprefix("/health/"), False)
        self.send_response(200 if ok else 503)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        self.got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


RSS_LIMIT_KB = 32 * 1024
"""Well under the unit's MemoryMax=48M."""


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _serve(handler: type) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _port(server: http.server.ThreadingHTTPServer) -> int:
    return server.server_address[1]


def test_two_daemons_send_one_alert_and_one_resolved_for_the_fleet(tmp_path: Path):
    """Two daemons (two edges) watch two agents on loopback and post to one receiver
    (a plain-http URL, which only the daemon's config allows, not the stack's check):
    home's tunnel to the second edge goes down and comes back."""
    agents = [type("A", (_Agent,), {"up": {"_tunnel": True, "cloud": True}}) for _ in range(2)]
    servers = [_serve(a) for a in agents]
    receiver_class = type("R", (_Receiver,), {"got": []})
    receiver = _serve(receiver_class)
    procs = []
    try:
        for me in ("fsn", "ams"):
            cfg = {
                **CFG,
                "edge": me,
                "edges": [
                    {"name": "fsn", "index": 1, "agent": f"http://127.0.0.1:{_port(servers[0])}"},
                    {"name": "ams", "index": 2, "agent": f"http://127.0.0.1:{_port(servers[1])}"},
                ],
                "services": {"cloud": "cloud"},
                "after": 2,
                "interval": 0.5,
                "timeout": 1,
                "state": str(tmp_path / f"{me}-state.json"),
            }
            (tmp_path / f"{me}.json").write_text(json.dumps(cfg))
            (tmp_path / f"{me}-channels.json").write_text(
                json.dumps({"webhook": f"http://127.0.0.1:{_port(receiver)}/hook"})
            )
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(templates.DIRECTORY / "cgnat-edge-alerts.py"),
                        str(tmp_path / f"{me}.json"),
                        str(tmp_path / f"{me}-channels.json"),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        wait_for(
            lambda: all((tmp_path / f"{m}-state.json").exists() for m in ("fsn", "ams")), 10, message="both looked"
        )
        cut = time.monotonic()
        agents[1].up["_tunnel"] = False
        wait_for(lambda: receiver_class.got, 15, message="the alert")
        alerted = time.monotonic() - cut
        time.sleep(2)
        assert [(m["status"], m["kind"], m["subject"], m["edge"]) for m in receiver_class.got] == [
            ("firing", "tunnel-down", "ams", "fsn")
        ], "one alert, from the leader"
        assert 2 <= alerted < 2 + 3 * 0.5 + 2
        state = json.loads((tmp_path / "ams-state.json").read_text())
        assert state["leader"] == "fsn" and list(state["incidents"]) == ["tunnel-down:ams"]
        assert state["seen"] == ["ams", "fsn"]
        assert json.loads((tmp_path / "fsn-state.json").read_text())["channels"]["webhook"]["delivered"] == 1
        rss = [_rss_kb(p.pid) for p in procs]
        print(f"alert daemons' RSS: {rss} kB")
        assert max(rss) < RSS_LIMIT_KB
        agents[1].up["_tunnel"] = True
        wait_for(lambda: len(receiver_class.got) == 2, 15, message="the resolved message")
        time.sleep(2)
        assert [(m["status"], m["subject"]) for m in receiver_class.got] == [
            ("firing", "ams"),
            ("resolved", "ams"),
        ]
    finally:
        for p in procs:
            p.terminate()
            p.wait(5)
        for s in [*servers, receiver]:
            s.shutdown()


def test_an_error_that_quotes_the_url_does_not_put_it_in_the_state():
    url = "https://hooks.example.org/hook/s3cr3t-token"
    clock = [NOW]

    def bad(msg: dict) -> None:
        if clock[0] == NOW:
            raise ValueError(f"unknown url type: {url!r}")

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    (channel,) = alerts.channels(CFG, {"webhook": url})
    channel.send, channel.clock, channel.sleep = bad, lambda: clock[0], sleep
    channel.put({"title": "x"})
    channel.deliver_next()
    assert channel.state["lastError"] == "ValueError: unknown url type: '<secret>'"
    assert channel.state["delivered"] == 1


def test_the_verifier_wants_a_fresh_state_file(tmp_path: Path, monkeypatch):
    """After a push the verifier waits for the daemon's first look; a daemon that died
    leaves a stale state file (or none), and the push rolls back."""
    spec = importlib.util.spec_from_file_location("verify", templates.DIRECTORY / "verify.py")
    assert spec and spec.loader
    verify = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verify)
    state = tmp_path / "state.json"
    conf = tmp_path / "alerts.json"
    contract = {"alerts_state": str(state), "alerts_conf": str(conf), "alerts_unit": "cgnat-edge-alerts.service"}
    contract |= {"pdns_zone": str(tmp_path / "none"), "health_conf": str(tmp_path / "none")}
    monkeypatch.setattr(verify, "contract", lambda: contract)
    assert "alerts" not in verify.checks()
    conf.write_text("{}")
    assert verify.checks()["alerts"] is verify.check_alerts
    (problem,) = verify.check_alerts({}, timeout=0.2)
    assert problem.startswith("the alert daemon has written no state (")
    assert problem.endswith("; see journalctl -u cgnat-edge-alerts.service")
    state.write_text(json.dumps({"updated": time.time() - 60}))
    (stale,) = verify.check_alerts({}, timeout=0.2)
    assert re.fullmatch(
        r"the alert daemon last looked 6[01] s ago; see journalctl -u cgnat-edge-alerts\.service", stale
    )
    state.write_text(json.dumps({"updated": time.time()}))
    assert verify.check_alerts({}, timeout=0.2) == []


def test_the_agents_tunnel_check_is_up_when_home_answers_with_a_reset():
    spec = importlib.util.spec_from_file_location("health", templates.DIRECTORY / "cgnat-edge-health.py")
    assert spec and spec.loader
    health = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health)
    assert health.CHECKS["tunnel"] is health.check_tunnel
    # Nothing listens on 127.0.0.1:9: the kernel answers with a reset, as home's does.
    assert health.check_tunnel({"home": "127.0.0.1"}, {"timeout": 1}) == "home answers through the tunnel"
