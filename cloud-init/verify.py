#!/usr/bin/python3
"""cgnat-edge-verify: does this edge RUN what its files say?

Compares the running state with the desired one that the last push installed:
wg0 (addresses, MTU, routes, keys, peers and allowed IPs), the nftables ruleset,
Traefik (the enabled slot is running, its entrypoints and routers are the declared
ones, every router enabled) and sshd (only the pinned ed25519 host key is served, only
the listed keys may log in).  Prints one line per check; exits 1 when any differs.
Standard library only: every edge has python3 (cloud-init runs on it).

    cgnat-edge-verify                      everything
    cgnat-edge-verify traefik [TIMEOUT]    Traefik's routers only, waiting up to TIMEOUT s
    (CGNAT_EDGE_DESIRED and CGNAT_EDGE_CONTRACT=path override the desired state and the
    edge contract, for a staged bundle)
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import cache
from typing import Any


@cache
def contract() -> dict[str, Any]:
    """Where every path is (components/model/edge_contract.py), pushed with this file."""
    with open(os.environ.get("CGNAT_EDGE_CONTRACT", "/usr/local/lib/cgnat-edge/contract.json")) as f:
        return json.load(f)


def traefik_api() -> str:
    return os.environ.get("CGNAT_EDGE_API") or contract()["traefik_api"]


def run(*argv: str, input: str | None = None) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[:3])} exited {done.returncode}: {done.stderr.strip()[:300]}")
    return done.stdout


def wg_conf(path: str) -> dict:
    """wg0.conf: the interface's keys and the peers' (secrets stay in this process)."""
    out: dict = {"Address": [], "peers": []}
    section: dict = out
    with open(path) as f:
        text = f.read()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line == "[Peer]":
            section = {"AllowedIPs": []}
            out["peers"].append(section)
        elif "=" in line:
            key, value = (p.strip() for p in line.split("=", 1))
            if key in ("Address", "AllowedIPs"):
                section[key] += [v.strip() for v in value.split(",") if v.strip()]
            else:
                section[key] = value
    return out


def check_wireguard(desired: dict) -> list[str]:
    iface = desired["interface"]
    conf = wg_conf(desired["wgConf"])
    problems = []
    link = json.loads(run("ip", "-j", "link", "show", "dev", iface))[0]
    if "UP" not in link.get("flags", []):
        problems.append(f"{iface} is down")
    if "MTU" in conf and link["mtu"] != int(conf["MTU"]):
        problems.append(f"{iface} MTU {link['mtu']}, want {conf['MTU']}")
    have = {
        f"{a['local']}/{a['prefixlen']}"
        for a in json.loads(run("ip", "-j", "addr", "show", "dev", iface))[0].get("addr_info", [])
        if a.get("scope") == "global"
    }
    want = {str(ipaddress.ip_interface(a)) for a in conf["Address"]}
    if have != want:
        problems.append(f"{iface} addresses {sorted(have)}, want {sorted(want)}")
    allowed = {str(ipaddress.ip_network(n, strict=False)) for p in conf["peers"] for n in p["AllowedIPs"]}
    routes = []
    for family in ("-4", "-6"):
        for r in json.loads(run("ip", family, "-j", "route", "show", "dev", iface) or "[]"):
            if r.get("dst") in (None, "default"):
                continue
            net = ipaddress.ip_network(
                r["dst"] if "/" in r["dst"] else r["dst"] + ("/32" if family == "-4" else "/128")
            )
            routes.append((net, r.get("protocol")))
    for n in sorted(allowed):
        net = ipaddress.ip_network(n)
        # subnet_of only compares networks of one version, which the first test ensures.
        if not any(r.version == net.version and net.subnet_of(r) for r, _ in routes):  # type: ignore[arg-type]
            problems.append(f"no route to {n} on {iface}")
    stale = sorted(str(r) for r, proto in routes if proto != "kernel" and str(r) not in allowed)
    if stale:
        problems.append(f"stale routes on {iface}: {stale}")
    dump = [line.split("\t") for line in run("wg", "show", iface, "dump").splitlines()]
    own, peers = dump[0], dump[1:]
    if own[1] != run("wg", "pubkey", input=conf["PrivateKey"] + "\n").strip():
        problems.append(f"{iface} runs another private key than {desired['wgConf']}")
    if "ListenPort" in conf and own[2] != conf["ListenPort"]:
        problems.append(f"{iface} listens on {own[2]}, want {conf['ListenPort']}")
    running = {p[0]: sorted(a for a in p[3].split(",") if a != "(none)") for p in peers}
    wanted = {
        p["PublicKey"]: sorted(str(ipaddress.ip_network(a, strict=False)) for a in p["AllowedIPs"])
        for p in conf["peers"]
    }
    if running != wanted:
        problems.append(f"{iface} peers/allowed IPs {running}, want {wanted}")
    return problems


def without_elements(listing: str, sets: list[str]) -> str:
    """``listing`` minus the elements of the sets another program fills (CrowdSec's
    bouncer keeps its bans in sets the ruleset declares empty)."""
    out, table, in_set, in_elements = [], "", False, False
    for line in listing.splitlines(keepends=True):
        text = line.strip()
        if line.startswith("table "):
            table = line[len("table ") :].rstrip(" {\n")
        elif text.startswith("set ") and text.endswith("{"):
            in_set = f"{table} {text[4:-1].strip()}" in sets
        elif in_set and text == "}":
            in_set = False
        if in_set and text.startswith("elements = {"):
            in_elements = True
        if not in_elements:
            out.append(line)
        elif text.endswith("}"):
            in_elements = False
    return "".join(out)


def check_nftables(desired: dict) -> list[str]:
    """The live ruleset against the file loaded into a scratch network namespace,
    so both are listed by the same nft in the same canonical form."""
    want = run("unshare", "--net", "sh", "-c", 'nft -f "$1" && nft list ruleset', "sh", desired["nftConf"])
    have = without_elements(run("nft", "list", "ruleset"), desired.get("nftFilledSets", []))
    # Counters count (the bans chain's drops, the named counters the metrics read);
    # their values are no configuration.
    want, have = (re.sub(r"packets \d+ bytes \d+", "packets bytes", x) for x in (want, have))
    if have == want:
        return []
    extra = sorted(set(have.splitlines()) - set(want.splitlines()))[:5]
    missing = sorted(set(want.splitlines()) - set(have.splitlines()))[:5]
    return [f"nftables ruleset differs from {desired['nftConf']}: running has {extra}, lacks {missing}"]


def api(path: str):
    with urllib.request.urlopen(f"{traefik_api()}/{path}", timeout=2) as r:
        return json.load(r)


def traefik_routers(desired: dict) -> tuple[list[str], bool]:
    """(problems, whether Traefik runs the declared routers and services at all).

    Names, rules and each service's servers must be the declared ones (so a changed
    target counts only once Traefik has reloaded it), and every router enabled."""
    problems, loaded = [], True
    for proto in ("http", "tcp", "udp"):
        running = {r["name"]: r for r in api(f"{proto}/routers")}
        want = {f"{name}@file": rule for name, rule in desired["traefik"]["routers"][proto].items()}
        have = {name: r.get("rule", "") for name, r in running.items() if name.endswith("@file")}
        if have != want:
            loaded = False
            problems.append(f"Traefik {proto} routers {sorted(have)}, want {sorted(want)} (or their rules differ)")
        for name in sorted(set(want) & set(have)):
            if running[name].get("status") != "enabled":
                why = running[name].get("error") or running[name].get("status")
                problems.append(f"Traefik {proto} router {name}: {why}")
        servers = {
            s["name"]: sorted(x.get("url") or x.get("address") for x in s.get("loadBalancer", {}).get("servers", []))
            for s in api(f"{proto}/services")
            if s["name"].endswith("@file")
        }
        want_servers = {f"{name}@file": v for name, v in desired["traefik"]["services"][proto].items()}
        if servers != want_servers:
            loaded = False
            problems.append(f"Traefik {proto} services {servers}, want {want_servers}")
    return problems, loaded


def wait_traefik(desired: dict, timeout: float) -> list[str]:
    """Until Traefik has loaded the declared routers (a router in error then stays in
    error: no point waiting), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            problems, loaded = traefik_routers(desired)
        except OSError as exc:
            problems, loaded = [f"Traefik API {traefik_api()}: {exc}"], False
        if loaded or time.monotonic() >= deadline:
            return problems
        time.sleep(0.05)


