"""Road warriors: the user's own devices reaching the home LAN through any edge.

A device is one more WireGuard peer on every edge's ``wg0`` (the interface home dials
into), with one address from ``roadWarriorPool``; the edge routes its packets into the
tunnel to home, only towards the LAN prefixes the device may reach, and never to the
internet unless the device says ``internet: true``.  Reusing ``wg0`` needs no second
port, key or firewall rule on the edge: the peers are synced by the push like home's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_POOL = "10.252.0.0/24"


@dataclass(frozen=True)
class RoadWarrior:
    name: str
    public_key: str | None
    """None: generated as a Pulumi secret (its config then carries the private key)."""
    address: ipaddress.IPv4Address
    allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    internet: bool = False


@dataclass(frozen=True)
class RoadWarriorsSpec:
    peers: tuple[RoadWarrior, ...]
    pool: ipaddress.IPv4Network
    dns: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
