#!/usr/bin/python3
"""cgnat-edge alert daemon: turns what the health agents know into messages a person gets.

Every edge runs one, and every one looks at the whole fleet the same way: every
``interval`` seconds it asks each edge's health agent (this edge's on loopback, the
others' on their public addresses, which their nftables admit from the fleet) for the
tunnel check (a TCP SYN to home's tunnel address, answered by home through the
tunnel) and each service's check.  From those answers come the faults:

  edge-down:<edge>      the edge's agent answered once and has not for STALE_ROUNDS
                        looks (an edge never seen is not deployed yet: the first
                        ``pulumi up`` pushes one edge after the other)
  tunnel-down:<edge>    the edge answers, but home does not answer through its tunnel
  service-down:<name>   every edge whose tunnel is up reports the service down

Besides, each daemon looks at its own edge every LOCAL_EVERY_S seconds; what it finds
there is that edge's own, and the edge sends it itself, leader or not:

  cert-expiry:<hostname>  the certificate this edge's Traefik serves for an ``http``
                          hostname ends within ``certDays`` days
  push-rolled-back:<edge> the last push failed and put the files before it back (the
                          push records how it ended); a push that succeeds resolves it
  reboot-required:<edge>  an update has waited ``reboot.hours`` for its reboot
  upgrades-failing:<edge> unattended upgrades have not succeeded for ``upgrades.hours``
  geo-stale:<edge>        the country lists have not been fetched for ``geo.hours``
  crowdsec-down:<edge>    CrowdSec or its bouncer is not running

A fault that lasts ``after`` seconds opens an incident; it resolves once the fault has
been gone for CLEAR_ROUNDS looks (one good answer in a flapping fault is not a
recovery).  An open incident is announced again every ``reminder`` seconds (0: never).

One message per incident for the fleet: every daemon keeps the same incidents, but
only the leader sends, the lowest-indexed edge whose agent answers (this edge counts
itself).  When the leader stops answering, the next edge takes over within
STALE_ROUNDS looks, inherits the incidents it kept meanwhile (announced by the old
leader) and sends the old leader's edge-down once it is due.  Two edges that cannot
see each other both lead, and both report the other: a split is reported twice.

Delivery never blocks the looking: each channel has its own thread and queue, and
retries a message with doubling backoff (BACKOFF_S up to BACKOFF_MAX_S) until it is
accepted or older than GIVE_UP_S; messages leave each channel in order.  What each
channel did last is in the state file (``status`` reads it), with the open incidents.

Config: /etc/cgnat-edge/alerts.json (components/renderers/alerts.py).  The channels'
secrets: the systemd credential ``channels`` (/etc/cgnat-edge/alert-channels.json,
root-only), or the second argument.  Standard library only.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from email.message import EmailMessage

STALE_ROUNDS = 3
"""An edge that has not answered for this many looks is unreachable: one lost answer
does not hand the lead over."""
CLEAR_ROUNDS = 3
BACKOFF_S = 5.0
BACKOFF_MAX_S = 300.0
GIVE_UP_S = 24 * 3600.0
SEND_TIMEOUT_S = 15.0
USER_AGENT = "cgnat-edge-alerts"
LOCAL_EVERY_S = 60.0
"""This edge's own facts change slowly (a certificate's days, a file's age): a look a
minute is plenty, and a TLS handshake per hostname a minute costs nothing."""

WHAT = {
    "edge-down": (
        "edge {subject} is unreachable from the other edges",
        "Its services are served by the other edges if DNS fails over. Check the VPS in the provider's console "
        "(stopped, rebooting, out of memory?); `cgnat-edge status` shows what the other edges see.",
        "edge {subject} is reachable again",
    ),
    "tunnel-down": (
        "home's tunnel to edge {subject} is down",
        "Visitors reaching {subject} get no answer from home. Check the home router's internet connection and its "
        "WireGuard interface for {subject} (`wg show`: latest handshake); `cgnat-edge status` shows every tunnel.",
        "home's tunnel to edge {subject} is back",
    ),
    "service-down": (
        "service {subject} is down on every edge",
        "The tunnels are up, so the fault is at home: check {subject}'s target (is it running, does it answer on "
        "its address and port?).",
        "service {subject} answers again",
    ),
    "cert-expiry": (
        "the certificate edge {edge} serves for {subject} expires soon",
        "Traefik renews it 30 days before its end, so renewals have failed: "
        "`journalctl -u 'traefik@*' | grep -i acme` on {edge} says why (DNS record, port 80 blocked, "
        "rate limit, API token); `cgnat-edge status` lists each edge's certificates.",
        "edge {edge} serves a renewed certificate for {subject}",
    ),
    "push-rolled-back": (
        "a push to edge {edge} failed and was rolled back",
        "The edge runs the configuration it had before; the stack's newer one is not on it. The push's output "
        "(`pulumi up`) says what failed; fix that and run `pulumi up` again.",
        "a push to edge {edge} succeeded",
    ),
    "reboot-required": (
        "edge {edge} waits for a reboot after updates",
        "The nightly automatic reboot did not happen, so the update is installed but not running. "
        "Reboot it (`sudo reboot` on {edge}; the other edges serve meanwhile) and check "
        "`journalctl -u unattended-upgrades`.",
        "edge {edge} rebooted into its updates",
    ),
    "upgrades-failing": (
        "unattended upgrades fail on edge {edge}",
        "Security updates are not being installed. `sudo unattended-upgrade -d` on {edge} shows why "
        "(a held package, a full disk, a mirror); /var/log/unattended-upgrades/ has each run.",
        "unattended upgrades succeed again on edge {edge}",
    ),
    "geo-stale": (
        "the country lists on edge {edge} are not refreshing",
        "The sets loaded last stay in force, but go stale. `journalctl -u cgnat-edge-geo-sets` on {edge} says "
        "why (the registries' mirrors unreachable, a failed checksum); `cgnat-edge status` shows each edge's lists.",
        "the country lists on edge {edge} are fresh again",
    ),
    "crowdsec-down": (
        "CrowdSec is not running on edge {edge}",
        "Nobody is banned on {edge} while it is down. `systemctl status crowdsec crowdsec-firewall-bouncer` and "
        "their journals on {edge} say why.",
        "CrowdSec runs again on edge {edge}",
    ),
}
"""Per kind: what is wrong, what to do, and what the "resolved" message says."""
LOCAL = frozenset(
    {"cert-expiry", "push-rolled-back", "reboot-required", "upgrades-failing", "geo-stale", "crowdsec-down"}
)
"""The kinds only the edge itself can see: it sends them itself, one per edge."""
ONCE = frozenset({"push-rolled-back"})
"""Announced once, no reminders: the operator saw the push fail, and the next push ends it."""


# ---------------------------------------------------------------------------
# Looking: what every edge's agent says
# ---------------------------------------------------------------------------


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""The agents are asked directly, whatever proxy the environment names."""


