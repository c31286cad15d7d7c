"""The home side of the tunnels, in the forms home routers take.

Home dials out to every edge (CGNAT: nobody can dial in), on one interface per edge so
that a dead edge, or a rotated edge key, leaves the other tunnels alone.  Each
interface lets in only its edge's tunnel addresses and routes only those: the home's
default route and the rest of its routing table are never touched.

``render`` returns one dict, the secret stack output ``homeConfigs``::

    {
      "structured": {...},            # documented below; feed any other router from it
      "wgQuick":   {"<edge>": "..."},  # /etc/wireguard/<interface>.conf, one per edge
      "openwrt":   "...",             # OpenWrt shell script: cleanup, `uci batch`, commit, reload
      "routeros":  "...",             # RouterOS 7 script (/import)
    }

Every form lets an edge reach only the declared service targets (address, protocol and
port, ``forwardAllow``): an edge is a server on the internet, and if it is taken over it
must not see the rest of the LAN.  The router itself answers a tunnel only with replies
and refusals (a TCP reset, which the edge's health agent needs from home's tunnel
address); the box running wg-quick is a LAN host like any other.  Every form can be
applied again after an edge or a service was removed and leaves nothing of it behind:
the OpenWrt script deletes the sections an earlier run made before it writes the
current ones, the RouterOS script removes every item carrying its comment tag before it
adds them again.

``structured`` (version 2: road warriors' sessions end at home, ``roadWarriors``
replaces version 1's ``roadWarriorAllow``)::

    version          2
    project, stack   where it came from
    role             "router" (the peer is the LAN's gateway) or "host" (a LAN box:
                     masquerade tunnel traffic into the LAN so LAN hosts answer it)
    privateKey       base64 home private key, or null when the stack was given
                     homePublicKey: the key never left home; use privateKeyFile's key
    privateKeyFile   where the wg-quick files expect that key when privateKey is null
    publicKey        home public key (the edges' peer key)
    lanPrefixes      home LAN prefixes the edges route into the tunnels
    masquerade       true when role is host
    forwardAllow     [{"service", "address", "port", "protocol"[, "portEnd"]}]: the only LAN
                     destinations the edges need; a firewall may allow just these
                     (portEnd: the last port of a forward service's range)
    roadWarriors     null, or the devices' interface at home (their sessions end there;
                     every edge forwards udp listenPort to address):
      interface, listenPort, address (with the pool's length), pool, mtu
      notInternet    prefixes an internet: true device still may not reach
      devices        [{"name", "publicKey", "address", "prefixes", "internet"}]: each
                     device reaches its prefixes only; drop anything from a tunnel
                     with a source in pool (an edge never speaks for a device)
    tunnels          one per edge:
      edge, provider, location, country
      interface      Linux-safe interface name (<= 15 characters)
      addresses      home addresses on that interface, with prefix length
      mtu            interface MTU
      peer:
        publicKey            the edge's key
        endpoint             "<public IPv4>:<port>" (or "[IPv6]:port" for an IPv6-only edge)
        endpointIpv6         "[<public IPv6>]:<port>" or null; use it instead of
                             endpoint when the home has IPv6 and the CGNAT is IPv4-only
        allowedIps           the edge's tunnel addresses (host routes), nothing more
        persistentKeepalive  seconds; keeps the CGNAT mapping open
      routes         prefixes to route into this interface (= allowedIps without
                     forward services or road warriors)
      policyRouting  null, or with forward services or road warriors {"mark", "table",
                     "priority"}: the peer then accepts any source (allowedIps
                     0.0.0.0/0, ::/0, never routed as such); mark each connection
                     arriving on this interface (conntrack mark), route packets of
                     marked connections by rule "priority": main without its default
                     route, rule "priority"+1: table "table" = default dev <interface>
                     (see components/renderers/forwarding.py)

With road warriors the output also holds ``wgQuickRoadWarriors`` (home's
/etc/wireguard/cgnat-rw.conf) and ``roadWarriors``: {device: {edge: wg-quick file}},
the files for the devices' WireGuard apps (see renderers/road_warriors.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
from collections.abc import Callable

from components.model.deployed import DeployedEdge
from components.model.fleet import FleetConfig, HomeRole, Target
from components.model.keys import public_key_of
from components.renderers import forwarding, metrics, road_warriors
from components.renderers import tunnel as tunnel_module

HOME_KEY_FILE = "/etc/wireguard/cgnat-edge-home.key"
"""Where the wg-quick files read the home private key from when it never left home."""

PRIVATE_KEY_PLACEHOLDER = "<home private key: never leaves home>"


def interface_names(edge_names: list[str]) -> dict[str, str]:
    """``wg-<edge>``, shortened to fit IFNAMSIZ with a hash of the full name, so the
    name never changes while the edge exists and two long names cannot collide."""
    names: dict[str, str] = {}
    for edge in sorted(edge_names):
        name = f"wg-{edge}"
        if len(name) > tunnel_module.IFNAMSIZ:
            digest = hashlib.sha256(edge.encode()).hexdigest()[:4]
            name = f"wg-{edge[: tunnel_module.IFNAMSIZ - 3 - 5]}-{digest}"
        names[edge] = name
    if len(set(names.values())) != len(names):
        raise ValueError(f"edge names give clashing interface names {sorted(names.values())}; rename an edge")
    return names


def _uci_name(interface: str) -> str:
    """UCI section names allow letters, digits and underscores only."""
    return re.sub(r"[^A-Za-z0-9_]", "_", interface)


def _endpoints(peer: DeployedEdge[str], port: int) -> tuple[str, str | None]:
    v6 = f"[{ipaddress.IPv6Address(peer.ipv6)}]:{port}" if peer.ipv6 else None
    if peer.ipv4:
        return f"{ipaddress.IPv4Address(peer.ipv4)}:{port}", v6
    if v6:
        return v6, v6
    raise ValueError(f"edge {peer.name} has no public address to dial")


def _forward_allow(cfg: FleetConfig) -> list[dict]:
    seen: set[tuple[str, int, str]] = set()
    rules = []
    for svc in cfg.services:
        auth = svc.forward_auth
        sign_in = Target(auth.host, auth.port) if auth is not None and auth.at_home else None
        for target in (svc.target, svc.http_target, sign_in):
            if target is None:
                continue
            key = (str(target.host), target.port, svc.protocol)
            if key in seen:
                continue
            seen.add(key)
            rule = {"service": svc.name, "address": str(target.host), "port": target.port, "protocol": svc.protocol}
            if svc.port_end:
                rule["portEnd"] = svc.port_end
            rules.append(rule)
    return rules


def structured(
    cfg: FleetConfig,
    peers: list[DeployedEdge[str]],
    home_private_key: str | None,
    road_warrior_keys: dict[str, str | None] | None = None,
) -> dict:
    """The router-neutral form; every other rendering is made from it."""
    home_public = public_key_of(home_private_key) if home_private_key else cfg.home.public_key
    if not home_public:
        raise ValueError("need either the home private key or HomeSpec.public_key")
    if home_private_key and cfg.home.public_key and home_public != cfg.home.public_key:
        raise ValueError("home private key does not match homePublicKey")
    ifnames = interface_names([p.name for p in peers])
    tunnels = []
    for peer in sorted(peers, key=lambda p: p.spec.index):
        addrs = tunnel_module.addresses(cfg.tunnel, peer.spec)
        endpoint, endpoint_v6 = _endpoints(peer, cfg.tunnel.listen_port)
        allowed = [str(n) for n in addrs.edge_hosts]
        policy = forwarding.home_tunnel(cfg, peer.spec.index)
        # Forwarded packets keep the visitor's source: the edge peer must accept any.
        accepted = ["0.0.0.0/0"] + (["::/0"] if addrs.home_v6 else []) if policy else allowed
        tunnels.append(
            {
                "edge": peer.name,
                "provider": peer.spec.provider,
                "location": peer.spec.location.code,
                "country": peer.spec.location.country,
                "interface": ifnames[peer.name],
                "addresses": [str(a) for a in addrs.home_interfaces],
                "mtu": cfg.tunnel.mtu,
                "peer": {
                    "publicKey": peer.public_key,
                    "endpoint": endpoint,
                    "endpointIpv6": endpoint_v6,
                    "allowedIps": accepted,
                    "persistentKeepalive": cfg.tunnel.keepalive,
                },
                "routes": allowed,
                "policyRouting": policy,
                # The edge's metrics endpoint, through this tunnel (docs/metrics.md).
                "metrics": metrics.address(cfg, peer.spec),
            }
        )
    return {
        "version": 2,
        "project": cfg.project,
        "stack": cfg.stack,
        "role": cfg.home.role,
        "privateKey": home_private_key,
        "privateKeyFile": None if home_private_key else HOME_KEY_FILE,
        "publicKey": home_public,
        "lanPrefixes": [str(n) for n in cfg.home.lan_prefixes],
        "masquerade": cfg.home.role == HomeRole.HOST,
        "forwardAllow": _forward_allow(cfg),
        "roadWarriors": road_warriors.home_block(cfg, road_warrior_keys or {}),
        "tunnels": tunnels,
    }


def _nft_table(interface: str) -> str:
    return "cgnat_edge_" + _uci_name(interface)


def _nft_match(rule: dict) -> str:
    family = "ip6" if ipaddress.ip_address(rule["address"]).version == 6 else "ip"
    return f"{family} daddr {rule['address']} {rule['protocol']} dport {_ports(rule)}"


def _ports(rule: dict) -> str:
    return f"{rule['port']}-{rule['portEnd']}" if rule.get("portEnd") else str(rule["port"])


def _wg_quick_firewall(data: dict, iface: str) -> list[str]:
    """nftables rules for one tunnel, in one table of their own.

    They go in as PreUp, before the interface exists (nft matches iifname by string), so
    there is no moment in which the edge's packets meet no filter; PostDown removes the
    table after the interface is gone.  The first PreUp empties the table if a crash left
    one behind.  The input hook is filtered too: the box running wg-quick is a LAN host
    like any other, reachable only where it is a declared target."""
    table = _nft_table(iface)

    def nft(command: str) -> str:
        return f"PreUp = nft {shlex.quote(command)}"

    lines = [
        "# Edge -> LAN: only the declared service targets; anything else the edge sends is refused.",
        nft(f"add table inet {table}; delete table inet {table}; add table inet {table}"),
        nft(f"add chain inet {table} from_edge"),
        nft(f"add rule inet {table} from_edge ct state established,related accept"),
    ]
    for rule in data["forwardAllow"]:
        lines += [f"# service {rule['service']}", nft(f"add rule inet {table} from_edge {_nft_match(rule)} accept")]
    rw = road_warriors.wg_quick_tunnel_rules(data, table)
    if rw:
        lines += ["# road warriors: their WireGuard to home; never a device's address from the edge."]
        lines += [nft(command) for command in rw]
    lines += [
        nft(f"add rule inet {table} from_edge meta l4proto tcp reject with tcp reset"),
        nft(f"add rule inet {table} from_edge reject"),
    ]
    for hook in ("input", "forward"):
        lines += [
            nft(f"add chain inet {table} {hook} {{ type filter hook {hook} priority filter; }}"),
            nft(f'add rule inet {table} {hook} iifname "%i" jump from_edge'),
        ]
    if data["masquerade"]:
        lines += [
            "# role host: tunnel traffic into the LAN leaves with this box's address, so LAN hosts reply to this box.",
            nft(f"add chain inet {table} postrouting {{ type nat hook postrouting priority srcnat; }}"),
            nft(f'add rule inet {table} postrouting iifname "%i" masquerade'),
        ]
    lines.append(f"PostDown = nft delete table inet {table}")
    return lines


def wg_quick(data: dict, tunnel: dict) -> str:
    """One wg-quick file.  wg-quick's default table handling routes exactly AllowedIPs,
    which are host routes to the edge: the default route stays where it was."""
    iface = tunnel["interface"]
    peer = tunnel["peer"]
    lines = [
        f"# cgnat-edge {data['project']}/{data['stack']}: home end of the tunnel to edge {tunnel['edge']} ({tunnel['provider']} {tunnel['location']}, {tunnel['country']})",
        f"# Install as /etc/wireguard/{iface}.conf (mode 0600), then: systemctl enable --now wg-quick@{iface}",
        "# Needs nft (package nftables).",
        "[Interface]",
        f"Address = {', '.join(tunnel['addresses'])}",
        f"MTU = {tunnel['mtu']}",
    ]
    if data["privateKey"]:
        lines.append(f"PrivateKey = {data['privateKey']}")
    else:
        lines += [
            f"# {PRIVATE_KEY_PLACEHOLDER}: the stack only knows its public key {data['publicKey']}.",
            f"# Keep the private key in {data['privateKeyFile']} (mode 0600); every tunnel uses it.",
            f"PostUp = wg set %i private-key {data['privateKeyFile']}",
        ]
    if data["masquerade"]:
        has_v6_lan = any(ipaddress.ip_network(n).version == 6 for n in data["lanPrefixes"])
        lines += [
            "# role host: this box forwards tunnel traffic into the LAN.",
            "PreUp = sysctl -qw net.ipv4.ip_forward=1",
        ]
        if has_v6_lan:
            lines += [
                "# IPv6 forwarding makes Linux ignore router advertisements unless accept_ra=2 on the LAN interface.",
                "PreUp = sysctl -qw net.ipv6.conf.all.forwarding=1",
            ]
    lines += _wg_quick_firewall(data, iface)
    lines += forwarding.wg_quick_lines(data, tunnel)
    lines += [
        "",
        "[Peer]",
        f"# edge {tunnel['edge']}",
        f"PublicKey = {peer['publicKey']}",
        f"Endpoint = {peer['endpoint']}",
    ]
    if peer["endpointIpv6"] and peer["endpointIpv6"] != peer["endpoint"]:
        lines.append(
            f"# Endpoint = {peer['endpointIpv6']}   (use this one if home has IPv6 and the CGNAT is IPv4-only)"
        )
    lines += [
        f"AllowedIPs = {', '.join(peer['allowedIps'])}",
        f"PersistentKeepalive = {peer['persistentKeepalive']}",
        "",
    ]
    return "\n".join(lines)


def _uci_quote(value: object) -> str:
    text = str(value)
    if "'" in text:
        raise ValueError(f"unexpected quote in UCI value {text!r}")
    return f"'{text}'"


OPENWRT_ZONE = "cgnat_edge"
"""The firewall zone of the tunnels; every firewall section the OpenWrt script owns is
named with this prefix, and the zone's network list names the interfaces it owns."""

