"""Service mode ``forward``: kernel DNAT on the edge, policy routing at home.

Traefik proxies every other service, so home sees the edge's tunnel address unless the
application reads a PROXY header.  A forward service skips Traefik: the edge's
nftables rewrites the destination of packets to its public port to the home target and
routes them into the tunnel with the visitor's source address intact; conntrack undoes
the rewrite on the replies.  Any tcp or udp protocol keeps the visitor's address.

That only works if home sends each reply back through the tunnel its request came in
on, not out of the ISP default route (the visitor would get an answer from an address
it never wrote to, and the CGNAT would drop it anyway).  Home therefore marks every
connection that arrives on a tunnel interface with that tunnel's mark (conntrack mark;
set again by every packet that arrives, so a visitor whose flow moves to another edge
with the same addresses and ports, as a game client does after a failover, is answered
through the edge its packets come from now, not the one they came from first),
copies the mark onto the packets of the connection, and routes marked packets with a
table of their own whose only route is the default into that tunnel::

    ip rule  pref P    fwmark M lookup main suppress_prefixlength 0   # LAN and tunnel routes win
    ip rule  pref P+1  fwmark M lookup T                              # the rest: back into wg-<edge>
    ip route default dev wg-<edge> table T

Every edge has its own mark and table (from its ``index``), so several edges can forward
the same service at once.  Unmarked traffic never meets these rules: the home's default
route and the rest of its routing stay as they were.  The edge peer must then accept
any source address (AllowedIPs 0.0.0.0/0, ::/0); wg-quick is told ``Table = off`` so it
installs no default route for that, and routes the edge's own addresses itself.
"""

from __future__ import annotations

from components.model import edge_contract
from components.model.fleet import FleetConfig, Mode, ServiceSpec
from components.renderers import nft_limits
from components.renderers.nft_literals import one_or_set

MARK_BASE = 0xCE00
"""Connection/packet mark of the tunnel to the edge with index i: MARK_BASE + i."""
TABLE_BASE = 51900
"""Routing table of that tunnel: TABLE_BASE + i (wg-quick's own is 51820)."""
RULE_PRIORITY_BASE = 5000
"""ip rule priorities: RULE_PRIORITY_BASE + 2 i and + 2 i + 1; below main's 32766."""

SYSCTL = "# cgnat-edge: forward services route visitors' packets into the tunnel.\nnet.ipv4.ip_forward = 1\n"


def services(cfg: FleetConfig) -> list[ServiceSpec]:
    return [s for s in cfg.services if s.mode is Mode.FORWARD]


def policy_routing(cfg: FleetConfig) -> bool:
    """Whether home needs the per-tunnel reply routing: something arrives from a tunnel
    with a source address that is not the edge's own."""
    return bool(services(cfg)) or bool(cfg.road_warriors)


def needs_ip_forward(cfg: FleetConfig) -> bool:
    """The edge routes packets itself: forward services or road warriors."""
    return bool(services(cfg)) or bool(cfg.road_warriors)


def reply_table(interface: str) -> str:
    """The home's nft table of one tunnel's reply marks (beside its filter table)."""
    return "cgnat_replies_" + interface.replace("-", "_")


def mark(index: int) -> int:
    return MARK_BASE + index


def table(index: int) -> int:
    return TABLE_BASE + index


def rule_priority(index: int) -> int:
    return RULE_PRIORITY_BASE + 2 * index


def port_text(s: ServiceSpec) -> str:
    return f"{s.port}-{s.port_end}" if s.port_end else str(s.port)


# -- the edge -------------------------------------------------------------------


def edge_forward_rules(cfg: FleetConfig) -> list[str]:
    """Rules of the edge's forward chain (policy drop): the DNATed connections go into
    the tunnel, their replies come back; nothing else is routed.  Visitors'
    connections count with those to the edge's own ports (nft_limits)."""
    if not needs_ip_forward(cfg):
        return []
    wg = edge_contract.WG_INTERFACE
    counts = any(s.protocol == "tcp" for s in services(cfg))
    flows = any(s.protocol == "udp" for s in services(cfg))
    return [
        "ct state established,related accept",
        *(nft_limits.count_rules("ct status dnat meta l4proto tcp", ("v4",)) if counts else []),
        *(
            nft_limits.rate_meter(
                nft_limits.UDP_METER, "ct status dnat meta l4proto udp ct state new", nft_limits.UDP_FLOW_RATE
            )
            if flows
            else []
        ),
        *(
            f'ct status dnat oifname "{wg}" ip daddr {s.target.host} {s.protocol} dport {_target_ports(s)} accept'
            for s in services(cfg)
        ),
    ]


COUNTER_PREFIX = "forward_"


def counter_name(s: ServiceSpec) -> str:
    """The named counter of ``s``'s DNAT rule (the metrics read it by this prefix)."""
    return f"{COUNTER_PREFIX}{s.name}"


def _target_ports(s: ServiceSpec) -> str:
    if s.port_end:
        return f"{s.port}-{s.port_end}"
    return str(s.target.port)