def ask(url, timeout):
    """True (200), False (503: the check fails) or None (no agent answered)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with _DIRECT.open(request, timeout=timeout) as r:
            return r.status == 200
    except urllib.error.HTTPError as exc:
        return False if exc.code == 503 else None
    except (OSError, ValueError):
        return None


class View:
    """One edge as the last looks saw it."""

    __slots__ = ("answered", "seen", "services", "tunnel")

    def __init__(self, seen=False):
        self.answered = None  # monotonic time of the last answer
        self.seen = seen  # it has answered once (kept across restarts in the state file)
        self.tunnel = None
        self.services = {}


def look(edge, cfg, view, lock, asker=ask):
    """One look at ``edge``: the tunnel first; an edge that does not answer is not
    asked about its services (each would wait for the timeout)."""
    base = edge["agent"].rstrip("/")
    tunnel = asker(f"{base}/health/{cfg['tunnelCheck']}", cfg["timeout"])
    services = {}
    if tunnel is not None:
        for name, check in cfg["services"].items():
            services[name] = asker(f"{base}/health/{check}", cfg["timeout"])
    with lock:
        if tunnel is not None:
            view.answered, view.tunnel, view.services, view.seen = time.monotonic(), tunnel, services, True


def reachable(view, now, cfg):
    return view.answered is not None and now - view.answered < STALE_ROUNDS * cfg["interval"] + cfg["timeout"]


def faults(cfg, views, now):
    """The faults the fleet shows now: keys ``kind:subject``."""
    found = set()
    up = []
    for edge in cfg["edges"]:
        view = views[edge["name"]]
        if edge["name"] != cfg["edge"] and not reachable(view, now, cfg):
            if view.seen:
                found.add(f"edge-down:{edge['name']}")
        elif reachable(view, now, cfg) and view.tunnel is False:
            found.add(f"tunnel-down:{edge['name']}")
        elif reachable(view, now, cfg) and view.tunnel:
            up.append(view)
    for name in cfg["services"]:
        # Not known on an edge (not asked yet, or no answer): not counted either way.
        known = [v.services[name] for v in up if v.services.get(name) is not None]
        if known and not any(known):
            found.add(f"service-down:{name}")
    return found


def leader(cfg, views, now):
    """The name of the edge that sends: the lowest-indexed one answering (this edge
    always counts itself: it is running)."""
    alive = [e for e in cfg["edges"] if e["name"] == cfg["edge"] or reachable(views[e["name"]], now, cfg)]
    return min(alive, key=lambda e: e["index"])["name"]


# ---------------------------------------------------------------------------
# Looking at this edge itself
# ---------------------------------------------------------------------------


def _tlv(der, pos):
    """(tag, start, end) of the DER element at ``pos``: its contents are der[start:end]."""
    tag, length = der[pos], der[pos + 1]
    start = pos + 2
    if length & 0x80:
        count = length & 0x7F
        length, start = int.from_bytes(der[start : start + count], "big"), start + count
    if start + length > len(der):
        raise ValueError("truncated DER")
    return tag, start, start + length


def not_after(der):
    """The end of a DER certificate's validity, as a Unix time.

    With verification off (an edge's certificate may be expired, or self-signed in the
    lab) ``getpeercert()`` says nothing, so the DER is read: Certificate > TBSCertificate
    > [0] version (optional), serialNumber, signature, issuer, validity > notBefore,
    notAfter (UTCTime YYMMDDHHMMSSZ or GeneralizedTime YYYYMMDDHHMMSSZ)."""
    _, cert, _ = _tlv(der, 0)
    _, pos, _ = _tlv(der, cert)
    tag, _, end = _tlv(der, pos)
    if tag == 0xA0:
        pos = end
    for _ in range(3):
        pos = _tlv(der, pos)[2]
    tag, validity, _ = _tlv(der, pos)
    if tag != 0x30:
        raise ValueError("no validity in this certificate")
    tag, start, end = _tlv(der, _tlv(der, validity)[2])
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime: 50-99 are 1950-1999 (RFC 5280)
        year = int(text[:2])
        text = str(1900 + year if year >= 50 else 2000 + year) + text[2:]
    elif tag != 0x18:
        raise ValueError(f"notAfter has tag {tag:#x}, not a time")
    moment = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def served_cert(host, port, timeout):
    """The DER certificate this edge's Traefik serves for ``host`` (SNI), on loopback."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return tls.getpeercert(binary_form=True)