def check_traefik(desired: dict) -> list[str]:
    slots = desired["traefik"]["slots"]
    enabled = [s for s in slots if subprocess.run(["systemctl", "is-enabled", "--quiet", s]).returncode == 0]
    if len(enabled) != 1:
        return [f"Traefik: enabled slots {enabled}, want exactly one of {slots}"]
    if subprocess.run(["systemctl", "is-active", "--quiet", enabled[0]]).returncode != 0:
        return [f"Traefik: {enabled[0]} is enabled but not running"]
    problems = wait_traefik(desired, 10)
    version = api("version").get("Version")
    if desired["traefik"].get("version") not in (None, version):
        problems.append(f"Traefik {version} runs, the pinned release is {desired['traefik']['version']}")
    running = {e["name"]: e["address"] for e in api("entrypoints")}
    if running != desired["traefik"]["entryPoints"]:
        problems.append(
            f"Traefik runs entrypoints {running}, want {desired['traefik']['entryPoints']} (static config not applied)"
        )
    return problems


def check_ssh(desired: dict) -> list[str]:
    problems = []
    user = desired["ssh"]["user"]
    effective = run("sshd", "-T", "-C", f"user={user},host=localhost,addr=127.0.0.1")
    lines = effective.splitlines()
    keys_files = [line.split(None, 1)[1] for line in lines if line.startswith("authorizedkeysfile ")]
    host_keys = [line.split(None, 1)[1] for line in lines if line.startswith("hostkey ")]
    want_file = desired["ssh"]["authorizedKeysFile"]
    if keys_files != [want_file.replace("%u", user)] and keys_files != [want_file]:
        problems.append(f"sshd reads authorized keys from {keys_files}, want {want_file}")
    path = want_file.replace("%u", user)
    have = []
    if os.path.exists(path):
        with open(path) as f:
            have = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if sorted(have) != sorted(desired["ssh"]["authorizedKeys"]):
        problems.append(f"{path} holds {len(have)} keys, not the {len(desired['ssh']['authorizedKeys'])} listed")
    want_files = [desired["ssh"]["hostKey"], desired["ssh"]["installKey"]]
    if host_keys != want_files:
        problems.append(f"sshd loads host keys {host_keys}, want only {want_files}")
    want = [" ".join(desired["ssh"]["hostPublicKey"].split()[:2])]
    if os.path.exists(desired["ssh"]["installKey"] + ".pub"):
        with open(desired["ssh"]["installKey"] + ".pub") as f:
            want.append(" ".join(f.read().split()[:2]))
    # What the running sshd presents: it may still be re-executing after a reload, and a
    # busy one-core edge can take seconds per key exchange while the push restarts units,
    # so keys seen by any scan count until every wanted one has been seen.
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while not seen >= set(want) and time.monotonic() < deadline:
        scan = subprocess.run(
            ["ssh-keyscan", "-T", "15", "-t", "rsa,ecdsa,ed25519", "127.0.0.1"], capture_output=True, text=True
        ).stdout
        seen |= {" ".join(s.split()[1:3]) for s in scan.splitlines() if s and not s.startswith("#")}
    served = sorted(seen)
    if served != sorted(want):
        problems.append(
            f"sshd serves {len(served)} host keys {[s.split()[0] for s in served]}, want only the pinned one "
            "and the edge's install key"
        )
    return problems


