"""Hetzner Cloud's facts: arm64 CAX servers in Europe, x86-64 everywhere it sells."""

from __future__ import annotations

from components.model.catalog import Location, ServerType
from components.model.platforms.base import Platform

_EU = frozenset({"fsn1", "nbg1", "hel1"})
_ALL = frozenset({"fsn1", "nbg1", "hel1", "ash", "hil", "sin"})


def _location(code: str, city: str, country: str, continent: str, lat: float, lon: float) -> Location:
    return Location("hetzner", code, city, country, continent, lat, lon)


def _type(name: str, arch: str, vcpus: int, ram: float, disk: int, price: float, where: frozenset[str]) -> ServerType:
    return ServerType("hetzner", name, arch, vcpus, ram, disk, price, "EUR", where)


class Hetzner(Platform):
    name = "hetzner"
    label = "Hetzner Cloud"
    currency = "EUR"
    ipv4_monthly = 0.50
    default_server_type = "cax11"
    default_image = "debian-12"
    images = ("debian-12",)
    locations = (
        _location("fsn1", "Falkenstein", "DE", "EU", 50.47, 12.37),
        _location("nbg1", "Nuremberg", "DE", "EU", 49.45, 11.08),
        _location("hel1", "Helsinki", "FI", "EU", 60.17, 24.94),
        _location("ash", "Ashburn", "US", "NA", 39.04, -77.49),
        _location("hil", "Hillsboro", "US", "NA", 45.52, -122.99),
        _location("sin", "Singapore", "SG", "AS", 1.35, 103.82),
    )
    # Prices as of catalog.PRICES_READ.  Hetzner adjusted its prices on 2026-04-01; until
    # the table is re-read these figures may be low by a few tens of cents per server.
    server_types = (
        # Hetzner's Ampere Altra (arm64) types exist only in its European locations.
        _type("cax11", "arm64", 2, 4, 40, 3.79, _EU),
        _type("cax21", "arm64", 4, 8, 80, 6.49, _EU),
        _type("cax31", "arm64", 8, 16, 160, 12.49, _EU),
        _type("cx23", "x86_64", 2, 4, 40, 3.49, _EU),
        _type("cpx11", "x86_64", 2, 2, 40, 5.49, _ALL),
        _type("cpx21", "x86_64", 3, 4, 80, 9.99, _ALL),
    )
    user_data_limit = 32 * 1024
    firewall_rule_limit = 50
    manages_dns = True


PLATFORM = Hetzner()
