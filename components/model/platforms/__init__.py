"""The platforms an edge can run on, by name.

Listing a platform here is what makes the config parser and the renderers know it;
its cloud resources are the provider of the same name (``components/providers/``)."""

from __future__ import annotations

from components.model.platforms import digitalocean, hetzner, oracle
from components.model.platforms.base import Platform

REGISTRY: dict[str, Platform] = {p.name: p for p in (hetzner.PLATFORM, digitalocean.PLATFORM, oracle.PLATFORM)}


def get(name: str) -> Platform:
    return REGISTRY[name]
