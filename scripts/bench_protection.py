"""Benchmark of protection on the data path (a script, not a test): what the filters cost.

    sudo .venv/bin/python scripts/bench_protection.py [--rounds 6] [--conns 300] [--prefixes 40000] [--bans 10000]

Builds the Edge lab from tests/fixtures/Pulumi.lab.yaml, then loads on edge ``fsn``
a full-size country list for the stack's denied country (``--prefixes`` IPv4 ranges
and a quarter as many IPv6 prefixes, through the edge's own loader from the lab's
mirror) and starts CrowdSec (Local API, agent, nftables bouncer) with ``--bans``
decisions imported by ``cscli decisions import``.  The generated ranges avoid the
lab's documentation prefixes, so no lab packet is ever sent to them; they only fill
the sets.  Then, alternating rounds with protection on and off (off: the country
chain's rules flushed and the bouncer stopped, its tables gone), the visitor opens
``--conns`` new TCP connections one after another to the ``git-ssh`` tcp service
(connect, home's echo greeting through the tunnel, close) and the figures are:

* connections per second, on / off (median of the rounds): goal >= 0.95;
* added p50 connection latency (on minus off): goal <= 0.2 ms.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from components.lab import protection as protection_lab
from components.lab.build import build
from components.lab.rendered import render_stack
from components.model import edge_contract
from components.renderers import protection

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "tests" / "fixtures" / "Pulumi.lab.yaml"
SERVICE_PORT = 2222

CLIENT = r"""
import json, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = []
start = time.perf_counter()
for i in range(n):
    t = time.perf_counter()
    with socket.create_connection((host, port), timeout=5) as s:
        data = b""
        while b"\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("closed early")
            data += chunk
    times.append((time.perf_counter() - t) * 1000)
