"""Road warriors: the edges' port forward, home's interface for the devices in every
router form, and the devices' own WireGuard files.

A device's session ends at home (see components/model/road_warriors.py).  Every edge
DNATs ``roadWarriorPort`` on its public IPv4 address to home's road-warrior address,
into its tunnel, the device's address kept, exactly as a forward service: home's reply
routing (components/renderers/forwarding.py) sends the interface's answers back
through the tunnel the device's packets came in on.  Those answers are the router's own
packets, so they take the output path: every form marks them there from the
connection's mark (wg-quick's and OpenWrt's ``mark_out`` route chain, RouterOS's
output mangle).  The edge DNATs to one address, the same on every edge, so a device
keeps its session's address at home whichever edge carries it; the edge routes that
one address to home and nothing of the pool.

Home must also refuse what a taken-over edge could send in a device's name: every form
drops packets with a source in the pool arriving from an edge's tunnel, before
connection tracking (so not even a packet matching a device's open connection passes).

The stock WireGuard apps take one endpoint per peer, so each device gets one file per
edge (``<device>-<edge>``), the same key and address in each, and the user switches
to another edge's file when one is down; home's session follows (the peer's endpoint
roams, the replies follow the connection's mark).  The device's MTU is the tunnel's
less WireGuard's overhead: its packets ride inside the tunnel to the edge.

A device reaches only its ``allowedPrefixes``; with ``internet: true`` it may also reach
everything outside the home LAN, the tunnels and the pool, and leaves through home's
own uplink, masqueraded there (no edge is an exit any more).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping

from components.model import edge_contract
from components.model.deployed import DeployedEdge
from components.model.fleet import FleetConfig
from components.model.keys import public_key_of
from components.model.road_warriors import INTERFACE, NESTED_OVERHEAD, RoadWarrior

KEEPALIVE = 25


def peers(cfg: FleetConfig) -> tuple[RoadWarrior, ...]:
    return cfg.road_warriors.peers if cfg.road_warriors else ()


def device_mtu(cfg: FleetConfig) -> int:
    return cfg.tunnel.mtu - NESTED_OVERHEAD


# -- the edge ---------------------------------------------------------------------


def edge_forward_rules(cfg: FleetConfig) -> list[str]:
    """Forward-chain rule (policy drop): the DNATed WireGuard packets into the tunnel;
    their replies are established (forwarding.edge_forward_rules)."""
    rw = cfg.road_warriors
    if rw is None:
        return []
    wg = edge_contract.WG_INTERFACE
    return [f'ct status dnat oifname "{wg}" ip daddr {rw.home_address} udp dport {rw.port} accept']


def edge_chains(cfg: FleetConfig) -> list[str]:
    """The DNAT of the road-warrior port to home."""
    rw = cfg.road_warriors
    if rw is None:
        return []
    wg = edge_contract.WG_INTERFACE
    return [
        "",
        "    # road warriors: their WireGuard sessions end at home; the edge forwards ciphertext only.",
        "    chain road_warrior_dnat {",
        "        type nat hook prerouting priority dstnat; policy accept;",
        f'        iifname != "{wg}" fib daddr type local udp dport {rw.port} dnat ip to {rw.home_address}'
        ' comment "road warriors"',
        "    }",
    ]


# -- home: the structured form ----------------------------------------------------


def home_block(cfg: FleetConfig, private_keys: Mapping[str, str | None]) -> dict | None:
    """The structured output's ``roadWarriors`` (None without devices)."""
    spec = cfg.road_warriors
    if spec is None:
        return None
    devices = []
    for rw in spec.peers:
        private = private_keys.get(rw.name)
        public = rw.public_key or (public_key_of(private) if private else None)
        devices.append(
            {
                "name": rw.name,
                "publicKey": public,
                "address": str(rw.address),
                "prefixes": [str(n) for n in rw.allowed if n.version == 4],
                "internet": rw.internet,
            }
        )
    lans = [str(n) for n in cfg.home.lan_prefixes if n.version == 4]
    return {
        "interface": INTERFACE,
        "listenPort": spec.port,
        "address": f"{spec.home_address}/{spec.pool.prefixlen}",
        "pool": str(spec.pool),
        "mtu": device_mtu(cfg),
        "notInternet": [*lans, str(cfg.tunnel.ipv4_prefix), str(spec.pool)],
        "devices": devices,
    }


