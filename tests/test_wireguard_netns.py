"""Generated WireGuard configs, brought up with the real tools inside network namespaces.

The lab (documentation and CGNAT addresses only)::

    lan host 192.0.2.10 ── home 192.0.2.1 | 100.64.0.2 ── cgnat 100.64.0.1 | 203.0.113.1 (masquerade)
                                                              │
                                                    internet 203.0.113.2, .9, .17
                                                        │                │
                                            edge fsn 203.0.113.10   edge ams 203.0.113.18

Tunnels use 198.51.100.0/24 and fd00:cafe::/64.  Home dials out through the CGNAT; the
edges never learn an endpoint except from home's handshakes.  The LAN host answers on
declared targets (echo 8443/tcp, web 9443/tcp with its httpTarget 9080/tcp, game
9999/udp) and on ports and an address nobody declared: the edges must reach only the first.
"""

from __future__ import annotations

import functools
import ipaddress
import re

import pytest

from components import config as config_module
from components.lab.netns import wait_for
from components.model import edge_contract
from components.model.deployed import DeployedEdge
from components.model.fleet import FleetConfig
from components.model.keys import generate_keypair
from components.renderers import bootstrap, home_configs, tunnel
from components.tools import home_files
from tests.support import namespaces

pytestmark = pytest.mark.netns

EDGE_IPS = {"fsn": "203.0.113.10", "ams": "203.0.113.18"}
CGNAT_PUBLIC = "203.0.113.1"
LAN_HOST = "192.0.2.10"
LAN_OTHER = "192.0.2.11"  # a second LAN address no service names
ECHO_PORT = 8443
WEB_PORT, WEB_HTTP_PORT, GAME_PORT = 9443, 9080, 9999
UNDECLARED_PORT = 8444
MASQUERADE_WAN = """table ip {table} {{
  chain post {{
    type nat hook postrouting priority srcnat;
    oifname "wan" masquerade
  }}
}}
"""


def lab_config(**overrides) -> FleetConfig:
    raw = {
        "domain": "example.org",
        "edges": [
            {"name": "fsn", "provider": "hetzner", "location": "fsn1", "index": 1},
            {"name": "ams", "provider": "digitalocean", "location": "ams3", "index": 2},
        ],
        "sshPublicKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqxVQIfSWZkNgKOGy4QDZWNWQXUdqSrhLrsrfJKPFB+ lab"],
        "homeLanPrefixes": ["192.0.2.0/24"],
        "tunnelIpv4Prefix": "198.51.100.0/24",
        "tunnelIpv6Prefix": "fd00:cafe::/64",
        "keepaliveSeconds": 10,
        "services": [
            {"name": "echo", "mode": "tcp", "port": 2222, "target": f"{LAN_HOST}:{ECHO_PORT}"},
            {
                "name": "web",
                "mode": "passthrough",
                "hostnames": ["web.example.org"],
                "target": f"{LAN_HOST}:{WEB_PORT}",
                "httpTarget": f"{LAN_HOST}:{WEB_HTTP_PORT}",
            },
            {"name": "game", "mode": "udp", "port": 2456, "target": f"{LAN_HOST}:{GAME_PORT}"},
        ],
    }
    raw.update(overrides)
    return config_module.parse(raw, stack="lab")


@pytest.fixture
def lab():
    with namespaces("wg", "wg-quick", "wireguard-go", "nft", "socat") as lab:
        yield lab


def _echo_server(node, addr="0.0.0.0", port=ECHO_PORT, family="TCP4"):
    """Answers every connection with the source address it saw, then closes."""
    node.spawn("socat", f"{family}-LISTEN:{port},bind={addr},fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR")


def _udp_echo_server(node, port=GAME_PORT):
    node.spawn("socat", f"UDP4-RECVFROM:{port},fork", "SYSTEM:echo $SOCAT_PEERADDR")