def cert_faults(cfg, now, fetch=served_cert):
    """``cert-expiry:<hostname>`` -> what the message says, for each certificate that
    ends within ``certDays``.  A hostname whose certificate cannot be had (Traefik
    restarting) is no fault: the agents' checks see a Traefik that is down."""
    found = {}
    for host in cfg.get("certs", []):
        try:
            end = not_after(fetch(host, cfg["certPort"], cfg["timeout"]))
        except (OSError, ValueError, IndexError):
            continue
        left = end - now
        if left < cfg["certDays"] * 86400:
            when = f"in {_span(left)}" if left > 0 else f"{_span(-left)} ago"
            found[f"cert-expiry:{host}"] = f"It ends {_clock(end)} ({when})."
    return found


def _json(path):
    try:
        with open(path) as f:
            found = json.load(f)
        return found if isinstance(found, dict) else None
    except (OSError, ValueError):
        return None


def _mtime(path):
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def push_faults(cfg, now):
    record = _json(cfg["push"]) if cfg.get("push") else None
    if not record or record.get("result") != "rolled-back":
        return {}
    at = record.get("at")
    when = f"The push at {_clock(at)}" if isinstance(at, (int, float)) else "The last push"
    return {f"push-rolled-back:{cfg['edge']}": f"{when} failed: {record.get('reason') or 'no reason recorded'}."}


