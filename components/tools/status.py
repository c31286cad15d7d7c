"""``cgnat-edge status``: the truth about a running fleet.

It reads the stack outputs (``pulumi stack output --json --show-secrets``, a saved copy
or stdin, as ``home-config`` does) and logs in to every edge over SSH, pinning the
edge's host key from the outputs (``StrictHostKeyChecking=yes``; a key that does not
match is reported, never accepted).  One remote run per edge gathers what decides
whether it serves: cloud-init, the tunnel, Traefik, the files of the last push
(``pushedFiles``: their SHA-256), ``cgnat-edge-verify`` (the running wg0, ruleset,
Traefik routers and sshd against those files), upgrades.  From here it asks each
``http`` hostname's certificate and what the DNS answers.

Every problem comes with the command that fixes it; the exit status is 1 when there
is any.  Each edge is checked on its own, concurrently and within a bound: a broken
edge is a row of the report, never the end of it.  What an edge sends is text from a
machine that may be compromised, so its control characters are made visible before
anything prints it (``visible``)."""

from __future__ import annotations

import datetime
import json
import re
import shlex
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from components.model import edge_contract
from components.renderers import bootstrap, edge_dns, protection, templates
from components.tools import home_files, render

HANDSHAKE_STALE_S = 180
"""WireGuard renews a session every 2 minutes while traffic flows and home keeps it alive."""
UPGRADES_STALE_S = 2 * 86400
SSH_CONNECT_S = 8
SSH_TIMEOUT_S = 60
"""The whole remote run: the login and the edge's status script."""
EDGE_DEADLINE_S = SSH_TIMEOUT_S + 5
"""All edges' SSH checks together (they run at once); an edge still running then is a problem row."""
TLS_TIMEOUT_S = 5
"""For the connection, and again for each read of the handshake."""
NAMESERVER_TIMEOUT_S = 3
RESOLVE_TIMEOUT_S = 5
"""The system resolver (``getaddrinfo``) has no timeout of its own."""
GEO_STALE_S = 3 * 86400
"""The registries publish daily and the timer fetches after 20 hours: three days
without a fetch is a source that keeps failing, not a slow one."""
ALERTS_STALE_S = 30
"""The alert daemon writes its state after every look (every 2 s, longer while a peer
times out): half a minute without is a daemon that is stuck or gone."""
CHANNEL_KEYS = {"ntfy": "alertNtfyUrl", "webhook": "alertWebhookUrl", "smtp": "alertSmtpServer"}
CERT_WARN_DAYS = 14
"""Let's Encrypt certificates are renewed 30 days before they expire; 14 left means renewal fails."""


class StatusError(Exception):
    """The outputs cannot be used (missing, not from this version); the message says what to run."""


@dataclass
class Problem:
    what: str
    fix: str


@dataclass
class EdgeStatus:
    edge: str
    address: str
    reachable: bool = False
    facts: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def problem(self, what: str, fix: str) -> None:
        self.problems.append(Problem(what, fix))


@dataclass
class HostStatus:
    hostname: str
    answers: list[str]
    expected: list[str]
    problems: list[Problem] = field(default_factory=list)
    nameservers: dict[str, list[str] | str] = field(default_factory=dict)
    """edge -> what its own nameserver answers (dnsMode edges), or why it gives nothing."""


Runner = Callable[[list[str]], subprocess.CompletedProcess]


def _local(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=SSH_TIMEOUT_S)


_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""C0 controls but tab and newline, ESC among them; DEL; C1; the bidi marks and overrides."""


def visible(value: Any) -> Any:
    """``value`` with every control character (ESC, so every escape sequence, with them)
    and bidi override written out as ``\\xNN``/``\\uNNNN`` text, in dict keys too; tab
    and newline stay, the wg dump is tab-separated lines.  An edge's output reaches the
    operator's terminal: written out, an escape sequence shows and does nothing."""
    if isinstance(value, str):
        return _UNSAFE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", value)
    if isinstance(value, dict):
        return {visible(k): visible(v) for k, v in value.items()}
    if isinstance(value, list):
        return [visible(v) for v in value]
    return value