def edge_chains(cfg: FleetConfig) -> list[str]:
    """Extra chains of the edge's ``inet cgnat_edge`` table: the DNAT itself, and the MSS
    clamp of the replies (home's SYN-ACKs announce its LAN's MSS, larger than the tunnel
    carries)."""
    if not services(cfg):
        return []
    wg = edge_contract.WG_INTERFACE
    rules = []
    for s in services(cfg):
        to = f"{s.target.host}" if s.port_end else f"{s.target.host}:{s.target.port}"
        rules.append(
            f'iifname != "{wg}" fib daddr type local {s.protocol} dport {port_text(s)}'
            f' counter name {counter_name(s)} dnat ip to {to} comment "service {s.name}"'
        )
    mss4, mss6 = cfg.tunnel.mtu - 40, cfg.tunnel.mtu - 60
    return [
        "",
        "    # New connections (UDP: flows) per forward service, for the metrics.",
        *(f"    counter {counter_name(s)} {{ }}" for s in services(cfg)),
        "",
        "    # forward services: the kernel rewrites the destination, the visitor's address stays.",
        "    chain forward_dnat {",
        "        type nat hook prerouting priority dstnat; policy accept;",
        *(f"        {r}" for r in rules),
        "    }",
        "",
        "    chain forward_mss {",
        "        type filter hook forward priority mangle; policy accept;",
        f'        iifname "{wg}" meta nfproto ipv4 tcp flags syn / syn,rst tcp option maxseg size > {mss4}'
        f" tcp option maxseg size set {mss4}",
        f'        iifname "{wg}" meta nfproto ipv6 tcp flags syn / syn,rst tcp option maxseg size > {mss6}'
        f" tcp option maxseg size set {mss6}",
        "    }",
    ]


def input_ports_excluded(cfg: FleetConfig, protocol: str) -> set[int]:
    """Public ports the edge's own input chain never sees over IPv4 (they are DNATed
    before it): forward services', and the road warriors' (forwarded to home)."""
    ports = {p for s in services(cfg) if s.protocol == protocol for p in s.ports}
    if protocol == "udp" and cfg.road_warriors:
        ports.add(cfg.road_warriors.port)
    return ports


def edge_input_rules(cfg: FleetConfig) -> list[str]:
    """IPv6 visitors of a forward port: the targets are IPv4, so nothing forwards them,
    and the name they resolved has the edges' AAAA records (tcp/udp services behind
    Traefik do serve IPv6 there).  Refused at once instead of dropped, so a client
    moves on to the IPv4 address (a TCP reset, an ICMPv6 port unreachable) rather than
    waiting out its timeout."""
    rules = []
    for protocol in ("tcp", "udp"):
        ports = sorted({port_text(s) for s in services(cfg) if s.protocol == protocol})
        if protocol == "udp" and cfg.road_warriors:
            ports.append(str(cfg.road_warriors.port))
        if ports:
            dport = one_or_set(ports)
            verdict = "reject with tcp reset" if protocol == "tcp" else "reject with icmpx port-unreachable"
            rules.append(f"meta nfproto ipv6 {protocol} dport {dport} {verdict}")
    return rules


# -- home -------------------------------------------------------------------------


def home_tunnel(cfg: FleetConfig, index: int) -> dict | None:
    """The structured output's ``policyRouting`` of one tunnel (None when not needed)."""
    if not policy_routing(cfg):
        return None
    return {"mark": mark(index), "table": table(index), "priority": rule_priority(index)}


def wg_quick_lines(data: dict, tun: dict) -> list[str]:
    """wg-quick lines of one tunnel: the mark rules in a table of their own, replaced in
    one nft transaction (reloading the tunnel's filter table never leaves a moment in
    which replies lose their way), the ip rules and routes around the interface."""
    pr = tun.get("policyRouting")
    if not pr:
        return []
    nft_table = reply_table(tun["interface"])
    m, t, prio = pr["mark"], pr["table"], pr["priority"]
    v6 = any(":" in a for a in tun["addresses"])
    families = ["-4", "-6"] if v6 else ["-4"]

    def nft(command: str) -> str:
        return f"PreUp = nft '{command}'"

    lines = [
        "# forward services: replies leave through the tunnel their request came in on (mark, table of their own).",
        "Table = off",
        nft(
            f"add table inet {nft_table}; delete table inet {nft_table}; table inet {nft_table} {{ "
            f"chain mark_in {{ type filter hook prerouting priority mangle; "
            f'iifname "%i" ct mark set {m:#x}; ct mark {m:#x} meta mark set ct mark; }}; '
            f"chain mark_out {{ type route hook output priority mangle; ct mark {m:#x} meta mark set ct mark; }}; }}"
        ),
        f"PostDown = nft delete table inet {nft_table}",
        # rp_filter looks the visitor's address up with the packet's mark.
        "PreUp = sysctl -qw net.ipv4.conf.all.src_valid_mark=1",
    ]
    for fam in families:
        lines += [
            f"PreUp = while ip {fam} rule del pref {prio} 2>/dev/null || ip {fam} rule del pref {prio + 1} 2>/dev/null; do :; done",
            f"PreUp = ip {fam} rule add pref {prio} fwmark {m:#x} lookup main suppress_prefixlength 0",
            f"PreUp = ip {fam} rule add pref {prio + 1} fwmark {m:#x} lookup {t}",
            f"PostUp = ip {fam} route replace default dev %i table {t}",
            f"PostDown = ip {fam} rule del pref {prio} || true",
            f"PostDown = ip {fam} rule del pref {prio + 1} || true",
        ]
    lines += [f"PostUp = ip {'-6' if ':' in r else '-4'} route replace {r} dev %i" for r in tun["routes"]]
    return lines