def pool_of(data: dict) -> str | None:
    rw = data.get("roadWarriors")
    return rw["pool"] if rw else None


def home_rw_address(data: dict) -> str:
    return data["roadWarriors"]["address"].split("/")[0]


# -- home: wg-quick ----------------------------------------------------------------


def wg_quick(data: dict) -> str | None:
    """/etc/wireguard/cgnat-rw.conf: the devices' interface, its filter (each device to
    its prefixes; with internet, out of home's uplink, masqueraded)."""
    rw = data.get("roadWarriors")
    if not rw:
        return None
    table = "cgnat_edge_" + INTERFACE.replace("-", "_")

    def nft(command: str) -> str:
        return f"PreUp = nft {shlex.quote(command)}"

    lines = [
        f"# cgnat-edge {data['project']}/{data['stack']}: home end of the road warriors' tunnels (every edge forwards",
        f"# udp {rw['listenPort']} here). Install as /etc/wireguard/{INTERFACE}.conf (mode 0600), then:",
        f"# systemctl enable --now wg-quick@{INTERFACE}",
        "[Interface]",
        f"Address = {rw['address']}",
        f"ListenPort = {rw['listenPort']}",
        f"MTU = {rw['mtu']}",
    ]
    if data["privateKey"]:
        lines.append(f"PrivateKey = {data['privateKey']}")
    else:
        lines += [
            f"# The home key (public {data['publicKey']}) is kept in {data['privateKeyFile']}, as for the tunnels.",
            f"PostUp = wg set %i private-key {data['privateKeyFile']}",
        ]
    lines += [
        "PreUp = sysctl -qw net.ipv4.ip_forward=1",
        "# Each device reaches only its declared prefixes (the router itself included).",
        nft(f"add table inet {table}; delete table inet {table}; add table inet {table}"),
        nft(f"add chain inet {table} from_device"),
        nft(f"add rule inet {table} from_device ct state established,related accept"),
    ]
    for dev in rw["devices"]:
        if dev["prefixes"]:
            lines.append(
                nft(
                    f"add rule inet {table} from_device ip saddr {dev['address']} ip daddr "
                    f"{{ {', '.join(dev['prefixes'])} }} accept"
                )
            )
        if dev["internet"]:
            lines.append(
                nft(
                    f"add rule inet {table} from_device ip saddr {dev['address']} ip daddr != "
                    f"{{ {', '.join(rw['notInternet'])} }} accept"
                )
            )
    lines += [
        nft(f"add rule inet {table} from_device meta l4proto tcp reject with tcp reset"),
        nft(f"add rule inet {table} from_device reject"),
    ]
    for hook in ("input", "forward"):
        lines += [
            nft(f"add chain inet {table} {hook} {{ type filter hook {hook} priority filter; }}"),
            nft(f'add rule inet {table} {hook} iifname "%i" jump from_device'),
        ]
    exits = [d["address"] for d in rw["devices"] if d["internet"]]
    if data["masquerade"] or exits:
        lines.append(nft(f"add chain inet {table} postrouting {{ type nat hook postrouting priority srcnat; }}"))
    if data["masquerade"]:
        lines.append(nft(f'add rule inet {table} postrouting iifname "%i" masquerade'))
    elif exits:
        lines.append(
            nft(
                f'add rule inet {table} postrouting iifname "%i" ip saddr {{ {", ".join(exits)} }} ip daddr != '
                f"{{ {', '.join(rw['notInternet'])} }} masquerade"
            )
        )
    lines.append(f"PostDown = nft delete table inet {table}")
    for dev in rw["devices"]:
        lines += [
            "",
            "[Peer]",
            f"# road warrior {dev['name']}",
            f"PublicKey = {dev['publicKey']}",
            f"AllowedIPs = {dev['address']}/32",
        ]
    return "\n".join(lines) + "\n"


