"""The lab's proof of the road-warrior VPN (``cgnat-edge lab --forward``, and
``vpn:edge-sees-ciphertext`` with ``--attacks``).

A ``roadwarrior`` namespace on the lab's internet plays the stack's first device with
its generated WireGuard files (wireguard-go under wg-quick, as the apps would); its
sessions end at the lab's home (``cgnat-rw``), each edge forwarding the port:

* ``vpn:reach``: through the first edge it reaches a LAN target, and home's service
  logged the device's pool address (not an edge's);
* ``vpn:failover``: that edge goes dark (every packet in and out dropped), the device
  no longer gets through it, switches to the next edge's file and reaches the target;
* ``vpn:denied``: a LAN address outside the device's allowedPrefixes and the lab's
  internet stay unreachable even when the device routes them into its tunnel itself
  (a tampered config: home's filter is what refuses), while both answer when asked
  from where they are allowed;
* ``vpn:edge-sees-ciphertext``: the first edge, taken over, sends to a declared LAN
  target with the device's address as its source (the address on its loopback, the
  route through its tunnel to home): not one packet arrives at the target's host (a
  counter there), while the same connection from the edge's own tunnel address is
  answered (so it is the source that home refuses, not the
  path).  Then the device reaches its target through every edge and not an address
  outside its prefixes, and each edge's counters (prerouting and output, before
  anything else) saw the device's WireGuard port and never a packet to or from its
  pool address: the edge carried ciphertext only.  The value: how many injected
  packets arrived.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from dataclasses import dataclass

from components.lab.edge_lab import SERVICES_SCRIPT, EdgeLab
from components.lab.netns import Node, wait_for
from components.lab.report import Check
from components.lab.topology import attach, free_internet_addresses
from components.model.fleet import Protocol
from components.model.road_warriors import RoadWarrior

ECHO_PORT = 25
"""The lab's ``mail`` forward service listens on 192.0.2.30:25: a LAN tcp echo."""
OUTSIDE_PORT = 7

DARK = """table inet lab_dark {
  chain in { type filter hook prerouting priority raw - 10; policy drop; }
  chain out { type filter hook output priority raw - 10; policy drop; }
}
"""


def _iface(edge: str) -> str:
    return f"rw-{edge}"[:15]


def _echo_listener(el: EdgeLab, node: Node, address: str, port: int, name: str) -> None:
    spec = el.lab.workdir / f"vpn-{name}.json"
    log = el.lab.workdir / f"vpn-{name}.log"
    spec.write_text(
        json.dumps(
            {
                "log": str(log),
                "listeners": [{"address": address, "port": port, "kind": "tcp-echo", "service": name, "proxy": False}],
            }
        )
    )
    out = el.lab.workdir / f"vpn-{name}.out"
    node.spawn(sys.executable, str(SERVICES_SCRIPT), "serve", str(spec), log=out)
    wait_for(lambda: "ready" in out.read_text(), timeout=15, message=f"listener {name}")


def _tcp(el: EdgeLab, node: Node, host: str, port: int, token: str) -> dict:
    (r,) = el.probe([{"kind": "tcp", "edge": host, "port": port, "payload": token, "timeout": 3}], node=node)
    return r


def _answered(r: dict, token: str) -> bool:
    return bool(r.get("ok")) and r.get("echo") == token


@dataclass
class _Setup:
    device: RoadWarrior
    rw: Node
    edges: list[str]
    target: str
    outside: str
    allowed: list

    @property
    def device_ip(self) -> str:
        return str(self.device.address)


def _setup(el: EdgeLab) -> _Setup | str:
    """The device's namespace with its files (made once, shared by both families), or
    why the stack cannot show the VPN."""
    cfg = el.cfg
    if not cfg.road_warriors or not cfg.road_warriors.peers:
        return "the stack has no roadWarriors"
    device = cfg.road_warriors.peers[0]
    edges = sorted(el.edges, key=lambda n: next(e.index for e in cfg.edges if e.name == n))
    target = next(
        (str(s.target.host) for s in cfg.services if s.target.port == ECHO_PORT and s.protocol == Protocol.TCP), None
    )
    allowed = [n for n in device.allowed if n.version == 4]
    lan = next(n for n in cfg.home.lan_prefixes if n.version == 4)
    outside = next((h for h in lan.hosts() if not any(h in n for n in allowed)), None)
    if target is None or outside is None:
        return "the lab stack needs a tcp echo on port 25 and a LAN address outside the device's prefixes"
    rw = el.nodes.get("roadwarrior")
    if rw is None:
        taken = {e.public_ip for e in el.edges.values()} | {el.client_ip, el.dns_ip, el.cgnat_ip, el.operator_ip}
        (rw_ip,) = free_internet_addresses(taken, 1)
        rw = el.nodes["roadwarrior"] = el.lab.node("roadwarrior")
        attach(el.lab, el.nodes["inet"], rw, "i-rw", rw_ip)
        for name in edges:
            text = (el.rendered.out / "home" / f"road-warrior-{device.name}-{name}.conf").read_text()
            rw.write(f"/etc/wireguard/{_iface(name)}.conf", text)
        lan_of = next(n for n in el.cfg.home.lan_prefixes if n.version == 4 and outside in n)
        el.server.addresses("eth0", [f"{outside}/{lan_of.prefixlen}"])
        _echo_listener(el, el.server, str(outside), ECHO_PORT, "outside-lan")
    return _Setup(device, rw, edges, target, str(outside), allowed)


