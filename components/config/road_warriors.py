"""``roadWarriors``: the user's own devices, each one more peer on every edge's ``wg0``
with an address from ``roadWarriorPool`` and the LAN prefixes it may reach.

A device has one IPv4 address and nothing else, so it reaches IPv4 prefixes only; and
``wg0`` keeps one peer per public key, so a key that two peers share (two devices, or
a device and home) silently drops one of them from every edge."""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

from components.config.home import is_low_order
from components.config.keys import fix_key
from components.config.parser import WG_KEY_RE, Parser, whole_number
from components.config.tunnel import CGNAT_RANGE
from components.model.fleet import HomeSpec, TunnelSpec
from components.model.road_warriors import DEFAULT_POOL, RoadWarrior, RoadWarriorsSpec

FIELDS = {"name", "publicKey", "allowedPrefixes", "internet", "index"}


def parse(
    p: Parser, items: list[Any], pool_text: str, dns_text: str, home: HomeSpec, tunnel: TunnelSpec
) -> RoadWarriorsSpec | None:
    if not items:
        return None
    lans = tuple(lan for lan in home.lan_prefixes if lan.version == 4)
    pool = _pool(p, pool_text, home.lan_prefixes, tunnel)
    if pool is None:
        return None
    hosts = pool.num_addresses - 2
    if hosts < len(items):
        p.fail(
            "roadWarriorPool",
            f"{pool} has room for {max(hosts, 0)} device(s), not {len(items)}; use a shorter prefix, e.g. "
            f"{DEFAULT_POOL}",
        )
        return None
    peers: list[RoadWarrior] = []
    names: set[str] = set()
    used: dict[int, str] = {}
    keys: dict[str, str] = {}
    for i, item in enumerate(items):
        key = f"roadWarriors[{i}]"
        if not isinstance(item, dict):
            p.fail(key, "must be a mapping; write it like {name: phone, allowedPrefixes: [192.168.1.0/24]}")
            continue
        for k in sorted(set(item) - FIELDS):
            p.fail(f"{key}.{k}", f"is not a road-warrior field; use {', '.join(sorted(FIELDS))}")
        if item.get("name") is None:
            p.fail(f"{key}.name", "is required; give each device a name such as phone or laptop")
            continue
        name = p.unique_name(key, item, names, "road warrior")
        if name is None:
            continue
        good, public_key = _public_key(p, key, item.get("publicKey"), home.public_key, keys)
        if not good:
            continue
        if public_key:
            keys.setdefault(public_key, name)
        index = i + 1 if item.get("index") is None else whole_number(item["index"])
        if index is None or not 1 <= index <= hosts:
            p.fail(
                f"{key}.index",
                f"{item.get('index', i + 1)!r} is not a place in {pool}; use a whole number from 1 to {hosts}, or leave index out",
            )
            continue
        if index in used:
            p.fail(f"{key}.index", f"index {index} is already used by road warrior {used[index]!r}; give each its own")
            continue
        used[index] = name
        internet = p.flag(
            key, item, "internet", False, "true lets the device use the edges as its exit to the internet"
        )
        allowed = _allowed(p, key, item.get("allowedPrefixes", None), lans, internet)
        peers.append(RoadWarrior(name, public_key or None, pool.network_address + index, tuple(allowed), internet))
    dns = _dns(p, dns_text, peers)
    return RoadWarriorsSpec(tuple(peers), pool, dns)


def _public_key(p: Parser, key: str, raw: Any, home_key: str | None, seen: dict[str, str]) -> tuple[bool, str | None]:
    """Whether the key is usable, and the device's key (None: generate one)."""
    if raw is None or raw == "":
        return True, None
    if not isinstance(raw, str) or not WG_KEY_RE.match(raw):
        p.fail(
            f"{key}.publicKey",
            "is not a WireGuard public key (44 base64 characters ending in '='); copy it from the device's app, "
            "or leave it out to have a key generated",
        )
        return False, None
    if is_low_order(base64.b64decode(raw)):
        p.fail(
            f"{key}.publicKey",
            "is a low-order point (all zeros or one of its kind), not a real key: every handshake with it would "
            "fail; copy the key from the device's app, or leave it out to have one generated",
        )
        return False, None
    # One peer per key on wg0: a repeated key replaces the earlier peer, home's included.
    clash = f"{fix_key('homePublicKey')}, home's own key" if raw == home_key else None
    if raw in seen:
        clash = f"the key of road warrior {seen[raw]!r}"
    if clash:
        p.fail(
            f"{key}.publicKey",
            f"is {clash}; each edge's wg0 keeps one peer per key, so one would replace the other there: make a "
            "key on this device (the WireGuard app does), or leave publicKey out to have one generated",
        )
        return False, None
    return True, raw