_OPENWRT_CLEANUP = r"""# 1. Delete what an earlier run made.  UCI has no wildcard delete, so the script finds
#    its own sections: the interfaces listed in the zone {zone} (plus the names used
#    now, in case a section of that name exists already), the peer sections of those
#    interfaces (type wireguard_<interface>), and every firewall section named {zone}*.
for iface in $(uci -q get firewall.{zone}.network || true) {current}; do
	for peer in $(uci -q show network | sed -n -e "s/^network\.\([A-Za-z0-9_]*\)=wireguard_$iface\$/\1/p" \
		-e "s/^network\.\(${{iface}}_[A-Za-z0-9_]*\)=\(route\|route6\|rule\|rule6\)\$/\1/p"); do
		uci delete "network.$peer"
	done
	uci -q delete "network.$iface" || true
done
for section in $(uci -q show firewall | sed -n "s/^firewall\.\({zone}[A-Za-z0-9_]*\)=.*/\1/p"); do
	uci delete "firewall.$section"
done
"""


def openwrt(data: dict) -> str:
    """An OpenWrt shell script: one interface per edge, a firewall zone for all of them
    that may reach only the service targets, and for role host a masquerade into the LAN.

    A script rather than bare ``uci batch`` input because re-applying must delete the
    sections of removed edges and services, whose names the current stack no longer
    knows: the script finds them with ``uci show`` (see ``_OPENWRT_CLEANUP``), then feeds
    the current sections to ``uci batch`` and commits only network and firewall."""
    zone = OPENWRT_ZONE
    sections = [_uci_name(t["interface"]) for t in data["tunnels"]]
    owned = [*sections, road_warriors.OPENWRT_SECTION]
    out = [
        "#!/bin/sh",
        f"# cgnat-edge {data['project']}/{data['stack']}: OpenWrt 22.03+ with firewall4 (packages wireguard-tools, kmod-wireguard).",
        "# Run on the router as root: sh openwrt.sh",
        "# Re-running it replaces everything an earlier run made, including edges and services removed since.",
        "# The LAN firewall zone is assumed to be named 'lan'.",
    ]
    if not data["privateKey"]:
        out.append(
            f"# Replace {PRIVATE_KEY_PLACEHOLDER} with the private key kept at home (public key {data['publicKey']})."
        )
    out += ["set -eu", _OPENWRT_CLEANUP.format(zone=zone, current=" ".join(owned)).rstrip("\n")]
    out += ["# 2. Write the current sections (staged until the commit below).", "uci batch <<'EOF'"]

    def s(path: str, value: object) -> None:
        out.append(f"set {path}={_uci_quote(value)}")

    for t, sec in zip(data["tunnels"], sections, strict=True):
        out.append(f"set network.{sec}=interface")
        s(f"network.{sec}.proto", "wireguard")
        s(f"network.{sec}.private_key", data["privateKey"] or PRIVATE_KEY_PLACEHOLDER)
        s(f"network.{sec}.mtu", t["mtu"])
        for a in t["addresses"]:
            out.append(f"add_list network.{sec}.addresses={_uci_quote(a)}")
        out.append(f"set network.{sec}_edge=wireguard_{sec}")
        peer = t["peer"]
        host, _, port = peer["endpoint"].rpartition(":")
        s(f"network.{sec}_edge.description", f"cgnat-edge {t['edge']}")
        s(f"network.{sec}_edge.public_key", peer["publicKey"])
        s(f"network.{sec}_edge.endpoint_host", host.strip("[]"))
        s(f"network.{sec}_edge.endpoint_port", port)
        s(f"network.{sec}_edge.persistent_keepalive", peer["persistentKeepalive"])
        s(f"network.{sec}_edge.route_allowed_ips", 0 if t.get("policyRouting") else 1)
        for a in peer["allowedIps"]:
            out.append(f"add_list network.{sec}_edge.allowed_ips={_uci_quote(a)}")
        for op, path, value in forwarding.openwrt_sections(t, sec):
            out.append(f"set {path}={value}" if op == "section" else f"set {path}={_uci_quote(value)}")

    out.append(f"set firewall.{zone}=zone")
    s(f"firewall.{zone}.name", zone)
    s(f"firewall.{zone}.input", "REJECT")
    s(f"firewall.{zone}.output", "ACCEPT")
    s(f"firewall.{zone}.forward", "REJECT")
    for sec in sections:
        out.append(f"add_list firewall.{zone}.network={_uci_quote(sec)}")
    for i, rule in enumerate(data["forwardAllow"]):
        sec = f"{zone}_allow{i}"
        out.append(f"set firewall.{sec}=rule")
        s(f"firewall.{sec}.name", f"cgnat-edge {rule['service']}")
        s(f"firewall.{sec}.src", zone)
        s(f"firewall.{sec}.dest", "lan")
        s(f"firewall.{sec}.dest_ip", rule["address"])
        s(f"firewall.{sec}.dest_port", _ports(rule))
        s(f"firewall.{sec}.proto", rule["protocol"])
        s(f"firewall.{sec}.target", "ACCEPT")
    road_warriors.openwrt_batch(
        data, s, lambda path, value: out.append(f"add_list {path}={_uci_quote(value)}"), out.append
    )
    if data["masquerade"]:
        # firewall4 takes one src_ip per nat section ("must not be a list"): one section
        # per tunnel address of each edge.  `src lan` is the zone the traffic leaves by.
        for t, iface_sec in zip(data["tunnels"], sections, strict=True):
            for n, a in enumerate(t["routes"]):
                sec = f"{zone}_masq_{iface_sec}_{n}"
                out.append(f"set firewall.{sec}=nat")
                s(f"firewall.{sec}.name", f"cgnat-edge {t['edge']}: tunnel traffic into the LAN answers to this box")
                s(f"firewall.{sec}.src", "lan")
                s(f"firewall.{sec}.src_ip", a)
                s(f"firewall.{sec}.proto", "all")
                s(f"firewall.{sec}.target", "MASQUERADE")
    out.append("EOF")
    marks = (forwarding.openwrt_nft(data) or "") + road_warriors.openwrt_nft(data)
    out.append(f"rm -f {forwarding.OPENWRT_NFT_PATH}")
    if marks:
        out += [
            "# Mark each tunnel's connections so replies leave through it; no device address from an edge",
            "# (firewall4 include).",
            f"mkdir -p {forwarding.OPENWRT_NFT_PATH.rsplit('/', 1)[0]}",
            f"cat >{forwarding.OPENWRT_NFT_PATH} <<'EOF'",
            marks.rstrip("\n"),
            "EOF",
        ]
    out += [
        "# 3. Commit only what this script changed, and let procd reload network and firewall.",
        "uci commit network",
        "uci commit firewall",
        "reload_config",
    ]
    return "\n".join(out) + "\n"


