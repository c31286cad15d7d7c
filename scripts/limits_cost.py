"""What the per-source limits cost on the normal path (a script, not a test).

    sudo .venv/bin/python scripts/limits_cost.py [--reps 5] [--connections 300]

Builds the Edge lab from tests/fixtures/Pulumi.lab.yaml and measures, from the visitor
through edge fsn, new connections per second, one after another: https to an ``http``
service through :443 (TLS handshake, GET, close), the ``bench`` tcp service (Traefik,
echo) and the ``mail`` forward service (kernel DNAT, echo).  Each rep runs once with the
edge's ruleset as pushed and once with every rule that uses a per-source set deleted
from it (the connection counts, the rate meters), then puts them back; the figures are
the median of the reps (and their spread: the lab shares the machine), and the cost is
the ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from components.lab.build import build
from components.lab.rendered import render_stack
from components.model import edge_contract

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lab import machine

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "tests" / "fixtures" / "Pulumi.lab.yaml"
LIMIT_SETS = ("@conn_", "@dns_", "@udp_", "@health_")


def _without_limits(node) -> Callable[[], None]:
    """Delete the rules that use a per-source set; a function that puts them back,
    each before the first rule after it that stayed."""
    table = edge_contract.NFT_TABLE
    restore: list[tuple[str, str, str]] = []
    for chain in ("input", "forward"):
        listing = node.run("nft", "-a", "list", "chain", "inet", table, chain).stdout
        rules = [line.strip().rpartition(" # handle ") for line in listing.splitlines() if " # handle " in line]
        for i, (rule, _, handle) in enumerate(rules):
            if any(s in rule for s in LIMIT_SETS):
                after = next(h for r, _, h in rules[i + 1 :] if not any(s in r for s in LIMIT_SETS))
                node.run("nft", "delete", "rule", "inet", table, chain, "handle", handle)
                restore.append((chain, after, rule))

    def put_back() -> None:
        for chain, after, rule in restore:
            node.run("nft", "insert", "rule", "inet", table, chain, "position", after, rule)

    return put_back


def _https_rate(ip: str, host: str, cafile: str, n: int) -> float:
    ctx = ssl.create_default_context(cafile=cafile)
    started = time.perf_counter()
    for _ in range(n):
        with socket.create_connection((ip, 443), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            while s.recv(65536):
                pass
    return n / (time.perf_counter() - started)


def _echo_rate(ip: str, port: int, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        with socket.create_connection((ip, port), timeout=5) as s:
            f = s.makefile("rb")
            f.readline()  # the lab's echo service greets first
            s.sendall(b"x" * 15 + b"\n")
            f.readline()
    return n / (time.perf_counter() - started)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--connections", type=int, default=300)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    n = args.connections
    with tempfile.TemporaryDirectory(prefix="cgnat-edge-limits-cost-") as tmp:
        rendered = render_stack(STACK, Path(tmp) / "render", project_file=ROOT / "Pulumi.yaml")
        with build(rendered) as el:
            edge = el.edges["fsn"]
            assert el.http_cert is not None
            cafile, ip = str(el.http_cert[0]), edge.public_ip
            paths: dict[str, Callable[[], float]] = {
                "https :443": lambda: _https_rate(ip, "blog.example.org", cafile, n),
                "tcp service (Traefik)": lambda: _echo_rate(ip, 5201, n),
                "forward service (DNAT)": lambda: _echo_rate(ip, 2525, n),
            }
            figures: dict[tuple[str, str], list[float]] = {}
            for rep in range(args.reps):
                # Alternating which goes first: the machine's load drifts between them.
                for state in ("with limits", "without")[:: 1 if rep % 2 == 0 else -1]:
                    put_back = _without_limits(edge.node) if state == "without" else None
                    try:
                        for name, measure in paths.items():
                            figures.setdefault((name, state), []).append(el.client.call(measure))
                    finally:
                        if put_back:
                            put_back()
    info = machine()
    print(f"# cgnat-edge limits cost {info['date']}: {info['nproc']} x {info['cpu']}, kernel {info['kernel']}")
    print(f"# Traefik {info['traefik']}; median of {args.reps} reps x {n} sequential connections, new ones per second")
    print(f"{'path':<24} {'with limits (min-max)':>22} {'without (min-max)':>18} {'ratio':>7}")
    for name in paths:
        runs = [figures[(name, s)] for s in ("with limits", "without")]
        with_, without = (statistics.median(r) for r in runs)
        spread = [f"{statistics.median(r):.0f} ({min(r):.0f}-{max(r):.0f})" for r in runs]
        print(f"{name:<24} {spread[0]:>22} {spread[1]:>18} {with_ / without:>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
