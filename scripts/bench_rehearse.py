"""How long the first-boot rehearsal takes, cold and cached (a script, not a test).

    sudo .venv/bin/python scripts/bench_rehearse.py [--stack dev] [--cache DIR]

Runs ``cgnat-edge rehearse`` twice on the stack: first with an empty cache folder
(debootstrap downloads and builds the Debian root, apt downloads the user-data's
packages), then again with that cache; prints both times, the per-edge boot times and
what the cache holds.  Without ``--cache`` the cold run uses a fresh temporary folder
(deleted at the end), so the machine's own cache is left alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.lab import rehearse  # noqa: E402


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _once(stack_file: Path, cache: Path) -> tuple[float, dict]:
    start = time.monotonic()
    ok, checks = rehearse.run(stack_file, cache=cache, log=lambda _m: None)
    took = time.monotonic() - start
    if not ok:
        raise SystemExit("rehearsal failed: " + "; ".join(c.name for c in checks if not c.ok))
    return took, {c.name: c.value for c in checks if c.name.endswith(":time") or c.name == "boot:root"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stack", default="dev")
    p.add_argument("--cache", help="cache folder to fill (default: a temporary one)")
    args = p.parse_args()
    stack_file = ROOT / f"Pulumi.{args.stack}.yaml"
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="cgnat-edge-bench-"))
    try:
        cold, cold_rows = _once(stack_file, cache)
        cached, cached_rows = _once(stack_file, cache)
        sizes = {p.name: _size(p) for p in sorted(cache.iterdir())}
    finally:
        if not args.cache:
            shutil.rmtree(cache, ignore_errors=True)
    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, shared")
    print(f"command: sudo .venv/bin/python scripts/bench_rehearse.py --stack {args.stack}")
    print(f"cold (empty cache): {cold:.0f} s  {json.dumps(cold_rows)}")
    print(f"cached:             {cached:.0f} s  {json.dumps(cached_rows)}")
    for name, size in sizes.items():
        print(f"cache {name}: {size / 2**20:.0f} MiB")
    print(f"cache total: {sum(sizes.values()) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