def wg_quick_tunnel_rules(data: dict, table: str) -> list[str]:
    """nft commands for an edge tunnel's table: the devices' UDP to home's road-warrior
    address may come in; a pool source from an edge never does (raw priority: before
    conntrack, so no open connection of a device lets a forged packet through)."""
    rw = data.get("roadWarriors")
    if not rw:
        return []
    return [
        f"add chain inet {table} pool {{ type filter hook prerouting priority raw; }}",
        f'add rule inet {table} pool iifname "%i" ip saddr {rw["pool"]} drop',
        f"add rule inet {table} from_edge ip daddr {home_rw_address(data)} udp dport {rw['listenPort']} accept",
    ]


# -- home: OpenWrt -----------------------------------------------------------------

OPENWRT_SECTION = INTERFACE.replace("-", "_")
OPENWRT_ZONE = "cgnat_rw"


def openwrt_batch(data: dict, s: Callable[[str, object], None], add: Callable[[str, object], None], raw) -> None:
    """The devices' interface, zone and rules (``s``: set, ``add``: add_list, ``raw``: a
    bare line).  The zone rejects by default; each device's rules accept its prefixes
    (dest lan) and the router's own addresses among them (no dest: input)."""
    rw = data.get("roadWarriors")
    if not rw:
        return
    sec = OPENWRT_SECTION
    raw(f"set network.{sec}=interface")
    s(f"network.{sec}.proto", "wireguard")
    s(f"network.{sec}.private_key", data["privateKey"] or "<home private key: never leaves home>")
    s(f"network.{sec}.listen_port", rw["listenPort"])
    s(f"network.{sec}.mtu", rw["mtu"])
    add(f"network.{sec}.addresses", rw["address"])
    for i, dev in enumerate(rw["devices"]):
        raw(f"set network.{sec}_dev{i}=wireguard_{sec}")
        s(f"network.{sec}_dev{i}.description", f"cgnat-edge road warrior {dev['name']}")
        s(f"network.{sec}_dev{i}.public_key", dev["publicKey"])
        add(f"network.{sec}_dev{i}.allowed_ips", f"{dev['address']}/32")
        s(f"network.{sec}_dev{i}.route_allowed_ips", 1)
    zone = "cgnat_edge_rwzone"
    raw(f"set firewall.{zone}=zone")
    s(f"firewall.{zone}.name", OPENWRT_ZONE)
    s(f"firewall.{zone}.input", "REJECT")
    s(f"firewall.{zone}.output", "ACCEPT")
    s(f"firewall.{zone}.forward", "REJECT")
    add(f"firewall.{zone}.network", sec)
    port = "cgnat_edge_rwport"
    raw(f"set firewall.{port}=rule")
    s(f"firewall.{port}.name", "cgnat-edge road warriors: their WireGuard, forwarded by the edges")
    s(f"firewall.{port}.src", "cgnat_edge")
    s(f"firewall.{port}.dest_ip", home_rw_address(data))
    s(f"firewall.{port}.dest_port", rw["listenPort"])
    s(f"firewall.{port}.proto", "udp")
    s(f"firewall.{port}.target", "ACCEPT")
    for i, dev in enumerate(rw["devices"]):
        rules = [(f"cgnat_edge_rw{i}", "lan"), (f"cgnat_edge_rw{i}_router", None)] if dev["prefixes"] else []
        for sec_name, dest in rules:
            raw(f"set firewall.{sec_name}=rule")
            s(f"firewall.{sec_name}.name", f"cgnat-edge road warrior {dev['name']}")
            s(f"firewall.{sec_name}.src", OPENWRT_ZONE)
            if dest:
                s(f"firewall.{sec_name}.dest", dest)
            s(f"firewall.{sec_name}.src_ip", dev["address"])
            for prefix in dev["prefixes"]:
                add(f"firewall.{sec_name}.dest_ip", prefix)
            s(f"firewall.{sec_name}.proto", "all")
            s(f"firewall.{sec_name}.target", "ACCEPT")
        if dev["internet"]:
            # the wan zone masquerades what leaves by it (OpenWrt's default)
            sec_name = f"cgnat_edge_rw{i}_wan"
            raw(f"set firewall.{sec_name}=rule")
            s(f"firewall.{sec_name}.name", f"cgnat-edge road warrior {dev['name']}: the internet")
            s(f"firewall.{sec_name}.src", OPENWRT_ZONE)
            s(f"firewall.{sec_name}.dest", "wan")
            s(f"firewall.{sec_name}.src_ip", dev["address"])
            s(f"firewall.{sec_name}.proto", "all")
            s(f"firewall.{sec_name}.target", "ACCEPT")
    if data["masquerade"]:
        sec_name = "cgnat_edge_rw_masq"
        raw(f"set firewall.{sec_name}=nat")
        s(f"firewall.{sec_name}.name", "cgnat-edge road warriors into the LAN answer to this box")
        s(f"firewall.{sec_name}.src", "lan")
        s(f"firewall.{sec_name}.src_ip", rw["pool"])
        s(f"firewall.{sec_name}.proto", "all")
        s(f"firewall.{sec_name}.target", "MASQUERADE")


