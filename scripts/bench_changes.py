"""Benchmark of day-2 changes in the Edge lab (a script, not a test).

    sudo .venv/bin/python scripts/bench_changes.py [--edges 3] [--reps 3]

Builds the lab from tests/fixtures/Pulumi.lab.yaml with ``--edges`` edges, then
pushes, one edge at a time as ``pulumi up`` does (push, verify, readiness over SSH),
``--reps`` times each:

* a dynamic change (a service's target moves): Traefik reloads its file, no handover;
* a static change (a new tcp and a new udp port, then removed again): nftables
  reloaded and a Traefik handover on every edge;

and prints per change kind the time for the whole fleet to converge (first push
started to last edge verified) and per edge the push time; a prober sends requests to
every service through every edge all along and counts the failed ones per edge, split
by whether that edge was being changed at the time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from components.lab import changes  # noqa: E402
from components.lab.build import build  # noqa: E402
from components.lab.rendered import render_stack  # noqa: E402
from components.lab.rollout import Rollout, rollout  # noqa: E402

STACK = ROOT / "tests" / "fixtures" / "Pulumi.lab.yaml"
EXTRA_EDGES = [
    {"name": "hel", "provider": "hetzner", "location": "hel1"},
    {"name": "nyc", "provider": "digitalocean", "location": "nyc3"},
    {"name": "nbg", "provider": "hetzner", "location": "nbg1"},
]
STATIC_EXTRA = [
    {"name": "mqtt", "mode": "tcp", "port": 8883, "target": "192.0.2.10:8883"},
    {"name": "voice", "mode": "udp", "port": 9987, "target": "192.0.2.30:9987"},
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edges", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    config = yaml.safe_load(STACK.read_text())["config"]
    edges = [{**e, "index": i} for i, e in enumerate((config["cgnat-edge:edges"] + EXTRA_EDGES)[: args.edges], 1)]
    services = config["cgnat-edge:services"]
    with tempfile.TemporaryDirectory(prefix="cgnat-edge-bench-") as tmp:
        first = render_stack(
            STACK, Path(tmp) / "render", project_file=ROOT / "Pulumi.yaml", config_overrides={"edges": edges}
        )
        with build(first) as el:
            stack = changes.Stack(el, STACK, ROOT / "Pulumi.yaml", Path(tmp))
            stack.values["edges"] = edges
            variants = {
                "dynamic": [
                    [dict(s, target="192.0.2.10:2023") if s["name"] == "git-ssh" else s for s in services],
                    services,
                ],
                "static": [services + STATIC_EXTRA, services],
            }
            results: dict[str, list[Rollout]] = {k: [] for k in variants}
            for _ in range(args.reps):
                for kind, steps in variants.items():
                    for step in steps:
                        rendered = stack.render(services=step)
                        el.start_home_services(rendered)
                        # Home lets the edges reach old and new targets while they switch
                        # (see docs/home.md, "Home side"), then takes the new filter.
                        el.lift_home_filters()
                        r = rollout(el, rendered)
                        el.apply_home_filters(rendered)
                        if not r.ok:
                            print(r.failure(), file=sys.stderr)
                            return 1
                        el.rendered = rendered
                        results[kind].append(r)
    cpu = next(
        (x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model")),
        platform.processor(),
    )
    print(
        f"# cgnat-edge change benchmark {datetime.date.today().isoformat()}: {os.cpu_count()} x {cpu}, "
        f"kernel {platform.release()}; {args.edges} edges, {args.reps} x each change and its undo"
    )
    print(
        f"{'change':<10} {'fleet converged s (median, max)':>32} {'per edge s':>11} {'probes':>8} "
        f"{'slowest answer on the changed edge ms':>38}  failed requests"
    )
    names = [e["name"] for e in edges]
    for kind, runs in results.items():
        fleet = [r.seconds for r in runs]
        per_edge = [w[1] - w[0] for r in runs for w in r.windows.values()]
        failed = {e: (sum(r.failed_changed[e] for r in runs), sum(r.failed_unaffected[e] for r in runs)) for e in names}
        lost = ", ".join(f"{e}: {c} while changed / {u} otherwise" for e, (c, u) in failed.items())
        slowest = max(max(r.slowest_ms.values()) for r in runs)
        print(
            f"{kind:<10} {statistics.median(fleet):>22.1f}, {max(fleet):>7.1f} {statistics.median(per_edge):>11.1f} "
            f"{sum(r.requests for r in runs):>8} {slowest:>38.0f}  {lost}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