def refuse_render(outputs: dict) -> None:
    """The outputs ``cgnat-edge render`` writes carry its marker: their addresses are the
    mock engine's documentation addresses, so logging in there would only time out and
    report every edge as broken."""
    marker = outputs.get(render.RENDER_MARKER)
    if marker is not None:
        stack = marker.get("stack") if isinstance(marker, dict) else None
        raise StatusError(
            f"these outputs were written by `cgnat-edge render`{f' (stack {stack})' if stack else ''}: "
            "the mock engine's keys and documentation addresses, nothing is deployed there; after `pulumi up`, "
            "run `cgnat-edge status` (it asks the Pulumi CLI) or give it what "
            "`pulumi stack output --json --show-secrets` prints"
        )


def edges_from(outputs: dict) -> dict[str, dict]:
    edges = outputs.get("edges")
    if not isinstance(edges, dict) or not edges:
        raise StatusError("the outputs have no `edges`; pass what `pulumi stack output --json --show-secrets` prints")
    for name, e in edges.items():
        if not isinstance(e, dict) or not e.get("hostPublicKey") or "pushedFiles" not in e:
            raise StatusError(
                f"edge {name!r} in the outputs has no hostPublicKey/pushedFiles (outputs of an older cgnat-edge); "
                "run `pulumi up` once with this version"
            )
    return edges


def ssh_argv(user: str, address: str, known_hosts: Path, identity: Path | None, command: str) -> list[str]:
    argv = ["ssh", "-F", "/dev/null", "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_CONNECT_S}", "-o", "GlobalKnownHostsFile=/dev/null"]
    if identity:
        argv += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
    # The user and address come from the stack's outputs: after "--" neither can be read as an option.
    return [*argv, "-l", user, "--", address, command]


def remote_command(user: str, files: list[str]) -> str:
    """The edge's side (``cloud-init/cgnat-edge-status.py``) as a ``python3 -c`` command,
    with the paths and units to look at from the edge contract."""
    args = {
        "interface": edge_contract.WG_INTERFACE,
        "slots": list(edge_contract.TRAEFIK_SLOTS),
        "ping": f"http://{edge_contract.TRAEFIK_PING}/ping",
        "version": f"{edge_contract.TRAEFIK_API}/version",
        "verify": edge_contract.VERIFY,
        "desired": edge_contract.DESIRED,
        "files": files,
        "upgradesStamp": edge_contract.UPGRADES_STAMP,
        "rebootRequired": edge_contract.REBOOT_REQUIRED,
        "geoConfig": edge_contract.GEO_CONFIG,
        "geoStatus": edge_contract.GEO_STATUS,
        "crowdsec": [edge_contract.CROWDSEC_UNIT, edge_contract.BOUNCER_UNIT],
        "alertsConfig": edge_contract.ALERTS_CONF,
        "alertsState": edge_contract.ALERTS_STATE,
    }
    program = templates.text("cgnat-edge-status.py")
    return bootstrap.as_root(user, f"python3 -c {shlex.quote(program)} {shlex.quote(json.dumps(args))}")


def _ssh(e: dict) -> str:
    return f"ssh {e.get('sshUser', 'root')}@{e['ipv4']}"


def check_edge(name: str, e: dict, identity: Path | None, run: Runner = _local) -> EdgeStatus:
    """One edge, whatever it answers: a login that fails or hangs, output that is not the
    status script's, facts of the wrong shape each become a problem of this edge."""
    st = EdgeStatus(name, e["ipv4"])
    user, ssh = e.get("sshUser", "root"), _ssh(e)
    try:
        with tempfile.TemporaryDirectory(prefix="cgnat-edge-status-") as tmp:
            known = Path(tmp) / "known_hosts"
            known.write_text(f"{e['ipv4']} {e['hostPublicKey']}\n")
            done = run(ssh_argv(user, e["ipv4"], known, identity, remote_command(user, sorted(e["pushedFiles"]))))
    except subprocess.TimeoutExpired as exc:
        st.problem(
            f"no answer over SSH within {exc.timeout:g} s: the login or the status script hangs",
            f"`{ssh} true` shows whether the login does; then `{ssh} sudo cloud-init status --long`",
        )
        return st
    except FileNotFoundError as exc:
        st.problem(f"cannot run {exc.filename or 'ssh'}: not on PATH", "install the OpenSSH client")
        return st
    err = visible(done.stderr or "")
    if done.returncode == 255:
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in err or "Host key verification failed" in err:
            st.problem(
                f"host key mismatch: {e['ipv4']} does not present the pinned key ({e['hostPublicKey'][:40]}...)",
                "do not connect; if the server was rebuilt or its key rotated, run `pulumi refresh && pulumi up`, "
                "otherwise treat the address as compromised",
            )
        else:
            last = err.strip().splitlines()[-1] if err.strip() else "no answer"
            st.problem(
                f"unreachable over SSH: {last}",
                f"check the server in the provider's console and `sshAllowedCidrs`; then `{ssh} true`",
            )
        return st
    try:
        facts = visible(json.loads(done.stdout))
    except (json.JSONDecodeError, TypeError):
        said = err.strip() or visible(str(done.stdout or "")).strip() or f"exit {done.returncode}, no output"
        st.problem(f"the edge's status script failed: {said[:300]}", f"{ssh} sudo cloud-init status --long")
        return st
    st.reachable = True
    try:
        _judge(st, e, facts, ssh)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        st.facts = {}  # half-judged facts may hold values of any type
        st.problem(
            f"the edge's status script answered what this version cannot read ({type(exc).__name__}: "
            f"{visible(str(exc))[:200]})",
            f"{ssh} sudo cloud-init status --long; look at the edge's python3 and /etc (a tampered edge answers so)",
        )
    return st


