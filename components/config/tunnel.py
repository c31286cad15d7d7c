"""The tunnels' addressing (``tunnelIpv4Prefix``, ``tunnelIpv6``...) and WireGuard's
port, MTU and keepalive."""

from __future__ import annotations

import hashlib
import ipaddress

from components.config.keys import KEYS
from components.config.parser import Parser
from components.model.fleet import TunnelSpec

CGNAT_RANGE = ipaddress.IPv4Network("100.64.0.0/10")
SPARE_TUNNEL_PREFIXES = tuple(
    ipaddress.ip_network(t) for t in ("10.254.0.0/24", "10.253.0.0/24", "172.31.254.0/24", "192.168.254.0/24")
)
"""Prefixes offered when the tunnel's overlaps the home LAN."""


def _derived_ula(project: str, stack: str) -> ipaddress.IPv6Network:
    """RFC 4193 asks for a pseudo-random global ID; hashing project and stack keeps it
    random-looking and stable, so re-running the program never re-addresses."""
    digest = hashlib.sha256(f"{project}/{stack}".encode()).digest()
    return ipaddress.IPv6Network((b"\xfd" + digest[:5] + b"\x00\x00" + bytes(8), 64))


def parse(p: Parser, project: str, stack: str, edge_count: int) -> TunnelSpec:
    default_v4 = ipaddress.IPv4Network(KEYS["tunnelIpv4Prefix"][1])
    given = p.network("tunnelIpv4Prefix", p.get("tunnelIpv4Prefix")) or default_v4
    v4 = given if isinstance(given, ipaddress.IPv4Network) else default_v4
    if given.version != 4:
        p.fail("tunnelIpv4Prefix", f"{given} is not IPv4; use a private IPv4 prefix such as 10.254.0.0/24")
    elif v4.subnet_of(CGNAT_RANGE):
        p.fail(
            "tunnelIpv4Prefix",
            f"{v4} lies in 100.64.0.0/10, the range your ISP's CGNAT uses on your WAN side; use a private prefix such as 10.254.0.0/24",
        )
    elif not v4.is_private:
        p.fail("tunnelIpv4Prefix", f"{v4} is public address space; use a private prefix such as 10.254.0.0/24")
    elif v4.prefixlen > 28:
        p.fail(
            "tunnelIpv4Prefix", f"{v4} is too small; each edge takes a /30, use at most a /28 (a /24 holds 63 edges)"
        )

    v6: ipaddress.IPv6Network | None = None
    if p.get("tunnelIpv6"):
        text = p.get("tunnelIpv6Prefix")
        if text:
            net = p.network("tunnelIpv6Prefix", text)
            if net is not None and (
                not isinstance(net, ipaddress.IPv6Network)
                or not net.subnet_of(ipaddress.IPv6Network("fc00::/7"))
                or net.prefixlen > 64
            ):
                p.fail(
                    "tunnelIpv6Prefix",
                    f"{net} must be an IPv6 ULA prefix (fd00::/8) of /64 or shorter; use one such as fd12:3456:789a::/64, or leave it empty to derive one",
                )
            elif net is not None:
                v6 = ipaddress.IPv6Network((net.network_address, 64))
        else:
            v6 = _derived_ula(project, stack)

    port = p.port("wireguardPort", p.get("wireguardPort")) or 51820
    mtu = p.get("tunnelMtu")
    if not 1280 <= mtu <= 1420:
        p.fail(
            "tunnelMtu",
            f"{mtu} is out of range; use 1280 (IPv6 minimum) to 1420 (WireGuard over a clean 1500 path); 1380 suits PPPoE and DS-Lite",
        )
    keepalive = p.get("keepaliveSeconds")
    if keepalive == 0:
        p.fail(
            "keepaliveSeconds",
            "0 turns keepalives off, but the edges reach home behind CGNAT only through the mapping its "
            "keepalives hold open; use 10 to 120 seconds (25 keeps most CGNAT mappings open)",
        )
    elif not 10 <= keepalive <= 120:
        p.fail(
            "keepaliveSeconds",
            f"{keepalive} is out of range; use 10 to 120 seconds (25 keeps most CGNAT mappings open)",
        )
    if edge_count and edge_count > 2 ** (30 - v4.prefixlen) - 1 and not p.has_problem("tunnelIpv4Prefix"):
        p.fail(
            "tunnelIpv4Prefix",
            f"{v4} has room for {2 ** (30 - v4.prefixlen) - 1} edges, not {edge_count}; use a shorter prefix",
        )
    return TunnelSpec(v4, v6, port, mtu, keepalive)
