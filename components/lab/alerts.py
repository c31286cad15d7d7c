"""Alerts in the Edge lab (``cgnat-edge lab --alerts``): real faults, the edges' real
alert daemons, and what a person would receive, timed at the receiving end.

The lab's stack gets an alert channel of each kind it can receive (``Plan``: a
webhook URL and an SMTP password made for the run, set as Pulumi secrets, so they
reach the edges only in the push).  A receiver node on the lab's internet serves both:
a webhook over HTTPS (a certificate for its address, added to each edge's own trust
store as a local CA would be; the daemon's https-only rule stays) that records every
body with its arrival time and can refuse with 503 for a while, and an SMTP relay
(``aiosmtpd``) that takes mail only after STARTTLS and the login the stack names.

Rows (seconds from the fault, or from its repair, to the message at the receiver):

* ``alert:tunnel-down``      home takes its tunnel to the last edge down; ok when
  exactly one ``firing`` for it arrived within ``GOAL_S``: one for the fleet, though
  every edge's daemon sees it.  ``alert:tunnel-resolved``: the tunnel back up, one
  ``resolved`` within ``GOAL_S``.
* ``alert:edge-down``        the last edge crashes (every process in it ends, its
  ruleset and tunnel are gone); another edge must report it, once.  Then it boots; the
  detail has the ``resolved`` message's seconds from the edge serving again.
* ``alert:service-down``     one home service refuses connections (its port closed):
  one ``firing`` naming it; then one ``resolved``.
* ``alert:channel-down``     the webhook refuses (503) for ``REFUSE_S`` while home's
  tunnel to the leader goes down and comes back: once the receiver is back both
  messages arrive, once each, in order; meanwhile the leader's state file (what
  ``status`` reads) names the failing channel.  Seconds from the receiver's return.
* ``alert:cert-expiry``      the leader's Traefik serves, for each ``http`` hostname, a
  certificate that ends in half a day (``alertCertDays`` is 1 in the lab, where the
  stand-in for the ACME certificate lasts two); one alert per hostname, sent by that
  edge itself, which looks at its own certificates once a minute: ok within a minute
  and ``GOAL_S``.
* ``alert:mail``             the first tunnel-down alert as e-mail: its subject names
  the edge, its body the edge that sent it.
* ``alert:duplicates``       every message the run received beyond one per incident
  and status, or for an incident no fault made; ok at 0.
* ``alert:memory``           the largest resident set of an edge's alert daemon at the
  end (MB), ok under the unit's ``MemoryMax``.
"""

from __future__ import annotations

import asyncio
import collections
import email
import email.policy
import json
import logging
import secrets
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from components.lab.certs import SelfSigned, self_signed
from components.lab.edge_lab import EdgeLab
from components.lab.errors import LabError
from components.lab.netns import wait_for
from components.lab.report import Check
from components.lab.topology import attach
from components.model import edge_contract
from components.model.fleet import Mode
from components.renderers.alerts import INTERVAL_S

RECEIVER_IP = "198.51.100.98"
AFTER_S = 10
"""The lab's ``alertAfterSeconds``: short, so a row takes seconds, and long enough
that an edge's reboot (its tunnel back within the keepalive) is not an incident."""
GOAL_S = 30.0
GIVE_UP_S = 60.0
REFUSE_S = 40.0
SETTLE_S = 3.0
HOLD_S = 10.0
"""How long a fault stays after its first alert: a second sender (an edge that should
not send) has as long as the first had, so a doubled alert is seen."""
"""After a row's last message: time for a duplicate to show up."""
POLL_S = 0.2
CERT_DAYS = 1
ROW_KINDS = ("tunnel-down", "edge-down", "service-down", "cert-expiry")
"""The kinds the rows make.  The others (upgrades, country lists...) depend on the
machine the lab runs on (an edge's uptime is the machine's): they are shown, not counted."""
CERT_LEFT_DAYS = 0.5
LOCAL_EVERY_S = 60.0
"""The daemon looks at its own edge (its certificates) once a minute."""
MEMORY_MAX_MB = 48
"""The unit's MemoryMax=48M."""
SENDER, RECIPIENT, LOGIN = "edges@example.org", "ops@example.org", "edges@example.org"