def _judge(st: EdgeStatus, e: dict, facts: dict, ssh: str) -> None:
    f = st.facts
    code, out, _ = facts["cloudInit"]
    f["cloudInit"] = out.strip().removeprefix("status: ") or "unknown"
    if code != 0 or f["cloudInit"] != "done":
        st.problem(f"cloud-init is {f['cloudInit']}", f"{ssh} sudo cloud-init status --long")

    code, out, err = facts["wg"]
    peers = [line.split("\t") for line in out.splitlines()[1:]] if code == 0 else []
    if not peers:
        st.problem(f"WireGuard wg0 is down: {err.strip()[:200]}", f"{ssh} sudo systemctl restart wg-quick@wg0")
    # wg0's one peer is home (road warriors' sessions end at home, not here).
    for peer in peers[:1]:
        handshake = int(peer[4])
        age = int(facts["now"] - handshake) if handshake else None
        f["handshakeAge"] = age
        f["homeEndpoint"] = peer[2] if peer[2] != "(none)" else None
        f["rxBytes"], f["txBytes"] = int(peer[5]), int(peer[6])
        if age is None or age > HANDSHAKE_STALE_S:
            when = "never" if age is None else f"{age}s ago"
            st.problem(
                f"no tunnel from home: last handshake {when}",
                "at home: `wg show` and restart the tunnel (`wg-quick up <interface>`); "
                "if home's key changed, `cgnat-edge home-config` writes the current configs",
            )

    active = [u for u, up in facts["slots"].items() if up]
    f["traefik"] = active[0] if active else "stopped"
    if not active or facts["ping"][0] != 0:
        slot = active[0] if active else edge_contract.TRAEFIK_SLOTS[0]
        st.problem(f"Traefik is not serving ({f['traefik']}, ping failed)", f"{ssh} sudo systemctl restart {slot}")
    _judge_traefik_version(st, facts)

    drifted = sorted(p for p, want in e["pushedFiles"].items() if facts["files"].get(p) != want)
    f["drifted"] = drifted
    if drifted:
        st.problem(
            f"files differ from the last push: {', '.join(drifted)}",
            _push_again(st.edge),
        )
    code, out, err = facts["verify"]
    if code != 0:
        lines = [ln for ln in (out + err).splitlines() if ln.strip()][:5]
        st.problem(
            "the running edge differs from its files: " + " | ".join(lines)[:400],
            f"{ssh} sudo {edge_contract.VERIFY}; then `systemctl reload-or-restart` what it names (nftables, wg-quick@wg0)",
        )

    stamp = facts["upgrades"]
    f["upgradesAge"] = _age(facts["now"], stamp)
    if stamp is None or facts["now"] - stamp > UPGRADES_STALE_S:
        st.problem(
            "unattended-upgrades has not run in two days" if stamp else "unattended-upgrades never ran",
            f"{ssh} sudo systemctl start apt-daily-upgrade.service",
        )
    f["rebootRequired"] = facts["rebootRequired"]
    if facts["rebootRequired"]:
        st.problem("a reboot is pending (kernel or libc update)", f"{ssh} sudo systemctl reboot")
    f["httpHosts"] = _http_hosts(facts.get("desired"))
    _judge_protection(st, facts, ssh)
    judge_alerts(st, facts, ssh)