def _stale(stamp, now, hours, up):
    """Seconds since ``stamp`` when past ``hours``; with no stamp, the time since boot
    (an edge up for less than ``hours`` has had no chance yet)."""
    age = now - stamp if stamp is not None else up
    return age if age > hours * 3600 else None


def upgrade_faults(cfg, now, up):
    found, edge = {}, cfg["edge"]
    reboot = cfg.get("reboot")
    if reboot:
        since = _mtime(reboot["file"])
        if since is not None and now - since > reboot["hours"] * 3600:
            try:
                with open(reboot["file"] + ".pkgs") as f:
                    pkgs = sorted({line.strip() for line in f if line.strip()})
            except OSError:
                pkgs = []
            which = f" ({', '.join(pkgs[:5])}{', ...' if len(pkgs) > 5 else ''})" if pkgs else ""
            found[f"reboot-required:{edge}"] = f"Updates{which} have waited {_span(now - since)} for it."
    upgrades = cfg.get("upgrades")
    if upgrades:
        stamp = _mtime(upgrades["stamp"])
        age = _stale(stamp, now, upgrades["hours"], up)
        if age is not None:
            found[f"upgrades-failing:{edge}"] = (
                f"The last run that succeeded was {_span(age)} ago."
                if stamp is not None
                else f"No run has succeeded since the edge booted {_span(age)} ago."
            )
    return found


def is_active(unit):
    """Whether ``unit`` runs, by what systemd says of it; a systemctl that cannot ask
    (no answer, no such state) raises: no fact, rather than a false alarm."""
    said = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True, timeout=10).stdout.strip()
    if said in ("active", "reloading", "activating"):
        return True
    if said in ("inactive", "failed", "deactivating"):
        return False
    raise subprocess.SubprocessError(f"systemctl is-active {unit}: {said or 'no answer'}")


def protection_faults(cfg, now, up, active=is_active):
    found, edge = {}, cfg["edge"]
    geo = cfg.get("geo")
    if geo:
        status = _json(geo["status"]) or {}
        fetched = status.get("fetched")
        age = _stale(fetched if isinstance(fetched, (int, float)) and fetched else None, now, geo["hours"], up)
        if age is not None:
            error = f" The last attempt: {status['error']}" if status.get("error") else ""
            found[f"geo-stale:{edge}"] = (
                f"They were last fetched {_span(age)} ago." if fetched else "They were never fetched."
            ) + error
    down = []
    for unit in cfg.get("crowdsec") or []:
        try:
            running = active(unit)
        except (OSError, subprocess.SubprocessError):
            continue  # systemctl itself failed: no fact either way
        if not running:
            down.append(unit)
    if down:
        found[f"crowdsec-down:{edge}"] = f"Not running: {', '.join(down)}."
    return found


def local_faults(cfg, now):
    """This edge's own faults: key -> what the message adds about it."""
    up = uptime()
    return {
        **cert_faults(cfg, now),
        **push_faults(cfg, now),
        **upgrade_faults(cfg, now, up),
        **protection_faults(cfg, now, up),
    }