def run_vpn(el: EdgeLab) -> list[Check]:
    setup = _setup(el)
    if isinstance(setup, str):
        return [Check(n, False, detail=setup) for n in ("vpn:reach", "vpn:failover", "vpn:denied")]
    rw, device_ip, target, edges = setup.rw, setup.device_ip, setup.target, setup.edges
    first, second = edges[0], edges[1 % len(edges)]
    outside, allowed = setup.outside, setup.allowed

    rows: list[Check] = []
    # -- reach ---------------------------------------------------------------
    rw.run("wg-quick", "up", _iface(first))
    token = f"vpn-{first}"
    r = {}
    for _ in range(10):  # the first handshake takes a moment
        r = _tcp(el, rw, target, ECHO_PORT, token)
        if _answered(r, token):
            break
        time.sleep(0.5)
    client = r.get("body", {}).get("client") if isinstance(r.get("body"), dict) else None
    rows.append(
        Check(
            "vpn:reach",
            _answered(r, token) and client == device_ip,
            r.get("ms"),
            "ms",
            f"{target}:{ECHO_PORT} through edge {first}; home saw {client} (device {device_ip})"
            if _answered(r, token)
            else f"no answer through {first}: {r.get('error')}",
        )
    )

    # -- failover ------------------------------------------------------------
    dark = el.edges[first].node
    dark.run("nft", "-f", "-", input=DARK)
    try:
        blocked = _tcp(el, rw, target, ECHO_PORT, "vpn-dark")
        rw.run("wg-quick", "down", _iface(first))
        rw.run("wg-quick", "up", _iface(second))
        start = time.monotonic()
        token = f"vpn-{second}"
        for _ in range(10):
            r = _tcp(el, rw, target, ECHO_PORT, token)
            if _answered(r, token):
                break
            time.sleep(0.5)
        took = round((time.monotonic() - start) * 1000, 1)
        client = r.get("body", {}).get("client") if isinstance(r.get("body"), dict) else None
        ok = not _answered(blocked, "vpn-dark") and _answered(r, token) and client == device_ip and second != first
        rows.append(
            Check(
                "vpn:failover",
                ok,
                took,
                "ms",
                f"edge {first} dark: {'no answer' if not _answered(blocked, 'vpn-dark') else 'STILL ANSWERED'}; "
                f"through edge {second}: {'home saw ' + str(client) if _answered(r, token) else r.get('error')}",
            )
        )

        # -- denied (device on the second edge) --------------------------------
        rows.append(_denied(el, rw, second, device_ip, str(outside), allowed))
    finally:
        dark.run("nft", "delete", "table", "inet", "lab_dark", check=False)
        rw.run("wg-quick", "down", _iface(second), check=False)
    return rows


def _denied(el: EdgeLab, rw: Node, edge: str, device_ip: str, outside: str, allowed: list) -> Check:
    """The device routes a LAN address outside its prefixes and the lab's visitor into
    its tunnel itself; home must refuse both."""
    _echo_listener(el, el.client, el.client_ip, OUTSIDE_PORT, "internet")
    control = {
        "LAN address from home": _answered(_tcp(el, el.home, outside, ECHO_PORT, "c1"), "c1"),
        "internet from the device's own uplink": _answered(_tcp(el, rw, el.client_ip, OUTSIDE_PORT, "c2"), "c2"),
    }
    iface = _iface(edge)
    edge_key = el.rendered.home["publicKey"]  # the device's one peer: home, through the edge
    extra = [f"{outside}/32", f"{el.client_ip}/32"]
    rw.run("wg", "set", iface, "peer", edge_key, "allowed-ips", ",".join([*map(str, allowed), *extra]))
    for prefix in extra:
        rw.run("ip", "route", "replace", prefix, "dev", iface)
    through = {
        f"LAN {outside}": _answered(_tcp(el, rw, outside, ECHO_PORT, "d1"), "d1"),
        f"internet {el.client_ip}": _answered(_tcp(el, rw, el.client_ip, OUTSIDE_PORT, "d2"), "d2"),
    }
    ok = all(control.values()) and not any(through.values())
    return Check(
        "vpn:denied",
        ok,
        sum(through.values()),
        "reached",
        "through edge "
        + edge
        + ": "
        + ", ".join(f"{k} {'REACHED' if v else 'refused'}" for k, v in through.items())
        + "; controls: "
        + ", ".join(f"{k} {'answers' if v else 'DOES NOT ANSWER'}" for k, v in control.items()),
    )