def _push_again(edge: str) -> str:
    """A plain ``pulumi up`` pushes only a changed bundle."""
    return f"push again: `pulumi up --target-replace $(pulumi stack --show-urns | grep -o 'urn:[^ ]*::{edge}-config')`"


def _judge_traefik_version(st: EdgeStatus, facts: dict) -> None:
    """A push installs the pinned release; one that failed leaves the old one serving."""
    pinned = ((facts.get("desired") or {}).get("traefik") or {}).get("version")
    code, out, _ = facts.get("traefikVersion") or [1, "", ""]
    try:
        running = json.loads(out).get("Version") if code == 0 else None
    except (ValueError, AttributeError):
        running = None
    st.facts["traefikVersion"] = running
    if pinned and running and running != pinned:
        st.problem(
            f"Traefik {running} runs, the stack pins {pinned}",
            f"{_push_again(st.edge)} (the push installs the pinned release, or says why it cannot)",
        )


def _age(now: float, stamp: Any) -> int | None:
    return int(now - stamp) if isinstance(stamp, int | float) and stamp else None


def _judge_protection(st: EdgeStatus, facts: dict, ssh: str) -> None:
    """The country sets the filters match against, and CrowdSec's two daemons: either
    failing leaves the edge serving, so only status can say it."""
    geo = facts.get("geo") or {}
    countries = sorted((geo.get("config") or {}).get("countries") or [])
    if countries:
        s, now = geo.get("status") or {}, facts["now"]
        g = st.facts["geo"] = {
            "countries": countries,
            "loaded": sorted(s.get("countries_loaded") or []),
            "fetchedAge": _age(now, s.get("fetched")),
            "loadedAge": _age(now, s.get("loaded")),
            "error": s.get("error") or None,
        }
        unit = edge_contract.GEO_UNIT
        fix = f"{ssh} sudo systemctl start {unit}.service; {ssh} sudo journalctl -u {unit}"
        since = _age(now, s.get("failing_since"))
        if g["loadedAge"] is None:
            g["state"] = "empty"
            what = f"the country sets are empty, never loaded ({g['error'] or 'the refresh has not run'}): "
            st.problem(what + "allow lists let nobody in, deny lists drop nobody", fix)
        elif not s.get("ok"):
            g["state"] = "failing"
            what = f"the country lists fail to refresh{f' for {since}s' if since is not None else ''}: {g['error']}"
            st.problem(f"{what}; the sets loaded {g['loadedAge']}s ago stay in force", fix)
        elif g["fetchedAge"] is None or g["fetchedAge"] > GEO_STALE_S:
            g["state"] = "stale"
            st.problem(f"the country lists were last fetched {g['fetchedAge']}s ago", fix)
        elif g["loaded"] != countries:
            g["state"] = "other"
            st.problem(
                f"the loaded country sets ({', '.join(g['loaded']) or 'none'}) are not the stack's "
                f"({', '.join(countries)})",
                f"{ssh} sudo {protection.GEO_SCRIPT_PATH} --force",
            )
        else:
            g["state"] = "ok"
    units = facts.get("crowdsec")
    st.facts["crowdsec"] = units
    down = sorted(u for u, up in (units or {}).items() if not up)
    wanted = (facts.get("desired") or {}).get("crowdsec", "off")
    if units is None and wanted != "off":
        st.facts["crowdsec"] = {edge_contract.CROWDSEC_UNIT: False, edge_contract.BOUNCER_UNIT: False}
        st.problem(
            f"CrowdSec should run (crowdsec {wanted}) and does not: it was never set up on this edge; nobody is banned",
            f"{_push_again(st.edge)} (the push sets CrowdSec up, or says why it cannot)",
        )
    elif down:
        st.problem(
            f"CrowdSec should run and does not: {', '.join(down)} is not running; nobody is banned",
            f"{ssh} sudo systemctl restart {' '.join(down)}; {ssh} sudo journalctl -u {down[0]}",
        )