def _ask_udp(node, target, timeout=3):
    done = node.run("socat", f"-t{timeout}", "-", f"UDP4:{target}", check=False, timeout=timeout + 5, input="hi\n")
    text = done.stdout.strip()
    return str(ipaddress.ip_address(text)) if done.returncode == 0 and text else None


def _refused(node, target):
    """True when the connection is refused at once (a TCP reset), not left to time out:
    what the home's filter answers for anything the edge has no business with."""
    done = node.run("socat", "-", f"TCP:{target},connect-timeout=3", check=False, timeout=10, input="")
    return done.returncode != 0 and "Connection refused" in done.stderr


def _lan_services(lan):
    """Declared targets and undeclared ports on the same host, all answering."""
    for port in (ECHO_PORT, WEB_PORT, WEB_HTTP_PORT, UNDECLARED_PORT, GAME_PORT):
        _echo_server(lan, port=port)  # GAME_PORT: tcp is not declared there, only udp
    _udp_echo_server(lan)


def _assert_only_declared_targets(edge, tunnel_source, lan_side):
    """From ``edge``: every declared target answers (seen from ``tunnel_source``), every
    undeclared one is refused, although ``lan_side`` shows they all answer."""
    for port in (ECHO_PORT, WEB_PORT, WEB_HTTP_PORT):
        assert wait_for(lambda port=port: _ask(edge, f"{LAN_HOST}:{port}"), message=f"edge -> {port}") == tunnel_source
    assert wait_for(lambda: _ask_udp(edge, f"{LAN_HOST}:{GAME_PORT}"), message="edge -> game/udp") == tunnel_source
    undeclared = [f"{LAN_HOST}:{UNDECLARED_PORT}", f"{LAN_OTHER}:{ECHO_PORT}", f"{LAN_HOST}:{GAME_PORT}"]
    for target in undeclared:
        assert wait_for(lambda target=target: _ask(lan_side, target), message=f"{target} inside the LAN")
        assert _refused(edge, target), f"the edge reached {target}, which no service declares"


def _ask(node, target, timeout=3):
    """The source address the echo server saw, normalised; None if nothing came back."""
    done = node.run(
        "socat",
        f"-t{timeout}",
        f"-T{timeout}",
        "-",
        f"TCP:{target},connect-timeout={timeout}",
        check=False,
        timeout=timeout + 5,
        input="",
    )
    text = done.stdout.strip().strip("[]")
    return str(ipaddress.ip_address(text)) if done.returncode == 0 and text else None


def _internet(lab, edges):
    """cgnat, internet and edge nodes; returns (cgnat, {edge name: node})."""
    cgnat, inet = lab.node("cgnat"), lab.node("inet")
    cgnat.forward()
    inet.forward()
    lab.link(cgnat, "wan", [f"{CGNAT_PUBLIC}/30"], inet, "to-cgnat", ["203.0.113.2/30"])
    cgnat.route("default", "via", "203.0.113.2")
    cgnat.run("nft", "-f", "-", input=MASQUERADE_WAN.format(table="cgnat"))
    nodes = {}
    for name in edges:
        edge = lab.node(f"edge-{name}")
        public = EDGE_IPS[name]
        gw = str(int(public.rsplit(".", 1)[1]) - 1)
        lab.link(inet, f"to-{name}", [f"203.0.113.{gw}/30"], edge, "eth0", [f"{public}/30"])
        edge.route("default", "via", f"203.0.113.{gw}")
        nodes[name] = edge
    return cgnat, nodes


def _edge_up(cfg, edge_node, spec, edge_private, home_public):
    edge_node.write(edge_contract.WG_ENDPOINT_HOOK, bootstrap.wg_endpoint_hook(), 0o755)
    edge_node.write("/etc/wireguard/wg0.conf", tunnel.edge_wg_conf(cfg, spec, edge_private, home_public))
    edge_node.run("wg-quick", "up", "wg0")


