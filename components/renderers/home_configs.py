"""The home side of the tunnels, in the forms home routers take.

Home dials out to every edge (CGNAT: nobody can dial in), on one interface per edge so
that a dead edge, or a rotated edge key, leaves the other tunnels alone.  Each
interface lets in only its edge's tunnel addresses and routes only those: the home's
default route and the rest of its routing table are never touched.

``render`` returns one dict, the secret stack output ``homeConfigs``::

    {
      "structured": {...},            # documented below; feed any other router from it
      "wgQuick":   {"<edge>": "..."},  # /etc/wireguard/<interface>.conf, one per edge
      "openwrt":   "...",             # `uci batch` input
      "routeros":  "...",             # RouterOS 7 script (/import)
    }

``structured`` (version 1)::

    version          1
    project, stack   where it came from
    role             "router" (the peer is the LAN's gateway) or "host" (a LAN box:
                     masquerade tunnel traffic into the LAN so LAN hosts answer it)
    privateKey       base64 home private key, or null when the stack was given
                     homePublicKey: the key never left home; use privateKeyFile's key
    privateKeyFile   where the wg-quick files expect that key when privateKey is null
    publicKey        home public key (the edges' peer key)
    lanPrefixes      home LAN prefixes the edges route into the tunnels
    masquerade       true when role is host
    forwardAllow     [{"service", "address", "port", "protocol"}]: the only LAN
                     destinations the edges need; a firewall may allow just these
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
      routes         prefixes to route into this interface (= allowedIps)
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex

from components.model.config import FleetConfig
from components.model.deployed import DeployedEdge
from components.model.keys import public_key_of
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
        for target in (svc.target, svc.http_target):
            if target is None:
                continue
            key = (str(target.host), target.port, svc.protocol)
            if key in seen:
                continue
            seen.add(key)
            rules.append(
                {"service": svc.name, "address": str(target.host), "port": target.port, "protocol": svc.protocol}
            )
    return rules


def structured(cfg: FleetConfig, peers: list[DeployedEdge[str]], home_private_key: str | None) -> dict:
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
                    "allowedIps": allowed,
                    "persistentKeepalive": cfg.tunnel.keepalive,
                },
                "routes": allowed,
            }
        )
    return {
        "version": 1,
        "project": cfg.project,
        "stack": cfg.stack,
        "role": cfg.home.role,
        "privateKey": home_private_key,
        "privateKeyFile": None if home_private_key else HOME_KEY_FILE,
        "publicKey": home_public,
        "lanPrefixes": [str(n) for n in cfg.home.lan_prefixes],
        "masquerade": cfg.home.role == "host",
        "forwardAllow": _forward_allow(cfg),
        "tunnels": tunnels,
    }


def _nft_table(interface: str) -> str:
    return "cgnat_edge_" + _uci_name(interface)


def wg_quick(data: dict, tunnel: dict) -> str:
    """One wg-quick file.  wg-quick's default table handling routes exactly AllowedIPs,
    which are host routes to the edge: the default route stays where it was."""
    iface = tunnel["interface"]
    peer = tunnel["peer"]
    lines = [
        f"# cgnat-edge {data['project']}/{data['stack']}: home end of the tunnel to edge {tunnel['edge']} ({tunnel['provider']} {tunnel['location']}, {tunnel['country']})",
        f"# Install as /etc/wireguard/{iface}.conf (mode 0600), then: systemctl enable --now wg-quick@{iface}",
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
        table = _nft_table(iface)
        has_v6_lan = any(ipaddress.ip_network(n).version == 6 for n in data["lanPrefixes"])
        lines += [
            "# role host: this box forwards tunnel traffic into the LAN and masquerades it, so LAN hosts reply to this box.",
            "PreUp = sysctl -qw net.ipv4.ip_forward=1",
        ]
        if has_v6_lan:
            lines += [
                "# IPv6 forwarding makes Linux ignore router advertisements unless accept_ra=2 on the LAN interface.",
                "PreUp = sysctl -qw net.ipv6.conf.all.forwarding=1",
            ]
        chain = f"add chain inet {table} postrouting {{ type nat hook postrouting priority srcnat; }}"
        rule = f'add rule inet {table} postrouting iifname "%i" masquerade'
        lines += [
            f"PostUp = nft add table inet {table}",
            f"PostUp = nft {shlex.quote(chain)}",
            f"PostUp = nft {shlex.quote(rule)}",
            f"PostDown = nft delete table inet {table}",
        ]
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


def openwrt(data: dict) -> str:
    """``uci batch`` input: one interface per edge, a firewall zone for all of them that
    may reach only the service targets, and for role host a masquerade into the LAN."""
    out = [
        f"# cgnat-edge {data['project']}/{data['stack']}: OpenWrt 22.03+ (package wireguard-tools, kmod-wireguard).",
        "# Apply: uci batch < this-file && uci commit && service network reload && service firewall reload",
        "# Re-applying replaces the sections below; the LAN firewall zone is assumed to be named 'lan'.",
    ]
    if not data["privateKey"]:
        out.append(
            f"# Replace {PRIVATE_KEY_PLACEHOLDER} with the private key kept at home (public key {data['publicKey']})."
        )
    zone = "cgnat_edge"

    def s(path: str, value: object) -> None:
        out.append(f"set {path}={_uci_quote(value)}")

    for t in data["tunnels"]:
        sec = _uci_name(t["interface"])
        out += [f"delete network.{sec}", f"delete network.{sec}_edge"]
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
        s(f"network.{sec}_edge.route_allowed_ips", 1)
        for a in peer["allowedIps"]:
            out.append(f"add_list network.{sec}_edge.allowed_ips={_uci_quote(a)}")

    out.append(f"delete firewall.{zone}")
    out.append(f"set firewall.{zone}=zone")
    s(f"firewall.{zone}.name", zone)
    s(f"firewall.{zone}.input", "REJECT")
    s(f"firewall.{zone}.output", "ACCEPT")
    s(f"firewall.{zone}.forward", "REJECT")
    for t in data["tunnels"]:
        out.append(f"add_list firewall.{zone}.network={_uci_quote(_uci_name(t['interface']))}")
    for i, rule in enumerate(data["forwardAllow"]):
        sec = f"{zone}_allow{i}"
        out += [f"delete firewall.{sec}", f"set firewall.{sec}=rule"]
        s(f"firewall.{sec}.name", f"cgnat-edge {rule['service']}")
        s(f"firewall.{sec}.src", zone)
        s(f"firewall.{sec}.dest", "lan")
        s(f"firewall.{sec}.dest_ip", rule["address"])
        s(f"firewall.{sec}.dest_port", rule["port"])
        s(f"firewall.{sec}.proto", rule["protocol"])
        s(f"firewall.{sec}.target", "ACCEPT")
    if data["masquerade"]:
        sec = f"{zone}_masq"
        out += [f"delete firewall.{sec}", f"set firewall.{sec}=nat"]
        s(f"firewall.{sec}.name", "cgnat-edge: tunnel traffic into the LAN answers to this box")
        s(f"firewall.{sec}.src", "lan")
        s(f"firewall.{sec}.proto", "all")
        s(f"firewall.{sec}.target", "MASQUERADE")
        for t in data["tunnels"]:
            for a in t["peer"]["allowedIps"]:
                out.append(f"add_list firewall.{sec}.src_ip={_uci_quote(a)}")
    return "\n".join(out) + "\n"


def _ros(value: object) -> str:
    text = str(value)
    if any(c in text for c in '"\\$'):
        raise ValueError(f"unexpected character in RouterOS value {text!r}")
    return f'"{text}"'


def routeros(data: dict) -> str:
    """RouterOS 7 script: interfaces, peers, addresses, forward rules for the service
    targets only, and for role host a masquerade of tunnel traffic into the LAN."""
    tag = f"cgnat-edge {data['project']}/{data['stack']}"
    out = [
        f'# {tag}: RouterOS 7. Apply: /import file-name=<this file>. Re-importing adds duplicates; remove entries with comment~"cgnat-edge" first.',
    ]
    if not data["privateKey"]:
        out.append(
            f"# Replace {PRIVATE_KEY_PLACEHOLDER} with the private key kept at home (public key {data['publicKey']})."
        )
    out += [f"/interface list add name=cgnat-edge comment={_ros(tag)}"]
    for t in data["tunnels"]:
        iface, peer = t["interface"], t["peer"]
        host, _, port = peer["endpoint"].rpartition(":")
        out += [
            f"/interface wireguard add name={iface} mtu={t['mtu']} private-key={_ros(data['privateKey'] or PRIVATE_KEY_PLACEHOLDER)} comment={_ros(f'{tag}: tunnel to edge ' + t['edge'])}",
            f"/interface wireguard peers add interface={iface} public-key={_ros(peer['publicKey'])} endpoint-address={host.strip('[]')} endpoint-port={port} "
            f"allowed-address={','.join(peer['allowedIps'])} persistent-keepalive={peer['persistentKeepalive']}s comment={_ros(tag)}",
            f"/interface list member add list=cgnat-edge interface={iface} comment={_ros(tag)}",
        ]
        for a in t["addresses"]:
            if ipaddress.ip_interface(a).version == 4:
                out.append(f"/ip address add address={a} interface={iface} comment={_ros(tag)}")
            else:
                out.append(f"/ipv6 address add address={a} interface={iface} advertise=no comment={_ros(tag)}")
    for rule in data["forwardAllow"]:
        family = "ipv6" if ipaddress.ip_address(rule["address"]).version == 6 else "ip"
        out.append(
            f"/{family} firewall filter add chain=forward in-interface-list=cgnat-edge dst-address={rule['address']} protocol={rule['protocol']} "
            f"dst-port={rule['port']} action=accept comment={_ros(tag + ': ' + rule['service'])}"
        )
    for family in ("ip", "ipv6"):
        out.append(
            f"/{family} firewall filter add chain=forward in-interface-list=cgnat-edge connection-state=new action=drop comment={_ros(tag + ': nothing else')}"
        )
    if data["masquerade"]:
        for t in data["tunnels"]:
            for a in t["peer"]["allowedIps"]:
                family = "ipv6" if ipaddress.ip_network(a).version == 6 else "ip"
                out.append(
                    f"/{family} firewall nat add chain=srcnat src-address={a} action=masquerade comment={_ros(tag + ': role host')}"
                )
    return "\n".join(out) + "\n"


def render(cfg: FleetConfig, peers: list[DeployedEdge[str]], home_private_key: str | None) -> dict:
    """Every home rendering, as the JSON-serialisable secret output ``homeConfigs``."""
    data = structured(cfg, peers, home_private_key)
    return {
        "structured": data,
        "wgQuick": {t["edge"]: wg_quick(data, t) for t in data["tunnels"]},
        "openwrt": openwrt(data),
        "routeros": routeros(data),
    }
