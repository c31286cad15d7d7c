"""Tunnel addressing and the edge side of each WireGuard tunnel.

Every edge gets its own small subnet (a /30, and a /126 when IPv6 is on), picked by its
``index``: edge = first host, home = second host.  Separate subnets per tunnel are what
make replies symmetric at home: a LAN host answering an edge's tunnel address is routed
back through that edge's interface and no other, without policy routing.  Because the
address depends on the index only, adding, removing or replacing another edge never
re-addresses this one.

Renderers here take keys as plain strings, so they can run inside ``Output.apply``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from components.model import edge_contract
from components.model.fleet import EdgeSpec, FleetConfig, TunnelSpec

IFNAMSIZ = 15
"""Longest Linux interface name (IFNAMSIZ - 1)."""


@dataclass(frozen=True)
class TunnelAddresses:
    edge_v4: ipaddress.IPv4Interface
    home_v4: ipaddress.IPv4Interface
    edge_v6: ipaddress.IPv6Interface | None
    home_v6: ipaddress.IPv6Interface | None

    @property
    def edge_hosts(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The edge's own addresses as host routes: all the home lets in from this tunnel."""
        return [ipaddress.ip_network(i.ip) for i in (self.edge_v4, self.edge_v6) if i is not None]

    @property
    def home_hosts(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(i.ip) for i in (self.home_v4, self.home_v6) if i is not None]

    @property
    def edge_interfaces(self) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        return [i for i in (self.edge_v4, self.edge_v6) if i is not None]

    @property
    def home_interfaces(self) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        return [i for i in (self.home_v4, self.home_v6) if i is not None]

    @property
    def subnets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [i.network for i in self.edge_interfaces]


def _nth_subnet(prefix: ipaddress.IPv4Network | ipaddress.IPv6Network, new_prefix: int, index: int):
    size = 2 ** (prefix.max_prefixlen - new_prefix)
    if index < 0 or (index + 1) * size > prefix.num_addresses:
        raise ValueError(f"edge index {index} does not fit in {prefix} as a /{new_prefix}")
    return ipaddress.ip_network((int(prefix.network_address) + index * size, new_prefix))


def addresses(tunnel: TunnelSpec, edge: EdgeSpec) -> TunnelAddresses:
    """The tunnel addresses of ``edge`` and of the home end facing it."""
    v4 = _nth_subnet(tunnel.ipv4_prefix, 30, edge.index)
    edge_v4 = ipaddress.IPv4Interface((int(v4.network_address) + 1, 30))
    home_v4 = ipaddress.IPv4Interface((int(v4.network_address) + 2, 30))
    edge_v6 = home_v6 = None
    if tunnel.ipv6_prefix is not None:
        v6 = _nth_subnet(tunnel.ipv6_prefix, 126, edge.index)
        edge_v6 = ipaddress.IPv6Interface((int(v6.network_address) + 1, 126))
        home_v6 = ipaddress.IPv6Interface((int(v6.network_address) + 2, 126))
    return TunnelAddresses(edge_v4, home_v4, edge_v6, home_v6)


def edge_allowed_ips(cfg: FleetConfig, edge: EdgeSpec) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """What the edge sends to home: home's tunnel addresses and every LAN prefix, so
    Traefik can reach service targets directly, and home's road-warrior address (the
    devices' forwarded port; no device address).  wg-quick turns these into routes."""
    addrs = addresses(cfg.tunnel, edge)
    lans = [lan for lan in cfg.home.lan_prefixes if lan.version == 4 or addrs.home_v6 is not None]
    rw = [ipaddress.ip_network(cfg.road_warriors.home_address)] if cfg.road_warriors else []
    return addrs.home_hosts + list(lans) + rw


def edge_wg_conf(
    cfg: FleetConfig,
    edge: EdgeSpec,
    edge_private_key: str,
    home_public_key: str,
) -> str:
    """/etc/wireguard/wg0.conf on ``edge``.

    The edge listens: home sits behind CGNAT and cannot be dialled, so the peer has no
    Endpoint; WireGuard learns home's address from its handshakes.  The hooks save that
    address and, after a reboot, dial it back through the mapping home's keepalives
    hold open (see cloud-init/wg-endpoint.sh), so a rebuilt or rebooted edge is back
    within a keepalive interval instead of waiting for home's two-minute rekey."""
    addrs = addresses(cfg.tunnel, edge)
    lines = [
        f"# cgnat-edge {cfg.project}/{cfg.stack}: edge {edge.name}, tunnel to home",
        "[Interface]",
        f"Address = {', '.join(str(a) for a in addrs.edge_interfaces)}",
        f"ListenPort = {cfg.tunnel.listen_port}",
        f"MTU = {cfg.tunnel.mtu}",
        f"PrivateKey = {edge_private_key}",
        f"PostUp = {edge_contract.WG_ENDPOINT_HOOK} restore %i {cfg.tunnel.keepalive}",
        f"PreDown = {edge_contract.WG_ENDPOINT_HOOK} save %i",
        "",
        "[Peer]",
        "# home",
        f"PublicKey = {home_public_key}",
        f"AllowedIPs = {', '.join(str(n) for n in edge_allowed_ips(cfg, edge))}",
    ]
    lines.append("")
    return "\n".join(lines)
