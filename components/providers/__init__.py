"""The provider registry: every provider the program can put an edge on.

A provider is one module with one ``Provider`` (see ``base``); listing it here is all
it takes for the fleet, DNS, the offline render and the policy check to know it (the
config parser and the renderers know its platform, ``components.model.platforms``)."""

from __future__ import annotations

from components.providers import digitalocean, hetzner, oracle
from components.providers.base import Provider

REGISTRY: dict[str, Provider] = {p.name: p for p in (hetzner.PROVIDER, digitalocean.PROVIDER, oracle.PROVIDER)}


def get(name: str) -> Provider:
    return REGISTRY[name]


def for_resource_type(typ: str) -> Provider | None:
    """The provider whose resource type token this is, if any."""
    return next((p for p in REGISTRY.values() if typ.startswith(p.resource_prefix)), None)
