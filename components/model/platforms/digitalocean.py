"""DigitalOcean's facts: x86-64 Droplets only (it sells no arm64), in its regions."""

from __future__ import annotations

from components.model.catalog import Location, ServerType
from components.model.platforms.base import Platform

OUTBOUND = ("tcp", "udp", "icmp")
"""Protocols every Droplet firewall lets out: without outbound rules it blocks all egress."""


def _location(code: str, city: str, country: str, continent: str, lat: float, lon: float) -> Location:
    return Location("digitalocean", code, city, country, continent, lat, lon)


_LOCATIONS = (
    _location("nyc1", "New York", "US", "NA", 40.71, -74.01),
    _location("nyc3", "New York", "US", "NA", 40.71, -74.01),
    _location("sfo3", "San Francisco", "US", "NA", 37.77, -122.42),
    _location("atl1", "Atlanta", "US", "NA", 33.75, -84.39),
    _location("tor1", "Toronto", "CA", "NA", 43.65, -79.38),
    _location("ams3", "Amsterdam", "NL", "EU", 52.37, 4.90),
    _location("fra1", "Frankfurt", "DE", "EU", 50.11, 8.68),
    _location("lon1", "London", "GB", "EU", 51.51, -0.13),
    _location("sgp1", "Singapore", "SG", "AS", 1.35, 103.82),
    _location("blr1", "Bangalore", "IN", "AS", 12.97, 77.59),
    _location("syd1", "Sydney", "AU", "OC", -33.87, 151.21),
)
_ALL = frozenset(loc.code for loc in _LOCATIONS)


def _type(name: str, vcpus: int, ram: float, disk: int, price: float) -> ServerType:
    return ServerType("digitalocean", name, "x86_64", vcpus, ram, disk, price, "USD", _ALL)


class DigitalOcean(Platform):
    name = "digitalocean"
    label = "DigitalOcean"
    currency = "USD"
    ipv4_monthly = 0.0  # a reserved IP is free while assigned
    default_server_type = "s-1vcpu-1gb"
    default_image = "debian-12-x64"
    images = ("debian-12-x64",)
    locations = _LOCATIONS
    # DigitalOcean sells no arm64 Droplets; these are its shared-CPU Basic plans.
    server_types = (
        _type("s-1vcpu-512mb-10gb", 1, 0.5, 10, 4.00),
        _type("s-1vcpu-1gb", 1, 1, 25, 6.00),
        _type("s-1vcpu-2gb", 1, 2, 50, 12.00),
        _type("s-2vcpu-2gb", 2, 2, 60, 18.00),
    )
    user_data_limit = 64 * 1024
    firewall_rule_limit = 50  # inbound and outbound rules together
    fixed_firewall_rules = len(OUTBOUND)
    manages_dns = True


PLATFORM = DigitalOcean()
