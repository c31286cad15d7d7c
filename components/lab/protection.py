"""Protection in the Edge lab: country filters, CrowdSec bans and sign-in, with real packets.

``cgnat-edge lab --protection`` adds, to a running lab:

* a mirror of the registries' statistics at the address the stack's ``geoSources``
  names (a documentation address), serving over HTTPS a small file in the registries'
  format with its ``.md5``: the visitor's address is in one test country, a second
  visitor's in the stack's denied one.  The mirror's certificate is made for the run
  and added to each edge's own trust store (the edge's /etc is the lab's overlay, so
  nothing outside the lab trusts it).  Each edge's own ``cgnat-edge-geo-sets`` (its
  systemd timer's command) fetches, checks and loads it; then the second visitor must
  be dropped on every mode while the first gets through.  A corrupted file is then
  served: the edge must keep its sets, say so in its status file, and keep them across
  a reload of its ruleset.  Then the mirror stalls (one byte a second): the refresh
  must end within its deadline, keep the sets and say it timed out.
* CrowdSec from Debian's packages in each edge: the agent with its Local API, reading
  the edge's Traefik access log (the lab leaves journald out), and the nftables
  firewall bouncer with its packaged configuration and the edge's set-only settings;
  ``cscli decisions add`` must get the visitor dropped on every mode (``forward``
  too), also after a ruleset reload with the bouncer restarted as a push does, and
  ``cscli decisions delete`` let it back, and a
  visitor probing for sensitive files through an http service must be banned by the
  agent's own detection.
* the identity provider stand-in at home (components/lab/services.py, kind ``idp``):
  an http service behind ``forwardAuth`` must answer the provider's redirect without a
  session and home's page with one, with the user the provider named in Remote-User.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import signal
import time
import urllib.parse
from pathlib import Path

from components.lab import crowdsec_units
from components.lab.certs import self_signed
from components.lab.edge import Edge
from components.lab.edge_lab import EdgeLab
from components.lab.errors import LabError
from components.lab.file_server import FileServer
from components.lab.netns import Node, wait_for
from components.lab.report import Check
from components.lab.services import IDP_SESSION
from components.lab.topology import attach, free_internet_addresses
from components.model import edge_contract
from components.model.fleet import Mode, ServiceSpec, effective_geo
from components.model.protection import CrowdSec
from components.renderers import protection, templates

PROBE_TIMEOUT = 2.0
MIRROR_FILE = "delegated-lab-extended-latest"


def rir_file(assignments: dict[str, list[str]], registry: str = "lab") -> str:
    """A statistics file in the registries' delegated-extended format (version 2)."""
    records = []
    for cc, prefixes in sorted(assignments.items()):
        for text in prefixes:
            net = ipaddress.ip_network(text)
            if net.version == 4:
                records.append(f"{registry}|{cc}|ipv4|{net.network_address}|{net.num_addresses}|20260101|allocated|x")
            else:
                records.append(f"{registry}|{cc}|ipv6|{net.network_address}|{net.prefixlen}|20260101|assigned|x")
    v4 = sum("|ipv4|" in r for r in records)
    v6 = len(records) - v4
    head = [
        f"2|{registry}|20261126|{len(records)}|19700101|20261126|+0000",
        f"{registry}|*|ipv4|*|{v4}|summary",
        f"{registry}|*|ipv6|*|{v6}|summary",
    ]
    return "\n".join(head + records) + "\n"