def watch_self(cfg, found, lock, every=LOCAL_EVERY_S):
    """Keep ``found`` (this edge's own faults) current, on its own thread: a handshake
    that waits for its timeout never holds up the looks at the fleet."""
    while True:
        try:
            current = local_faults(cfg, time.time())
        except Exception as exc:  # a look that breaks must not end the looking
            print(f"cgnat-edge-alerts: looking at this edge: {type(exc).__name__}: {exc}", flush=True)
            time.sleep(every)
            continue
        with lock:
            found.clear()
            found.update(current)
        time.sleep(every)


# ---------------------------------------------------------------------------
# Deciding: incidents
# ---------------------------------------------------------------------------


class Incidents:
    """Faults over time: when one becomes an incident, is announced again, resolves.
    Times are wall-clock seconds (they go into the messages and the state file)."""

    def __init__(self, after, reminder, interval):
        self.after, self.reminder = after, reminder
        self.clear_after = CLEAR_ROUNDS * interval
        self.pending = {}  # key -> since (a fault not yet an incident)
        self.open = {}  # key -> {"since", "announced", "clear"}

    def restore(self, saved, now, kinds):
        """The incidents of ``kinds`` a previous run announced (its state file): a
        restart (every push restarts the daemon) must not announce them again, and must
        resolve them."""
        for key, inc in saved.items():
            if key.split(":", 1)[0] in kinds and isinstance(inc.get("since"), (int, float)):
                self.open[key] = {"since": inc["since"], "announced": now, "clear": None}

    def update(self, current, now):
        """Events (status, key, since, now) for ``current`` faults at ``now``."""
        events = []
        for key in current:
            if key in self.open:
                self.open[key]["clear"] = None
            else:
                self.pending.setdefault(key, now)
        for key in [k for k in self.pending if k not in current]:
            del self.pending[key]
        for key, since in sorted(self.pending.items()):
            if now - since >= self.after:
                del self.pending[key]
                self.open[key] = {"since": since, "announced": now, "clear": None}
                events.append(("firing", key, since, now))
        for key, inc in sorted(self.open.items()):
            if key not in current:
                inc["clear"] = inc["clear"] or now
                if now - inc["clear"] >= self.clear_after:
                    del self.open[key]
                    events.append(("resolved", key, inc["since"], inc["clear"]))
            elif self.reminder and now - inc["announced"] >= self.reminder and key.split(":", 1)[0] not in ONCE:
                inc["announced"] = now
                events.append(("reminder", key, inc["since"], now))
        return events


def _clock(t):
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(seconds):
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def message(cfg, event, detail=""):
    """The message for one event: a dict every channel renders from.  ``detail`` is
    what the fault's look found out (a certificate's end, a handshake's age)."""
    status, key, since, at = event
    kind, subject = key.split(":", 1)
    what, todo, back = (text.format(subject=subject, edge=cfg["edge"]) for text in WHAT[kind])
    if status == "resolved":
        title = f"Resolved: {back}"
        body = f"It lasted {_span(at - since)}, from {_clock(since)} to {_clock(at)}."
    else:
        title = ("Still: " if status == "reminder" else "") + what[0].upper() + what[1:]
        body = f"Since {_clock(since)} ({_span(at - since)}). {detail + ' ' if detail else ''}{todo}"
    return {
        "stack": cfg["stack"],
        "status": status,
        "kind": kind,
        "subject": subject,
        "since": _clock(since),
        "at": _clock(at),
        "edge": cfg["edge"],
        "title": f"[{cfg['stack']}] {title}",
        "message": f"{body} (Reported by edge {cfg['edge']}.)",
    }


# ---------------------------------------------------------------------------
# Delivering: one thread and queue per channel
# ---------------------------------------------------------------------------


def _post(url, data, headers):
    request = urllib.request.Request(url, data=data, headers={"User-Agent": USER_AGENT, **headers}, method="POST")
    with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as r:
        r.read(1024)


