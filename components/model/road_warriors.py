"""Road warriors: the user's own devices reaching the home LAN through any edge.

A device's WireGuard session ends at home, on an interface of its own there
(``cgnat-rw``, listening on ``roadWarriorPort``).  Every edge only forwards that UDP
port into its tunnel to home (kernel DNAT, as forward services are forwarded, the
device's address kept), so an edge carries ciphertext it cannot read, and holds no
device key, address or route with which it could forge a device's packets: home drops
anything from an edge's tunnel with a source in ``roadWarriorPool``.  Home lets each
device reach only the LAN prefixes declared for it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_POOL = "10.252.0.0/24"
DEFAULT_PORT = 51821
INTERFACE = "cgnat-rw"
"""Home's road-warrior interface (every form); edge tunnels are all named ``wg-*``."""
NESTED_OVERHEAD = 80
"""What WireGuard over IPv6 adds to a packet: the device's tunnel rides inside home's
tunnel to the edge, so its MTU is the tunnel's less this."""
WHOLE_LAN = "lan"
"""The ``allowedPrefixes`` word for every IPv4 prefix of ``homeLanPrefixes``."""


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
    port: int = DEFAULT_PORT

    @property
    def home_address(self) -> ipaddress.IPv4Address:
        """Home's address on ``cgnat-rw``, and where the edges forward the port to: the
        pool's last host, so the devices keep the addresses they had from the first."""
        return self.pool.broadcast_address - 1

    @property
    def hosts(self) -> int:
        """How many devices the pool holds: every host but home's."""
        return max(self.pool.num_addresses - 3, 0)