@dataclass
class Plan:
    """The alert keys the lab adds to its stack; the secrets are made per run."""

    token: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    receiver: Receiver | None = None

    def receive(self, el: EdgeLab) -> None:
        """The receiver, before the edges' first push (``build``'s ``before_push``)."""
        self.receiver = Receiver(el, self)

    @property
    def overrides(self) -> dict[str, Any]:
        return {
            "alertSmtpServer": f"{RECEIVER_IP}:587",
            "alertSmtpSecurity": "starttls",
            "alertSmtpFrom": SENDER,
            "alertSmtpTo": [RECIPIENT],
            "alertSmtpUser": LOGIN,
            "alertAfterSeconds": AFTER_S,
            "alertReminderHours": 0,
            # The lab's stand-in for the ACME certificate lasts two days: only the
            # certificate the cert-expiry row serves is close to its end.
            "alertCertDays": CERT_DAYS,
            # No CrowdSec runs in a lab without --protection: it would be an alert.
            "crowdsec": "off",
        }

    @property
    def secrets(self) -> dict[str, str]:
        return {"alertWebhookUrl": f"https://{RECEIVER_IP}/hook/{self.token}", "alertSmtpPassword": self.password}


# ---------------------------------------------------------------------------
# The receiving end
# ---------------------------------------------------------------------------


@dataclass
class Received:
    at: float
    """time.monotonic() at arrival."""
    status: str
    kind: str
    subject: str
    edge: str
    accepted: bool
    text: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.subject}"


class _Hook(BaseHTTPRequestHandler):
    timeout = 10
    server: Webhook

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        server = self.server
        if self.path != server.path:
            server.strays += 1
            self.send_response(404)
        else:
            try:
                msg = json.loads(body)
            except ValueError:
                msg = {}
            accepted = time.monotonic() >= server.refuse_until
            server.add(
                Received(
                    time.monotonic(),
                    str(msg.get("status")),
                    str(msg.get("kind")),
                    str(msg.get("subject")),
                    str(msg.get("edge")),
                    accepted,
                    str(msg.get("text", "")),
                )
            )
            self.send_response(200 if accepted else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args) -> None:
        pass


class Webhook(ThreadingHTTPServer):
    """The webhook over HTTPS: every request, refused or not, with its arrival."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], path: str, cert: SelfSigned):
        super().__init__(address, _Hook)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert.cert, cert.key)
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.path, self.refuse_until, self.strays = path, 0.0, 0
        self.received: list[Received] = []
        self._lock = threading.Lock()

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would ask DNS for the address's name
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError | TimeoutError):
            super().handle_error(request, client_address)

    def add(self, r: Received) -> None:
        with self._lock:
            self.received.append(r)

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.received)


class _MailHandler:
    def __init__(self, sink: MailSink):
        self.sink = sink

    async def handle_DATA(self, server, session, envelope) -> str:
        mail = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        body = mail.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        subject = str(mail["Subject"] or "")
        self.sink.mails.append((time.monotonic(), subject, text, list(envelope.rcpt_tos), session.authenticated))
        return "250 OK"


class MailSink:
    """An SMTP relay that takes mail only after STARTTLS and the stack's login."""

    def __init__(self, address: str, cert: SelfSigned, password: str):
        try:  # the test extra's: the rest of the lab, and the CLI, run without it
            from aiosmtpd.controller import Controller
        except ImportError:
            raise LabError("--alerts needs aiosmtpd for its SMTP relay: `uv sync --extra test`") from None
        logging.getLogger("mail.log").setLevel(logging.ERROR)  # a deprecation warning per login
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert.cert, cert.key)
        self.password = password
        self.mails: list[tuple[float, str, str, list[str], bool]] = []
        self.logins: collections.Counter[str] = collections.Counter()
        self.controller = Controller(
            _MailHandler(self),
            hostname=address,
            port=587,
            loop=asyncio.new_event_loop(),
            tls_context=context,
            require_starttls=True,
            auth_required=True,
            authenticator=self._authenticate,
        )

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> Any:
        from aiosmtpd.smtp import AuthResult

        login, password = getattr(auth_data, "login", None), getattr(auth_data, "password", None)
        good = login == LOGIN.encode() and password == self.password.encode()
        self.logins["ok" if good else "refused"] += 1
        return AuthResult(success=good)

    def shutdown(self) -> None:
        self.controller.stop()

    def server_close(self) -> None:
        pass


