"""Road warriors on the edges and at home, and the devices' own WireGuard files.

Every edge carries every device as a peer of ``wg0`` (see components/model/road_warriors.py),
so whichever edge is reachable works.  The stock WireGuard apps take one endpoint per
peer, and two peers of one interface cannot share AllowedIPs, so a device cannot hold
all edges in one file and fail over by itself: each device gets one file per edge
(``<device>-<edge>``), all with the same address, and the user switches to another
edge's tunnel when one is down.  The same address through any edge is what lets home
answer without knowing which edge the device uses: home routes replies back through
the tunnel the connection came in on (components/renderers/forwarding.py).

The edge routes a device's packets only to its allowed LAN prefixes through the tunnel
to home; to the internet only with ``internet: true`` (then masqueraded behind the edge).
"""

from __future__ import annotations

from collections.abc import Mapping

from components.model import edge_contract
from components.model.deployed import DeployedEdge
from components.model.fleet import FleetConfig
from components.model.road_warriors import RoadWarrior
from components.renderers.nft_literals import set_of

KEEPALIVE = 25


def peers(cfg: FleetConfig) -> tuple[RoadWarrior, ...]:
    return cfg.road_warriors.peers if cfg.road_warriors else ()


def edge_forward_rules(cfg: FleetConfig) -> list[str]:
    """Forward-chain rules (policy drop): each device to its LAN prefixes, into the tunnel."""
    wg = edge_contract.WG_INTERFACE
    rules = []
    for rw in peers(cfg):
        v4 = [n for n in rw.allowed if n.version == 4]
        if v4:
            rules.append(f'iifname "{wg}" oifname "{wg}" ip saddr {rw.address} ip daddr {set_of(v4)} accept')
        if rw.internet:
            rules.append(f'iifname "{wg}" oifname != "{wg}" ip saddr {rw.address} accept')
    return rules


def edge_chains(cfg: FleetConfig) -> list[str]:
    """The masquerade of devices that may use the edge as their exit to the internet."""
    exits = [rw.address for rw in peers(cfg) if rw.internet]
    if not exits:
        return []
    return [
        "",
        "    # road warriors with internet: true leave through the edge, behind its address.",
        "    chain road_warrior_exit {",
        "        type nat hook postrouting priority srcnat; policy accept;",
        f'        oifname != "{edge_contract.WG_INTERFACE}" ip saddr {set_of(exits)} masquerade',
        "    }",
    ]


def home_allow(cfg: FleetConfig) -> list[dict]:
    """The structured output's ``roadWarriorAllow``: what home lets in from a tunnel besides
    the service targets (the edge enforces the same, per device).  A device with no LAN
    prefix (``internet`` only) never reaches home, so home has no rule for it."""
    return [
        {"name": rw.name, "address": str(rw.address), "prefixes": [str(n) for n in rw.allowed]}
        for rw in peers(cfg)
        if rw.allowed
    ]


def device_configs(
    cfg: FleetConfig, edges: list[DeployedEdge[str]], private_keys: Mapping[str, str | None]
) -> dict[str, dict[str, str]]:
    """{device: {edge: wg-quick file}}; a device whose key the stack was given gets a
    placeholder where its private key goes (the key never left the device)."""
    out: dict[str, dict[str, str]] = {}
    spec = cfg.road_warriors
    if spec is None:
        return out
    for rw in spec.peers:
        private = private_keys.get(rw.name)
        # internet: everything into the tunnel (the edge is the exit); else the LAN prefixes only.
        allowed = ["0.0.0.0/0"] if rw.internet else [str(n) for n in rw.allowed]
        files = {}
        for edge in sorted(edges, key=lambda e: e.spec.index):
            lines = [
                f"# cgnat-edge {cfg.project}/{cfg.stack}: road warrior {rw.name} through edge {edge.name} "
                f"({edge.spec.location.city}, {edge.spec.location.country})",
                "# Import into the WireGuard app (file or QR code); if this edge is down, switch to another edge's file.",
                "[Interface]",
                f"PrivateKey = {private or '<the private key kept on the device>'}",
                f"Address = {rw.address}/32",
                f"MTU = {cfg.tunnel.mtu}",
            ]
            if spec.dns is not None:
                lines.append(f"DNS = {spec.dns}")
            lines += [
                "",
                "[Peer]",
                f"# edge {edge.name}",
                f"PublicKey = {edge.public_key}",
                f"Endpoint = {edge.ipv4}:{cfg.tunnel.listen_port}",
                f"AllowedIPs = {', '.join(allowed)}",
                f"PersistentKeepalive = {KEEPALIVE}",
                "",
            ]
            files[edge.name] = "\n".join(lines)
        out[rw.name] = files
    return out
