"""The edge's host firewall as an nftables ruleset.

The provider firewalls are the outer wall; this is the inner one, so a provider
firewall that is misconfigured, detached or missing (some providers apply them late)
still leaves the node closed.  Both derive their open ports from
``FleetConfig.public_ports``, so they cannot disagree.  The ruleset is a complete file
that starts with ``flush ruleset``: loading it again is how changes are applied.
"""

from __future__ import annotations

import ipaddress

from components.model import edge_contract, platforms
from components.model.fleet import FleetConfig
from components.renderers import edge_dns, forwarding, metrics, nft_limits, protection, road_warriors
from components.renderers.nft_literals import one_or_set, set_of


def metadata_addresses() -> tuple[list[str], list[str]]:
    """Every platform's metadata addresses (IPv4, IPv6): one ruleset for the whole
    fleet, and an address a provider does not use costs nothing to block."""
    found = {a for p in platforms.REGISTRY.values() for a in p.metadata_addresses}
    v4 = sorted(a for a in found if ipaddress.ip_address(a).version == 4)
    v6 = sorted(a for a in found if ipaddress.ip_address(a).version == 6)
    return v4, v6


def _metadata_output_rules() -> list[str]:
    """Only root (cloud-init, the bootstrap) may ask the metadata service: it hands out
    the user data, so a compromised Traefik, agent or PowerDNS must not reach it.  The
    resolver and NTP some providers run on the same address stay open to every user."""
    v4, v6 = metadata_addresses()
    shared = sorted(
        {tuple(s.split()) for p in platforms.REGISTRY.values() for s in p.metadata_shared},
        key=lambda s: (s[0], int(s[1])),
    )
    kept = f" meta l4proto . th dport != {set_of(f'{proto} . {port}' for proto, port in shared)}" if shared else ""
    rules = [f"ip daddr {one_or_set(v4)} meta skuid != 0{kept} reject"]
    if v6:
        rules.append(f"ip6 daddr {one_or_set(v6)} meta skuid != 0 reject")
    return rules


def _metadata_forward_rules() -> list[str]:
    """Nothing routed through the edge (a visitor's packet, forwarded or DNATed) reaches
    the metadata service, whatever the rules after allow."""
    v4, v6 = metadata_addresses()
    return [f"ip daddr {one_or_set(v4)} drop", *([f"ip6 daddr {one_or_set(v6)} drop"] if v6 else [])]


DNS_RATE = "50/second burst 100 packets"
"""Per source address (IPv6 per /64), on udp/53 (dnsMode edges): PowerDNS has no
response rate limiting, and an open authoritative server is a reflector.  A resolver
asking for a few home services stays far below it; a spoofed flood aimed at a victim
is cut to this rate per victim address.  TCP answers cannot be reflected (handshake
first)."""


def _dns_meter_rules() -> list[str]:
    """udp/53 limited per source, ahead of ``ct state established accept``: a reflection
    flood repeats one spoofed address and port, and after the first answer conntrack
    calls that flow established, so a meter after it would let the whole flood pass."""
    return nft_limits.rate_meter("dns", "udp dport 53", DNS_RATE)


def _edge_dns_rules(fleet: tuple[list[str], list[str]]) -> list[str]:
    """The health agent only for the fleet's addresses."""
    rules = []
    v4, v6 = fleet
    if v4:
        rules.append(f"ip saddr {set_of(v4)} tcp dport {edge_dns.HEALTH_PORT} accept")
    if v6:
        rules.append(f"ip6 saddr {set_of(v6)} tcp dport {edge_dns.HEALTH_PORT} accept")
    return rules


HEALTH_RATE = "20/second burst 40 packets"
"""New connections per source address (IPv6 per /64) to the health agent in dnsMode
records, where it answers everyone: the checkers (a PowerDNS of the user's, Route 53's
many published and changing ranges) cannot be listed up front, and the agent tells
only whether named checks pass.  A PowerDNS asking every second opens one connection
per check and address; Route 53's checkers one per 10 s each."""


def _health_agent_rules() -> list[str]:
    """dnsMode records: the agent open to every source, new connections rate-limited."""
    port = edge_dns.HEALTH_PORT
    match = f"tcp dport {port} ct state new"
    return [
        *nft_limits.rate_meter("health", match, HEALTH_RATE),
        f"tcp dport {port} accept",
    ]


METERS = ("dns", "health", nft_limits.UDP_METER)


def filled_sets() -> list[str]:
    """``family table set`` of every per-source set the kernel fills as traffic comes:
    the verifier compares the rules, not who has been counted."""
    names = (nft_limits.TCP_COUNT, *METERS)
    return [f"inet {edge_contract.NFT_TABLE} {name}_{fam}" for name in names for fam in nft_limits.KEYS]


def _udp_ports(udp_ports: list[int]) -> list[int]:
    """The udp services' ports: udp/53 has its own meter."""
    return [p for p in udp_ports if p != 53]


