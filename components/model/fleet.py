"""The typed stack configuration: what ``components.config.parse`` returns and every
renderer and resource reads.

Plain values only, no parsing: the parser (``components/config/``) is the one place
that turns a stack's keys into these, so everything downstream can trust them.  Every
mode is an enum whose members are the strings the stack file spells, so rendered text
reads the same whether it holds the member or its value.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from components.model import catalog
from components.model.alerts import AlertsSpec
from components.model.protection import ForwardAuth, GeoPolicy, ProtectionSpec
from components.model.road_warriors import RoadWarriorsSpec

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class Mode(StrEnum):
    """How a service crosses the edge."""

    PASSTHROUGH = "passthrough"
    """TLS ends at home; Traefik routes by SNI on the shared port 443."""
    HTTP = "http"
    """TLS ends on the edge (ACME); Traefik routes by Host on the shared ports."""
    TCP = "tcp"
    """A public TCP port of its own, forwarded as it is."""
    UDP = "udp"
    """A public UDP port of its own, forwarded as it is."""
    FORWARD = "forward"
    """A public tcp or udp port (or range) the edge's kernel DNATs to home, keeping the
    visitor's source address; Traefik never sees it (components/renderers/forwarding.py)."""

    @property
    def by_traefik(self) -> bool:
        return self is not Mode.FORWARD

    @property
    def by_hostname(self) -> bool:
        """Routed by name on the shared ports 443/80, rather than by a port of its own."""
        return self in (Mode.PASSTHROUGH, Mode.HTTP)

    @property
    def protocol(self) -> Protocol:
        return Protocol.UDP if self is Mode.UDP else Protocol.TCP


class DnsMode(StrEnum):
    RECORDS = "records"
    """The edges' addresses as plain records (a rendering, or created at dnsProvider)."""
    EDGES = "edges"
    """The edges are the authoritative, health-checking nameservers of ``dnsEdgeZone``."""


class HomeRole(StrEnum):
    ROUTER = "router"
    """The home peer is the LAN's gateway."""
    HOST = "host"
    """The home peer is a box inside the LAN; what it forwards into the LAN is masqueraded."""


class AcmeChallenge(StrEnum):
    HTTP = "http"
    """HTTP-01, on port 80."""
    TLS = "tls"
    """TLS-ALPN-01, on port 443."""


NO_DNS_PROVIDER = "none"
"""``dnsProvider`` when no provider holds the zone: the records are only rendered."""


@dataclass(frozen=True)
class EdgeSpec:
    name: str
    provider: str
    location: catalog.Location
    server_type: catalog.ServerType
    image: str
    index: int
    """Position in the tunnel prefix; fixes this edge's tunnel addresses."""
    options: Any = None
    """The provider's own edge fields as its ``parse_edge`` returned them."""

    @property
    def arch(self) -> str:
        return self.server_type.arch


@dataclass(frozen=True)
class Target:
    host: IPAddress
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.host.version == 6 else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RateLimit:
    average: int
    burst: int


@dataclass(frozen=True)
class Middlewares:
    rate_limit: RateLimit | None = None
    ip_allow_list: tuple[IPNetwork, ...] = ()
    ip_deny_list: tuple[IPNetwork, ...] = ()
    basic_auth: tuple[str, ...] = ()
    security_headers: bool = False


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    mode: Mode
    target: Target
    hostnames: tuple[str, ...] = ()
    port: int = 443
    """Public port on every edge."""
    proxy_protocol: bool = False
    http_target: Target | None = None
    """passthrough: where port-80 ACME HTTP-01 challenges for these hostnames go."""
    middlewares: Middlewares = field(default_factory=Middlewares)
    health_path: str | None = None
    port_end: int = 0
    """forward: the last public port of a range (0: the one port ``port``)."""
    forward_protocol: Protocol | None = None
    """forward: the one protocol the range carries."""
    geo: GeoPolicy | None = None
    """The service's own countries; None: the fleet default (``FleetConfig.protection.geo``)."""
    forward_auth: ForwardAuth | None = None

    @property
    def protocol(self) -> str:
        return self.forward_protocol or self.mode.protocol

    @property
    def ports(self) -> range:
        """Every public port of the service (one, or a forward range)."""
        return range(self.port, max(self.port, self.port_end) + 1)


@dataclass(frozen=True)
class TunnelSpec:
    ipv4_prefix: ipaddress.IPv4Network
    ipv6_prefix: ipaddress.IPv6Network | None
    listen_port: int
    mtu: int
    keepalive: int


@dataclass(frozen=True)
class HomeSpec:
    public_key: str | None
    lan_prefixes: tuple[IPNetwork, ...]
    role: HomeRole


@dataclass(frozen=True)
class SshSpec:
    public_keys: tuple[str, ...]
    allowed_cidrs: tuple[IPNetwork, ...]
    user: str
    host_key_rotation: int = 0


@dataclass(frozen=True)
class DnsSpec:
    provider: str
    zone: str
    ttl: int
    mode: DnsMode = DnsMode.RECORDS
    edge_zone: str = ""
    """mode edges: the zone the edges serve (delegated to them), e.g. edge.example.org."""
    geoip_database: str = ""
    """mode edges: absolute path of a City MMDB on this machine (copied to each edge); empty = none."""

    @property
    def edge_served(self) -> bool:
        return self.mode == DnsMode.EDGES

    @property
    def managed(self) -> bool:
        """The records are created at ``provider``, not only rendered."""
        return self.provider != NO_DNS_PROVIDER


@dataclass(frozen=True)
class AcmeSpec:
    email: str | None
    challenge: AcmeChallenge
    ca_server: str


@dataclass(frozen=True)
class FleetConfig:
    project: str
    stack: str
    domain: str
    edges: tuple[EdgeSpec, ...]
    services: tuple[ServiceSpec, ...]
    tunnel: TunnelSpec
    home: HomeSpec
    ssh: SshSpec
    dns: DnsSpec
    acme: AcmeSpec
    ha: bool
    warnings: tuple[str, ...] = ()
    """Choices the parser made that the user did not write (shown by ``pulumi preview``)."""
    protection: ProtectionSpec = field(default_factory=ProtectionSpec)
    road_warriors: RoadWarriorsSpec | None = None
    alerts: AlertsSpec | None = None
    """None: no channel set, no alert daemon on the edges."""

    @property
    def providers(self) -> list[str]:
        return sorted({e.provider for e in self.edges})

    def public_ports(self, protocol: str) -> list[int]:
        """Every port the edges open to the world for ``protocol``, besides SSH."""
        ports: set[int] = set()
        if protocol == "udp":
            ports.add(self.tunnel.listen_port)
            if self.road_warriors:
                ports.add(self.road_warriors.port)
        else:
            if any(s.mode.by_hostname for s in self.services):
                ports.update((80, 443))
        ports.update(p for s in self.services if s.protocol == protocol and not s.mode.by_hostname for p in s.ports)
        if self.dns.edge_served:
            ports.add(53)  # the edges are the zone's nameservers (the agent's 8053 is fleet-only)
        return sorted(ports)


def effective_geo(service: ServiceSpec, fleet: ProtectionSpec) -> GeoPolicy:
    return service.geo if service.geo is not None else fleet.geo