print(json.dumps({"seconds": time.perf_counter() - start, "times": times}))
"""

AVOID = [
    ipaddress.ip_network(n)
    for n in (
        *("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12"),
        *("192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24"),
    )
]


def country_ranges(count: int, seed: int = 15) -> dict[str, list[str]]:
    """``count`` IPv4 /24s (spread over the unicast space, clear of the lab's and the
    special ranges) and count/4 IPv6 /48s: the size of a large country's list."""
    rng = random.Random(seed)
    v4: set[int] = set()
    while len(v4) < count:
        block = rng.randrange(1 << 16, 224 << 16)
        net = ipaddress.IPv4Network((block << 8, 24))
        if not any(net.overlaps(a) for a in AVOID):
            v4.add(block)
    v6 = {rng.randrange(0x2A00 << 32, 0x2C00 << 32) for _ in range(count // 4)}
    return {
        "v4": [f"{ipaddress.IPv4Address(b << 8)}/24" for b in sorted(v4)],
        "v6": [f"{ipaddress.IPv6Address(b << 80)}/48" for b in sorted(v6)],
    }


def bans(count: int) -> str:
    """CSV for ``cscli decisions import``: addresses of 198.18.0.0/15 (benchmarking space)."""
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    return "duration,scope,value\n" + "".join(f"24h,ip,{ipaddress.IPv4Address(base + 1 + i)}\n" for i in range(count))


def settle(count, want: int, timeout: float = 300) -> int:
    """``count()`` once it reaches ``want`` or has not grown for 10 s."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = count()
        if n >= want:
            return n
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > 10:
            return n
        time.sleep(1)
    return last


def measure(el, edge, n: int) -> dict:
    done = el.client.run(sys.executable, "-c", CLIENT, edge.public_ip, str(SERVICE_PORT), str(n), timeout=600)
    r = json.loads(done.stdout)
    times = sorted(r["times"])
    return {"cps": n / r["seconds"], "p50": times[len(times) // 2]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--conns", type=int, default=300)
    ap.add_argument("--prefixes", type=int, default=40000)
    ap.add_argument("--bans", type=int, default=10000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    with tempfile.TemporaryDirectory(prefix="cgnat-edge-bench-protect-") as tmp:
        rendered = render_stack(STACK, Path(tmp) / "render", project_file=ROOT / "Pulumi.yaml")
        cfg = rendered.cfg
        country = cfg.protection.geo.deny[0]
        with build(rendered) as el:
            edge = el.edges["fsn"]
            mirror = protection_lab.Mirror(el, cfg.protection.geo_sources[0])
            ranges = country_ranges(args.prefixes)
            mirror.publish(protection_lab.rir_file({country: ranges["v4"] + ranges["v6"]}))
            t0 = time.monotonic()
            edge.fire_timer(edge_contract.GEO_UNIT)
            load_s = time.monotonic() - t0
            status = json.loads(edge.read(edge_contract.GEO_STATUS))
            pids = protection_lab.start_crowdsec(el)
            t0 = time.monotonic()
            lines = bans(args.bans).splitlines(keepends=True)
            for i in range(1, len(lines), 500):  # SQLite refuses large batches ("database is locked")
                csv = edge.work / f"bans-{i}.csv"
                csv.write_text(lines[0] + "".join(lines[i : i + 500]))
                for _ in range(10):
                    if edge.node.run("cscli", "decisions", "import", "-i", str(csv), check=False).returncode == 0:
                        break
                    time.sleep(2)
                else:
                    raise SystemExit(f"cscli decisions import kept failing for {csv}")

            def elements() -> int:
                done = edge.node.run("nft", "-j", "list", "set", *protection.CROWDSEC_SETS[0][:3], check=False)
                if done.returncode != 0:
                    return 0  # the bouncer has not made its table yet
                out = done.stdout
                sets = [x["set"] for x in json.loads(out)["nftables"] if "set" in x]
                return len(sets[0].get("elem", [])) if sets else 0

            loaded = settle(elements, args.bans)
            ban_s = time.monotonic() - t0
            geo_rules = edge.node.run("nft", "list", "chain", "inet", "cgnat_edge", "geo").stdout
            rss = {k: round(protection_lab.rss_mb(pid), 1) for k, pid in pids["fsn"].items()}

            def protection_off() -> None:
                edge.node.run("nft", "flush", "chain", "inet", "cgnat_edge", "geo")
                for table in protection.CROWDSEC_TABLES:
                    edge.node.run("nft", "delete", "table", *table.split(), check=False)

            bouncer = {"pid": pids["fsn"]["bouncer"]}

            def protection_on() -> None:
                # The ruleset again (the geo chain; the sets from the loader's cache), and a
                # fresh bouncer, which loads every ban from the Local API as it starts.
                os.kill(bouncer["pid"], signal.SIGTERM)
                os.waitpid(bouncer["pid"], 0)
                edge.node.run("nft", "-f", "/etc/nftables.conf")
                config = edge.work / "crowdsec" / "bouncer.yaml"
                proc = edge.node.spawn("crowdsec-firewall-bouncer", "-c", str(config), log=edge.work / "bouncer2.out")
                bouncer["pid"] = proc.pid
                settle(elements, loaded)

            results: dict[str, list[dict]] = {"on": [], "off": []}
            measure(el, edge, 50)  # warm-up
            for i in range(args.rounds):
                for state in ("on", "off") if i % 2 == 0 else ("off", "on"):
                    (protection_on if state == "on" else protection_off)()
                    results[state].append(measure(el, edge, args.conns))
    cps = {s: statistics.median(r["cps"] for r in v) for s, v in results.items()}
    p50 = {s: statistics.median(r["p50"] for r in v) for s, v in results.items()}
    ratio = cps["on"] / cps["off"]
    added = p50["on"] - p50["off"]
    print(f"# cgnat-edge protection benchmark {time.strftime('%Y-%m-%d')}: {os.cpu_count()} CPUs, {os.uname().release}")
    print(
        f"# country {country}: {status.get('counts')} ranges loaded in {load_s:.1f} s "
        f"(fetch, MD5, parse, one transaction); {loaded} of {args.bans} imported CrowdSec bans in the bouncer's set "
        f"after {ban_s:.1f} s"
    )
    print("# the edge's country chain:\n# " + "\n# ".join(geo_rules.strip().splitlines()))
    print(f"# RSS on the edge: {json.dumps(rss)} MB")
    print(f"# {args.rounds} rounds x {args.conns} sequential TCP connections to the tcp service :{SERVICE_PORT}")
    print(f"{'':<24} {'conn/s':>8} {'p50 ms':>8}")
    for state in ("off", "on"):
        print(f"protection {state:<13} {cps[state]:>8.1f} {p50[state]:>8.3f}")
    print(f"conn/s on / off: {ratio:.3f} (goal >= 0.95: {'met' if ratio >= 0.95 else 'MISSED'})")
    print(f"added p50: {added:.3f} ms (goal <= 0.2 ms: {'met' if added <= 0.2 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