class Mirror:
    """The registries' file server, over HTTPS on the address ``geoSources`` names."""

    TRUST_STORE = "/etc/ssl/certs/ca-certificates.crt"
    """Debian's bundle, what the edge's Python verifies servers against."""

    def __init__(self, el: EdgeLab, url: str):
        parts = urllib.parse.urlsplit(url)
        self.address, self.port, self.path = parts.hostname or "", parts.port or 443, parts.path.lstrip("/")
        taken = {e.public_ip for e in el.edges.values()} | {el.client_ip, el.dns_ip, el.cgnat_ip, el.operator_ip}
        if self.address in taken:
            raise LabError(f"geoSources address {self.address} is taken by another lab node; use another one")
        self.dir = el.lab.workdir / "mirror"
        self.dir.mkdir()
        self.node = el.lab.node("mirror")
        attach(el.lab, el.nodes["inet"], self.node, "i-mirror", self.address)
        cert = self_signed([self.address], el.lab.workdir, "mirror")
        for edge in el.edges.values():  # what update-ca-certificates makes of a local CA, in the edge's /etc
            edge.node.sh(f"cat {cert.cert} >> {self.TRUST_STORE}")
        self.server = self.node.call(lambda: FileServer((self.address, self.port), self.dir, cert)).start()
        el.servers.append(self.server)

    def publish(self, text: str, digest_of: str | None = None) -> None:
        """The file, and its .md5 (of ``digest_of`` to publish a mismatching one)."""
        target = self.dir / self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        md5 = hashlib.md5((digest_of if digest_of is not None else text).encode()).hexdigest()
        (self.dir / f"{self.path}.md5").write_text(f"MD5 ({Path(self.path).name}) = {md5}\n")


def _visitor(el: EdgeLab, name: str, also_taken: set[str]) -> tuple[Node, str]:
    taken = {e.public_ip for e in el.edges.values()} | {el.client_ip, el.dns_ip, el.cgnat_ip, el.operator_ip}
    (address,) = free_internet_addresses(taken | also_taken, 1)
    node = el.nodes[name] = el.lab.node(name)
    attach(el.lab, el.nodes["inet"], node, f"i-{name}"[:15], address)
    return node, address


def _mode_checks(el: EdgeLab, edge: str) -> dict[str, dict]:
    """One probe per mode through ``edge``: the first service of that mode."""
    ip = el.edges[edge].public_ip
    checks: dict[str, dict] = {}
    for s in el.cfg.services:
        if s.mode in checks:
            continue
        if s.mode is Mode.PASSTHROUGH or s.mode is Mode.HTTP:
            checks[s.mode] = {"kind": "tls", "edge": ip, "sni": s.hostnames[0], "path": "/protect"}
        else:
            checks[s.mode] = {"kind": str(s.protocol), "edge": ip, "port": s.port, "payload": f"protect-{edge}"}
        checks[s.mode]["timeout"] = PROBE_TIMEOUT
    return checks


def _modes(el: EdgeLab) -> list[Mode]:
    """The modes every protection row covers; ``forward`` only in a stack that has it."""
    return [m for m in Mode if m is not Mode.FORWARD or any(s.mode is Mode.FORWARD for s in el.cfg.services)]


def _reached_home(r: dict) -> bool:
    return bool(r.get("ok")) and (r.get("status") in (None, 200, 302, 401))


def _matrix(el: EdgeLab, node: Node) -> dict[tuple[str, str], dict]:
    """(edge, mode) -> probe result from ``node``."""
    out = {}
    for edge in sorted(el.edges):
        checks = _mode_checks(el, edge)
        for mode, r in zip(checks, el.probe(list(checks.values()), node=node), strict=True):
            out[(edge, mode)] = r
    return out


