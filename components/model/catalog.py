"""The shapes of catalog entries: where a provider can run an edge, on what hardware,
at what price.

Each provider module (``components/providers/``) lists its own entries; one table per
provider drives config validation (is there an arm64 type in that location?), the
GeoDNS policy (where is the edge on the map?) and the monthly cost estimate, so the
three can never disagree.  Prices are list prices without VAT, as published by the
providers on the date in ``PRICES_READ``; providers change them, so the estimate is a
guide, not an invoice.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_READ = "2025-10-01"
"""Date the providers' catalog prices were read from their public price lists (see each
provider module for changes announced since)."""


@dataclass(frozen=True)
class Location:
    provider: str
    code: str
    city: str
    country: str  # ISO 3166-1 alpha-2
    continent: str  # AF AN AS EU NA OC SA
    latitude: float
    longitude: float


@dataclass(frozen=True)
class ServerType:
    provider: str
    name: str
    arch: str  # "arm64" or "x86_64"
    vcpus: int
    ram_gb: float
    disk_gb: int
    monthly_price: float
    currency: str
    locations: frozenset[str]


MIN_RAM_GB = 1.0
"""Below this, apt upgrades and Traefik's TLS buffers get the node OOM-killed."""
