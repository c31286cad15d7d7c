"""Benchmark of edge-served DNS (a script, not a test): what one edge's nameserver
answers, and what it costs in memory.

    sudo .venv/bin/python scripts/bench_dns.py [--seconds 10] [--clients 4] [--reps 3]

Builds the Edge lab from tests/fixtures/Pulumi.lab.yaml (dnsMode edges: each edge runs
PowerDNS from its rendered pdns.conf and zone, and the health agent; every nameserver
checks every edge's agent every second while the benchmark runs) and prints, per rep
and as the median:

* queries per second of one edge's PowerDNS (``dnsperf``, Debian's package, asking the
  edge's public address from the edge itself: the loopback path, so the per-source
  rate limit of udp/53 in nftables - a visitor's cap, not the server's - does not cut
  the figure); the questions are the stack's names, A and AAAA;
* resident memory (VmRSS, and the high-water mark VmHWM) of that PowerDNS and of the
  edge's health agent, read from /proc after the load.

Targets: >= 5,000 qps, PowerDNS RSS <= 64 MB.  Installs dnsperf with apt-get when missing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from components.lab import failover
from components.lab.build import build
from components.lab.rendered import render_stack
from components.model import edge_contract
from components.renderers import edge_dns

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "tests" / "fixtures" / "Pulumi.lab.yaml"


def _rss_kb(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return rss, hwm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces)")
    if shutil.which("dnsperf") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "dnsperf"], check=True)

    with tempfile.TemporaryDirectory(prefix="bench-dns-") as tmp:
        rendered = render_stack(STACK, Path(tmp) / "render", project_file=ROOT / "Pulumi.yaml")
        with build(rendered) as el:
            faults = failover.Faults(el)
            faults.steady()  # every nameserver answers every edge: the checks run
            edge = el.edges[faults.by_index[0]]
            queries = Path(tmp) / "queries.txt"
            queries.write_text(
                "".join(f"{name} {t}\n" for _h, name, _c in edge_dns.names(el.cfg) for t in ("A", "AAAA"))
            )
            qps = []
            for _ in range(args.reps):
                done = edge.node.run(
                    "dnsperf", "-s", edge.public_ip, "-d", str(queries), "-l", str(args.seconds),
                    "-c", str(args.clients), "-Q", "100000", "-q", "500",
                )  # fmt: skip
                match = re.search(r"Queries per second:\s+([\d.]+)", done.stdout)
                lost = re.search(r"Queries lost:\s+(\d+)", done.stdout)
                qps.append(float(match.group(1)) if match else 0.0)
                print(f"dnsperf: {qps[-1]:.0f} qps, lost {lost.group(1) if lost else '?'}", flush=True)
            pdns = edge.units[edge_contract.PDNS_UNIT].pid
            agent = edge.units[edge_contract.HEALTH_UNIT].pid
            pdns_rss, pdns_hwm = _rss_kb(pdns)
            agent_rss, agent_hwm = _rss_kb(agent)
            steady_after, _ = failover.measure(
                lambda: faults.all_answer(faults.by_index, faults.everyone), time.monotonic()
            )

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.machine(),
    )
    print()
    print(f"date:    {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}")
    print(
        f"command: sudo .venv/bin/python scripts/bench_dns.py --seconds {args.seconds} --clients {args.clients} --reps {args.reps}"
    )
    print(f"PowerDNS qps (median of {args.reps}): {statistics.median(qps):.0f}  (target >= 5000)")
    print(f"PowerDNS RSS after load: {pdns_rss / 1024:.1f} MB, peak {pdns_hwm / 1024:.1f} MB  (target <= 64 MB)")
    print(f"health agent RSS: {agent_rss / 1024:.1f} MB, peak {agent_hwm / 1024:.1f} MB")
    print(f"answers still health-checked after the load: {'yes' if steady_after is not None else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
