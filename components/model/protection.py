"""Protection at the edge, as configured: country filters, CrowdSec and sign-in.

Country filters act in nftables, before Traefik, so they cover every mode; nftables
sees addresses and ports, never hostnames, which is why every service on the shared
ports 80/443 must agree on its countries.  Sign-in (Traefik's ``forwardAuth``) needs
the request, which only ``http`` services show the edge.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

RIR_SOURCES = (
    "https://ftp.arin.net/pub/stats/arin/delegated-arin-extended-latest",
    "https://ftp.ripe.net/pub/stats/ripencc/delegated-ripencc-extended-latest",
    "https://ftp.apnic.net/stats/apnic/delegated-apnic-extended-latest",
    "https://ftp.lacnic.net/pub/stats/lacnic/delegated-lacnic-extended-latest",
    "https://ftp.afrinic.net/pub/stats/afrinic/delegated-afrinic-extended-latest",
)
"""The five regional internet registries' delegation statistics: public, published by
the registries themselves every day, each with an ``.md5`` beside it."""


class CrowdSec(StrEnum):
    OFF = "off"
    OFFLINE = "offline"
    """Bans from the edge's own logs and cscli."""
    ONLINE = "online"
    """Also CrowdSec's Central API: the community blocklist and console enrolment."""


DEFAULT_AUTH_HEADERS = ("Remote-User", "Remote-Groups", "Remote-Email", "Remote-Name")
EDGE_LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


@dataclass(frozen=True)
class GeoPolicy:
    """Countries (ISO 3166-1 alpha-2) let in (``allow``) or dropped (``deny``)."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.allow or self.deny)

    @property
    def countries(self) -> tuple[str, ...]:
        return self.allow or self.deny


@dataclass(frozen=True)
class ForwardAuth:
    """Traefik ``forwardAuth``: every request is first asked of ``address``."""

    address: str
    host: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    response_headers: tuple[str, ...] = DEFAULT_AUTH_HEADERS

    @property
    def at_home(self) -> bool:
        """The provider runs at home (through the tunnel), not on the edge."""
        return self.host not in EDGE_LOOPBACK


@dataclass(frozen=True)
class ProtectionSpec:
    geo: GeoPolicy = GeoPolicy()
    """The fleet default, for services that set no countries of their own."""
    geo_sources: tuple[str, ...] = RIR_SOURCES
    crowdsec: CrowdSec = CrowdSec.OFF
    crowdsec_enroll: bool = False
    """``crowdsecEnrollKey`` is set: every edge enrols in the CrowdSec console."""