def _ros(value: object) -> str:
    text = str(value)
    if any(c in text for c in '"\\$'):
        raise ValueError(f"unexpected character in RouterOS value {text!r}")
    return f'"{text}"'


def _ros_regex(text: str) -> str:
    """``text`` as a RouterOS (POSIX) regex matching itself: a dot only matches a dot."""
    return re.sub(r"([.+*?()\[\]{}|])", r"[\1]", text)


_ROS_MENUS_IN_REMOVAL_ORDER = (
    "/ip firewall mangle",
    "/ipv6 firewall mangle",
    "/ip route",
    "/ipv6 route",
    "/routing table",
    "/ip firewall nat",
    "/ipv6 firewall nat",
    "/ip firewall raw",
    "/ip firewall address-list",
    "/ip firewall filter",
    "/ipv6 firewall filter",
    "/ip address",
    "/ipv6 address",
    "/interface list member",
    "/interface wireguard peers",
    "/interface wireguard",
    "/interface list",
)
"""Every menu the script adds to, users of an item before the item they use."""


ROUTEROS_INPUT_DROP = "nothing else to the router"


def _routeros_input(menu: str, tag: str, comment: Callable[[str], str]) -> list[str]:
    """The router itself, from its tunnels: replies, and a TCP reset for every new
    connection (the edge's health agent takes a reset from home's tunnel address as
    "the tunnel is up", and an edge has no business with the router otherwise).

    The rules go first in the input chain, before the router's own: no accept of the
    user's, such as RouterOS's default "accept ICMP", can let tunnel traffic in before
    them.  As in the forward chain, the drop is placed first and each rule before it."""
    first = f"[{menu} find where chain=input and dynamic=no]"
    drop = f"{menu} add chain=input in-interface-list=cgnat-edge action=drop {comment(ROUTEROS_INPUT_DROP)}"
    before_drop = f"place-before=[:pick [{menu} find where comment={_ros(f'{tag}: {ROUTEROS_INPUT_DROP}')}] 0]"
    return [
        f":if ([:len {first}] > 0) do={{{drop} place-before=[:pick {first} 0]}} else={{{drop}}}",
        f"{menu} add chain=input in-interface-list=cgnat-edge connection-state=established,related action=accept "
        f"{comment('replies to the router')} {before_drop}",
        f"{menu} add chain=input in-interface-list=cgnat-edge protocol=tcp action=reject reject-with=tcp-reset "
        f"{comment('a reset for TCP to the router')} {before_drop}",
    ]


