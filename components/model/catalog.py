"""Where each provider can run an edge, what it costs, and what the hardware is.

One table drives config validation (is there an arm64 type in that location?), the
GeoDNS policy (where is the edge on the map?) and the monthly cost estimate, so the
three can never disagree.  Prices are list prices without VAT, as published by the
providers on the date in ``PRICES_READ``; providers change them, so the estimate is a
guide, not an invoice.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_READ = "2025-10-01"
"""Date the prices below were read from the providers' public price lists.

Hetzner announced a price adjustment effective 2026-04-01; until the table is re-read
the Hetzner figures may be low by up to a few tens of cents per server."""


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


@dataclass(frozen=True)
class ProviderInfo:
    name: str
    label: str
    default_server_type: str
    default_image: str
    currency: str
    ipv4_monthly: float
    """Cost of the address that survives a server replacement (Hetzner Primary IPv4;
    a DigitalOcean reserved IP is free while assigned)."""


PROVIDERS: dict[str, ProviderInfo] = {
    "hetzner": ProviderInfo("hetzner", "Hetzner Cloud", "cax11", "debian-12", "EUR", 0.50),
    "digitalocean": ProviderInfo("digitalocean", "DigitalOcean", "s-1vcpu-1gb", "debian-12-x64", "USD", 0.0),
}

_LOCATIONS = [
    Location("hetzner", "fsn1", "Falkenstein", "DE", "EU", 50.47, 12.37),
    Location("hetzner", "nbg1", "Nuremberg", "DE", "EU", 49.45, 11.08),
    Location("hetzner", "hel1", "Helsinki", "FI", "EU", 60.17, 24.94),
    Location("hetzner", "ash", "Ashburn", "US", "NA", 39.04, -77.49),
    Location("hetzner", "hil", "Hillsboro", "US", "NA", 45.52, -122.99),
    Location("hetzner", "sin", "Singapore", "SG", "AS", 1.35, 103.82),
    Location("digitalocean", "nyc1", "New York", "US", "NA", 40.71, -74.01),
    Location("digitalocean", "nyc3", "New York", "US", "NA", 40.71, -74.01),
    Location("digitalocean", "sfo3", "San Francisco", "US", "NA", 37.77, -122.42),
    Location("digitalocean", "atl1", "Atlanta", "US", "NA", 33.75, -84.39),
    Location("digitalocean", "tor1", "Toronto", "CA", "NA", 43.65, -79.38),
    Location("digitalocean", "ams3", "Amsterdam", "NL", "EU", 52.37, 4.90),
    Location("digitalocean", "fra1", "Frankfurt", "DE", "EU", 50.11, 8.68),
    Location("digitalocean", "lon1", "London", "GB", "EU", 51.51, -0.13),
    Location("digitalocean", "sgp1", "Singapore", "SG", "AS", 1.35, 103.82),
    Location("digitalocean", "blr1", "Bangalore", "IN", "AS", 12.97, 77.59),
    Location("digitalocean", "syd1", "Sydney", "AU", "OC", -33.87, 151.21),
]
LOCATIONS: dict[tuple[str, str], Location] = {(l.provider, l.code): l for l in _LOCATIONS}

_HETZNER_EU = frozenset({"fsn1", "nbg1", "hel1"})
_HETZNER_ALL = frozenset({"fsn1", "nbg1", "hel1", "ash", "hil", "sin"})
_DO_ALL = frozenset(code for (provider, code) in LOCATIONS if provider == "digitalocean")

_SERVER_TYPES = [
    # Hetzner's Ampere Altra (arm64) types exist only in its European locations.
    ServerType("hetzner", "cax11", "arm64", 2, 4, 40, 3.79, "EUR", _HETZNER_EU),
    ServerType("hetzner", "cax21", "arm64", 4, 8, 80, 6.49, "EUR", _HETZNER_EU),
    ServerType("hetzner", "cax31", "arm64", 8, 16, 160, 12.49, "EUR", _HETZNER_EU),
    ServerType("hetzner", "cx23", "x86_64", 2, 4, 40, 3.49, "EUR", _HETZNER_EU),
    ServerType("hetzner", "cpx11", "x86_64", 2, 2, 40, 5.49, "EUR", _HETZNER_ALL),
    ServerType("hetzner", "cpx21", "x86_64", 3, 4, 80, 9.99, "EUR", _HETZNER_ALL),
    # DigitalOcean sells no arm64 Droplets; these are its shared-CPU Basic plans.
    ServerType("digitalocean", "s-1vcpu-512mb-10gb", "x86_64", 1, 0.5, 10, 4.00, "USD", _DO_ALL),
    ServerType("digitalocean", "s-1vcpu-1gb", "x86_64", 1, 1, 25, 6.00, "USD", _DO_ALL),
    ServerType("digitalocean", "s-1vcpu-2gb", "x86_64", 1, 2, 50, 12.00, "USD", _DO_ALL),
    ServerType("digitalocean", "s-2vcpu-2gb", "x86_64", 2, 2, 60, 18.00, "USD", _DO_ALL),
]
SERVER_TYPES: dict[tuple[str, str], ServerType] = {(t.provider, t.name): t for t in _SERVER_TYPES}

MIN_RAM_GB = 1.0
"""Below this, apt upgrades and Traefik's TLS buffers get the node OOM-killed."""


def locations_of(provider: str) -> list[str]:
    return [code for (p, code) in LOCATIONS if p == provider]


def server_types_of(provider: str) -> list[str]:
    return [name for (p, name) in SERVER_TYPES if p == provider]


def arm64_types_in(provider: str, location: str) -> list[str]:
    return [t.name for t in _SERVER_TYPES if t.provider == provider and t.arch == "arm64" and location in t.locations]


def monthly_cost(provider: str, server_type: str) -> float:
    """Server plus the address that outlives it."""
    return round(SERVER_TYPES[(provider, server_type)].monthly_price + PROVIDERS[provider].ipv4_monthly, 2)