def _geo_rows(el: EdgeLab, blocked: Node, blocked_ip: str, country: str) -> list[Check]:
    rows = []
    t0 = time.monotonic()
    fetched = {}
    for name, edge in el.edges.items():
        try:
            edge.fire_timer(edge_contract.GEO_UNIT)
        except Exception as exc:  # reported in the row, with the status the script wrote
            fetched[name] = {"ok": False, "error": str(exc)[-300:]}
            continue
        fetched[name] = json.loads(edge.read(edge_contract.GEO_STATUS))
    load_s = time.monotonic() - t0
    ok_fetch = all(s.get("ok") for s in fetched.values())
    rows.append(
        Check(
            "protect:geo:fetch",
            ok_fetch,
            round(load_s, 2),
            "s",
            "; ".join(
                f"{n}: ok={s.get('ok')} counts={s.get('counts')} {s.get('error', '')}" for n, s in fetched.items()
            ),
        )
    )
    bad = _matrix(el, blocked)
    good = _matrix(el, el.client)
    for mode in _modes(el):
        services = [s for s in el.cfg.services if s.mode is mode]
        if not services or country not in effective_geo(services[0], el.cfg.protection).countries:
            rows.append(Check(f"protect:geo:{mode}", False, None, "", f"no {mode} service filters {country}"))
            continue
        dropped = [e for e in el.edges if not bad[(e, mode)]["ok"]]
        passed = [e for e in el.edges if _reached_home(good[(e, mode)])]
        ok = len(dropped) == len(passed) == len(el.edges)
        detail = (
            f"visitor {blocked_ip} ({country}) dropped on {', '.join(dropped) or 'no edge'} "
            f"({'; '.join(bad[(e, mode)].get('error', 'answered') for e in el.edges)}); "
            f"visitor {el.client_ip} answered on {', '.join(passed) or 'no edge'}"
        )
        rows.append(Check(f"protect:geo:{mode}", ok, len(dropped), "edges", detail))
    return rows


def _keep_last_good(el: EdgeLab, mirror: Mirror, assignments: dict, blocked: Node) -> Check:
    """A corrupted download: the sets, and a reload of the ruleset, keep the last good."""
    good = rir_file(assignments)
    mirror.publish(good + "lab|AQ|ipv4|192.0.2.0|1|20260101|allocated|x\n", digest_of=good)
    problems = []
    for name, edge in el.edges.items():
        done = edge.node.run(protection.GEO_SCRIPT_PATH, "--force", check=False)
        status = json.loads(edge.read(edge_contract.GEO_STATUS))
        if done.returncode == 0 or status.get("ok") or "MD5" not in status.get("error", ""):
            problems.append(f"{name}: rc {done.returncode}, status {status.get('ok')} {status.get('error')!r}")
        edge.node.run("nft", "-f", "/etc/nftables.conf")  # a push reloads the ruleset
    bad = _matrix(el, blocked)
    leaked = [f"{e}/{m}" for (e, m), r in bad.items() if r["ok"]]
    mirror.publish(good)
    return Check(
        "protect:geo:keep-last-good",
        not problems and not leaked,
        len(leaked),
        "leaks",
        "; ".join(problems)
        or "corrupt file refused (MD5), status says so, sets kept across a ruleset reload"
        + (f"; leaked: {', '.join(leaked)}" if leaked else ""),
    )


STALL_DEADLINE_S = 4
"""The refresh's deadline while the mirror stalls (CGNAT_EDGE_GEO_DEADLINE; 300 s on an edge)."""


def _stalled_row(el: EdgeLab, mirror: Mirror, country: str, blocked_ip: str) -> Check:
    """A mirror that answers one byte a second: each refresh must end within its
    deadline, the error must name the timeout and the loaded set must still hold the
    denied visitor."""
    family, table = protection.TABLE
    env = {**os.environ, "CGNAT_EDGE_GEO_DEADLINE": str(STALL_DEADLINE_S)}
    bound = STALL_DEADLINE_S + 3  # the interpreter's start and the status file around the deadline
    mirror.server.trickle = 1.0
    seen, problems = [], []
    try:
        for name, edge in el.edges.items():
            t0 = time.monotonic()
            done = edge.node.run(protection.GEO_SCRIPT_PATH, "--force", check=False, env=env, timeout=60)
            took = time.monotonic() - t0
            error = json.loads(edge.read(edge_contract.GEO_STATUS)).get("error", "")
            kept = blocked_ip in edge.node.run("nft", "list", "set", family, table, f"geo4_{country.lower()}").stdout
            seen.append(f"{name}: ended in {took:.1f} s, rc {done.returncode}, {error!r}, set kept: {kept}")
            if done.returncode == 0 or took > bound or "timed out" not in error or not kept:
                problems.append(seen[-1])
    finally:
        mirror.server.trickle = 0.0
    return Check(
        "protect:geo:stalled",
        not problems,
        len(el.edges) - len(problems),
        "edges",
        f"a mirror sending a byte a second, deadline {STALL_DEADLINE_S} s (bound {bound} s): " + "; ".join(seen),
    )