def judge_alerts(st: EdgeStatus, facts: dict, ssh: str) -> None:
    """The edge's alert daemon (with a channel set): that it keeps looking, and each
    channel's last delivery; a failing channel is silence that looks like good news.
    The open incidents are the fleet's, as this edge sees them."""
    alerts = facts.get("alerts") or {}
    if not alerts.get("on"):
        return
    state, now, before = alerts.get("state"), facts["now"], len(st.problems)
    unit = edge_contract.ALERTS_UNIT
    fix = f"{ssh} sudo systemctl restart {unit}; {ssh} sudo journalctl -u {unit}"
    if not isinstance(state, dict):
        st.facts["alerts"] = {"state": "none"}
        st.problem("alerts are on, but the alert daemon has written no state: no alert can be sent", fix)
        return
    a = st.facts["alerts"] = {
        "leader": state.get("leader"),
        "incidents": {k: _age(now, v.get("since")) for k, v in sorted((state.get("incidents") or {}).items())},
        "channels": {},
        "updatedAge": _age(now, state.get("updated")),
    }
    if a["updatedAge"] is None or a["updatedAge"] > ALERTS_STALE_S:
        st.problem(f"the alert daemon last looked {a['updatedAge']}s ago: no alert can be sent", fix)
    for name, c in sorted((state.get("channels") or {}).items()):
        ok, failed = c.get("lastOk"), c.get("lastErrorAt")
        a["channels"][name] = {
            "delivered": c.get("delivered"),
            "lastOkAge": _age(now, ok),
            "queued": c.get("queued"),
            "lastError": c.get("lastError"),
        }
        if failed and (not ok or failed > ok):
            st.problem(
                f"alert channel {name} fails ({c.get('lastError')}), {c.get('queued')} message(s) waiting; "
                f"it last delivered {'never' if not ok else f'{_age(now, ok)}s ago'}",
                f"check cgnat-edge:{CHANNEL_KEYS.get(name, name)} and that the edge can reach it; "
                f"{ssh} sudo journalctl -u {unit}",
            )
    failing = len(st.problems) > before
    a["state"] = "FAIL" if failing else f"{len(a['incidents'])} open" if a["incidents"] else "ok"


def _http_hosts(desired: dict | None) -> list[str]:
    rules = ((desired or {}).get("traefik", {}).get("routers", {}).get("http") or {}).values()
    hosts = set()
    for rule in rules:
        for part in rule.split("Host(`")[1:]:
            hosts.add(part.split("`")[0])
    return sorted(hosts)


def cert_expiry(address: str, hostname: str, timeout: float = TLS_TIMEOUT_S) -> datetime.datetime:
    """The notAfter of the certificate ``address``:443 presents for ``hostname``; the
    socket's timeout bounds the connection and each read of the handshake."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection((address, 443), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der or b"").not_valid_after_utc


def judge_certs(st: EdgeStatus, expiries: dict[str, Any], warn_days: int = CERT_WARN_DAYS) -> None:
    """``expiries``: each hostname's notAfter on this edge, or what kept it from coming
    (an exception, or None for a check cut at its bound)."""
    now = datetime.datetime.now(datetime.UTC)
    days: dict[str, int | None] = {}
    for host, got in sorted(expiries.items()):
        if not isinstance(got, datetime.datetime):
            days[host] = None
            why = "no TLS answer in time" if got is None else visible(str(got)) or type(got).__name__
            st.problem(f"no certificate for {host} on :443 ({why})", f"ssh {st.address} sudo journalctl -u 'traefik@*'")
            continue
        left = days[host] = (got - now).days
        if left < warn_days:
            st.problem(
                f"the certificate for {host} expires in {left} days",
                f"ssh {st.address} sudo journalctl -u 'traefik@*' | grep -i acme  (ACME renewal; port 80 must reach the edge)",
            )
    st.facts["certDays"] = days


T = TypeVar("T")


def in_parallel(jobs: Sequence[Callable[[], T]], seconds: float) -> list[T | Exception | None]:
    """Each job's result (or exception), in the jobs' order; None for a job still running
    after ``seconds`` in all.  Daemon threads rather than a pool: a job stuck where no
    timeout reaches must not keep the command from exiting."""
    results: list[T | Exception | None] = [None] * len(jobs)

    def run(i: int, job: Callable[[], T]) -> None:
        try:
            results[i] = job()
        except Exception as exc:  # the caller turns it into that job's problem
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, job), daemon=True) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    end = time.monotonic() + seconds
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    return [None if t.is_alive() else results[i] for i, t in enumerate(threads)]


def _system_answers(host: str) -> list[str]:
    """What the system resolver answers, as a browser would ask it; ``getaddrinfo`` has no
    timeout, so it runs in a thread given ``RESOLVE_TIMEOUT_S``."""

    def lookup() -> list[str]:
        try:
            return sorted({str(a[4][0]) for a in socket.getaddrinfo(host, 443, socket.AF_INET, socket.SOCK_STREAM)})
        except OSError:
            return []

    (got,) = in_parallel([lookup], RESOLVE_TIMEOUT_S)
    if not isinstance(got, list):
        raise TimeoutError(f"the system resolver gave no answer within {RESOLVE_TIMEOUT_S} s")
    return got


def _ask(server: str, name: str) -> list[str] | str:
    """The A records ``server`` itself answers for ``name`` (no recursion), in its order;
    a string says why there is no answer."""
    import dns.exception
    import dns.flags
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    query = dns.message.make_query(name, dns.rdatatype.A)
    query.flags &= ~dns.flags.RD
    try:
        reply = dns.query.udp(query, server, timeout=NAMESERVER_TIMEOUT_S)
    except (dns.exception.DNSException, OSError) as exc:
        return f"no answer ({exc.__class__.__name__})"
    if reply.rcode() != dns.rcode.NOERROR:
        return dns.rcode.to_text(reply.rcode())
    return [r.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for r in rrset]


Asker = Callable[[str, str], "list[str] | str"]


def dns_deadline(edges: dict[str, dict]) -> float:
    """Every hostname is checked at once; each one asks the resolver, then every edge's nameserver in turn."""
    return RESOLVE_TIMEOUT_S + NAMESERVER_TIMEOUT_S * len(edges) + 1


