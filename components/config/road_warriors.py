"""``roadWarriors``: the user's own devices, each one more peer on every edge's ``wg0``
with an address from ``roadWarriorPool`` and the LAN prefixes it may reach."""

from __future__ import annotations

import ipaddress
from typing import Any

from components.config.keys import fix_key
from components.config.parser import WG_KEY_RE, Parser
from components.config.tunnel import CGNAT_RANGE
from components.model.fleet import TunnelSpec
from components.model.road_warriors import DEFAULT_POOL, RoadWarrior, RoadWarriorsSpec

FIELDS = {"name", "publicKey", "allowedPrefixes", "internet", "index"}


def parse(
    p: Parser, items: list[Any], pool_text: str, dns_text: str, lans: tuple, tunnel: TunnelSpec
) -> RoadWarriorsSpec | None:
    """``lans``: the home LAN prefixes the devices may reach parts of."""
    if not items:
        return None
    pool = _pool(p, pool_text, lans, tunnel)
    if pool is None:
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
        if public_key is not None and not WG_KEY_RE.match(str(public_key)):
            p.fail(
                f"{key}.publicKey",
                "is not a WireGuard public key (44 base64 characters ending in '='); copy it from the device's app, "
                "or leave it out to have a key generated",
            )
            continue
        index = p.whole(item.get("index", i + 1))
        if index is None or not 1 <= index <= hosts:
            p.fail(
                f"{key}.index",
                f"{item.get('index', i + 1)!r} must be a whole number from 1 to {hosts}, the device's place in {pool}",
            )
            continue
        if index in used:
            p.fail(f"{key}.index", f"index {index} is already used by road warrior {used[index]!r}; give each its own")
            continue
        used[index] = name
        allowed = _allowed(p, key, item.get("allowedPrefixes"), lans)
        internet = p.flag(
            key, item, "internet", False, "true lets the device use the edges as its exit to the internet"
        )
        peers.append(RoadWarrior(name, public_key, pool.network_address + index, tuple(allowed), internet))
    return RoadWarriorsSpec(tuple(peers), pool, dns)


def _pool(p: Parser, pool_text: str, lans: tuple, tunnel: TunnelSpec) -> ipaddress.IPv4Network | None:
    """The devices' prefix: private IPv4, apart from the LAN, the tunnels and the CGNAT range."""
    pool = p.network("roadWarriorPool", pool_text)
    if pool is None:
        return None
    if not isinstance(pool, ipaddress.IPv4Network) or not pool.is_private or pool.subnet_of(CGNAT_RANGE):
        p.fail("roadWarriorPool", f"{pool} must be a private IPv4 prefix outside 100.64.0.0/10, e.g. {DEFAULT_POOL}")
        return None
    for i, lan in enumerate(lans):
        if lan.overlaps(pool):
            p.fail(
                "roadWarriorPool",
                f"{pool} overlaps {fix_key('homeLanPrefixes')}[{i}] {lan}; devices need addresses of their own, "
                f"pick a prefix outside the LAN, e.g. {DEFAULT_POOL}",
            )
            return None
    if pool.overlaps(tunnel.ipv4_prefix):
        p.fail(
            "roadWarriorPool",
            f"{pool} overlaps {fix_key('tunnelIpv4Prefix')} {tunnel.ipv4_prefix}; pick a prefix outside it, "
            f"e.g. {DEFAULT_POOL}",
        )
        return None
    return pool


def _allowed(p: Parser, key: str, raw_allowed: Any, lans: tuple) -> list:
    """The LAN prefixes a device may reach: every home LAN prefix unless it lists parts of them."""
    allowed = []
    for j, text in enumerate(p.items(f"{key}.allowedPrefixes", raw_allowed, "CIDR prefixes") or []):
        net = p.network(f"{key}.allowedPrefixes[{j}]", text)
        if net is None:
            continue
        if not any(net.subnet_of(lan) for lan in lans if lan.version == net.version):
            p.fail(
                f"{key}.allowedPrefixes[{j}]",
                f"{net} is not inside any of {fix_key('homeLanPrefixes')} "
                f"({', '.join(map(str, lans)) or 'none set'}); devices reach the home LAN only, list a part of it",
            )
            continue
        allowed.append(net)
    if raw_allowed is None:
        allowed = list(lans)
    return allowed
