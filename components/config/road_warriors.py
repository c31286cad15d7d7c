"""``roadWarriors``: the user's own devices, each a peer of home's road-warrior
interface with an address from ``roadWarriorPool`` and the LAN prefixes it may reach.

A device has one IPv4 address and nothing else, so it reaches IPv4 prefixes only; and
an interface keeps one peer per public key, so a key that two devices share silently
drops one of them (and home's own key would make the device a peer of itself).  What a
device reaches is always written down: ``allowedPrefixes`` lists LAN parts, or ``lan``
for all of ``homeLanPrefixes``; leaving it out was once "the whole LAN" and is refused
now, so no stack opens the LAN to a device without saying so."""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

from components.config.home import is_low_order
from components.config.keys import fix_key
from components.config.parser import WG_KEY_RE, Parser, whole_number
from components.config.tunnel import CGNAT_RANGE
from components.model.fleet import HomeSpec, ServiceSpec, TunnelSpec
from components.model.road_warriors import DEFAULT_POOL, DEFAULT_PORT, WHOLE_LAN, RoadWarrior, RoadWarriorsSpec

FIELDS = {"name", "publicKey", "allowedPrefixes", "internet", "index"}


def parse(
    p: Parser,
    items: list[Any],
    pool_text: str,
    dns_text: str,
    home: HomeSpec,
    tunnel: TunnelSpec,
    port_value: Any = DEFAULT_PORT,
    services: tuple[ServiceSpec, ...] | list[ServiceSpec] = (),
) -> RoadWarriorsSpec | None:
    if not items:
        return None
    lans = tuple(lan for lan in home.lan_prefixes if lan.version == 4)
    port = _port(p, port_value, tunnel, services)
    pool = _pool(p, pool_text, home.lan_prefixes, tunnel)
    if pool is None or port is None:
        return None
    hosts = RoadWarriorsSpec((), pool).hosts
    if hosts < len(items):
        p.fail(
            "roadWarriorPool",
            f"{pool} has room for {hosts} device(s) besides home's own address, not {len(items)}; use a shorter "
            f"prefix, e.g. {DEFAULT_POOL}",
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
                f"{item.get('index', i + 1)!r} is not a place in {pool}; use a whole number from 1 to {hosts} (the "
                "last host is home's), or leave index out",
            )
            continue
        if index in used:
            p.fail(f"{key}.index", f"index {index} is already used by road warrior {used[index]!r}; give each its own")
            continue
        used[index] = name
        internet = p.flag(
            key, item, "internet", False, "true lets the device use home's own uplink as its exit to the internet"
        )
        allowed = _allowed(p, key, item.get("allowedPrefixes", None), lans, internet)
        peers.append(RoadWarrior(name, public_key or None, pool.network_address + index, tuple(allowed), internet))
    dns = _dns(p, dns_text, peers)
    return RoadWarriorsSpec(tuple(peers), pool, dns, port)


def _port(p: Parser, value: Any, tunnel: TunnelSpec, services) -> int | None:
    """The UDP port every edge forwards to home: one nothing else on the edges holds."""
    port = p.port("roadWarriorPort", DEFAULT_PORT if value is None else value)
    if port is None:
        return None
    taken = {tunnel.listen_port: f"WireGuard to home ({fix_key('wireguardPort')})", 53: "DNS", 22: "SSH"}
    taken |= {80: "HTTP", 443: "HTTPS (HTTP/3 would use it)"}
    for i, s in enumerate(services):
        if s.protocol == "udp" and not s.mode.by_hostname and port in s.ports:
            taken.setdefault(port, f"service {s.name!r} ({fix_key(f'services[{i}]')})")
    if port in taken:
        p.fail(
            "roadWarriorPort",
            f"udp {port} is {taken[port]} on the edges already; pick a port of its own, e.g. {DEFAULT_PORT}",
        )
        return None
    return port


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
            f"is {clash}; home's road-warrior interface keeps one peer per key, so one would replace the other: make a "
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
    """The IPv4 LAN prefixes a device may reach, as listed (``lan``: every one of them).
    None (empty) only with ``internet``: a device that uses home as its exit only."""
    if raw_allowed is None:
        whole = ", ".join(map(str, lans)) or "none set"
        p.fail(
            f"{key}.allowedPrefixes",
            "is required: a device reaches only what is listed for it; list the LAN parts it may reach, e.g. "
            f"[{lans[0] if lans else '192.168.1.0/24'}], write [{WHOLE_LAN}] for all of "
            f"{fix_key('homeLanPrefixes')} ({whole}; what leaving it out meant before), or [] with internet: true",
        )
        return []
    if raw_allowed == WHOLE_LAN or raw_allowed == [WHOLE_LAN]:
        if not lans:
            p.fail(
                f"{key}.allowedPrefixes",
                f"is {WHOLE_LAN}, but {fix_key('homeLanPrefixes')} lists no IPv4 prefix, and a device has an IPv4 "
                "address only; add the home LAN's IPv4 prefix there, or use [] with internet: true for a device "
                "that uses home as its exit only",
            )
        return list(lans)
    allowed = []
    items = p.items(f"{key}.allowedPrefixes", raw_allowed, "CIDR prefixes")
    if not items and isinstance(raw_allowed, list) and not internet:
        p.fail(
            f"{key}.allowedPrefixes",
            f"is empty, so the device could reach nothing; write [{WHOLE_LAN}] to reach every IPv4 prefix of "
            f"{fix_key('homeLanPrefixes')}, list the parts it may reach, or set internet: true for a device that "
            "uses home as its exit only",
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
                f"{net} is every address, not a part of the home LAN; to use home as the device's exit to the "
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