# -- a taken-over edge ---------------------------------------------------------------

INJECTED = 5
"""Connections the taken-over edge opens in the device's name."""

WATCH = """table inet lab_watch {{
  counter inner {{ }}
  counter wireguard {{ }}
  chain pre {{ type filter hook prerouting priority raw - 20; policy accept;
    ip saddr {device} counter name inner
    ip daddr {device} counter name inner
    udp dport {port} counter name wireguard
  }}
  chain out {{ type filter hook output priority raw - 20; policy accept;
    ip saddr {device} counter name inner
    ip daddr {device} counter name inner
  }}
}}
"""


def _connect_from(source: str, target: str, port: int, tries: int) -> int:
    """Connections to ``target`` that got an answer, each from ``source`` (None: the
    namespace's own choice), run inside the edge (``Node.call``)."""
    answered = 0
    for _ in range(tries):
        with socket.socket() as sock:
            sock.settimeout(1.5)
            try:
                if source:
                    sock.bind((source, 0))
                sock.connect((target, port))
                answered += bool(sock.recv(4096))
            except OSError:
                pass
    return answered


ARRIVALS = """table inet lab_arrivals {{
  counter arrivals {{ }}
  chain pre {{ type filter hook prerouting priority raw - 20; policy accept;
    ip saddr {device} counter name arrivals
  }}
}}
"""
"""On the target's host: every packet from the device's address, a lone SYN included
(a completed connection would undercount: home routes the answer to the pool into its
road-warrior interface, not back to the edge)."""


def _counters(node: Node, table: str = "lab_watch") -> dict[str, int]:
    out = json.loads(node.run("nft", "-j", "list", "counters", "table", "inet", table).stdout)
    return {c["counter"]["name"]: c["counter"]["packets"] for c in out["nftables"] if "counter" in c}


def run_edge_sees_ciphertext(el: EdgeLab) -> list[Check]:
    setup = _setup(el)
    if isinstance(setup, str):
        return [Check("vpn:edge-sees-ciphertext", False, detail=setup)]
    rw, device_ip, target = setup.rw, setup.device_ip, setup.target
    port = el.cfg.road_warriors.port if el.cfg.road_warriors else 0
    taken = el.edges[setup.edges[0]].node

    # -- the edge speaks in the device's name --------------------------------------
    el.server.run("nft", "-f", "-", input=ARRIVALS.format(device=device_ip))
    taken.run("ip", "addr", "add", f"{device_ip}/32", "dev", "lo")
    try:
        injected = taken.call(lambda: _connect_from(device_ip, target, ECHO_PORT, INJECTED))
        reached = _counters(el.server, "lab_arrivals")["arrivals"]
    finally:
        taken.run("ip", "addr", "del", f"{device_ip}/32", "dev", "lo", check=False)
        el.server.run("nft", "delete", "table", "inet", "lab_arrivals", check=False)
    control = taken.call(lambda: _connect_from("", target, ECHO_PORT, 1))

    # -- the real device, through every edge ----------------------------------------
    through: dict[str, str] = {}
    clean = True
    for name in setup.edges:
        edge = el.edges[name].node
        edge.run("nft", "-f", "-", input=WATCH.format(device=device_ip, port=port))
        rw.run("wg-quick", "up", _iface(name))
        try:
            token = f"ct-{name}"
            r: dict = {}
            for _ in range(10):  # the first handshake takes a moment
                r = _tcp(el, rw, target, ECHO_PORT, token)
                if _answered(r, token):
                    break
                time.sleep(0.5)
            client = r.get("body", {}).get("client") if isinstance(r.get("body"), dict) else None
            denied = not _answered(_tcp(el, rw, setup.outside, ECHO_PORT, "ct-out"), "ct-out")
            seen = _counters(edge)
        finally:
            rw.run("wg-quick", "down", _iface(name), check=False)
            edge.run("nft", "delete", "table", "inet", "lab_watch", check=False)
        good = _answered(r, token) and client == device_ip and denied
        clean = clean and good and seen.get("inner", 1) == 0 and seen.get("wireguard", 0) > 0
        through[name] = (
            f"{target} {'home saw ' + str(client) if _answered(r, token) else 'NO ANSWER'}, "
            f"{setup.outside} {'refused' if denied else 'REACHED'}, on the edge {seen.get('wireguard')} packets "
            f"to udp {port} and {seen.get('inner')} to or from {device_ip}"
        )
    ok = injected == 0 and reached == 0 and control == 1 and clean
    return [
        Check(
            "vpn:edge-sees-ciphertext",
            ok,
            reached,
            "packets",
            f"edge {setup.edges[0]} in the device's name: {injected} of {INJECTED} connections to {target}:{ECHO_PORT} "
            f"answered, {reached} packets arrived at the target's host; from its own tunnel address: "
            f"{'answered' if control else 'NO ANSWER'}; the device through "
            + "; ".join(f"{n}: {d}" for n, d in through.items()),
        )
    ]
