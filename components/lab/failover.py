"""Failover, measured: faults in a running lab and the seconds until every edge's
nameserver stops (and starts again) sending visitors to the broken edge.

Needs a stack in ``dnsMode: edges`` (the edges are the nameservers).  Each fault is
put in at a measured moment, then every live edge's nameserver is asked for every
name (plain A questions, from the visitor's node) until the answers show the effect:

* ``failover:edge-down``    an edge drops every packet on its public interface (a
  dead VPS, seen from outside); its own nameserver is gone too, so the other edges'
  are asked.  Effect: no answer contains it.
* ``failover:tunnel-down``  home takes its tunnel to one edge down; that edge's
  Traefik, nameserver and agent keep running.  Effect: no answer of any nameserver,
  the edge's own included, contains it.
* ``failover:service-down`` one home service refuses connections.  Effect: every
  edge's agent reports it down, its names still answer with every edge (all down:
  answer all), and the other names keep every edge.
* ``failover:recovery``     after each fault is undone: seconds until every answer
  holds every edge again (for the service, until every agent reports it up); the
  value is the slowest of the three.

A row is ok when its effect was observed within ``BOUND_S``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from components.lab.edge_lab import EdgeLab
from components.lab.errors import LabError
from components.lab.report import Check
from components.model.fleet import Mode
from components.renderers import edge_dns

BOUND_S = 15.0
"""The goal: fault to exclusion, and repair to inclusion, within 15 s."""
GIVE_UP_S = 45.0
"""How long a measurement waits before it reports the effect as not seen."""
POLL_S = 0.3


def _agent_up(el: EdgeLab, edge: str, check: str) -> bool:
    url = f"http://127.0.0.1:{edge_dns.HEALTH_PORT}/health/{check}"
    done = el.edges[edge].node.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", url, check=False)
    return done.stdout.strip() == "200"


def measure(condition: Callable[[], tuple[bool, str]], since: float) -> tuple[float | None, str]:
    """Seconds from ``since`` to the end of the first poll that saw ``condition`` hold
    (None if it never did within ``GIVE_UP_S``), and what the last poll saw."""
    detail = ""
    while time.monotonic() - since < GIVE_UP_S:
        ok, detail = condition()
        if ok:
            return round(time.monotonic() - since, 1), detail
        time.sleep(POLL_S)
    return None, detail


def _row(name: str, seconds: float | None, detail: str) -> Check:
    ok = seconds is not None and seconds <= BOUND_S
    return Check(name, ok, seconds if seconds is not None else f">{GIVE_UP_S:g}", "s", detail)


class Faults:
    def __init__(self, el: EdgeLab):
        cfg = el.cfg
        if not cfg.dns.edge_served:
            raise LabError("--faults needs a stack with dnsMode edges: the edges must be the nameservers")
        if len(el.edges) < 2:
            raise LabError("--faults needs at least two edges")
        self.el = el
        # What the edges' nameservers own: the hostnames themselves, or with a subzone
        # the names their CNAMEs point to.
        self.names = [served for _host, served, _check in edge_dns.names(cfg)]
        self.by_index = [e.name for e in sorted(cfg.edges, key=lambda e: e.index)]
        self.ips = {name: el.edges[name].public_ip for name in self.by_index}

    def all_answer(self, servers: list[str], want: Callable[[str], set[str]]) -> tuple[bool, str]:
        got = self.el.ask_nameservers(servers, self.names)
        bad = {k: v for k, v in got.items() if v is None or set(v) != want(k[1])}
        shown = "; ".join(f"ns {s} {n}: {v}" for (s, n), v in list(bad.items())[:3])
        return not bad, shown or f"{len(got)} answers as expected from nameservers {', '.join(servers)}"

    def everyone(self, _name: str = "") -> set[str]:
        return set(self.ips.values())

    def steady(self) -> None:
        seconds, detail = measure(lambda: self.all_answer(self.by_index, self.everyone), time.monotonic())
        if seconds is None:
            raise LabError(f"the nameservers do not all answer with every edge before a fault: {detail}")

    # -- the faults ---------------------------------------------------------------

    def edge_down(self) -> tuple[Check, float | None, str]:
        victim, others = self.by_index[0], self.by_index[1:]
        node = self.el.edges[victim].node
        rules = (
            "table inet lab_fault {\n"
            '  chain in { type filter hook input priority -300; policy accept; iifname "eth0" drop; }\n'
            '  chain out { type filter hook output priority -300; policy accept; oifname "eth0" drop; }\n'
            "}\n"
        )
        self.steady()
        node.run("nft", "-f", "-", input=rules)
        start = time.monotonic()
        left = self.everyone() - {self.ips[victim]}
        seconds, detail = measure(lambda: self.all_answer(others, lambda _n: left), start)
        node.run("nft", "delete", "table", "inet", "lab_fault")
        start = time.monotonic()
        back, back_detail = measure(lambda: self.all_answer(self.by_index, self.everyone), start)
        row = _row("failover:edge-down", seconds, f"edge {victim} unreachable; asked {', '.join(others)}: {detail}")
        return row, back, f"edge-down {back}s ({back_detail})"

    def tunnel_down(self) -> tuple[Check, float | None, str]:
        victim = self.by_index[-1]
        iface = self.el.home_interface(victim)
        self.steady()
        self.el.home.run("wg-quick", "down", iface)
        start = time.monotonic()
        left = self.everyone() - {self.ips[victim]}
        seconds, detail = measure(lambda: self.all_answer(self.by_index, lambda _n: left), start)
        self.el.home.run("wg-quick", "up", iface)
        start = time.monotonic()
        back, back_detail = measure(lambda: self.all_answer(self.by_index, self.everyone), start)
        row = _row(
            "failover:tunnel-down",
            seconds,
            f"home's tunnel {iface} to {victim} down, its Traefik and DNS up; asked every edge: {detail}",
        )
        return row, back, f"tunnel-down {back}s ({back_detail})"

    def service_down(self) -> tuple[Check, float | None, str]:
        cfg = self.el.cfg
        service = next((s for s in cfg.services if s.mode is Mode.HTTP), None) or next(
            s for s in cfg.services if s.mode.by_hostname
        )
        target = service.target
        rules = (
            "table inet lab_fault {\n"
            "  chain in { type filter hook input priority -300; policy accept;\n"
            f"    ip daddr {target.host} tcp dport {target.port} reject with tcp reset; }}\n"
            "}\n"
        )
        self.steady()
        self.el.server.run("nft", "-f", "-", input=rules)
        start = time.monotonic()

        def down_everywhere() -> tuple[bool, str]:
            agents = {e: _agent_up(self.el, e, service.name) for e in self.by_index}
            if any(agents.values()):
                return False, f"agents still up: {', '.join(e for e, up in agents.items() if up)}"
            ok, detail = self.all_answer(self.by_index, self.everyone)
            return ok, f"every agent reports {service.name} down; names: {detail}"

        seconds, detail = measure(down_everywhere, start)
        self.el.server.run("nft", "delete", "table", "inet", "lab_fault")
        start = time.monotonic()
        back, back_detail = measure(
            lambda: (all(_agent_up(self.el, e, service.name) for e in self.by_index), "every agent reports it up"),
            start,
        )
        row = _row(
            "failover:service-down",
            seconds,
            f"home service {service.name} ({target}) refuses connections: {detail}",
        )
        return row, back, f"service-down {back}s ({back_detail})"


def run_faults(el: EdgeLab) -> list[Check]:
    """The fault rows, each fault undone before the next."""
    faults = Faults(el)
    rows: list[Check] = []
    recoveries: list[tuple[float | None, str]] = []
    for fault in (faults.edge_down, faults.tunnel_down, faults.service_down):
        row, back, detail = fault()
        rows.append(row)
        recoveries.append((back, detail))
    times = [t for t, _ in recoveries]
    worst: Any = None if any(t is None for t in times) else max(t for t in times if t is not None)
    rows.append(_row("failover:recovery", worst, "; ".join(d for _, d in recoveries)))
    return rows
