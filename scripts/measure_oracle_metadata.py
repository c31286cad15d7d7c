"""Print the size of an Oracle edge's instance metadata against Oracle's 32,000 bytes.

    uv run python scripts/measure_oracle_metadata.py

Oracle limits the metadata (the base64 user data and the SSH keys together), not the
cloud-config; the provider gzips the cloud-config before encoding it.  Figures for the
example stack (Pulumi.dev.yaml) with the prod stack's Oracle edge added, for it plus N
generated services (the same mix as scripts/measure_user_data.py), and the largest
count that still fits.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from measure_user_data import EXAMPLE_STACK, HOST_KEY, with_services  # noqa: E402

from components import config  # noqa: E402
from components.config import stack  # noqa: E402
from components.model.keys import generate_host_key  # noqa: E402
from components.providers import oracle  # noqa: E402
from components.renderers import bootstrap  # noqa: E402

PROD_STACK = ROOT / "Pulumi.prod.yaml"
STACK_KEY = generate_host_key()[1]


def sizes(raw: dict) -> tuple[int, int, str]:
    """(cloud-config bytes, metadata bytes, edge) for the stack's first Oracle edge."""
    cfg = config.parse(raw)
    edge = next(e for e in cfg.edges if e.provider == oracle.PROVIDER.name)
    text = bootstrap.user_data(cfg, edge, HOST_KEY)
    metadata = oracle.user_data_metadata(text, [STACK_KEY, *cfg.ssh.public_keys])
    return len(text.encode()), oracle.metadata_size(metadata), edge.name


def main() -> None:
    base = stack.load(EXAMPLE_STACK).raw()
    base["edges"] = [*base["edges"], *(e for e in stack.load(PROD_STACK).raw()["edges"] if e["provider"] == "oracle")]
    base["edges"][-1] = {**base["edges"][-1], "name": "oci", "index": len(base["edges"])}
    limit = oracle.METADATA_LIMIT
    n = len(base["services"])
    text, meta, edge = sizes(base)
    print(f"limit: {limit} bytes (Oracle Cloud instance metadata)")
    print(
        f"example stack ({n} services), edge {edge}: cloud-config {text} bytes, metadata {meta} bytes "
        f"= {100 * meta / limit:.1f}% of the limit"
    )
    for extra in (10, 45, 95, 295):
        try:
            text, meta, _ = sizes(with_services(base, extra))
            print(f"{n + extra} services: cloud-config {text} bytes, metadata {meta} bytes = {100 * meta / limit:.1f}%")
        except bootstrap.UserDataTooLarge as exc:
            print(f"{n + extra} services: refused: {exc}")
    lo, hi = 0, 3000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            fits = sizes(with_services(base, mid))[1] <= limit
        except bootstrap.UserDataTooLarge:
            fits = False
        lo, hi = (mid, hi) if fits else (lo, mid - 1)
    print(f"largest that fits: {n + lo} services (mixed modes)")


if __name__ == "__main__":
    main()