def _lifted_row(el: EdgeLab, mirror: Mirror, country: str, blocked: Node, blocked_ip: str) -> Check:
    """The control: once its prefix leaves the country's list, the same visitor gets in."""
    mirror.publish(rir_file({country: ["203.0.113.0/32", "2001:db8:a0::/48"]}))
    for edge in el.edges.values():
        edge.node.run(protection.GEO_SCRIPT_PATH, "--force", check=False)
    answers = _matrix(el, blocked)
    passed = [f"{e}/{m}" for (e, m), r in answers.items() if _reached_home(r)]
    return Check(
        "protect:geo:lifted",
        len(passed) == len(answers),
        len(passed),
        "answers",
        f"{blocked_ip} out of {country}'s list: answered on {len(passed)}/{len(answers)} edge/mode pairs",
    )


# -- CrowdSec -----------------------------------------------------------------------


def start_crowdsec(el: EdgeLab) -> dict[str, dict]:
    """Start the Local API and the firewall bouncer in every edge; their pids."""
    pids = {}
    for name, edge in el.edges.items():
        work = edge.work / "crowdsec"
        # What cgnat-edge-crowdsec sets up on an edge, but for the bouncer's API key,
        # which the machine's package registered.
        edge.node.run("bash", "-c", _enable_traefik_parser())
        lapi = crowdsec_units.agent(edge.node, work)
        crowdsec_units.bouncer_config(edge.node, work, edge.read(protection.BOUNCER_SETTINGS_PATH))
        pids[name] = {"crowdsec": lapi.pid, "bouncer": _start_bouncer(edge)}
    return pids


def _start_bouncer(edge: Edge) -> int:
    """Start the firewall bouncer; its pid once it processes decisions (its sets found)."""
    work = edge.work / "crowdsec"
    log = work / "crowdsec-firewall-bouncer.log"
    seen = log.read_text().count("Processing new and deleted decisions") if log.exists() else 0
    bouncer = edge.node.spawn("crowdsec-firewall-bouncer", "-c", str(work / "bouncer.yaml"), log=work / "bouncer.out")
    wait_for(
        lambda: log.exists() and log.read_text().count("Processing new and deleted decisions") > seen,
        20,
        message=f"the bouncer on edge {edge.name} (see {log})",
    )
    return bouncer.pid


def _restart_bouncer(edge: Edge, pids: dict) -> None:
    """What a push does after reloading the ruleset (which empties the sets)."""
    os.kill(pids["bouncer"], signal.SIGTERM)
    os.waitpid(pids["bouncer"], 0)
    pids["bouncer"] = _start_bouncer(edge)


def _verifier_accepts_the_ruleset(edge: Edge) -> bool:
    done = edge.node.run("python3", edge_contract.VERIFY, check=False)
    return "cgnat-edge verify: nftables runs as declared" in done.stdout


def _banned(edge: Edge, address: str) -> bool:
    family, table, name, _ = protection.CROWDSEC_SETS[0]
    return address in edge.node.run("nft", "list", "set", family, table, name).stdout


