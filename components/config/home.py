"""The home end: its WireGuard key, its LAN prefixes and its role."""

from __future__ import annotations

import base64
import hashlib
import ipaddress

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from components.config.parser import WG_KEY_RE, Parser
from components.model.fleet import HomeRole, HomeSpec, IPNetwork

# Addresses that mean something else on every host: routed into a tunnel or used as a
# target they would point an edge at itself (127.0.0.1:22 is the edge's own sshd,
# published past sshAllowedCidrs) or at nothing.
SPECIAL_RANGES = tuple(
    (ipaddress.ip_network(net), what)
    for net, what in (
        ("0.0.0.0/8", "'this network' (unspecified), never a host"),
        ("127.0.0.0/8", "loopback: on an edge it is the edge itself, its own sshd included"),
        ("169.254.0.0/16", "link-local: it never leaves the wire it is on"),
        ("224.0.0.0/4", "multicast, not a host"),
        ("240.0.0.0/4", "reserved address space, not a host"),
        ("::/128", "the unspecified address, never a host"),
        ("::1/128", "loopback: on an edge it is the edge itself, its own sshd included"),
        ("::ffff:0:0/96", "IPv4-mapped IPv6, which names IPv4 hosts"),
        ("fe80::/10", "link-local: it never leaves the wire it is on"),
        ("ff00::/8", "multicast, not a host"),
    )
)


def parse(p: Parser) -> HomeSpec:
    key = p.get("homePublicKey") or None
    if key and not WG_KEY_RE.match(key):
        p.fail(
            "homePublicKey",
            "is not a WireGuard public key (44 base64 characters ending in '='); print it at home with `wg pubkey < private.key`",
        )
        key = None
    elif key and is_low_order(base64.b64decode(key)):
        p.fail(
            "homePublicKey",
            "is a low-order point (all zeros or one of its kind), not a real key: every handshake with it would "
            "fail; print the home's key with `wg pubkey < private.key`, or leave it empty to have one generated",
        )
        key = None
    lans: list[IPNetwork] = []
    for i, text in enumerate(p.get("homeLanPrefixes") or []):
        net = p.network(f"homeLanPrefixes[{i}]", text)
        if net is None:
            continue
        if net.prefixlen == 0:
            p.fail(
                f"homeLanPrefixes[{i}]",
                f"{net} is every address: the edges would route all their traffic, SSH replies included, into the "
                "tunnel; list the prefix of your home LAN, e.g. 192.168.1.0/24",
            )
            continue
        special = next(((r, what) for r, what in SPECIAL_RANGES if r.version == net.version and r.overlaps(net)), None)
        if special:
            p.fail(
                f"homeLanPrefixes[{i}]",
                f"{net} overlaps {special[0]}, {special[1]}; list the prefix of your home LAN, e.g. 192.168.1.0/24",
            )
            continue
        lans.append(net)
    role = p.get("homeRole")
    if role not in tuple(HomeRole):
        p.fail(
            "homeRole",
            f"{role!r} is not supported; use router (the WireGuard peer is the LAN's gateway) or host (a box inside the LAN)",
        )
        role = HomeRole.ROUTER
    return HomeSpec(key, tuple(lans), HomeRole(role))


def is_low_order(public: bytes) -> bool:
    """X25519 with a low-order point yields the all-zero secret for every private key
    (the 0, 1 and order-8 points and their non-canonical forms); the exchange refuses
    exactly those, as WireGuard does."""
    probe = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"cgnat-edge low-order probe").digest())
    try:
        probe.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return True
    return False
