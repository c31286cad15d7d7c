"""Benchmark of the lab's data path (a script, not a test): what the edge costs.

    uv run --extra lab python scripts/bench_lab.py [--reps 5] [--seconds 5] [--requests 300]

Run as root (it builds network namespaces).  Builds the Edge lab from tests/fixtures/Pulumi.lab.yaml (iperf3 stands in for home's
``bench`` target) and prints the median of ``--reps`` runs of:

* throughput (iperf3, one TCP stream, both directions):
  raw veth (home router -> server, one kernel hop), WireGuard only (edge -> home
  target through the tunnel), end to end through Traefik (visitor -> edge's ``bench``
  TCP router -> tunnel -> home), and through an nftables DNAT on the edge instead of
  Traefik (kernel forwarding; the reference for what a proxy in user space costs);
* latency of small HTTPS requests to home's passthrough service (new connection,
  TLS handshake, GET, answer): straight over WireGuard from the edge vs through the
  edge from the visitor; p50 and p99;
* the ratios the project aims for: end-to-end >= 0.85 x WireGuard-only throughput,
  <= 1 ms added p50 latency.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from components.lab.build import build
from components.lab.edge import TRAEFIK_BINARY
from components.lab.netns import wait_for
from components.lab.rendered import render_stack

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "tests" / "fixtures" / "Pulumi.lab.yaml"
IPERF_TARGET = ("192.0.2.30", 5201)
DNAT_PORT = 15201
DNAT_HTTPS_PORT = 15443
HTTPS_TARGET = ("192.0.2.10", 443)

LATENCY_CLIENT = r"""
import json, socket, ssl, struct, sys, time
host, port, sni, n, proxy = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
# A LOCAL PROXY v2 header: what home expects first when nobody proxies for the client.
local = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00]) + struct.pack("!H", 0)
times = []
for i in range(n + 5):
    t = time.perf_counter()
    with socket.create_connection((host, port), timeout=5) as raw:
        if proxy:
            raw.sendall(local)
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            tls.sendall(f"GET /bench HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
            while tls.recv(65536):
                pass
    if i >= 5:  # the first few warm caches and ARP
        times.append((time.perf_counter() - t) * 1000)
print(json.dumps(times))
"""


def iperf(node, host: str, port: int, seconds: int, reverse: bool) -> float:
    argv = ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-O", "1", "-J"] + (["-R"] if reverse else [])
    for attempt in range(3):
        report = json.loads(node.run(*argv, timeout=seconds + 30, check=False).stdout or "{}")
        if "sum_received" in report.get("end", {}):
            return report["end"]["sum_received"]["bits_per_second"] / 1e9
        # iperf3 serves one test at a time; a run that overlaps the server's cleanup
        # of the previous one is refused ("the server is busy"): try again.
        print(f"# iperf3 {host}:{port} attempt {attempt + 1}: {report.get('error', 'no report')}", file=sys.stderr)
        time.sleep(1)
    raise RuntimeError(f"iperf3 to {host}:{port} failed three times")


def latency(el, node, host: str, port: int, n: int, proxy: bool) -> list[float]:
    done = node.run(
        sys.executable,
        "-c",
        LATENCY_CLIENT,
        host,
        str(port),
        "cloud.example.org",
        str(n),
        "1" if proxy else "0",
        timeout=300,
    )
    return json.loads(done.stdout)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def add_dnat(edge, target: tuple[str, int], https: tuple[str, int]) -> None:
    """Kernel forwarding as the reference: DNAT on the edge straight into the tunnel.
    The edge's own ruleset forwards nothing, so DNATed packets get an accept rule."""
    edge.node.forward()
    edge.node.run(
        "nft",
        "-f",
        "-",
        input=f"""table ip lab_bench {{
  chain prerouting {{
    type nat hook prerouting priority dstnat;
    tcp dport {DNAT_PORT} dnat to {target[0]}:{target[1]}
    tcp dport {DNAT_HTTPS_PORT} dnat to {https[0]}:{https[1]}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat;
    oifname "wg0" masquerade
  }}
}}
""",
    )
    edge.node.run("nft", "insert", "rule", "inet", "cgnat_edge", "forward", "ct", "status", "dnat", "accept")


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    wg_go = subprocess.run(["wireguard-go", "--version"], capture_output=True, text=True).stdout.strip().split("\n")[0]
    traefik_v = subprocess.run([str(TRAEFIK_BINARY), "version"], capture_output=True, text=True).stdout
    traefik_v = next((line.split()[-1] for line in traefik_v.splitlines() if line.startswith("Version")), "?")
    return {
        "date": datetime.date.today().isoformat(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "wireguard-go": wg_go,
        "traefik": traefik_v,
        "iperf3": subprocess.run(["iperf3", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--mtu", type=int, help="override the stack's tunnelMtu")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("iperf3") is None:
        raise SystemExit("needs root and iperf3")

    overrides = {"tunnelMtu": args.mtu} if args.mtu else None
    with tempfile.TemporaryDirectory(prefix="cgnat-edge-bench-") as tmp:
        rendered = render_stack(
            STACK, Path(tmp) / "render", project_file=ROOT / "Pulumi.yaml", config_overrides=overrides
        )
        target = f"{IPERF_TARGET[0]}:{IPERF_TARGET[1]}"
        with build(rendered, exclude_targets=[target]) as el:
            edge = el.edges["fsn"]
            el.server.spawn("iperf3", "-s", "-B", IPERF_TARGET[0], "-p", str(IPERF_TARGET[1]))
            wait_for(lambda: el.server.run("ss", "-ltn", check=False).stdout.count(target) > 0, message="iperf3 server")
            add_dnat(edge, IPERF_TARGET, HTTPS_TARGET)
            paths = {
                "raw veth": (el.home, IPERF_TARGET[0], IPERF_TARGET[1]),
                "WireGuard only": (edge.node, IPERF_TARGET[0], IPERF_TARGET[1]),
                "Traefik (edge TCP router)": (el.client, edge.public_ip, 5201),
                "nftables DNAT (kernel)": (el.client, edge.public_ip, DNAT_PORT),
            }
            throughput: dict[str, dict[str, list[float]]] = {p: {"upload": [], "download": []} for p in paths}
            for _ in range(args.reps):
                for name, (node, host, port) in paths.items():
                    for direction in ("upload", "download"):
                        throughput[name][direction].append(
                            iperf(node, host, port, args.seconds, reverse=direction == "download")
                        )
            lat: dict[str, list[float]] = {
                "direct over WireGuard": [],
                "through the edge": [],
                "through nftables DNAT": [],
            }
            n = args.requests // args.reps
            for _ in range(args.reps):
                lat["direct over WireGuard"] += latency(el, edge.node, HTTPS_TARGET[0], HTTPS_TARGET[1], n, proxy=True)
                lat["through the edge"] += latency(el, el.client, edge.public_ip, 443, n, proxy=False)
                # DNAT sends no PROXY header: the client sends home the LOCAL one itself.
                lat["through nftables DNAT"] += latency(el, el.client, edge.public_ip, DNAT_HTTPS_PORT, n, proxy=True)

    med = {p: {d: statistics.median(v) for d, v in dirs.items()} for p, dirs in throughput.items()}
    info = machine()
    print(f"# cgnat-edge lab benchmark {info['date']}: {info['nproc']} x {info['cpu']}, kernel {info['kernel']}")
    print(
        f"# {info['wireguard-go']}; Traefik {info['traefik']}; {info['iperf3']}; tunnel MTU {rendered.cfg.tunnel.mtu}; "
        f"median of {args.reps} runs x {args.seconds}s, one TCP stream"
    )
    print(f"{'path':<28} {'upload Gbit/s':>14} {'download Gbit/s':>16}")
    for p, d in med.items():
        print(f"{p:<28} {d['upload']:>14.3f} {d['download']:>16.3f}")
    print()
    stats = {k: {"p50": percentile(v, 50), "p99": percentile(v, 99), "n": len(v)} for k, v in lat.items()}
    print(f"{'HTTPS request (passthrough)':<28} {'p50 ms':>8} {'p99 ms':>8} {'n':>5}")
    for k, s in stats.items():
        print(f"{k:<28} {s['p50']:>8.3f} {s['p99']:>8.3f} {s['n']:>5}")
    print()
    wg = med["WireGuard only"]
    e2e = med["Traefik (edge TCP router)"]
    dnat = med["nftables DNAT (kernel)"]
    ratios = {
        "Traefik / WireGuard-only upload": e2e["upload"] / wg["upload"],
        "Traefik / WireGuard-only download": e2e["download"] / wg["download"],
        "DNAT / WireGuard-only upload": dnat["upload"] / wg["upload"],
        "DNAT / WireGuard-only download": dnat["download"] / wg["download"],
        "Traefik / DNAT download": e2e["download"] / dnat["download"],
        "WireGuard-only / raw veth download": wg["download"] / med["raw veth"]["download"],
    }
    for k, v in ratios.items():
        print(f"{k:<40} {v:6.2f}")
    added = stats["through the edge"]["p50"] - stats["direct over WireGuard"]["p50"]
    print(f"{'added p50 latency through the edge':<40} {added:6.3f} ms")
    print(
        f"{'added p50 latency through DNAT':<40} {stats['through nftables DNAT']['p50'] - stats['direct over WireGuard']['p50']:6.3f} ms"
    )
    goal_tp = min(ratios["Traefik / WireGuard-only upload"], ratios["Traefik / WireGuard-only download"]) >= 0.85
    print(
        f"goal throughput >= 0.85 x WireGuard-only: {'met' if goal_tp else 'MISSED'}; goal added p50 <= 1 ms: {'met' if added <= 1 else 'MISSED'}"
    )
    if args.json:
        print(
            json.dumps(
                {"machine": info, "throughput_gbps": med, "latency_ms": stats, "ratios": ratios, "added_p50_ms": added}
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