def _render_home(cfg, edge_keys, home_private, tmp_path):
    peers = [DeployedEdge(e, EDGE_IPS[e.name], None, edge_keys[e.name][1]) for e in cfg.edges]
    configs = home_configs.render(cfg, peers, home_private)
    home_files.write({"homeConfigs": configs}, tmp_path / "home", qr=False)
    return configs


def _handshake(node, ifname):
    out = node.run("wg", "show", ifname, "latest-handshakes").stdout.split()
    return len(out) == 2 and int(out[1]) > 0


def _routes(node):
    return {
        "v4": node.run("ip", "-4", "route", "show", "default").stdout,
        "v6": node.run("ip", "-6", "route", "show", "default").stdout,
        "rules": node.run("ip", "rule", "show").stdout + node.run("ip", "-6", "rule", "show").stdout,
    }


def test_generated_configs_load_into_wireguard_go(lab, tmp_path):
    """``wg-quick strip`` + ``wg setconf``: the real parser takes every value as meant."""
    cfg = lab_config()
    node = lab.node("parse")
    home_key, edge_keys = generate_keypair(), {e.name: generate_keypair() for e in cfg.edges}
    configs = _render_home(cfg, edge_keys, home_key[0], tmp_path)
    files = {
        "wg-fsn": (tmp_path / "home" / "wg-fsn.conf").read_text(),
        "wg-ams": (tmp_path / "home" / "wg-ams.conf").read_text(),
    }
    files["wg0"] = tunnel.edge_wg_conf(cfg, cfg.edges[0], edge_keys["fsn"][0], home_key[1])
    for ifname, text in files.items():
        node.write(f"/etc/wireguard/{ifname}.conf", text)
        node.spawn(
            "wireguard-go", "-f", ifname, env={"WG_PROCESS_FOREGROUND": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        )
        wait_for(
            lambda ifname=ifname: node.run("wg", "show", ifname, check=False).returncode == 0,
            message=f"wireguard-go {ifname}",
        )
        stripped = node.run("wg-quick", "strip", f"/etc/wireguard/{ifname}.conf").stdout
        node.run("wg", "setconf", ifname, "/dev/stdin", input=stripped)

    def dump(ifname):
        lines = node.run("wg", "show", ifname, "dump").stdout.splitlines()
        return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]

    (priv, pub, port, _), peers = dump("wg-fsn")
    assert (priv, pub) == (home_key[0], home_key[1])
    assert len(peers) == 1
    peer_pub, _, endpoint, allowed, _, _, _, keepalive = peers[0]
    assert peer_pub == edge_keys["fsn"][1]
    assert endpoint == "203.0.113.10:51820"
    assert allowed == "198.51.100.5/32,fd00:cafe::5/128"
    assert keepalive == "10"
    assert dump("wg-ams")[1][0][2:4] == ["203.0.113.18:51820", "198.51.100.9/32,fd00:cafe::9/128"]

    (priv, pub, port, _), peers = dump("wg0")
    assert (priv, pub, port) == (edge_keys["fsn"][0], edge_keys["fsn"][1], "51820")
    peer_pub, _, endpoint, allowed, _, _, _, keepalive = peers[0]
    assert (peer_pub, endpoint, allowed, keepalive) == (
        home_key[1],
        "(none)",
        "198.51.100.6/32,fd00:cafe::6/128,192.0.2.0/24",
        "off",
    )
    assert configs["structured"]["tunnels"][0]["peer"]["allowedIps"] == ["198.51.100.5/32", "fd00:cafe::5/128"]


