"""The lab's network: namespaces, the links between them and their addresses.

Around the edges (each on the lab's internet with its public IPv4 from the render)::

    client   ─┐                       ┌─ edge <a>
    dns      ─┼── inet (the internet) ┼─ edge <b>  ...
    operator ─┘ (where pulumi runs)   └─ cgnat ── home ── server (the service targets)
                                         masquerade, nothing gets in unasked

Only documentation prefixes, 100.64.0.0/10 and the stack's own (private) tunnel and
home prefixes are used.
"""

from __future__ import annotations

import ipaddress

from components.lab.edge_lab import EdgeLab
from components.lab.errors import LabError
from components.lab.netns import Lab, Node
from components.model.fleet import FleetConfig, HomeRole

INTERNET_POOLS = (ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("198.51.100.0/24"))
CGNAT_INSIDE = ("100.64.0.1", "100.64.0.2", 10)
CGNAT_RANGE = "100.64.0.0/10"

CGNAT_RULES = """table ip lab_cgnat {
  chain postrouting {
    type nat hook postrouting priority srcnat;
    oifname "wan" masquerade
  }
  # A carrier-grade NAT lets answers in, and nothing else.
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "inside" accept
  }
}
"""
HOME_ROUTER_RULES = """table ip lab_home {
  chain postrouting {
    type nat hook postrouting priority srcnat;
    oifname "wan" masquerade
  }
}
"""


def gateway(ip: str) -> str:
    """The internet router's address facing ``ip``: .1 of its /24 (never an edge's:
    the mock engine hands out .2 and up)."""
    return str(ipaddress.ip_network(f"{ip}/24", strict=False).network_address + 1)


def operator_address(cfg: FleetConfig, taken: set[str]) -> str:
    """An address for the lab's operator (where pulumi runs) that the edges let in on
    SSH: inside ``sshAllowedCidrs``, in a documentation range, clear of home's prefixes."""
    pools = [cfg.road_warriors.pool] if cfg.road_warriors else []
    inside = [n for n in (*cfg.home.lan_prefixes, cfg.tunnel.ipv4_prefix, *pools) if n.version == 4]
    for pool in (*INTERNET_POOLS, ipaddress.ip_network("192.0.2.0/24")):
        for host in reversed(list(pool.hosts())):
            if (
                str(host) not in taken
                and str(host) != gateway(str(host))
                and any(host in n for n in cfg.ssh.allowed_cidrs if n.version == 4)
                and not any(host in n for n in inside)
            ):
                return str(host)
    raise LabError("sshAllowedCidrs holds no documentation address for the lab's operator; allow one of 192.0.2.0/24")


def free_internet_addresses(taken: set[str], count: int) -> list[str]:
    taken = taken | {gateway(ip) for ip in taken}
    free = []
    for pool in INTERNET_POOLS:
        for host in reversed(list(pool.hosts())):
            if str(host) not in taken and str(host) != gateway(str(host)):
                free.append(str(host))
                if len(free) == count:
                    return free
    raise LabError("no free documentation addresses left for the lab's internet")


def lan_plan(cfg: FleetConfig) -> tuple[list[str], list[str], str]:
    """(home router LAN interfaces, server interfaces, server default gateway)."""
    targets = {s.target.host for s in cfg.services} | {s.http_target.host for s in cfg.services if s.http_target}
    v6_targets = sorted(str(t) for t in targets if t.version == 6)
    if v6_targets:
        raise LabError(f"the lab speaks IPv4 inside home; IPv6 targets {', '.join(v6_targets)} are not supported yet")
    router, server = [], []
    server_gw = None
    for lan in cfg.home.lan_prefixes:
        if lan.version != 4:
            continue
        inside = sorted((t for t in targets if t in lan), key=int)
        gw = next(h for h in lan.hosts() if h not in inside)
        router.append(f"{gw}/{lan.prefixlen}")
        server += [f"{t}/{lan.prefixlen}" for t in inside]
        server_gw = server_gw or str(gw)
    if server_gw is None:
        raise LabError("the stack has no IPv4 home LAN prefix")
    return router, server, server_gw


