"""Hostile traffic against a running lab's edges (``--attacks``), one row each:

* ``attack:agent-flood``  ``FLOOD_CONNECTIONS`` connections to the first edge's health
  agent that send nothing, held for ``FLOOD_S`` (each one the agent closes after its
  read timeout is opened again), while a checker asks a check every ``POLL_S``.  ok when
  every check was answered 200 within ``ANSWER_BOUND_S``, the agent's VmRSS stayed under
  its unit's ``MemoryMax`` and the same process still runs.  The checks come from the
  second edge; the flood in dnsMode edges too (only the fleet reaches the agent there:
  a fleet member gone bad), in dnsMode records from the visitor, whose new connections
  nftables also limits per source (what got through is in the detail).

and the ``secrets:`` rows (components/lab/secrets.py).
"""

from __future__ import annotations

import select
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from components.lab import secrets
from components.lab.edge_lab import EdgeLab
from components.lab.floods import run_floods
from components.lab.netns import Node
from components.lab.report import Check
from components.model import edge_contract
from components.renderers import edge_dns

FLOOD_CONNECTIONS = 200
FLOOD_S = 8.0
"""Longer than the agent's 3 s read timeout, so its closing and the reopening both happen."""
POLL_S = 0.25
ANSWER_BOUND_S = 1.0
MEMORY_LIMIT_KB = 64 * 1024
"""The unit's MemoryMax=64M."""


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _hold(address: str, opened: threading.Event) -> dict[str, int]:
    """The flood, inside the attacker's namespace (``Node.call``): open, hold, reopen."""
    socks: list[socket.socket] = []
    refused = reopened = 0

    def open_one() -> None:
        nonlocal refused
        try:
            socks.append(socket.create_connection((address, edge_dns.HEALTH_PORT), timeout=0.5))
        except OSError:
            refused += 1

    for _ in range(FLOOD_CONNECTIONS):
        open_one()
    held = len(socks)
    opened.set()
    end = time.monotonic() + FLOOD_S
    try:
        while time.monotonic() < end:
            closed, _, _ = select.select(socks, [], [], POLL_S)
            for s in closed:  # the agent's read timeout: open another in its place
                socks.remove(s)
                s.close()
                open_one()
                reopened += 1
    finally:
        for s in socks:
            s.close()
    return {"held": held, "refused": refused, "reopened": reopened}


def _ask(url: str) -> tuple[int, float]:
    """One check, as a DNS health checker asks: (status, seconds); 0 for no answer."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=2 * ANSWER_BOUND_S) as r:
            status = r.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = 0
    return status, time.monotonic() - started


def agent_flood(el: EdgeLab) -> Check:
    name = "attack:agent-flood"
    order = [e.name for e in sorted(el.cfg.edges, key=lambda e: e.index)]
    if len(order) < 2:
        return Check(name, False, None, "", "needs two edges: the second one asks the checks")
    victim, checker = el.edges[order[0]], el.edges[order[1]].node
    # dnsMode edges: only the fleet reaches the agent, so the flood comes from a fleet
    # member gone bad; records: from the visitor (and nftables limits it per source).
    attacker: Node = checker if el.cfg.dns.edge_served else el.client
    proc = victim.units.get(edge_contract.HEALTH_UNIT)
    if proc is None or proc.poll() is not None:
        return Check(name, False, None, "", f"{victim.name}'s health agent is not running before the flood")
    check = edge_dns.names(el.cfg)[0][2]
    url = f"http://{victim.public_ip}:{edge_dns.HEALTH_PORT}/health/{check}"
    opened = threading.Event()
    box: dict[str, Any] = {}
    flood = threading.Thread(target=lambda: box.update(attacker.call(lambda: _hold(victim.public_ip, opened))))
    flood.start()
    answers: list[tuple[int, float]] = []
    rss_max = 0
    opened.wait(FLOOD_CONNECTIONS * 0.5)
    while flood.is_alive():
        answers.append(checker.call(lambda: _ask(url)))
        rss_max = max(rss_max, _rss_kb(proc.pid))
        time.sleep(POLL_S)
    flood.join()
    good = [seconds for status, seconds in answers if status == 200 and seconds <= ANSWER_BOUND_S]
    alive = proc.poll() is None and victim.units.get(edge_contract.HEALTH_UNIT) is proc
    ok = bool(box) and bool(answers) and len(good) == len(answers) and 0 < rss_max < MEMORY_LIMIT_KB and alive
    slowest = max((seconds for _status, seconds in answers), default=0.0)
    detail = (
        f"{box.get('held', 0)} of {FLOOD_CONNECTIONS} idle connections held {FLOOD_S:g} s "
        f"({box.get('reopened', 0)} reopened after the agent's timeout, {box.get('refused', 0)} not established); "
        f"{len(good)}/{len(answers)} checks answered 200 within {ANSWER_BOUND_S:g} s (slowest {slowest:.3f} s); "
        f"{'same process still running' if alive else 'the agent stopped'}"
    )
    return Check(name, ok, round(rss_max / 1024, 1), "MB RSS", detail)


def run_attacks(el: EdgeLab) -> list[Check]:
    return [agent_flood(el), *run_floods(el), *secrets.run_secrets(el)]