def _agent_problem() -> str | None:
    """None when the health agent answers on the port its own configuration names: a
    check's status, up or down (a public agent, dnsMode records, has no overview)."""
    try:
        with open(contract()["health_conf"]) as f:
            conf = json.load(f)
        url = f"http://127.0.0.1:{conf['port']}/health/{next(iter(conf['checks']), '')}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return None
        except urllib.error.HTTPError as exc:
            if exc.code == 503:  # answered: the check is down, which is not this check's business
                return None
            raise
    except (OSError, ValueError, KeyError) as exc:
        return f"the health agent does not answer on its port ({exc})"


def _soa_answered(zone: str) -> bool:
    """An authoritative NOERROR answer to the zone's SOA from the local PowerDNS."""
    import socket
    import struct

    qname = b"".join(bytes([len(x)]) + x.encode() for x in zone.rstrip(".").split(".")) + b"\0"
    query = struct.pack("!HHHHHH", 0x6365, 0, 1, 0, 0, 0) + qname + struct.pack("!HH", 6, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(query, ("127.0.0.1", 53))
        data = s.recv(4096)
    _qid, flags, _qd, answers = struct.unpack("!HHHH", data[:8])
    return bool(flags & 0x0400) and flags & 0xF == 0 and answers > 0


def check_edge_dns(desired: dict, timeout: float = 15) -> list[str]:
    """dnsMode edges: PowerDNS answers for the edge zone and the health agent serves."""
    with open(contract()["pdns_zone"]) as f:
        zone = next(line.split()[1] for line in f if line.startswith("$ORIGIN"))
    problems: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        problems = []
        try:
            if not _soa_answered(zone):
                problems.append(f"PowerDNS gives no authoritative SOA for {zone}")
        except OSError as exc:
            problems.append(f"PowerDNS does not answer on 127.0.0.1:53 ({exc})")
        agent = _agent_problem()
        if agent:
            problems.append(agent)
        if not problems:
            return []
        time.sleep(0.5)
    return problems


def check_health_agent(desired: dict, timeout: float = 15) -> list[str]:
    """dnsMode records: the agent the PowerDNS and Route 53 renderings' checks ask serves."""
    deadline = time.monotonic() + timeout
    while True:
        agent = _agent_problem()
        if not agent:
            return []
        if time.monotonic() >= deadline:
            return [agent]
        time.sleep(0.5)


def check_alerts(desired: dict, timeout: float = 20, fresh: float = 10) -> list[str]:
    """With an alert channel set: the daemon runs and has looked at the fleet lately
    (its state file, written after every look, is fresh)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(contract()["alerts_state"]) as f:
                age = time.time() - float(json.load(f)["updated"])
            problem = None if age < fresh else f"the alert daemon last looked {age:.0f} s ago"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problem = f"the alert daemon has written no state ({exc})"
        if problem is None:
            return []
        if time.monotonic() >= deadline:
            return [f"{problem}; see journalctl -u {contract()['alerts_unit']}"]
        time.sleep(0.5)


def checks() -> dict[str, Callable[[dict], list[str]]]:
    out: dict[str, Callable[[dict], list[str]]] = {
        "wireguard": check_wireguard,
        "nftables": check_nftables,
        "traefik": check_traefik,
        "ssh": check_ssh,
    }
    if os.path.exists(contract()["pdns_zone"]):
        out["edge-dns"] = check_edge_dns
    elif os.path.exists(contract()["health_conf"]):
        out["health-agent"] = check_health_agent
    if os.path.exists(contract()["alerts_conf"]):
        out["alerts"] = check_alerts
    return out


def main(argv: list[str]) -> int:
    with open(os.environ.get("CGNAT_EDGE_DESIRED") or contract()["desired"]) as f:
        desired = json.load(f)
    if argv[1:2] == ["traefik"]:
        problems = wait_traefik(desired, float(argv[2]) if len(argv) > 2 else 20)
        for p in problems:
            print(f"cgnat-edge verify: DIFFERS: {p}", file=sys.stderr)
        return 1 if problems else 0
    failed = False
    for name, check in checks().items():
        try:
            problems = check(desired)
        except (OSError, RuntimeError, ValueError, KeyError, IndexError) as exc:
            problems = [f"could not read the running state: {exc}"]
        for p in problems:
            print(f"cgnat-edge verify: DIFFERS: {name}: {p}", file=sys.stderr)
        if not problems:
            print(f"cgnat-edge verify: {name} runs as declared")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