def check_dns(
    hostnames: list[str],
    edges: dict[str, dict],
    dns_output: dict | None = None,
    ask: Asker = _ask,
    resolve: Callable[[str], list[str]] = _system_answers,
) -> list[HostStatus]:
    """What the world's resolvers answer for each hostname and, where the edges serve the
    zone (``dnsMode: edges``), what each edge's own nameserver answers for its name in
    that zone: an edge missing there is one whose check through its tunnel fails."""
    expected = sorted({e["ipv4"] for e in edges.values()})
    served = (dns_output or {}).get("edgeServed") or {}
    zone = served.get("zone")
    names = {
        r["name"]: r["values"][0] for r in served.get("delegation", []) if r.get("type") == "CNAME" and r.get("values")
    }
    records = {r["hostname"] for r in (dns_output or {}).get("records", []) if isinstance(r, dict) and "hostname" in r}
    hosts = sorted(set(hostnames) | records | set(names))
    for host in hosts:
        if zone and host not in names and (host == zone or host.endswith("." + zone)):
            names[host] = host

    def check(host: str) -> HostStatus:
        try:
            answers = resolve(host)
        except TimeoutError as exc:
            answers, why = [], str(exc)
        else:
            why = ""
        hs = HostStatus(host, answers, expected)
        strangers = [a for a in answers if a not in expected]
        if not answers or strangers:
            hs.problems.append(
                Problem(
                    f"DNS answers {', '.join(answers) or 'nothing'} for {host}{f' ({why})' if why else ''}, "
                    f"the edges are {', '.join(expected)}",
                    "publish the records of `pulumi stack output dns` at your DNS provider (or let managed DNS do it)",
                )
            )
        if host in names:
            _check_nameservers(hs, names[host], edges, ask)
        return hs

    out = []
    for host, got in zip(hosts, in_parallel([partial(check, h) for h in hosts], dns_deadline(edges)), strict=True):
        if isinstance(got, HostStatus):
            out.append(got)
            continue
        hs = HostStatus(host, [], expected)
        what = f"no answer within {dns_deadline(edges):.0f} s" if got is None else f"{type(got).__name__}: {got}"
        hs.problems.append(
            Problem(
                f"the DNS check of {host} failed ({visible(what)})",
                f"`dig {host}`, and with dnsMode edges `dig @<edge address> {host}`, show which resolver is slow",
            )
        )
        out.append(hs)
    return out