OPENWRT_NFT_PATH = "/etc/nftables.d/60-cgnat-edge-marks.nft"
"""firewall4 includes every /etc/nftables.d/*.nft into its table inet fw4."""


def openwrt_sections(tun: dict, sec: str) -> list[tuple[str, str, object]]:
    """UCI (op, path, value) of one tunnel's reply routing: netifd's own rule and route
    sections (named ``<interface>_*`` so the cleanup finds them), the edge's addresses
    routed explicitly (route_allowed_ips is off: the peer accepts 0.0.0.0/0)."""
    pr = tun.get("policyRouting")
    if not pr:
        return []
    m, t, prio = pr["mark"], pr["table"], pr["priority"]
    out: list[tuple[str, str, object]] = []
    families = [("4", "rule", "route")] + (
        [("6", "rule6", "route6")] if any(":" in a for a in tun["addresses"]) else []
    )
    for fam, rule, route in families:
        out += [
            ("section", f"network.{sec}_pr{fam}a", rule),
            ("set", f"network.{sec}_pr{fam}a.mark", f"{m:#x}"),
            ("set", f"network.{sec}_pr{fam}a.lookup", "main"),
            ("set", f"network.{sec}_pr{fam}a.suppress_prefixlength", 0),
            ("set", f"network.{sec}_pr{fam}a.priority", prio),
            ("section", f"network.{sec}_pr{fam}b", rule),
            ("set", f"network.{sec}_pr{fam}b.mark", f"{m:#x}"),
            ("set", f"network.{sec}_pr{fam}b.lookup", t),
            ("set", f"network.{sec}_pr{fam}b.priority", prio + 1),
            ("section", f"network.{sec}_pr{fam}d", route),
            ("set", f"network.{sec}_pr{fam}d.interface", sec),
            ("set", f"network.{sec}_pr{fam}d.target", "0.0.0.0/0" if fam == "4" else "::/0"),
            ("set", f"network.{sec}_pr{fam}d.table", t),
        ]
    for n, r in enumerate(tun["routes"]):
        kind = "route6" if ":" in r else "route"
        out += [
            ("section", f"network.{sec}_edge{n}", kind),
            ("set", f"network.{sec}_edge{n}.interface", sec),
            ("set", f"network.{sec}_edge{n}.target", r),
        ]
    return out


def openwrt_nft(data: dict) -> str | None:
    """The marking chains for firewall4 (written to ``OPENWRT_NFT_PATH``)."""
    tunnels = [t for t in data["tunnels"] if t.get("policyRouting")]
    if not tunnels:
        return None
    marks = [(t["interface"], t["policyRouting"]["mark"]) for t in tunnels]
    return "\n".join(
        [
            "chain cgnat_edge_mark_in {",
            "\ttype filter hook prerouting priority mangle; policy accept;",
            *(f'\tiifname "{i}" ct mark set {m:#x}' for i, m in marks),
            *(f"\tct mark {m:#x} meta mark set ct mark" for _, m in marks),
            "}",
            "chain cgnat_edge_mark_out {",
            "\ttype route hook output priority mangle; policy accept;",
            *(f"\tct mark {m:#x} meta mark set ct mark" for _, m in marks),
            "}",
            "",
        ]
    )


def routeros_lines(data: dict, comment) -> list[str]:
    """RouterOS 7: a connection mark per tunnel, a routing mark for the replies (not for
    packets coming in from a tunnel, which must reach the LAN), a routing table per tunnel
    whose only route is the default into it."""
    out = []
    for t in data["tunnels"]:
        if not t.get("policyRouting"):
            continue
        iface, name = t["interface"], f"cgnat-edge-{t['interface']}"
        v6 = any(":" in a for a in t["addresses"])
        out.append(f"/routing table add name={name} fib {comment(iface)}")
        for fam in ("ip", "ipv6") if v6 else ("ip",):
            out += [
                f"/{fam} firewall mangle add chain=prerouting in-interface={iface} "
                f"action=mark-connection new-connection-mark={name} passthrough=yes {comment(iface)}",
                f"/{fam} firewall mangle add chain=prerouting connection-mark={name} in-interface-list=!cgnat-edge "
                f"action=mark-routing new-routing-mark={name} passthrough=no {comment(iface)}",
                f"/{fam} firewall mangle add chain=output connection-mark={name} "
                f"action=mark-routing new-routing-mark={name} passthrough=no {comment(iface)}",
                f"/{fam} route add dst-address={'0.0.0.0/0' if fam == 'ip' else '::/0'} gateway={iface} "
                f"routing-table={name} {comment(iface)}",
            ]
    return out