class Receiver:
    """The webhook and the SMTP relay, on a node of the lab's internet."""

    def __init__(self, el: EdgeLab, plan: Plan):
        taken = {e.public_ip for e in el.edges.values()} | {el.client_ip, el.dns_ip, el.cgnat_ip, el.operator_ip}
        if RECEIVER_IP in taken:
            raise LabError(f"the alert receiver's address {RECEIVER_IP} is taken by another lab node")
        node = el.lab.node("alerts")
        attach(el.lab, el.nodes["inet"], node, "i-alerts", RECEIVER_IP)
        cert = self_signed([RECEIVER_IP], el.lab.workdir, "alert-receiver")
        for edge in el.edges.values():  # what update-ca-certificates makes of a local CA, in the edge's /etc
            edge.node.sh(f"cat {cert.cert} >> /etc/ssl/certs/ca-certificates.crt")
        self.hook = node.call(lambda: Webhook((RECEIVER_IP, 443), f"/hook/{plan.token}", cert))
        threading.Thread(target=self.hook.serve_forever, daemon=True).start()
        el.servers.append(self.hook)
        self.mail = MailSink(RECEIVER_IP, cert, plan.password)
        node.call(self.mail.controller.start)  # its loop's thread is made in the node's namespace
        el.servers.append(self.mail)

    def accepted(self, key: str, status: str, since: float) -> list[Received]:
        return [r for r in self.hook.messages() if r.accepted and r.key == key and r.status == status and r.at >= since]

    def wait(self, key: str, status: str, since: float) -> Received | None:
        """The first accepted message for ``key`` and ``status`` since ``since``."""
        end = since + GIVE_UP_S
        while time.monotonic() < end:
            got = self.accepted(key, status, since)
            if got:
                return got[0]
            time.sleep(POLL_S)
        return None


# ---------------------------------------------------------------------------
# The faults
# ---------------------------------------------------------------------------


def _seconds(r: Received | None, since: float) -> float | None:
    return None if r is None else round(r.at - since, 1)


def _timed(name: str, seconds: float | None, count: int, detail: str) -> Check:
    ok = seconds is not None and seconds <= GOAL_S and count == 1
    value: Any = seconds if seconds is not None else f">{GIVE_UP_S:g}"
    return Check(name, ok, value, "s", f"{count} message(s) at the receiver; {detail}")