def _check_nameservers(hs: HostStatus, name: str, edges: dict[str, dict], ask: Asker) -> None:
    for edge, e in sorted(edges.items()):
        got = ask(e["ipv4"], name)
        hs.nameservers[edge] = got
        if isinstance(got, str):
            hs.problems.append(
                Problem(
                    f"edge {edge}'s nameserver ({e['ipv4']}) gives {got} for {name}",
                    f"ssh {e.get('sshUser', 'root')}@{e['ipv4']} sudo systemctl status pdns cgnat-edge-health",
                )
            )
            continue
        strangers = [a for a in got if a not in hs.expected]
        if strangers:
            hs.problems.append(
                Problem(
                    f"edge {edge}'s nameserver answers {', '.join(strangers)} for {name}, not an edge",
                    "pulumi up  (the pushed zone is stale)",
                )
            )
    answered = [got for got in hs.nameservers.values() if isinstance(got, list)]
    if not answered:
        return
    # All down answers every edge; so an edge is out only while another is in.
    out = sorted({ip for ip in hs.expected if not any(ip in got for got in answered)})
    for edge, e in sorted(edges.items()):
        if e["ipv4"] in out:
            hs.problems.append(
                Problem(
                    f"edge {edge} is out of the answers for {hs.hostname}: its check through the tunnel to home fails",
                    f"ssh {e.get('sshUser', 'root')}@{e['ipv4']} curl -s localhost:{edge_dns.HEALTH_PORT}/health  "
                    "(then see this edge's WireGuard and Traefik rows)",
                )
            )
    if len({tuple(sorted(got)) for got in answered}) > 1:
        hs.problems.append(
            Problem(
                f"the edges' nameservers disagree on {name}: {hs.nameservers}",
                "wait a few seconds and run status again; if it stays, compare the edges' health agents",
            )
        )


@dataclass(frozen=True)
class Probes:
    """How status reaches the fleet, each step bounded; the tests put fakes in."""

    run: Runner = _local
    cert: Callable[[str, str], datetime.datetime] = cert_expiry
    ask: Asker = _ask
    resolve: Callable[[str], list[str]] = _system_answers
    edge_deadline: float = EDGE_DEADLINE_S


def _summary(st: EdgeStatus) -> str:
    if not st.reachable:
        return f"FAIL: {st.problems[0].what if st.problems else 'unreachable'}"
    return f"ssh ok, {len(st.problems)} problem(s)" if st.problems else "ssh ok"


def status(
    outputs: dict,
    identity: Path | None = None,
    probes: Probes | None = None,
    cert_warn_days: int = CERT_WARN_DAYS,
    progress: Callable[[str], None] = lambda line: None,
) -> tuple[list[EdgeStatus], list[HostStatus]]:
    """Every edge at once over SSH, then every certificate and hostname at once, each
    batch within its bound; the report keeps the outputs' order.  ``progress`` gets a
    line as each edge starts and ends (from several threads, one call per line)."""
    refuse_render(outputs)
    edges = edges_from(outputs)
    probes = probes or Probes()
    said = threading.Lock()

    def say(line: str) -> None:
        with said:
            progress(line)

    def one(name: str, e: dict) -> EdgeStatus:
        say(f"{name}: {_ssh(e)} ...")
        start = time.monotonic()
        st = check_edge(name, e, identity, probes.run)
        say(f"{name}: {_summary(st)} ({time.monotonic() - start:.1f} s)")
        return st

    results = []
    jobs = [partial(one, n, e) for n, e in edges.items()]
    for (name, e), got in zip(edges.items(), in_parallel(jobs, probes.edge_deadline), strict=True):
        if isinstance(got, EdgeStatus):
            results.append(got)
            continue
        st = EdgeStatus(name, str(e.get("ipv4")))
        if got is None:
            say(f"{name}: no result after {probes.edge_deadline:g} s, given up")
            st.problem(
                f"no result within {probes.edge_deadline:g} s: the SSH check hangs",
                f"`{_ssh(e)} true` shows whether the login does; then `{_ssh(e)} sudo cloud-init status --long`",
            )
        else:
            say(f"{name}: FAIL: {visible(f'{type(got).__name__}: {got}')}")
            st.problem(
                f"the check of this edge failed: {visible(f'{type(got).__name__}: {got}')[:300]}",
                "fix the outputs (`pulumi stack output --json --show-secrets`) if this edge's entry is damaged; "
                "otherwise report it with `cgnat-edge status --json`",
            )
        results.append(st)

    hostnames = sorted({h for st in results for h in st.facts.get("httpHosts", [])})
    dns_output = outputs.get("dns") if isinstance(outputs.get("dns"), dict) else None
    pairs = [(st, host) for st in results if st.reachable for host in st.facts.get("httpHosts", [])]
    say(f"certificates ({len(pairs)}) and DNS ...")
    start = time.monotonic()
    jobs_after: list[Callable[[], Any]] = [partial(probes.cert, st.address, host) for st, host in pairs]
    jobs_after.append(partial(check_dns, hostnames, edges, dns_output, probes.ask, probes.resolve))
    *expiries, hosts = in_parallel(jobs_after, max(dns_deadline(edges), 2 * TLS_TIMEOUT_S) + 1)
    for st in results:
        if st.reachable and "httpHosts" in st.facts:
            mine = {host: x for (owner, host), x in zip(pairs, expiries, strict=True) if owner is st}
            judge_certs(st, mine, cert_warn_days)
    say(f"certificates and DNS done ({time.monotonic() - start:.1f} s)")
    if not isinstance(hosts, list):  # the outputs' `dns` is damaged: check_dns handles each hostname itself
        why = visible(f"{type(hosts).__name__}: {hosts}") if hosts else "no result"
        hosts = [
            HostStatus("(dns)", [], [], [Problem(f"the DNS check failed ({why})", "see `pulumi stack output dns`")])
        ]
    return results, hosts