def ntfy_request(url, msg):
    """(URL, JSON body) of an ntfy publish: JSON to the server's root names the topic,
    and carries a title in UTF-8, which a header could not."""
    base, _, topic = url.rstrip("/").rpartition("/")
    body = {
        "topic": topic,
        "title": msg["title"],
        "message": msg["message"],
        "priority": 3 if msg["status"] == "resolved" else 4,
        "tags": ["white_check_mark" if msg["status"] == "resolved" else "warning"],
    }
    return base + "/", body


def send_ntfy(url, msg, _cfg):
    target, body = ntfy_request(url, msg)
    _post(target, json.dumps(body).encode(), {"Content-Type": "application/json"})


def webhook_body(msg):
    """The webhook's JSON: the message's fields, plus the field each receiver reads
    (Discord ``content``, Slack ``text``, Gotify ``title``/``message``/``priority``;
    Home Assistant passes it all to the automation)."""
    text = f"{msg['title']}\n{msg['message']}"
    return {**msg, "text": text, "content": text[:2000], "priority": 2 if msg["status"] == "resolved" else 8}


def send_webhook(url, msg, _cfg):
    _post(url, json.dumps(webhook_body(msg)).encode(), {"Content-Type": "application/json"})


def send_smtp(password, msg, cfg):
    smtp = cfg["smtp"]
    mail = EmailMessage()
    mail["Subject"], mail["From"], mail["To"] = msg["title"], smtp["from"], ", ".join(smtp["to"])
    mail.set_content(msg["message"] + "\n")
    context = ssl.create_default_context()
    if smtp["security"] == "tls":
        client = smtplib.SMTP_SSL(smtp["host"], smtp["port"], timeout=SEND_TIMEOUT_S, context=context)
    else:
        client = smtplib.SMTP(smtp["host"], smtp["port"], timeout=SEND_TIMEOUT_S)
    with client:
        if smtp["security"] == "starttls":
            client.starttls(context=context)
        if smtp.get("user"):
            client.login(smtp["user"], password)
        client.send_message(mail)


SENDERS = {"ntfy": send_ntfy, "webhook": send_webhook, "smtp": send_smtp}


def backoff(attempt):
    """Seconds before retry number ``attempt`` (1 = the first retry)."""
    return min(BACKOFF_S * 2 ** (attempt - 1), BACKOFF_MAX_S)


class Channel:
    """One channel's queue, worked through in order by its own thread."""

    def __init__(self, name, send, clock=time.time, sleep=None, secret=None):
        self.name, self.send, self.clock, self.secret = name, send, clock, secret
        self.queue = collections.deque()
        self.wake = threading.Condition()
        self.sleep = sleep or self._wait
        self.state = {"delivered": 0, "lastOk": None, "lastError": None, "lastErrorAt": None, "queued": 0}

    def put(self, msg):
        with self.wake:
            self.queue.append((msg, self.clock()))
            self.state["queued"] = len(self.queue)
            self.wake.notify()

    def _wait(self, seconds):
        with self.wake:
            self.wake.wait(seconds)

    def deliver_next(self):
        """Deliver the oldest message, retrying until it is accepted or too old."""
        msg, queued_at = self.queue[0]
        attempt = 0
        while True:
            try:
                self.send(msg)
                self.state.update(lastOk=self.clock(), delivered=self.state["delivered"] + 1)
                break
            except Exception as exc:  # any failure is retried; its reason is kept
                attempt += 1
                error = f"{type(exc).__name__}: {exc}"
                if self.secret:  # some errors quote the URL, which is the credential
                    error = error.replace(self.secret, "<secret>")
                self.state.update(lastError=error[:300], lastErrorAt=self.clock())
                print(f"cgnat-edge-alerts: {self.name}: {self.state['lastError']}", flush=True)
                if self.clock() - queued_at > GIVE_UP_S:
                    break
                self.sleep(backoff(attempt))
        with self.wake:
            self.queue.popleft()
            self.state["queued"] = len(self.queue)

    def run(self):
        while True:
            with self.wake:
                while not self.queue:
                    self.wake.wait()
            self.deliver_next()


