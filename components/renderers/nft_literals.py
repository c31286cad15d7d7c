"""nftables literals shared by every renderer that writes rules."""

from __future__ import annotations

from collections.abc import Iterable


def set_of(items: Iterable[object]) -> str:
    """An anonymous set, ``{ a, b }``."""
    return "{ " + ", ".join(str(i) for i in items) + " }"


def one_or_set(items: list[str]) -> str:
    """The item alone when there is one (``443``), else a set (``{ 80, 443 }``)."""
    return items[0] if len(items) == 1 else set_of(items)
