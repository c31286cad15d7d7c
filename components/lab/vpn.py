"""The lab's proof of the road-warrior VPN (part of ``cgnat-edge lab --forward``).

A ``roadwarrior`` namespace on the lab's internet plays the stack's first device with
its generated WireGuard files (wireguard-go under wg-quick, as the apps would):

* ``vpn:reach``: through the first edge it reaches a LAN target, and home's service
  logged the device's pool address (not an edge's);
* ``vpn:failover``: that edge goes dark (every packet in and out dropped), the device
  no longer gets through it, switches to the next edge's file and reaches the target;
* ``vpn:denied``: a LAN address outside the device's allowedPrefixes and the lab's
  internet stay unreachable through the edge even when the device routes them into
  its tunnel itself (a tampered config: the edge's ruleset is what refuses), while
  both answer when asked from where they are allowed.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time

from components.lab.edge_lab import SERVICES_SCRIPT, EdgeLab
from components.lab.netns import Node, wait_for
from components.lab.report import Check
from components.lab.topology import attach, free_internet_addresses
from components.model.fleet import Protocol

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


def run_vpn(el: EdgeLab) -> list[Check]:
    cfg = el.cfg
    if not cfg.road_warriors or not cfg.road_warriors.peers:
        return [
            Check(n, False, detail="the stack has no roadWarriors") for n in ("vpn:reach", "vpn:failover", "vpn:denied")
        ]
    device = cfg.road_warriors.peers[0]
    device_ip = str(device.address)
    edges = sorted(el.edges, key=lambda n: next(e.index for e in cfg.edges if e.name == n))
    first, second = edges[0], edges[1 % len(edges)]
    target = next(
        (str(s.target.host) for s in cfg.services if s.target.port == ECHO_PORT and s.protocol == Protocol.TCP), None
    )
    allowed = [n for n in device.allowed if n.version == 4]
    lan = next(n for n in cfg.home.lan_prefixes if n.version == 4)
    outside = next((h for h in lan.hosts() if not any(h in n for n in allowed)), None)
    if target is None or outside is None:
        return [
            Check(
                "vpn:reach",
                False,
                detail="the lab stack needs a tcp echo on port 25 and a LAN address outside the device's prefixes",
            )
        ]

    taken = {e.public_ip for e in el.edges.values()} | {el.client_ip, el.dns_ip, el.cgnat_ip, el.operator_ip}
    (rw_ip,) = free_internet_addresses(taken, 1)
    rw = el.nodes["roadwarrior"] = el.lab.node("roadwarrior")
    attach(el.lab, el.nodes["inet"], rw, "i-rw", rw_ip)
    for name in edges:
        text = (el.rendered.out / "home" / f"road-warrior-{device.name}-{name}.conf").read_text()
        rw.write(f"/etc/wireguard/{_iface(name)}.conf", text)

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
    its tunnel itself; the edge must drop both."""
    lan = next(n for n in el.cfg.home.lan_prefixes if n.version == 4 and ipaddress.ip_address(outside) in n)
    el.server.addresses("eth0", [f"{outside}/{lan.prefixlen}"])
    _echo_listener(el, el.server, outside, ECHO_PORT, "outside-lan")
    _echo_listener(el, el.client, el.client_ip, OUTSIDE_PORT, "internet")
    control = {
        "LAN address from home": _answered(_tcp(el, el.home, outside, ECHO_PORT, "c1"), "c1"),
        "internet from the device's own uplink": _answered(_tcp(el, rw, el.client_ip, OUTSIDE_PORT, "c2"), "c2"),
    }
    iface = _iface(edge)
    edge_key = el.rendered.edges[edge]["wireguardPublicKey"]
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
