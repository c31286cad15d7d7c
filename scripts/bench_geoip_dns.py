"""Benchmark of nearest-first answers (``dnsGeoipDatabase``), a script, not a test:
what the GeoIP lookup and the distance sort cost one edge's PowerDNS.

    sudo PYTHONPATH=. .venv/bin/python scripts/bench_geoip_dns.py [--seconds 10] [--reps 3]

Serves the example dev stack's rendered zone (one edge's view) with a real
``pdns_server`` in a network namespace, stand-in health agents saying every edge is
up, twice: without a database (today's self-first answers) and with a small City MMDB
(three documentation prefixes), asking ``dnsperf`` with an EDNS Client Subnet option in
the database.  Prints queries per second (median of the reps) and PowerDNS's resident
memory for both.  The small database keeps the figure about the lookup path; a real
City database adds its size as mapped (page-cache) memory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.server
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import dns.edns
import dns.message
import dns.query

from components.config import stack
from components.lab.netns import Lab, wait_for
from components.model import edge_contract
from components.model.deployed import DeployedEdge
from components.renderers import edge_dns
from tests import mmdb

ROOT = Path(__file__).resolve().parent.parent
PORT = 5302
ADDRESSES = ["203.0.113.10", "198.51.100.20", "192.0.2.30", "203.0.113.40"]


def _ecs_option(prefix: str) -> str:
    """dnsperf's ``-E code:hexvalue`` for an ECS option (RFC 7871) of a /24."""
    octets = [int(o) for o in prefix.split(".")[:3]]
    return "8:" + "0001" + "18" + "00" + "".join(f"{o:02x}" for o in octets)


def _agent(node, address: str) -> http.server.HTTPServer:
    class Up(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = node.call(lambda: http.server.ThreadingHTTPServer((address, edge_dns.HEALTH_PORT), Up))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _answers(node, name: str) -> bool:
    sock = node.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.setblocking(False)
    with sock, contextlib.suppress(Exception):
        return bool(
            dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=PORT, timeout=1, sock=sock).answer
        )
    return False


def _run(node, tmp: Path, cfg, seconds: int, reps: int, ecs: str | None) -> tuple[float, float]:
    fleet = [DeployedEdge(e, ADDRESSES[i % len(ADDRESSES)], None) for i, e in enumerate(cfg.edges)]
    (tmp / "zone.db").write_text(edge_dns.zone(cfg, cfg.edges[0], fleet))
    (tmp / "named.conf").write_text(edge_dns.named_conf(cfg).replace(edge_contract.PDNS_ZONE, str(tmp / "zone.db")))
    (tmp / "geoip-zones.yaml").write_text(edge_dns.geoip_zones())
    conf = (
        edge_dns.pdns_conf(cfg)
        .replace(edge_dns.NAMED_CONF_PATH, str(tmp / "named.conf"))
        .replace(edge_dns.GEOIP_PATH, cfg.dns.geoip_database or edge_dns.GEOIP_PATH)
        .replace(edge_dns.GEOIP_ZONES_PATH, str(tmp / "geoip-zones.yaml"))
        .replace("local-address=0.0.0.0, ::", "local-address=127.0.0.1")
        .replace("local-port=53", f"local-port={PORT}")
    )
    (tmp / "pdns.conf").write_text(conf)
    proc = node.spawn(
        "pdns_server", f"--config-dir={tmp}", f"--socket-dir={tmp}", "--daemon=no", "--guardian=no",
        "--disable-syslog", log=tmp / "pdns.log",
    )  # fmt: skip
    try:
        queries = tmp / "queries.txt"
        queries.write_text("".join(f"{name} A\n" for _h, name, _c in edge_dns.names(cfg)))
        wait_for(lambda: _answers(node, edge_dns.names(cfg)[0][1]), timeout=20, message="pdns serving")
        time.sleep(3)  # the health checks have reported
        name = edge_dns.names(cfg)[0][1]
        options: list[dns.edns.Option] = [dns.edns.ECSOption(ecs, 24)] if ecs else []
        query = dns.message.make_query(name, "A", use_edns=0, options=options)
        sock = node.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        sock.setblocking(False)
        with sock:
            answer = dns.query.udp(query, "127.0.0.1", port=PORT, timeout=2, sock=sock).answer
        print(f"  {name} (ECS {ecs or 'none'}): {[r.to_text() for rrset in answer for r in rrset]}", flush=True)
        qps = []
        for _ in range(reps):
            argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(PORT), "-d", str(queries), "-l", str(seconds)]
            argv += ["-c", "4", "-Q", "100000", "-q", "500"] + (["-E", _ecs_option(ecs)] if ecs else [])
            done = node.run(*argv)
            match = re.search(r"Queries per second:\s+([\d.]+)", done.stdout)
            codes = re.search(r"Response codes:\s+(.*)", done.stdout)
            qps.append(float(match.group(1)) if match else 0.0)
            print(f"  dnsperf: {qps[-1]:.0f} qps, response codes {codes.group(1) if codes else '?'}", flush=True)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
        return statistics.median(qps), rss
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces)")
    with tempfile.TemporaryDirectory(prefix="bench-geoip-") as tmp_dir:
        tmp = Path(tmp_dir)
        db = tmp / "city.mmdb"
        db.write_bytes(
            mmdb.write(
                {
                    "192.0.2.0/24": mmdb.city(48.14, 11.58),
                    "198.51.100.0/24": mmdb.city(51.92, 4.48),
                    "203.0.113.0/24": mmdb.city(50.08, 14.44),
                }
            )
        )
        loaded = stack.load(ROOT / "Pulumi.dev.yaml", overrides={"dnsGeoipDatabase": str(db)})
        plain = stack.load(ROOT / "Pulumi.dev.yaml").parse()
        geo = loaded.parse()
        results = {}
        with Lab() as lab:
            node = lab.node("dns")
            node.addresses("lo", [f"{a}/32" for a in ADDRESSES])
            agents = [_agent(node, a) for a in ADDRESSES]
            try:
                for label, cfg, ecs in (("self first (no database)", plain, None), ("nearest first (ECS)", geo, "198.51.100.0")):  # fmt: skip
                    print(label, flush=True)
                    (tmp / label[:4]).mkdir()
                    results[label] = _run(node, tmp / label[:4], cfg, args.seconds, args.reps, ecs)
            finally:
                for a in agents:
                    a.shutdown()
                    a.server_close()
    print()
    print(f"date:    {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}")
    print(
        f"command: sudo PYTHONPATH=. .venv/bin/python scripts/bench_geoip_dns.py --seconds {args.seconds} --reps {args.reps}"
    )
    for label, (qps, rss) in results.items():
        print(f"{label}: {qps:.0f} qps (median of {args.reps}), PowerDNS RSS {rss:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