def attach(lab: Lab, inet: Node, node: Node, ifname: str, ip: str) -> None:
    """A point-to-point link from the internet router to ``node`` (address ``ip``/32)."""
    gw = gateway(ip)
    lab.link(inet, ifname, [f"{gw}/32"], node, "eth0", [f"{ip}/32"])
    inet.route(f"{ip}/32", "dev", ifname)
    node.route("default", "via", gw, "dev", "eth0", "onlink")


def wire(el: EdgeLab, edge_ips: dict[str, str], *, dns_node: bool) -> None:
    """Everything but the edges: the internet router, the visitor, the lab's DNS node
    (``dns_node``), the operator, the CGNAT, home and its LAN with the service targets."""
    lab, cfg = el.lab, el.cfg
    el.client_ip, el.dns_ip, el.cgnat_ip = free_internet_addresses(set(edge_ips.values()), 3)
    el.operator_ip = operator_address(cfg, set(edge_ips.values()) | {el.client_ip, el.dns_ip, el.cgnat_ip})

    inet = el.nodes["inet"] = lab.node("inet")
    inet.forward()
    for name in ("client", "dns", "cgnat", "operator") if dns_node else ("client", "cgnat", "operator"):
        el.nodes[name] = lab.node(name)
    attach(lab, inet, el.nodes["client"], "i-client", el.client_ip)
    if dns_node:
        attach(lab, inet, el.nodes["dns"], "i-dns", el.dns_ip)
    attach(lab, inet, el.nodes["operator"], "i-operator", el.operator_ip)
    cgnat = el.nodes["cgnat"]
    lab.link(inet, "i-cgnat", [f"{gateway(el.cgnat_ip)}/32"], cgnat, "wan", [f"{el.cgnat_ip}/32"])
    inet.route(f"{el.cgnat_ip}/32", "dev", "i-cgnat")
    cgnat.route("default", "via", gateway(el.cgnat_ip), "dev", "wan", "onlink")
    # The ISP routes its CGNAT range to the CGNAT: only its filter keeps visitors out.
    inet.route(CGNAT_RANGE, "via", el.cgnat_ip, "dev", "i-cgnat", "onlink")
    cgnat.forward()
    cgnat.run("nft", "-f", "-", input=CGNAT_RULES)

    inside_cgnat, home_wan, plen = CGNAT_INSIDE
    router_lan, server_addrs, server_gw = lan_plan(cfg)
    server = el.nodes["server"] = lab.node("server")
    if cfg.home.role == HomeRole.ROUTER:
        home = el.nodes["home"] = lab.node("home")
        lab.link(home, "wan", [f"{home_wan}/{plen}"], cgnat, "inside", [f"{inside_cgnat}/{plen}"])
        home.route("default", "via", inside_cgnat)
        home.forward()
        lab.link(home, "lan", router_lan, server, "eth0", server_addrs)
    else:
        # role host: the WireGuard peer is a box in the LAN; the LAN's router knows
        # nothing of the tunnels (the wg-quick files' masquerade makes that work).
        router = el.nodes["home-router"] = lab.node("home-router")
        home = el.nodes["home"] = lab.node("home")
        lab.link(router, "wan", [f"{home_wan}/{plen}"], cgnat, "inside", [f"{inside_cgnat}/{plen}"])
        router.route("default", "via", inside_cgnat)
        router.forward()
        router.run("nft", "-f", "-", input=HOME_ROUTER_RULES)
        router.run("ip", "link", "add", "br0", "type", "bridge")
        router.addresses("br0", router_lan)
        gw = router_lan[0].split("/")[0]
        lan = ipaddress.ip_interface(router_lan[0]).network
        taken = {ipaddress.ip_interface(a).ip for a in router_lan + server_addrs}
        box_ip = next(h for h in lan.hosts() if h not in taken)
        for node, addrs, port in ((home, [f"{box_ip}/{lan.prefixlen}"], "p-home"), (server, server_addrs, "p-server")):
            lab.link(router, port, [], node, "eth0", addrs)
            router.run("ip", "link", "set", port, "master", "br0")
            node.route("default", "via", gw)
        server_gw = gw
    server.route("default", "via", server_gw)