def test_home_behind_cgnat_reaches_two_edges(lab, tmp_path):
    cfg = lab_config()
    home_key, edge_keys = generate_keypair(), {e.name: generate_keypair() for e in cfg.edges}
    cgnat, edges = _internet(lab, ["fsn", "ams"])
    home, lan = lab.node("home"), lab.node("lan")
    home.forward()
    lab.link(home, "wan", ["100.64.0.2/24"], cgnat, "inside", ["100.64.0.1/24"])
    home.route("default", "via", "100.64.0.1")
    lab.link(home, "lan", ["192.0.2.1/24"], lan, "eth0", [f"{LAN_HOST}/24", f"{LAN_OTHER}/24"])
    lan.route("default", "via", "192.0.2.1")
    _lan_services(lan)

    for spec in cfg.edges:
        _edge_up(cfg, edges[spec.name], spec, edge_keys[spec.name][0], home_key[1])
    configs = _render_home(cfg, edge_keys, home_key[0], tmp_path)
    before = _routes(home)
    for name in ("wg-fsn", "wg-ams"):
        home.write(f"/etc/wireguard/{name}.conf", (tmp_path / "home" / f"{name}.conf").read_text())
        home.run("wg-quick", "up", name)
    assert _routes(home) == before, "wg-quick must leave the home's default route and rules alone"
    routes = home.run("ip", "-4", "route", "show").stdout
    assert re.search(r"^198\.51\.100\.4/30 dev wg-fsn .*src 198\.51\.100\.6", routes, re.M), routes
    assert re.search(r"^198\.51\.100\.8/30 dev wg-ams .*src 198\.51\.100\.10", routes, re.M), routes

    for name, ifname in (("fsn", "wg-fsn"), ("ams", "wg-ams")):
        wait_for(functools.partial(_handshake, home, ifname), timeout=15, message=f"handshake on {ifname}")
        # The edge learnt home's address from the handshake: the CGNAT's public side.
        endpoint = edges[name].run("wg", "show", "wg0", "endpoints").stdout.split()[1]
        assert endpoint.startswith(f"{CGNAT_PUBLIC}:"), endpoint
        assert "mtu 1380" in edges[name].run("ip", "link", "show", "wg0").stdout
        assert "mtu 1380" in home.run("ip", "link", "show", ifname).stdout

    # Traffic from each edge to the LAN targets; the answer's source shows the reply went
    # back through the same edge's tunnel (a wrong path would be dropped by WireGuard).
    # Anything not declared is refused: other ports, other hosts, the other protocol.
    _assert_only_declared_targets(edges["fsn"], "198.51.100.5", lan_side=home)
    _assert_only_declared_targets(edges["ams"], "198.51.100.9", lan_side=home)
    # The home router itself is no target either, over IPv4 or IPv6, at its LAN address
    # or its tunnel addresses, over TCP or UDP ...
    _echo_server(home, addr="[fd00:cafe::6]", port=9000, family="TCP6")
    _echo_server(home, port=9000)
    _udp_echo_server(home, port=9000)
    assert wait_for(lambda: _ask(lan, "192.0.2.1:9000"), message="LAN -> home router") == LAN_HOST
    assert wait_for(lambda: _ask_udp(lan, "192.0.2.1:9000"), message="LAN -> home router/udp") == LAN_HOST
    for edge, target in [
        ("fsn", "[fd00:cafe::6]:9000"),
        ("fsn", "192.0.2.1:9000"),
        ("fsn", "198.51.100.6:9000"),
        ("ams", "198.51.100.10:9000"),
    ]:
        assert _refused(edges[edge], target), f"edge {edge} reached the home router at {target}"
    assert _ask_udp(edges["fsn"], "198.51.100.6:9000") is None and _ask_udp(edges["ams"], "192.0.2.1:9000") is None
    # ... while the edge's health agent gets the reset it takes as "the tunnel is up".
    assert _refused(edges["ams"], "198.51.100.10:9")
    # ... but what home opens towards an edge works, over IPv4 and IPv6 inside the tunnel.
    _echo_server(edges["ams"], addr="198.51.100.9", port=9001)
    assert wait_for(lambda: _ask(home, "198.51.100.9:9001"), message="home -> ams") == "198.51.100.10"
    _echo_server(edges["fsn"], addr="[fd00:cafe::5]", port=9001, family="TCP6")
    assert wait_for(lambda: _ask(home, "[fd00:cafe::5]:9001"), message="home -> fsn over IPv6") == "fd00:cafe::6"

    # Losing one edge leaves the other tunnel alone.
    edges["fsn"].run("wg-quick", "down", "wg0")
    assert _ask(edges["ams"], f"{LAN_HOST}:{ECHO_PORT}") == "198.51.100.9"
    assert _routes(home) == before
    for name in ("wg-fsn", "wg-ams"):
        home.run("wg-quick", "down", name)
    assert _routes(home) == before
    assert "cgnat_edge" not in home.run("nft", "list", "tables").stdout, "wg-quick down removes the filters"
    assert configs["structured"]["role"] == "router"