def _enable_traefik_parser() -> str:
    """The part of cloud-init/crowdsec-setup.sh that enables the Traefik parser, as it is."""
    script = templates.text("crowdsec-setup.sh")
    start = script.index("hub=/var/lib/crowdsec/hub\n")
    return script[start : script.index("\ndone\n", start) + len("\ndone\n")]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _crowdsec_rows(el: EdgeLab) -> list[Check]:
    pids = start_crowdsec(el)
    visitor = el.client_ip
    before = _matrix(el, el.client)
    for edge in el.edges.values():
        edge.node.run("cscli", "decisions", "add", "-i", visitor, "-d", "1h", "-R", "lab ban")

    def banned_everywhere() -> bool:
        return all(_banned(e, visitor) for e in el.edges.values())

    t0 = time.monotonic()
    wait_for(banned_everywhere, 15, message="the bouncers to load the ban")
    ban_s = time.monotonic() - t0
    for name, edge in el.edges.items():  # as a push does: reload the ruleset, restart the bouncer
        edge.node.run("nft", "-f", "/etc/nftables.conf")
        _restart_bouncer(edge, pids[name])
    wait_for(banned_everywhere, 15, message="the bouncers to load the ban again after a ruleset reload")
    during = _matrix(el, el.client)
    # The push's verifier, with the ban in the set and its drops counted: the running
    # ruleset is still the file's.
    verified = [n for n, e in el.edges.items() if _verifier_accepts_the_ruleset(e)]
    for edge in el.edges.values():
        edge.node.run("cscli", "decisions", "delete", "-i", visitor)
    wait_for(lambda: not banned_everywhere(), 15, message="the bouncers to lift the ban")
    after = _matrix(el, el.client)
    rows = []
    for mode in _modes(el):
        keys = [(e, mode) for e in el.edges]
        ok = (
            len(verified) == len(el.edges)
            and all(_reached_home(before[k]) for k in keys)
            and not any(during[k]["ok"] for k in keys)
            and all(_reached_home(after[k]) for k in keys)
        )
        detail = (
            f"{visitor}: before ban {sum(_reached_home(before[k]) for k in keys)}/{len(keys)} answered, "
            f"banned {sum(not during[k]['ok'] for k in keys)}/{len(keys)} dropped, "
            f"after removal {sum(_reached_home(after[k]) for k in keys)}/{len(keys)} answered; "
            f"verifier: ruleset as declared with the ban loaded on {len(verified)}/{len(el.edges)} edges"
        )
        rows.append(Check(f"protect:crowdsec:{mode}", ok, round(ban_s, 2), "s", detail))
    rows.append(_detect_row(el))
    rss = {n: {k: round(rss_mb(pid), 1) for k, pid in p.items()} for n, p in pids.items()}
    total = max(sum(v.values()) for v in rss.values())
    rows.append(Check("protect:crowdsec:rss", total > 0, round(total, 1), "MB", json.dumps(rss)))
    return rows


def _detect_row(el: EdgeLab) -> Check:
    """The agent's own detection: sensitive-file probes in Traefik's access log."""
    web = next((s for s in el.cfg.services if s.mode is Mode.HTTP and s.forward_auth is None), None)
    if web is None:
        return Check("protect:crowdsec:detect", False, None, "", "the stack has no http service without sign-in")
    name = sorted(el.edges)[0]
    edge = el.edges[name]
    paths = ["/backup.sql", "/db.sql.gz", "/site.sql.tar", "/old.sql.bzip2", "/dump.sql.bz2", "/a.sql"]
    probes = [{"kind": "tls", "edge": edge.public_ip, "sni": web.hostnames[0], "path": p} for p in paths]
    answered = sum(bool(r.get("ok")) for r in el.probe(probes))
    t0 = time.monotonic()

    def banned() -> bool:
        out = edge.node.run("nft", "list", "set", *protection.CROWDSEC_SETS[0][:3]).stdout
        return el.client_ip in out

    try:
        wait_for(banned, 30, interval=0.5, message="the agent's ban")
    except AssertionError:
        log = edge.work / "crowdsec" / "crowdsec.log"
        tail = log.read_text()[-400:] if log.is_file() else ""
        return Check("protect:crowdsec:detect", False, None, "", f"{answered} probes answered, no ban: {tail}")
    ban_s = time.monotonic() - t0
    decisions = edge.node.run("cscli", "decisions", "list", "-o", "json").stdout
    scenario = ",".join(sorted({d["scenario"] for a in json.loads(decisions or "[]") for d in a.get("decisions", [])}))
    (after,) = el.probe([probes[0] | {"timeout": PROBE_TIMEOUT, "path": "/"}])
    edge.node.run("cscli", "decisions", "delete", "-i", el.client_ip)
    wait_for(lambda: not banned(), 15, message="the bouncer to lift the ban")
    return Check(
        "protect:crowdsec:detect",
        not after["ok"],
        round(ban_s, 2),
        "s",
        f"edge {name}: {answered} sensitive-file probes through {web.name}, banned by {scenario}, "
        f"then {'dropped' if not after['ok'] else 'still answered'}",
    )