def load(source: str | None) -> dict:
    got = home_files.read_source(source)
    if isinstance(got, Path):
        path = got / "outputs.json" if got.is_dir() else got
        try:
            text = path.read_text()
        except OSError as exc:
            raise StatusError(f"cannot read {path}: {exc.strerror}") from None
        try:
            got = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StatusError(
                f"{path} is not JSON ({exc.msg}); pass what `pulumi stack output --json --show-secrets` prints"
            ) from None
    if not isinstance(got, dict):
        raise StatusError(
            "the outputs are not a JSON object; pass what `pulumi stack output --json --show-secrets` prints"
        )
    return got


def as_json(edges: list[EdgeStatus], hosts: list[HostStatus]) -> str:
    return json.dumps(
        {
            "ok": not any(e.problems for e in edges) and not any(h.problems for h in hosts),
            "edges": [asdict(e) for e in edges],
            "hostnames": [asdict(h) for h in hosts],
        },
        indent=1,
    )


def _geo_cell(geo: dict | None) -> str:
    return geo["state"] if geo else "-"


def _crowdsec_cell(units: dict | None) -> str:
    if not units or not isinstance(units, dict):
        return "-"
    return "ok" if all(units.values()) else "FAIL"


def table(edges: list[EdgeStatus], hosts: list[HostStatus]) -> str:
    lines = [
        f"{'EDGE':<10} {'ADDRESS':<16} {'SSH':<5} {'CLOUD-INIT':<10} {'HANDSHAKE':<10} {'TRAEFIK':<18} {'DRIFT':<6} {'GEO':<6} {'CROWDSEC':<9} {'ALERTS':<7} REBOOT"
    ]
    for e in edges:
        f = e.facts
        age = f.get("handshakeAge")
        lines.append(
            f"{e.edge:<10} {e.address:<16} {'ok' if e.reachable else 'FAIL':<5} {f.get('cloudInit', '-'):<10} "
            f"{'-' if age is None else f'{age}s':<10} {f.get('traefik', '-'):<18} {len(f.get('drifted', [])) if e.reachable else '-'!s:<6} "
            f"{_geo_cell(f.get('geo')):<6} {_crowdsec_cell(f.get('crowdsec')):<9} "
            f"{(f.get('alerts') or {}).get('state', '-'):<7} "
            f"{'yes' if f.get('rebootRequired') else 'no' if e.reachable else '-'}"
        )
    if hosts:
        lines.append("")
        lines.append(f"{'HOSTNAME':<32} DNS ANSWERS")
        for h in hosts:
            ns = "".join(
                f"  {edge}: {', '.join(got) if isinstance(got, list) else got}" for edge, got in h.nameservers.items()
            )
            lines.append(f"{h.hostname:<32} {', '.join(h.answers) or '(none)'}{'  | nameservers' + ns if ns else ''}")
    problems = [(e.edge, p) for e in edges for p in e.problems] + [(h.hostname, p) for h in hosts for p in h.problems]
    lines.append("")
    if problems:
        lines.append(f"{len(problems)} problem(s):")
        for who, p in problems:
            lines.append(f"  {who}: {p.what}\n    fix: {p.fix}")
    else:
        lines.append("every edge serves what was pushed")
    return "\n".join(lines)
