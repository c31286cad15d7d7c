"""Benchmark of service mode ``forward`` against Traefik (a script, not a test).

    sudo .venv/bin/python scripts/bench_forward.py [--reps 3] [--seconds 5] [--connections 300]

Builds the Edge lab from tests/fixtures/Pulumi.lab.yaml plus two services on the same
home targets: ``fwd-bench`` (forward, tcp 15201 -> iperf3) and ``echo-traefik`` (Traefik
tcp 2526 -> the echo server behind the lab's ``mail`` forward service).  In one run it
measures, through edge fsn, the median of ``--reps`` runs of:

* throughput (iperf3, one TCP stream, both directions): WireGuard only (the edge itself
  -> home target through the tunnel), Traefik's tcp router, forward (kernel DNAT);
* connection rate: sequential TCP connect, 16-byte echo, close, per second, over the
  same three paths (WireGuard only / Traefik 2526 / forward 2525);

and prints both as ratios to WireGuard only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

from components.lab.build import build
from components.lab.netns import wait_for
from components.lab.rendered import render_stack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lab import iperf, machine

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "tests" / "fixtures" / "Pulumi.lab.yaml"
IPERF_TARGET = ("192.0.2.30", 5201)
FORWARD_IPERF_PORT = 15201
ECHO_TARGET = ("192.0.2.30", 25)
FORWARD_ECHO_PORT = 2525
TRAEFIK_ECHO_PORT = 2526

CONNECT_CLIENT = r"""
import json, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(5):  # warm ARP and conntrack
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"x" * 16); s.recv(65536)
t = time.perf_counter()
for _ in range(n):
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"x" * 16)
        data = b""
        while b"\n" not in data or len(data.split(b"\n", 1)[1]) < 16:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
print(json.dumps(n / (time.perf_counter() - t)))
"""


def connection_rate(node, host: str, port: int, n: int) -> float:
    done = node.run(sys.executable, "-c", CONNECT_CLIENT, host, str(port), str(n), timeout=300)
    return json.loads(done.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=300)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("iperf3") is None:
        raise SystemExit("needs root and iperf3")

    services = yaml.safe_load(STACK.read_text())["config"]["cgnat-edge:services"]
    services += [
        {
            "name": "fwd-bench",
            "mode": "forward",
            "protocol": "tcp",
            "port": FORWARD_IPERF_PORT,
            "target": f"{IPERF_TARGET[0]}:{IPERF_TARGET[1]}",
        },
        {"name": "echo-traefik", "mode": "tcp", "port": TRAEFIK_ECHO_PORT, "target": f"{ECHO_TARGET[0]}:25"},
    ]
    with tempfile.TemporaryDirectory(prefix="cgnat-edge-bench-forward-") as tmp:
        rendered = render_stack(
            STACK, Path(tmp) / "render", project_file=ROOT / "Pulumi.yaml", config_overrides={"services": services}
        )
        target = f"{IPERF_TARGET[0]}:{IPERF_TARGET[1]}"
        with build(rendered, exclude_targets=[target]) as el:
            edge = el.edges["fsn"]
            el.server.spawn("iperf3", "-s", "-B", IPERF_TARGET[0], "-p", str(IPERF_TARGET[1]))
            wait_for(lambda: el.server.run("ss", "-ltn", check=False).stdout.count(target) > 0, message="iperf3 server")
            paths = {
                "WireGuard only": (edge.node, IPERF_TARGET[0], IPERF_TARGET[1], ECHO_TARGET[0], ECHO_TARGET[1]),
                "Traefik tcp": (el.client, edge.public_ip, 5201, edge.public_ip, TRAEFIK_ECHO_PORT),
                "forward (DNAT)": (el.client, edge.public_ip, FORWARD_IPERF_PORT, edge.public_ip, FORWARD_ECHO_PORT),
            }
            tput: dict[str, dict[str, list[float]]] = {p: {"upload": [], "download": [], "conn/s": []} for p in paths}
            for _ in range(args.reps):
                for name, (node, host, port, echo_host, echo_port) in paths.items():
                    for direction in ("upload", "download"):
                        tput[name][direction].append(
                            iperf(node, host, port, args.seconds, reverse=direction == "download")
                        )
                    tput[name]["conn/s"].append(connection_rate(node, echo_host, echo_port, args.connections))

    med = {p: {k: statistics.median(v) for k, v in d.items()} for p, d in tput.items()}
    info = machine()
    print(f"# cgnat-edge forward benchmark {info['date']}: {info['nproc']} x {info['cpu']}, kernel {info['kernel']}")
    print(
        f"# {info['wireguard-go']}; Traefik {info['traefik']}; {info['iperf3']}; "
        f"median of {args.reps} runs x {args.seconds}s (one TCP stream) and x {args.connections} connections"
    )
    print(f"{'path':<18} {'upload Gbit/s':>14} {'download Gbit/s':>16} {'conn/s':>8}")
    for p, d in med.items():
        print(f"{p:<18} {d['upload']:>14.3f} {d['download']:>16.3f} {d['conn/s']:>8.0f}")
    print()
    wg = med["WireGuard only"]
    ratios = {
        f"{p} / WireGuard only {k}": med[p][k] / wg[k]
        for p in ("Traefik tcp", "forward (DNAT)")
        for k in ("upload", "download", "conn/s")
    }
    for k, v in ratios.items():
        print(f"{k:<44} {v:6.2f}")
    if args.json:
        print(json.dumps({"machine": info, "median": med, "ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