def _sets(cfg: FleetConfig, fleet: tuple[list[str], list[str]] | None, udp_ports: list[int]) -> list[str]:
    """The per-source sets the rules below use (nft_limits)."""
    lines = nft_limits.count_sets()
    names = ["dns"] if cfg.dns.edge_served and fleet is not None else []
    if not cfg.dns.edge_served:
        names.append("health")
    if _udp_ports(udp_ports) or any(s.protocol == "udp" for s in forwarding.services(cfg)):
        names.append(nft_limits.UDP_METER)
    lines += [line for name in names for line in nft_limits.rate_meter_sets(name)]
    return [*lines, ""] if lines else []


def _count_rules(tcp_ports: list[int]) -> list[str]:
    """Open connections per source to everything public that holds state per
    connection: SSH, Traefik, PowerDNS over TCP."""
    return nft_limits.count_rules(f"tcp dport {set_of([22, *tcp_ports])}")


def ruleset(cfg: FleetConfig, fleet: tuple[list[str], list[str]] | None = None) -> str:
    """``fleet``: the edges' (IPv4, IPv6) addresses, for dnsMode edges."""
    tcp_ports = [p for p in cfg.public_ports("tcp") if p not in forwarding.input_ports_excluded(cfg, "tcp")]
    udp_ports = [p for p in cfg.public_ports("udp") if p not in forwarding.input_ports_excluded(cfg, "udp")]
    if cfg.dns.edge_served and fleet is None:
        # The first boot's ruleset: DNS opens with the first push, which brings the zone.
        tcp_ports, udp_ports = [p for p in tcp_ports if p != 53], [p for p in udp_ports if p != 53]
    ssh_v4 = [n for n in cfg.ssh.allowed_cidrs if n.version == 4]
    ssh_v6 = [n for n in cfg.ssh.allowed_cidrs if n.version == 6]

    input_rules = [
        *(_dns_meter_rules() if cfg.dns.edge_served and fleet is not None else []),
        "ct state established,related accept",
        "ct state invalid drop",
        'iifname "lo" accept',
        # Neighbour discovery and path-MTU discovery must pass or IPv6 and large
        # TLS records break; echo is rate-limited so the node stays debuggable.
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert, packet-too-big, destination-unreachable, time-exceeded, parameter-problem } accept",
        "icmp type { destination-unreachable, time-exceeded, parameter-problem } accept",
        "icmp type echo-request limit rate 10/second accept",
        "icmpv6 type echo-request limit rate 10/second accept",
        "ip6 saddr fe80::/10 udp dport 546 accept",  # DHCPv6 replies, where the image uses it
    ]
    input_rules += _count_rules(tcp_ports)
    if _udp_ports(udp_ports):
        match = f"udp dport {set_of(_udp_ports(udp_ports))} ct state new"
        input_rules += nft_limits.rate_meter(nft_limits.UDP_METER, match, nft_limits.UDP_FLOW_RATE)
    if ssh_v4:
        input_rules.append(f"ip saddr {set_of(ssh_v4)} tcp dport 22 accept")
    if ssh_v6:
        input_rules.append(f"ip6 saddr {set_of(ssh_v6)} tcp dport 22 accept")
    input_rules += metrics.input_rules(cfg)
    if cfg.dns.edge_served and fleet is not None:
        input_rules += _edge_dns_rules(fleet)
    if not cfg.dns.edge_served:
        input_rules += _health_agent_rules()
    if tcp_ports:
        input_rules.append(f"tcp dport {set_of(tcp_ports)} accept")
    if udp_ports:
        input_rules.append(f"udp dport {set_of(udp_ports)} accept")
    input_rules += forwarding.edge_input_rules(cfg)

    lines = [
        "#!/usr/sbin/nft -f",
        "# Generated by cgnat-edge; changes here are overwritten on the next push.",
        "flush ruleset",
        "",
        "table inet cgnat_edge {",
        *_sets(cfg, fleet, udp_ports),
        "    chain input {",
        "        type filter hook input priority filter; policy drop;",
        *(f"        {r}" for r in input_rules),
        "    }",
        "",
        "    # The edge proxies in user space (Traefik); it routes only forward services' packets.",
        "    chain forward {",
        "        type filter hook forward priority filter; policy drop;",
        *(f"        {r}" for r in _metadata_forward_rules()),
        *(f"        {r}" for r in forwarding.edge_forward_rules(cfg)),
        *(f"        {r}" for r in road_warriors.edge_forward_rules(cfg)),
        "    }",
        "",
        "    chain output {",
        "        type filter hook output priority filter; policy accept;",
        *(f"        {r}" for r in _metadata_output_rules()),
        "    }",
        "",
        "    # Home sits behind PPPoE or DS-Lite with a smaller path MTU than the tunnel's",
        "    # peers assume; clamping the MSS of SYNs through the tunnel keeps large TLS",
        "    # records from stalling when ICMP too-big messages are lost on the way.",
        "    chain mss_clamp {",
        "        type filter hook postrouting priority mangle; policy accept;",
        f'        oifname "{edge_contract.WG_INTERFACE}" tcp flags syn / syn,rst tcp option maxseg size set rt mtu',
        "    }",
        *protection.nft_table_lines(cfg),
        *forwarding.edge_chains(cfg),
        *road_warriors.edge_chains(cfg),
        "}",
        *protection.nft_after_table(cfg),
        "",
    ]
    return "\n".join(lines)
