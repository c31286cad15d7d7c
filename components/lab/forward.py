"""The lab's proof of service mode ``forward`` (``cgnat-edge lab --forward``).

A visitor sends TCP and UDP to the stack's forward services through every edge while
all edges forward them at once.  A row is ok only when it was observed:

* ``forward:tcp:real-ip`` / ``forward:udp:real-ip``: the home service answered through
  each edge and logged the visitor's own address (services.py writes every connection
  to the home log; nothing but the packet's source address tells it who called);
* ``forward:reply-path``: the replies to a burst through one edge leave home by that
  edge's tunnel and by no other (an nftables counter at home per tunnel on packets to
  the visitor; the health agents' own traffic through every tunnel is not counted), the
  answer reached the visitor from the address it wrote to, and home's default route
  (main table) is still the single route to the ISP, none into a tunnel.
"""

from __future__ import annotations

import json

from components.lab.edge_lab import EdgeLab
from components.lab.report import Check
from components.model.fleet import Mode, ServiceSpec

BURST = 8
"""Datagrams per edge in the reply-path check."""
PAYLOAD = 1000
"""Bytes per datagram."""


def _forward_services(el: EdgeLab, protocol: str) -> list[ServiceSpec]:
    return [s for s in el.cfg.services if s.mode is Mode.FORWARD and s.protocol == protocol]


def _logged_clients(el: EdgeLab, services: list[ServiceSpec]) -> set[str]:
    """Client addresses the home log holds for the forward services, leaving out the
    edges' own tunnel addresses: with dnsMode edges each edge's health agent connects
    to the targets through its tunnel (components/renderers/edge_dns.py)."""
    names = {s.name for s in services}
    agents = {el.tunnel_ip(name) for name in el.edges} if el.cfg.dns.edge_served else set()
    clients = set()
    for line in el.home_log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("service") in names and str(entry.get("peer")) not in agents:
            clients.add(str(entry.get("client")))
    return clients


def _real_ip(el: EdgeLab, protocol: str) -> Check:
    services = _forward_services(el, protocol)
    if not services:
        return Check(f"forward:{protocol}:real-ip", False, detail=f"the stack has no {protocol} forward service")
    checks, labels = [], []
    for name, edge in sorted(el.edges.items()):
        for s in services:
            token = f"fw-{name}-{s.name}"
            checks.append({"kind": protocol, "edge": edge.public_ip, "port": s.port, "payload": token})
            labels.append((name, s, s.port, token))
    results = el.probe(checks)
    seen, problems = [], []
    for (name, s, port, token), r in zip(labels, results, strict=True):
        body: dict = r["body"] if isinstance(r.get("body"), dict) else {}
        if not r.get("ok") or r.get("echo") != token or body.get("service") != s.name:
            problems.append(f"{name}:{port} no echo ({r.get('error') or str(r.get('body'))[:60]})")
            continue
        if body.get("client") != el.client_ip:
            problems.append(f"{name}:{port} home saw {body.get('client')}, not {el.client_ip}")
            continue
        seen.append(f"{name}:{port}")
    logged = _logged_clients(el, services)
    if logged != {el.client_ip}:
        problems.append(f"home log holds clients {sorted(map(str, logged))}, not only {el.client_ip}")
    return Check(
        f"forward:{protocol}:real-ip",
        not problems,
        len(seen),
        "answers",
        "; ".join(problems) or f"home logged visitor {el.client_ip} through {', '.join(seen)}",
    )


COUNT_TABLE = "lab_reply_count"
"""Home's counting table; not named cgnat_edge*, which the lab's filter lifts touch."""


def _count_replies(el: EdgeLab) -> None:
    rules = "\n".join(
        f'    oifname "{el.home_interface(name)}" ip daddr {el.client_ip} counter' for name in sorted(el.edges)
    )
    el.home.run(
        "nft", "-f", "-",
        input=f"table ip {COUNT_TABLE} {{\n  chain out {{\n    type filter hook postrouting priority 0; policy accept;\n"
        f"{rules}\n  }}\n}}\n",
    )  # fmt: skip


def _replies(el: EdgeLab) -> dict[str, int]:
    """Packets home has sent to the visitor through each edge's tunnel so far."""
    listing = json.loads(el.home.run("nft", "-j", "list", "table", "ip", COUNT_TABLE).stdout)
    by_iface: dict[str, int] = {}
    for item in listing["nftables"]:
        rule = item.get("rule")
        if not rule:
            continue
        iface = next(e["match"]["right"] for e in rule["expr"] if "match" in e and "meta" in e["match"]["left"])
        by_iface[iface] = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    return {name: by_iface.get(el.home_interface(name), 0) for name in el.edges}


def _default_routes(el: EdgeLab) -> str:
    return el.home.run("ip", "-4", "route", "show", "default", "table", "main").stdout.strip()


def _reply_path(el: EdgeLab) -> Check:
    services = _forward_services(el, "udp")
    if not services:
        return Check("forward:reply-path", False, detail="the stack has no udp forward service")
    s = services[0]
    problems, moved = [], []
    _count_replies(el)
    for name, edge in sorted(el.edges.items()):
        before = _replies(el)
        payload = "r" * PAYLOAD
        results = el.probe(
            [{"kind": "udp", "edge": edge.public_ip, "port": s.port, "payload": payload} for _ in range(BURST)]
        )
        after = _replies(el)
        answered = sum(1 for r in results if r.get("ok") and r.get("echo") == payload)
        delta = {e: after[e] - before[e] for e in after}
        if answered != BURST:
            problems.append(f"through {name} {answered}/{BURST} answers came back")
        if delta[name] < BURST:
            problems.append(f"home sent only {delta[name]} replies into {name}'s tunnel for {BURST} datagrams")
        others = {e: d for e, d in delta.items() if e != name and d}
        if others:
            problems.append(f"replies for {name} left through {others}")
        rest = sum(d for e, d in delta.items() if e != name)
        moved.append(f"{name}: {delta[name]} replies out of its tunnel, {rest} out of others")
    default_after = _default_routes(el)
    if len(default_after.splitlines()) != 1 or "wg-" in default_after or not default_after.startswith("default via"):
        problems.append(f"home's default route is not the ISP's alone: {default_after!r}")
    return Check(
        "forward:reply-path",
        not problems,
        len(el.edges),
        "edges",
        "; ".join(problems) or f"{'; '.join(moved)}; default route still {default_after}",
    )


def run_forward(el: EdgeLab) -> list[Check]:
    return [_real_ip(el, "tcp"), _real_ip(el, "udp"), _reply_path(el)]
