"""Per-source limits in the edge's nftables table: rate meters and connection counts.

Every per-source state lives in a named set with a ``size``, so a flood of spoofed
sources costs a bounded amount of kernel memory.  What happens when a set is full is
chosen per kind, because the kernel then skips the rule that would have added the
source:

- rate meters (``rate_meter``) expire a source after ``METER_TIMEOUT`` of silence, and
  the sources that find the set full share one source's budget, so a new source is
  still limited while spoofed sources fill the set;
- connection counts (``count_rules``) hold a source while it has open connections and
  drop it with the last one (a set with ``ct count`` cannot have a timeout).  A full
  set lets a new source's connection through: filling it takes a real handshake per
  entry or half-open entries that conntrack forgets within a minute, and failing
  closed would lock every new visitor out instead.

IPv6 sources are keyed per /64: one host, or one home, usually holds a whole /64, and
a per-address key would let it count as 2^64 sources.  IPv4 is keyed per address, so
a family or an office behind one NAT shares one count; the numbers leave room for it.
"""

from __future__ import annotations

METER_SIZE = 65535
"""Sources per set and family (the size an anonymous meter had, now a bound it keeps)."""
METER_TIMEOUT = "10s"
"""A source's rate state is forgotten after this much silence.  The buckets refill in
2 s (burst / rate), so a returning source loses nothing, and spoofed entries leave the
set quickly."""

CONNECTIONS_PER_SOURCE = 64
"""Open TCP connections per IPv4 address or IPv6 /64.  A browser opens at most 6 per host name and a few
hosts; a family of five behind one NAT with phones, laptops and a game client stays
well below 64.  One client holding idle connections is held to 64 instead of
exhausting Traefik, PowerDNS over TCP or home."""

UDP_FLOW_RATE = "20/second burst 100 packets"
"""New UDP flows per source (IPv4 address, IPv6 /64) to the ``udp`` and ``forward``
services, all of them together.  Not a count of open flows: conntrack keeps every
source port of a request/response service for 30 s (120 s once answered), so an
ordinary client would count as dozens.  A game client opens one flow per session and a
request/response client one per question; a source opening flows faster than this
(each a Traefik session, or a conntrack entry and home's work) is cut to it, which
bounds it to some 2,500 flows held at once instead of as many as it can send."""

V6_PREFIX = "ffff:ffff:ffff:ffff::"
KEYS = {"v4": ("ipv4_addr", "ip saddr"), "v6": ("ipv6_addr", f"ip6 saddr & {V6_PREFIX}")}
"""Family suffix: the set's element type and the key expression (IPv6 per /64)."""

TCP_COUNT = "conn"
UDP_METER = "udp"


def rate_meter_sets(name: str) -> list[str]:
    return [
        f"    set {name}_{fam} {{ type {kind}; size {METER_SIZE}; flags dynamic,timeout; timeout {METER_TIMEOUT}; }}"
        for fam, (kind, _) in KEYS.items()
    ]


def rate_meter(name: str, match: str, rate: str) -> list[str]:
    """Drop what ``match`` selects above ``rate`` per source.  The sources the full set
    cannot take share one more budget of ``rate`` among them all, so a flood of new
    spoofed sources gets no more through than one source would, while the sources in
    the set keep theirs."""
    rules = []
    for fam, (_, key) in KEYS.items():
        rules += [
            f"{match} update @{name}_{fam} {{ {key} limit rate over {rate} }} drop",
            f"{match} {key} != @{name}_{fam} limit rate over {rate} drop",
        ]
    return rules


def count_sets() -> list[str]:
    return [
        f"    set {TCP_COUNT}_{fam} {{ type {kind}; size {METER_SIZE}; flags dynamic; }}"
        for fam, (kind, _) in KEYS.items()
    ]


def count_rules(match: str, families: tuple[str, ...] = ("v4", "v6")) -> list[str]:
    """Drop a new TCP connection of ``match`` beyond ``CONNECTIONS_PER_SOURCE``.  Not for
    UDP: conntrack keeps every source port of a request/response service for 30 s, so
    an ordinary client of such a service would count as dozens of flows."""
    return [
        f"{match} ct state new add @{TCP_COUNT}_{fam} {{ {KEYS[fam][1]} ct count over {CONNECTIONS_PER_SOURCE} }} drop"
        for fam in families
    ]