def test_role_host_with_a_home_key_that_never_left_home(lab, tmp_path):
    """The home peer is a LAN box behind the LAN router; without the masquerade from its
    wg-quick file, LAN hosts would answer to the router, which knows no tunnel."""
    home_key = generate_keypair()  # made "at home": only the public key goes into the stack config
    cfg = lab_config(
        homeRole="host",
        homePublicKey=home_key[1],
        edges=[{"name": "fsn", "provider": "hetzner", "location": "fsn1"}],
        ha=False,
    )
    edge_keys = {"fsn": generate_keypair()}
    cgnat, edges = _internet(lab, ["fsn"])
    router, box, lan = lab.node("router"), lab.node("box"), lab.node("lan")
    router.forward()
    lab.link(router, "wan", ["100.64.0.2/24"], cgnat, "inside", ["100.64.0.1/24"])
    router.route("default", "via", "100.64.0.1")
    router.run("nft", "-f", "-", input=MASQUERADE_WAN.format(table="home"))
    router.run("ip", "link", "add", "br0", "type", "bridge")
    router.addresses("br0", ["192.0.2.1/24"])
    for node, addrs in ((box, ["192.0.2.2/24"]), (lan, [f"{LAN_HOST}/24", f"{LAN_OTHER}/24"])):
        port = f"p-{node.name}"
        lab.link(router, port, [], node, "eth0", addrs)
        router.run("ip", "link", "set", port, "master", "br0")
        node.route("default", "via", "192.0.2.1")
    _lan_services(lan)

    _edge_up(cfg, edges["fsn"], cfg.edges[0], edge_keys["fsn"][0], home_key[1])
    configs = _render_home(cfg, edge_keys, None, tmp_path)
    assert home_key[0] not in str(configs)
    box.write(home_configs.HOME_KEY_FILE, home_key[0] + "\n")
    box.write("/etc/wireguard/wg-fsn.conf", (tmp_path / "home" / "wg-fsn.conf").read_text())
    before = _routes(box)
    box.run("wg-quick", "up", "wg-fsn")
    assert _routes(box) == before
    wait_for(lambda: _handshake(box, "wg-fsn"), timeout=15, message="handshake with a key from the key file")

    # Through the box, masqueraded: the LAN host sees the box; only declared targets,
    # and neither the box itself nor the LAN's router.
    _assert_only_declared_targets(edges["fsn"], "192.0.2.2", lan_side=box)
    _echo_server(box, addr="192.0.2.2", port=9000)
    assert wait_for(lambda: _ask(lan, "192.0.2.2:9000"), message="LAN -> box") == LAN_HOST
    assert _refused(edges["fsn"], "192.0.2.2:9000") and _refused(edges["fsn"], "192.0.2.1:22")
    table = "cgnat_edge_wg_fsn"
    # Prove the masquerade is what makes it work: without it the LAN host answers the router.
    box.run("nft", "flush", "chain", "inet", table, "postrouting")
    assert _ask(edges["fsn"], f"{LAN_HOST}:{ECHO_PORT}", timeout=2) is None
    box.run("wg-quick", "down", "wg-fsn")
    assert table not in box.run("nft", "list", "tables").stdout