class AlertLab:
    def __init__(self, el: EdgeLab, plan: Plan):
        if len(el.edges) < 2:
            raise LabError("--alerts needs at least two edges: one reports the other")
        self.el, self.plan = el, plan
        self.order = [e.name for e in sorted(el.cfg.edges, key=lambda e: e.index)]
        self.leader, self.last = self.order[0], self.order[-1]
        if plan.receiver is None:
            raise LabError("the alert receiver must be in the lab before the first push (build's before_push)")
        self.receiver = plan.receiver
        self.expected: set[str] = set()
        self.started = time.monotonic()
        self.cert_hosts: list[str] = []
        self.cert_start = self.started
        self.tunnel_window: tuple[float, float] | None = None
        """From the tunnel-down row's fault to its end: the mail row's messages."""

    def _cycle(
        self, name: str, key: str, fault: Callable[[], object], repair: Callable[[], object], what: str
    ) -> list[Check]:
        """Fault, the alert, repair, the resolved message: two rows, each counting the
        messages for ``key`` once the second one is in (plus ``SETTLE_S``)."""
        self.expected.add(key)
        start = time.monotonic()
        fault()
        fired = self.receiver.wait(key, "firing", start)
        time.sleep(HOLD_S)
        repair()
        back = time.monotonic()
        resolved = self.receiver.wait(key, "resolved", back)
        time.sleep(SETTLE_S)
        firing = self.receiver.accepted(key, "firing", start)
        done = self.receiver.accepted(key, "resolved", start)
        by = ", ".join(sorted({r.edge for r in firing})) or "none"
        rows = [
            _timed(f"alert:{name}", _seconds(fired, start), len(firing), f"{what}; sent by {by}"),
            _timed(f"alert:{name.replace('-down', '-resolved')}", _seconds(resolved, back), len(done), "after repair"),
        ]
        if key.startswith("tunnel-down") and self.tunnel_window is None:
            self.tunnel_window = (start, time.monotonic())
        return rows

    def tunnel_down(self) -> list[Check]:
        iface = self.el.home_interface(self.last)
        return self._cycle(
            "tunnel-down",
            f"tunnel-down:{self.last}",
            lambda: self.el.home.run("wg-quick", "down", iface),
            lambda: self.el.home.run("wg-quick", "up", iface),
            f"home's tunnel {iface} to {self.last} down",
        )

    def service_down(self) -> list[Check]:
        cfg = self.el.cfg
        service = next((s for s in cfg.services if s.mode is Mode.TCP), None) or next(
            s for s in cfg.services if s.mode.by_hostname
        )
        target = service.target
        rules = (
            "table inet lab_alert {\n"
            "  chain in { type filter hook input priority -300; policy accept;\n"
            f"    ip daddr {target.host} tcp dport {target.port} reject with tcp reset; }}\n"
            "}\n"
        )
        return self._cycle(
            "service-down",
            f"service-down:{service.name}",
            lambda: self.el.server.run("nft", "-f", "-", input=rules),
            lambda: self.el.server.run("nft", "delete", "table", "inet", "lab_alert"),
            f"home service {service.name} ({target}) refuses connections",
        )

    def edge_down(self) -> list[Check]:
        edge = self.el.edges[self.last]
        booted: list[float] = []

        def boot() -> None:
            started = time.monotonic()
            edge.boot()
            booted.append(time.monotonic() - started)

        # What the edge's timer has done by then on a real edge: saved home's address, which
        # it dials at boot (without it, the tunnel waits for home's keepalive and rekey,
        # and the rebooted edge's tunnel down is an incident of its own).
        edge.fire_timer(edge_contract.WG_ENDPOINT_UNIT)
        rows = self._cycle(
            "edge-down", f"edge-down:{self.last}", edge.crash, boot, f"edge {self.last} crashed (every process ended)"
        )
        # The resolved message's seconds count from the edge serving again.
        rows[0].detail += f"; it booted in {booted[0]:.1f} s, resolved {rows[1].value} s after: {rows[1].detail}"
        rows[0].ok = rows[0].ok and rows[1].ok
        return rows[:1]

    def channel_down(self) -> Check:
        name, key = "alert:channel-down", f"tunnel-down:{self.leader}"
        self.expected.add(key)
        iface = self.el.home_interface(self.leader)
        hook = self.receiver.hook
        start = time.monotonic()
        hook.refuse_until = start + REFUSE_S
        self.el.home.run("wg-quick", "down", iface)

        def refused() -> bool:
            return any(not r.accepted for r in hook.messages() if r.at >= start)

        end = start + GIVE_UP_S
        while not (seen_refused := refused()) and time.monotonic() < end:
            time.sleep(POLL_S)
        # The daemon writes its state after each look: the failed attempt shows within two.
        state: dict = {}
        end = time.monotonic() + 3 * INTERVAL_S
        while time.monotonic() < end and seen_refused:
            state = self._state(self.leader)
            if "503" in str(((state.get("channels") or {}).get("webhook") or {}).get("lastError")):
                break
            time.sleep(POLL_S)
        self.el.home.run("wg-quick", "up", iface)
        back = hook.refuse_until
        wait_for(lambda: time.monotonic() >= back, timeout=REFUSE_S + 1, interval=POLL_S, message="the receiver")
        fired = self.receiver.wait(key, "firing", back)
        resolved = self.receiver.wait(key, "resolved", back)
        time.sleep(SETTLE_S)
        firing = self.receiver.accepted(key, "firing", start)
        done = self.receiver.accepted(key, "resolved", start)
        refusals = sum(1 for r in hook.messages() if not r.accepted and r.at >= start)
        webhook = (state.get("channels") or {}).get("webhook") or {}
        visible = bool(webhook.get("lastError")) and "503" in str(webhook.get("lastError"))
        ordered = fired is not None and resolved is not None and fired.at <= resolved.at
        ok = seen_refused and visible and ordered and len(firing) == 1 and len(done) == 1
        detail = (
            f"webhook refused {REFUSE_S:g} s ({refusals} attempts refused) while home's tunnel to {self.leader} "
            f"went down and up; then {len(firing)} firing and {len(done)} resolved accepted"
            f"{', in order' if ordered else ', NOT in order or missing'}; resolved "
            f"{_seconds(resolved, back)} s after the return; the leader's state named the failing channel: "
            f"{webhook.get('lastError') if visible else 'no'}"
        )
        return Check(name, ok, _seconds(fired, back) if fired else f">{GIVE_UP_S:g}", "s", detail)

    def mail(self) -> Check:
        name, key = "alert:mail", f"tunnel-down:{self.last}"
        mails = self.receiver.mail.mails
        if self.tunnel_window is None:
            return Check(name, False, None, "s", "no tunnel-down row to compare with")
        since, until = self.tunnel_window
        want = [m for m in mails if since <= m[0] <= until and f"tunnel to edge {self.last} is down" in m[1]]
        if not want:
            return Check(name, False, f">{GIVE_UP_S:g}", "s", f"no such mail among {len(mails)}")
        at, subject, text, to, authenticated = want[0]
        reporter = f"Reported by edge {self.leader}"
        ok = (
            len(want) == 1
            and at - since <= GOAL_S
            and to == [RECIPIENT]
            and authenticated
            and reporter in text
            and self.plan.password not in text
        )
        detail = (
            f"{len(want)} mail(s) for {key}, subject {subject!r}, to {', '.join(to)}, "
            f"{'after' if authenticated else 'WITHOUT'} STARTTLS and login ({dict(self.receiver.mail.logins)}); "
            f"body {'names' if reporter in text else 'does NOT name'} the sending edge {self.leader}"
        )
        return Check(name, ok, round(at - since, 1), "s", detail)

    def expire_certificate(self) -> None:
        """The leader's Traefik serves, for every ``http`` hostname, a certificate that
        ends in ``CERT_LEFT_DAYS``: what failed renewals leave."""
        hosts = sorted({h for s in self.el.cfg.services if s.mode is Mode.HTTP for h in s.hostnames})
        self.cert_hosts = hosts
        self.cert_start = time.monotonic()
        if not hosts:
            return
        for host in hosts:
            self.expected.add(f"cert-expiry:{host}")
        cert = self_signed(hosts, self.el.lab.workdir, "expiring", valid_days=CERT_LEFT_DAYS)
        standin = {"tls": {"certificates": [{"certFile": str(cert.cert), "keyFile": str(cert.key)}]}}
        self.el.edges[self.leader].node.write(
            f"{edge_contract.TRAEFIK_DYNAMIC_DIR}/lab-acme-standin.yaml", json.dumps(standin), 0o644
        )

    def cert_expiry(self) -> Check:
        name = "alert:cert-expiry"
        if not self.cert_hosts:
            return Check(name, False, None, "s", "the stack has no http service: no certificate to expire")
        keys = [f"cert-expiry:{host}" for host in self.cert_hosts]
        end = self.cert_start + LOCAL_EVERY_S + GIVE_UP_S
        while time.monotonic() < end and not all(self.receiver.accepted(k, "firing", self.cert_start) for k in keys):
            time.sleep(POLL_S)
        time.sleep(SETTLE_S)
        got = {k: self.receiver.accepted(k, "firing", self.cert_start) for k in keys}
        arrived = [rs[0].at for rs in got.values() if rs]
        seconds = round(max(arrived) - self.cert_start, 1) if len(arrived) == len(keys) else None
        senders = sorted({r.edge for rs in got.values() for r in rs})
        once = all(len(rs) == 1 for rs in got.values())
        ok = seconds is not None and seconds <= LOCAL_EVERY_S + GOAL_S and once and senders == [self.leader]
        detail = (
            f"edge {self.leader} serves a certificate ending in {CERT_LEFT_DAYS:g} days for "
            f"{', '.join(self.cert_hosts)} (alertCertDays {CERT_DAYS}): "
            + "; ".join(f"{k}: {len(rs)} message(s)" for k, rs in got.items())
            + f"; sent by {', '.join(senders) or 'none'} (it looks at its own certificates once a minute)"
        )
        return Check(name, ok, seconds if seconds is not None else f">{LOCAL_EVERY_S + GIVE_UP_S:g}", "s", detail)

    def duplicates(self) -> Check:
        counts = collections.Counter(
            (r.key, r.status) for r in self.receiver.hook.messages() if r.accepted and r.at >= self.started
        )
        extra = {k: n - 1 for k, n in counts.items() if n > 1}
        stray = sorted({key for key, _ in counts if key not in self.expected and key.split(":")[0] in ROW_KINDS})
        other = sorted({key for key, _ in counts if key.split(":")[0] not in ROW_KINDS})
        value = sum(extra.values()) + sum(counts[k] for k in counts if k[0] in stray)
        detail = (
            f"{sum(counts.values())} webhook messages accepted for {len(self.expected)} incidents; "
            f"repeated: {extra or 'none'}; not from a fault of the run: {stray or 'none'}; "
            f"requests to another path: {self.receiver.hook.strays}; of the machine the lab runs on: {other or 'none'}"
        )
        return Check("alert:duplicates", value == 0 and self.receiver.hook.strays == 0, value, "messages", detail)

    def memory(self) -> Check:
        sizes: dict[str, float | None] = {}
        for name, edge in self.el.edges.items():
            proc = edge.units.get(edge_contract.ALERTS_UNIT)
            if proc is None or proc.poll() is not None:
                sizes[name] = None
                continue
            sizes[name] = _rss_mb(proc.pid)  # nsenter execs the daemon: the same process
        known = [v for v in sizes.values() if v]
        worst = max(known, default=0.0)
        ok = len(known) == len(sizes) and worst < MEMORY_MAX_MB
        shown = ", ".join(f"{n} {v} MB" if v else f"{n} not running" for n, v in sizes.items())
        return Check(
            "alert:memory", ok, worst, "MB RSS", f"each edge's alert daemon: {shown} (MemoryMax {MEMORY_MAX_MB}M)"
        )

    def _state(self, edge: str) -> dict:
        done = self.el.edges[edge].node.run("cat", edge_contract.ALERTS_STATE, check=False)
        try:
            return json.loads(done.stdout)
        except ValueError:
            return {}

    def settle(self) -> None:
        """From a quiet fleet: no incident open on any edge and nothing waiting to be
        sent (a new fleet's tunnels come up after the pushes, so the daemons may have
        announced, and then resolved, a tunnel down meanwhile)."""

        def quiet() -> bool:
            states = [self._state(name) for name in self.el.edges]
            return all(
                s.get("edge")
                and not any(key.split(":")[0] in ROW_KINDS for key in s.get("incidents") or {})
                and not any(c.get("queued") for c in s["channels"].values())
                for s in states
            )

        wait_for(quiet, timeout=GIVE_UP_S, interval=0.5, message="every alert daemon without open incidents")
        self.started = time.monotonic()

    def run(self) -> list[Check]:
        self.settle()
        self.expire_certificate()  # its alert comes within a minute, while the next rows run
        rows = self.tunnel_down()
        rows += self.service_down()
        rows += self.edge_down()
        rows.append(self.cert_expiry())
        rows.append(self.channel_down())
        rows.append(self.mail())
        rows.append(self.duplicates())
        rows.append(self.memory())
        return rows


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except FileNotFoundError:
        return None
    return None


def run_alerts(el: EdgeLab, plan: Plan) -> list[Check]:
    return AlertLab(el, plan).run()