# -- forward auth --------------------------------------------------------------------


def _forward_auth_row(el: EdgeLab) -> Check:
    services = [s for s in el.cfg.services if s.forward_auth is not None]
    if not services:
        return Check("protect:forward-auth", False, None, "", "the stack has no service with forwardAuth")
    s: ServiceSpec = services[0]
    problems, seen = [], []
    for name, edge in el.edges.items():
        base = {"kind": "tls", "edge": edge.public_ip, "sni": s.hostnames[0], "path": f"/private-{name}"}
        forged = {"Remote-User": "mallory"}
        anon, signed, forged_anon = el.probe(
            [
                base,
                {**base, "headers": {"Cookie": IDP_SESSION, **forged}},
                {**base, "headers": forged},
            ]
        )
        if anon.get("status") not in (302, 401) or (anon.get("status") == 302 and "auth." not in anon["location"]):
            problems.append(f"{name}: no session answered {anon.get('status')} {anon.get('error', '')}")
        if forged_anon.get("status") not in (302, 401):
            problems.append(f"{name}: a forged Remote-User without session answered {forged_anon.get('status')}")
        body: dict = signed["body"] if isinstance(signed.get("body"), dict) else {}
        user = body.get("headers", {}).get("remote-user")
        if signed.get("status") != 200 or body.get("service") != s.name or user != "alice":
            problems.append(f"{name}: signed in answered {signed.get('status')}, home saw Remote-User {user!r}")
        seen.append(f"{name}: {anon.get('status')} -> {anon.get('location')}, signed in 200 Remote-User {user}")
    return Check(
        "protect:forward-auth", not problems, len(el.edges) - len(problems), "edges", "; ".join(problems or seen)
    )


# -- the block ------------------------------------------------------------------------


def run_protection(el: EdgeLab) -> list[Check]:
    cfg = el.cfg
    country = (cfg.protection.geo.deny or ("",))[0]
    rows: list[Check] = []
    if not country:
        rows.append(Check("protect:geo", False, None, "", "the lab needs a fleet denyCountries"))
    else:
        mirror = Mirror(el, cfg.protection.geo_sources[0])
        blocked, blocked_ip = _visitor(el, "visitor2", {mirror.address})
        others = [c for c in ("NZ", "IS", "FI") if c != country]
        assignments = {
            country: [f"{blocked_ip}/32", "2001:db8:a0::/48"],
            others[0]: [f"{el.client_ip}/32", "2001:db8:b0::/48"],
        }
        mirror.publish(rir_file(assignments))
        rows += _geo_rows(el, blocked, blocked_ip, country)
        rows.append(_keep_last_good(el, mirror, assignments, blocked))
        rows.append(_stalled_row(el, mirror, country, blocked_ip))
        rows.append(_lifted_row(el, mirror, country, blocked, blocked_ip))
    rows.append(_forward_auth_row(el))
    if cfg.protection.crowdsec != CrowdSec.OFF:
        rows += _crowdsec_rows(el)
    return rows
