"""Print the size of the rendered cloud-config against Hetzner's 32 KiB limit.

    uv run python scripts/measure_user_data.py

Figures for the example stack, for the example plus N generated services, and the
largest service count that still fits.  A figure, not a test: the test suite only
checks that the example stays well under the limit.
"""

from __future__ import annotations

import copy
from pathlib import Path

from components import config
from components.config import stack
from components.model.keys import generate_host_key
from components.renderers import bootstrap

EXAMPLE_STACK = Path(__file__).resolve().parent.parent / "Pulumi.dev.yaml"
HOST_KEY = generate_host_key()


def with_services(raw: dict, extra: int) -> dict:
    """The example plus ``extra`` services mixing the four modes (port services on
    consecutive ports, as the provider firewalls' rule limits want them)."""
    raw = copy.deepcopy(raw)
    for i in range(extra):
        mode = ("passthrough", "http", "tcp", "udp")[i % 4]
        svc: dict = {"name": f"svc{i}", "mode": mode, "target": f"192.168.1.{10 + i % 200}:{8000 + i}"}
        if mode in ("passthrough", "http"):
            svc["hostnames"] = [f"svc{i}.example.org"]
        else:
            svc["port"] = 30000 + i // 4  # consecutive per protocol: one firewall range rule
        if mode == "http":
            svc["middlewares"] = {"rateLimit": {"average": 50, "burst": 100}, "securityHeaders": True}
        raw["services"].append(svc)
    return raw


def size(raw: dict) -> tuple[int, str]:
    """Bytes of the first edge's cloud-config, with a real bootstrap host key."""
    cfg = config.parse(raw)
    edge = cfg.edges[0]
    return len(bootstrap.user_data(cfg, edge, HOST_KEY).encode()), edge.name


def main() -> None:
    base = stack.load(EXAMPLE_STACK).raw()
    limit = bootstrap.USER_DATA_LIMIT
    n_example = len(base["services"])
    b, edge = size(base)
    print(f"limit: {limit} bytes (Hetzner Cloud user data)")
    print(f"example stack ({n_example} services), edge {edge}: {b} bytes = {100 * b / limit:.1f}% of the limit")
    for extra in (10, 45, 95, 295):
        try:
            b, _ = size(with_services(base, extra))
            print(f"{n_example + extra} services: {b} bytes = {100 * b / limit:.1f}%")
        except bootstrap.UserDataTooLarge as exc:
            print(f"{n_example + extra} services: refused: {exc}")
    lo, hi = 0, 3000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            size(with_services(base, mid))
            lo = mid
        except bootstrap.UserDataTooLarge:
            hi = mid - 1
    print(f"largest that fits: {n_example + lo} services (mixed modes)")


if __name__ == "__main__":
    main()