def openwrt_nft(data: dict) -> str:
    """firewall4 include: the pool-source drop on the edge tunnels, before conntrack."""
    rw = data.get("roadWarriors")
    if not rw:
        return ""
    ifaces = ", ".join(f'"{t["interface"]}"' for t in data["tunnels"])
    return "\n".join(
        [
            "chain cgnat_edge_pool {",
            "\ttype filter hook prerouting priority raw; policy accept;",
            f"\tiifname {{ {ifaces} }} ip saddr {rw['pool']} drop",
            "}",
            "",
        ]
    )


# -- home: RouterOS ----------------------------------------------------------------


ROUTEROS_LAN_LIST = "cgnat-edge-not-internet"


def routeros_interface(data: dict, comment: Callable[[str], str], ros: Callable[[object], str]) -> list[str]:
    rw = data.get("roadWarriors")
    if not rw:
        return []
    out = [
        f"/interface wireguard add name={INTERFACE} listen-port={rw['listenPort']} mtu={rw['mtu']} "
        f"private-key={ros(data['privateKey'] or '<home private key: never leaves home>')} {comment('road warriors')}",
        f"/ip address add address={rw['address']} interface={INTERFACE} {comment(INTERFACE)}",
    ]
    for dev in rw["devices"]:
        out.append(
            f"/interface wireguard peers add interface={INTERFACE} public-key={ros(dev['publicKey'])} "
            f"allowed-address={dev['address']}/32 {comment('road warrior ' + dev['name'])}"
        )
    for prefix in rw["notInternet"] if any(d["internet"] for d in rw["devices"]) else ():
        out.append(f"/ip firewall address-list add list={ROUTEROS_LAN_LIST} address={prefix} {comment('not internet')}")
    out.append(
        f"/ip firewall raw add chain=prerouting in-interface-list=cgnat-edge src-address={rw['pool']} action=drop "
        f"{comment('no device address from an edge')}"
    )
    return out


