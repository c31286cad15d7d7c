"""Print the size of the rendered cloud-config against Hetzner's 32 KiB limit.

    .venv/bin/python tests/measure_user_data.py

Figures for the example stack, for the example plus N generated services, and the
largest service count that still fits.  A figure, not a test: the test suite only
checks that the example stays well under the limit.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from components import bootstrap, config  # noqa: E402
from conftest import stack_raw  # noqa: E402


def wg_conf() -> str:
    key = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    # A full edge config: interface plus the home peer, the size the real renderer makes.
    return (
        "[Interface]\n"
        f"PrivateKey = {key}\n"
        "ListenPort = 51820\n"
        "Address = 10.254.0.1/30, fd12:3456:789a::1/126\n"
        "MTU = 1380\n\n"
        "[Peer]\n"
        "PublicKey = " + "A" * 43 + "=\n"
        "AllowedIPs = 10.254.0.2/32, fd12:3456:789a::2/128, 192.168.1.0/24\n"
    )


def with_services(raw: dict, extra: int) -> dict:
    """The example plus ``extra`` services mixing the four modes."""
    raw = copy.deepcopy(raw)
    for i in range(extra):
        mode = ("passthrough", "http", "tcp", "udp")[i % 4]
        svc: dict = {"name": f"svc{i}", "mode": mode, "target": f"192.168.1.{10 + i % 200}:{8000 + i}"}
        if mode in ("passthrough", "http"):
            svc["hostnames"] = [f"svc{i}.example.org"]
        else:
            svc["port"] = 30000 + i
        if mode == "http":
            svc["middlewares"] = {"rateLimit": {"average": 50, "burst": 100}, "securityHeaders": True}
        raw["services"].append(svc)
    return raw


def size(raw: dict, wg: str) -> tuple[int, str]:
    cfg = config.parse(raw)
    edge = cfg.edges[0]
    return len(bootstrap.user_data(cfg, edge, wg).encode()), edge.name


def main() -> None:
    base = stack_raw()
    wg = wg_conf()
    limit = bootstrap.USER_DATA_LIMIT
    n_example = len(base["services"])
    b, edge = size(base, wg)
    print(f"limit: {limit} bytes (Hetzner Cloud user data)")
    print(f"example stack ({n_example} services), edge {edge}: {b} bytes = {100 * b / limit:.1f}% of the limit")
    for extra in (10, 45, 95, 295):
        try:
            b, _ = size(with_services(base, extra), wg)
            print(f"{n_example + extra} services: {b} bytes = {100 * b / limit:.1f}%")
        except bootstrap.UserDataTooLarge as exc:
            print(f"{n_example + extra} services: refused: {exc}")
    lo, hi = 0, 3000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            size(with_services(base, mid), wg)
            lo = mid
        except bootstrap.UserDataTooLarge:
            hi = mid - 1
    print(f"largest that fits: {n_example + lo} services (mixed modes)")


if __name__ == "__main__":
    main()
