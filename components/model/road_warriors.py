"""Road warriors: the user's own devices reaching the home LAN through any edge.

A device is one more WireGuard peer on every edge's ``wg0`` (the interface home dials
into), with one address from ``roadWarriorPool``; the edge routes its packets into the
tunnel to home, only towards the LAN prefixes the device may reach, and never to the
internet unless the device says ``internet: true``.  Reusing ``wg0`` needs no second
port, key or firewall rule on the edge: the peers are synced by the push like home's.

Parsed here, called from ``config.parse`` with its parser (so every problem is reported
the same way, naming the key and the fix).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

DEFAULT_POOL = "10.252.0.0/24"
FIELDS = {"name", "publicKey", "allowedPrefixes", "internet", "index"}


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


def parse(p: Any, items: list[Any], pool_text: str, dns_text: str, lans: tuple, tunnel: Any) -> RoadWarriorsSpec | None:
    """``p`` is config's parser; ``lans`` the home LAN prefixes, ``tunnel`` its TunnelSpec."""
    from components.model import config as c

    if not items:
        return None
    pool = p.network("roadWarriorPool", pool_text)
    if pool is None:
        return None
    if pool.version != 4 or not pool.is_private or pool.subnet_of(c.CGNAT_RANGE):
        p.fail("roadWarriorPool", f"{pool} must be a private IPv4 prefix outside 100.64.0.0/10, e.g. {DEFAULT_POOL}")
        return None
    for i, lan in enumerate(lans):
        if lan.overlaps(pool):
            p.fail(
                "roadWarriorPool",
                f"{pool} overlaps {c._fix_key('homeLanPrefixes')}[{i}] {lan}; devices need addresses of their own, "
                f"pick a prefix outside the LAN, e.g. {DEFAULT_POOL}",
            )
            return None
    if pool.overlaps(tunnel.ipv4_prefix):
        p.fail(
            "roadWarriorPool",
            f"{pool} overlaps {c._fix_key('tunnelIpv4Prefix')} {tunnel.ipv4_prefix}; pick a prefix outside it, "
            f"e.g. {DEFAULT_POOL}",
        )
        return None
    dns = None
    if dns_text:
        try:
            dns = ipaddress.ip_address(dns_text)
        except ValueError:
            p.fail("roadWarriorDns", f"{dns_text!r} is not an IP address; give the LAN resolver's, e.g. 192.168.1.1")
    peers: list[RoadWarrior] = []
    names: set[str] = set()
    used: dict[int, str] = {}
    hosts = pool.num_addresses - 2
    for i, item in enumerate(items):
        key = f"roadWarriors[{i}]"
        if not isinstance(item, dict):
            p.fail(key, "must be a mapping; write it like {name: phone, allowedPrefixes: [192.168.1.0/24]}")
            continue
        for k in sorted(set(item) - FIELDS):
            p.fail(f"{key}.{k}", f"is not a road-warrior field; use {', '.join(sorted(FIELDS))}")
        name = p.unique_name(key, item, names, "road warrior")
        if name is None:
            continue
        public_key = item.get("publicKey") or None
        if public_key is not None and not c._WG_KEY_RE.match(str(public_key)):
            p.fail(
                f"{key}.publicKey",
                "is not a WireGuard public key (44 base64 characters ending in '='); copy it from the device's app, "
                "or leave it out to have a key generated",
            )
            continue
        index = item.get("index", i + 1)
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= hosts:
            p.fail(f"{key}.index", f"{index!r} must be a whole number from 1 to {hosts}, the device's place in {pool}")
            continue
        if index in used:
            p.fail(f"{key}.index", f"index {index} is already used by road warrior {used[index]!r}; give each its own")
            continue
        used[index] = name
        allowed = []
        raw_allowed = item.get("allowedPrefixes")
        for j, text in enumerate(p.items(f"{key}.allowedPrefixes", raw_allowed, "CIDR prefixes") or []):
            net = p.network(f"{key}.allowedPrefixes[{j}]", text)
            if net is None:
                continue
            if not any(net.subnet_of(lan) for lan in lans if lan.version == net.version):
                p.fail(
                    f"{key}.allowedPrefixes[{j}]",
                    f"{net} is not inside any of {c._fix_key('homeLanPrefixes')} "
                    f"({', '.join(map(str, lans)) or 'none set'}); devices reach the home LAN only, list a part of it",
                )
                continue
            allowed.append(net)
        if raw_allowed is None:
            allowed = list(lans)
        internet = item.get("internet", False)
        if not isinstance(internet, bool):
            p.fail(
                f"{key}.internet",
                "must be true or false; true lets the device use the edges as its exit to the internet",
            )
            internet = False
        peers.append(RoadWarrior(name, public_key, pool.network_address + index, tuple(allowed), internet))
    return RoadWarriorsSpec(tuple(peers), pool, dns)