def channels(cfg, secrets):
    found = []
    for name in ("ntfy", "webhook", "smtp"):
        secret = secrets.get("smtpPassword" if name == "smtp" else name)
        if name == "smtp" and cfg.get("smtp"):
            found.append(Channel(name, lambda m, s=secret: send_smtp(s, m, cfg), secret=secret))
        elif name != "smtp" and secret:
            found.append(Channel(name, lambda m, u=secret, f=SENDERS[name]: f(u, m, cfg), secret=secret))
    return found


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


def decide(cfg, incidents, own, current, mine, lead, now):
    """The messages this daemon sends now: the fleet's incidents if it leads, its own
    edge's (``mine``: key -> detail) always.  Every event is logged, sent or not."""
    events = [(e, lead == cfg["edge"]) for e in incidents.update(current, now)]
    events += [(e, True) for e in own.update(set(mine), now)]
    out = []
    for event, send in events:
        print(f"cgnat-edge-alerts: {event[0]} {event[1]}", flush=True)
        if send:
            out.append(message(cfg, event, mine.get(event[1], "")))
    return out


def write_state(path, state):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def state_of(cfg, lead, incidents, own, outlets, views):
    return {
        "edge": cfg["edge"],
        "leader": lead,
        "seen": sorted(name for name, view in views.items() if view.seen),
        "updated": time.time(),
        "incidents": {k: {"since": v["since"]} for k, v in (incidents.open | own.open).items()},
        "channels": {c.name: dict(c.state) for c in outlets},
    }


def main():
    with open(sys.argv[1] if len(sys.argv) > 1 else "/etc/cgnat-edge/alerts.json") as f:
        cfg = json.load(f)
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    secrets_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(credentials or "/nonexistent", "channels")
    with open(secrets_path) as f:
        secrets = json.load(f)
    outlets = channels(cfg, secrets)
    for c in outlets:
        threading.Thread(target=c.run, daemon=True, name=c.name).start()
    lock = threading.Lock()
    views = {e["name"]: View() for e in cfg["edges"]}
    incidents = Incidents(cfg["after"], cfg["reminder"], cfg["interval"])
    own = Incidents(cfg["after"], cfg["reminder"], cfg["interval"])  # this edge's, sent by it alone
    found = {}
    threading.Thread(target=watch_self, args=(cfg, found, lock), daemon=True, name="self").start()
    try:
        with open(cfg["state"]) as f:
            saved = json.load(f)
        incidents.restore(saved.get("incidents", {}), time.time(), set(WHAT) - LOCAL)
        own.restore(saved.get("incidents", {}), time.time(), LOCAL)
        for name in saved.get("seen", []):
            if name in views:
                views[name].seen = True
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # the first start, or a state file from elsewhere: nothing to restore
    print(
        f"cgnat-edge-alerts: watching {len(views)} edges, sending to {', '.join(c.name for c in outlets)}", flush=True
    )
    was_leader = None
    while True:
        started = time.monotonic()
        lookers = [
            threading.Thread(target=look, args=(e, cfg, views[e["name"]], lock), daemon=True) for e in cfg["edges"]
        ]
        for t in lookers:
            t.start()
        for t in lookers:
            t.join(cfg["interval"] + cfg["timeout"] * (1 + len(cfg["services"])))
        now = time.monotonic()
        with lock:
            current, lead = faults(cfg, views, now), leader(cfg, views, now)
            mine = dict(found)
        if lead != was_leader:
            print(f"cgnat-edge-alerts: {lead} leads", flush=True)
            was_leader = lead
        for msg in decide(cfg, incidents, own, current, mine, lead, time.time()):
            for c in outlets:
                c.put(msg)
        write_state(cfg["state"], state_of(cfg, lead, incidents, own, outlets, views))
        time.sleep(max(0.0, cfg["interval"] - (time.monotonic() - started)))


if __name__ == "__main__":
    main()