def routeros(data: dict) -> str:
    """RouterOS 7 script: interfaces, peers, addresses, forward rules for the service
    targets only, input rules that keep the tunnels off the router itself, and for role
    host a masquerade of tunnel traffic into the LAN.

    Every item's comment starts with ``cgnat-edge <project>/<stack>:``; the script first
    removes every item with that tag, so importing it again replaces, never duplicates,
    and leaves nothing of a removed edge or service.  The forward rules go before the
    first drop or reject rule of the forward chain (RouterOS's default configuration ends
    it with drops that would otherwise catch tunnel traffic first): the final drop is
    placed there, then each accept is placed before that drop."""
    tag = f"cgnat-edge {data['project']}/{data['stack']}"
    # "(:|\$)": items of scripts that tagged with the bare tag are replaced too.
    owned = f'comment~"^{_ros_regex(tag)}(:|\\$)"'

    def comment(what: str) -> str:
        return f"comment={_ros(f'{tag}: {what}')}"

    out = [
        f"# {tag}: RouterOS 7. Apply: /import file-name=routeros.rsc",
        f'# Importing it again replaces what an earlier import made: every item here has a comment starting "{tag}:".',
    ]
    if not data["privateKey"]:
        out.append(
            f"# Replace {PRIVATE_KEY_PLACEHOLDER} with the private key kept at home (public key {data['publicKey']})."
        )
    out += [f"{menu} remove [find where {owned}]" for menu in _ROS_MENUS_IN_REMOVAL_ORDER]
    out.append(f"/interface list add name=cgnat-edge {comment('the edge tunnels')}")
    for t in data["tunnels"]:
        iface, peer = t["interface"], t["peer"]
        host, _, port = peer["endpoint"].rpartition(":")
        out += [
            f"/interface wireguard add name={iface} mtu={t['mtu']} private-key={_ros(data['privateKey'] or PRIVATE_KEY_PLACEHOLDER)} {comment('tunnel to edge ' + t['edge'])}",
            f"/interface wireguard peers add interface={iface} public-key={_ros(peer['publicKey'])} endpoint-address={host.strip('[]')} endpoint-port={port} "
            f"allowed-address={','.join(peer['allowedIps'])} persistent-keepalive={peer['persistentKeepalive']}s {comment('edge ' + t['edge'])}",
            f"/interface list member add list=cgnat-edge interface={iface} {comment(iface)}",
        ]
        for a in t["addresses"]:
            if ipaddress.ip_interface(a).version == 4:
                out.append(f"/ip address add address={a} interface={iface} {comment(iface)}")
            else:
                out.append(f"/ipv6 address add address={a} interface={iface} advertise=no {comment(iface)}")
    out += road_warriors.routeros_interface(data, comment, _ros)
    for family in ("ip", "ipv6"):
        menu = f"/{family} firewall filter"
        out += _routeros_input(menu, tag, comment)
        if family == "ip":
            before_input_drop = (
                f"place-before=[:pick [{menu} find where comment={_ros(f'{tag}: {ROUTEROS_INPUT_DROP}')}] 0]"
            )
            out += road_warriors.routeros_filter(data, comment, "input", before_input_drop)
        first_drop = (
            f"[{menu} find where chain=forward and (action=drop or action=reject) and dynamic=no and disabled=no]"
        )
        drop = f"{menu} add chain=forward in-interface-list=cgnat-edge connection-state=new action=drop {comment('nothing else')}"
        out.append(f":if ([:len {first_drop}] > 0) do={{{drop} place-before=[:pick {first_drop} 0]}} else={{{drop}}}")
        before_ours = f"place-before=[:pick [{menu} find where comment={_ros(f'{tag}: nothing else')}] 0]"
        for rule in data["forwardAllow"]:
            if (ipaddress.ip_address(rule["address"]).version == 6) != (family == "ipv6"):
                continue
            out.append(
                f"{menu} add chain=forward in-interface-list=cgnat-edge dst-address={rule['address']} protocol={rule['protocol']} "
                f"dst-port={_ports(rule)} action=accept {comment(rule['service'])} {before_ours}"
            )
        if family == "ip":
            out += road_warriors.routeros_filter(data, comment, "forward", before_ours)
    out += forwarding.routeros_lines(data, comment)
    out += road_warriors.routeros_nat(data, comment)
    if data["masquerade"]:
        for t in data["tunnels"]:
            for a in t["routes"]:
                family = "ipv6" if ipaddress.ip_network(a).version == 6 else "ip"
                out.append(
                    f"/{family} firewall nat add chain=srcnat src-address={a} action=masquerade {comment('role host, edge ' + t['edge'])}"
                )
    return "\n".join(out) + "\n"


def render(
    cfg: FleetConfig,
    peers: list[DeployedEdge[str]],
    home_private_key: str | None,
    road_warrior_keys: dict[str, str | None] | None = None,
) -> dict:
    """Every home rendering, as the JSON-serialisable secret output ``homeConfigs``;
    with road warriors also their device files (``roadWarriors``: device -> edge -> file)."""
    data = structured(cfg, peers, home_private_key, road_warrior_keys)
    out: dict[str, object] = {
        "structured": data,
        "wgQuick": {t["edge"]: wg_quick(data, t) for t in data["tunnels"]},
        "openwrt": openwrt(data),
        "routeros": routeros(data),
    }
    if cfg.road_warriors:
        out["wgQuickRoadWarriors"] = road_warriors.wg_quick(data)
        out["roadWarriors"] = road_warriors.device_configs(cfg, peers, road_warrior_keys or {}, data["publicKey"])
    return out