def _pool(p: Parser, pool_text: str, lans: tuple, tunnel: TunnelSpec) -> ipaddress.IPv4Network | None:
    """The devices' prefix: private IPv4, apart from the LAN, the tunnels and the CGNAT range."""
    pool = p.network("roadWarriorPool", pool_text)
    if pool is None:
        return None
    if not isinstance(pool, ipaddress.IPv4Network) or not pool.is_private or pool.subnet_of(CGNAT_RANGE):
        p.fail(
            "roadWarriorPool",
            f"{pool} is not a private IPv4 prefix outside 100.64.0.0/10; use one such as {DEFAULT_POOL}",
        )
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


def _allowed(p: Parser, key: str, raw_allowed: Any, lans: tuple, internet: bool) -> list:
    """The IPv4 LAN prefixes a device may reach: all of them unless it lists parts.
    None (empty) only with ``internet``: a device that uses the edges as its exit only."""
    if raw_allowed is None:
        if not lans and not internet:
            p.fail(
                f"{key}.allowedPrefixes",
                f"has nothing to default to: {fix_key('homeLanPrefixes')} lists no IPv4 prefix, and a device has "
                "an IPv4 address only; add the home LAN's IPv4 prefix there, or set internet: true for a device "
                "that uses the edges as its exit only",
            )
        return list(lans)
    allowed = []
    items = p.items(f"{key}.allowedPrefixes", raw_allowed, "CIDR prefixes")
    if not items and isinstance(raw_allowed, list) and not internet:
        p.fail(
            f"{key}.allowedPrefixes",
            "is empty, so the device could reach nothing; leave it out to reach every IPv4 prefix of "
            f"{fix_key('homeLanPrefixes')}, list the parts it may reach, or set internet: true for a device that "
            "uses the edges as its exit only",
        )
    for j, text in enumerate(items):
        field = f"{key}.allowedPrefixes[{j}]"
        net = p.network(field, text)
        if net is None:
            continue
        if net.version == 6:
            p.fail(
                field,
                f"{net} is IPv6, but a device has only an IPv4 address from {fix_key('roadWarriorPool')}; "
                "list IPv4 parts of the home LAN",
            )
        elif net.prefixlen == 0:
            p.fail(
                field,
                f"{net} is every address, not a part of the home LAN; to use the edges as the device's exit to the "
                "internet set internet: true, and list here only the LAN parts it may reach",
            )
        elif not any(net.subnet_of(lan) for lan in lans):
            p.fail(
                field,
                f"{net} is not inside any of {fix_key('homeLanPrefixes')} "
                f"({', '.join(map(str, lans)) or 'none set'}); devices reach the home LAN only, list a part of it",
            )
        else:
            allowed.append(net)
    return allowed


def _dns(p: Parser, text: str, peers: list[RoadWarrior]) -> ipaddress.IPv4Address | None:
    """The resolver pushed to every device: one each of them reaches, through the tunnel
    to home (inside its prefixes) or, with ``internet``, out of the edge (a public one)."""
    if not text:
        return None
    try:
        dns = ipaddress.ip_address(text)
    except ValueError:
        p.fail("roadWarriorDns", f"{text!r} is not an IP address; give the LAN resolver's, e.g. 192.168.1.1")
        return None
    if dns.version == 6:
        p.fail(
            "roadWarriorDns",
            f"{dns} is IPv6, but the devices have only IPv4 addresses; give an IPv4 resolver in the home LAN, "
            "e.g. 192.168.1.1",
        )
        return None
    for rw in peers:
        if any(dns in net for net in rw.allowed) or (rw.internet and dns.is_global):
            continue
        reach = ", ".join(map(str, rw.allowed)) or "nothing at home"
        p.fail(
            "roadWarriorDns",
            f"{dns} is outside what road warrior {rw.name!r} may reach ({reach}{', and the internet' if rw.internet else ''}), "
            "so its lookups would go unanswered; give a resolver inside every device's allowedPrefixes (a public "
            "one only when every device has internet: true)",
        )
        return None
    return dns