def routeros_filter(data: dict, comment: Callable[[str], str], chain: str, before: str) -> list[str]:
    """``chain`` (input or forward) rules for the devices, each placed with ``before``
    ahead of the router's own drops; the drop of everything else comes last."""
    rw = data.get("roadWarriors")
    if not rw:
        return []
    menu = "/ip firewall filter"
    out = []
    if chain == "input":
        out.append(
            f"{menu} add chain=input in-interface-list=cgnat-edge dst-address={home_rw_address(data)} protocol=udp "
            f"dst-port={rw['listenPort']} action=accept {comment('road warriors: their WireGuard')} {before}"
        )
    out.append(
        f"{menu} add chain={chain} in-interface={INTERFACE} connection-state=established,related action=accept "
        f"{comment('road warriors: replies')} {before}"
    )
    for dev in rw["devices"]:
        for prefix in dev["prefixes"]:
            out.append(
                f"{menu} add chain={chain} in-interface={INTERFACE} src-address={dev['address']} dst-address={prefix} "
                f"action=accept {comment('road warrior ' + dev['name'])} {before}"
            )
        if dev["internet"] and chain == "forward":
            out.append(
                f"{menu} add chain=forward in-interface={INTERFACE} src-address={dev['address']} "
                f"dst-address-list=!{ROUTEROS_LAN_LIST} action=accept "
                f"{comment('road warrior ' + dev['name'] + ': the internet')} {before}"
            )
    out.append(
        f"{menu} add chain={chain} in-interface={INTERFACE} action=drop {comment('road warriors: nothing else')} {before}"
    )
    return out


def routeros_nat(data: dict, comment: Callable[[str], str]) -> list[str]:
    rw = data.get("roadWarriors")
    if not rw:
        return []
    if data["masquerade"]:
        return [
            f"/ip firewall nat add chain=srcnat src-address={rw['pool']} action=masquerade {comment('road warriors')}"
        ]
    return [
        f"/ip firewall nat add chain=srcnat src-address={d['address']} dst-address-list=!{ROUTEROS_LAN_LIST} "
        f"action=masquerade {comment('road warrior ' + d['name'] + ': the internet')}"
        for d in rw["devices"]
        if d["internet"]
    ]


# -- the devices --------------------------------------------------------------------


def device_configs(
    cfg: FleetConfig,
    edges: list[DeployedEdge[str]],
    private_keys: Mapping[str, str | None],
    home_public_key: str,
) -> dict[str, dict[str, str]]:
    """{device: {edge: wg-quick file}}; a device whose key the stack was given gets a
    placeholder where its private key goes (the key never left the device).  The peer
    is home, reached at an edge's IPv4 address (the edges forward IPv4 only)."""
    out: dict[str, dict[str, str]] = {}
    spec = cfg.road_warriors
    if spec is None:
        return out
    for rw in spec.peers:
        private = private_keys.get(rw.name)
        # internet: everything into the tunnel (home is the exit); else the LAN prefixes only.
        allowed = ["0.0.0.0/0"] if rw.internet else [str(n) for n in rw.allowed]
        files = {}
        for edge in sorted(edges, key=lambda e: e.spec.index):
            if not edge.ipv4:
                continue
            lines = [
                f"# cgnat-edge {cfg.project}/{cfg.stack}: road warrior {rw.name} to home, through edge {edge.name} "
                f"({edge.spec.location.city}, {edge.spec.location.country})",
                "# Import into the WireGuard app (file or QR code); if this edge is down, switch to another edge's file.",
                f"# MTU: the tunnel's {cfg.tunnel.mtu} less {NESTED_OVERHEAD}, as this tunnel rides inside home's.",
                "[Interface]",
                f"PrivateKey = {private or '<the private key kept on the device>'}",
                f"Address = {rw.address}/32",
                f"MTU = {device_mtu(cfg)}",
            ]
            if spec.dns is not None:
                lines.append(f"DNS = {spec.dns}")
            lines += [
                "",
                "[Peer]",
                f"# home, through edge {edge.name}",
                f"PublicKey = {home_public_key}",
                f"Endpoint = {edge.ipv4}:{spec.port}",
                f"AllowedIPs = {', '.join(allowed)}",
                f"PersistentKeepalive = {KEEPALIVE}",
                "",
            ]
            files[edge.name] = "\n".join(lines)
        out[rw.name] = files
    return out
