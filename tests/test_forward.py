"""Service mode ``forward``: parsing, what the edge and every home form get, and the lab.

The renders are checked by the tools that consume them (nft -c); the data path itself
(visitor's address at home, replies through the edge they came in by, home's default
route untouched) is proven in the lab (``cgnat-edge lab --forward``), last here.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from components import config as config_module
from components.lab import runner
from components.model import edge_contract
from components.model.deployed import DeployedEdge
from components.model.keys import generate_keypair
from components.renderers import bootstrap, home_configs, nftables, traefik
from tests.support import LAB_STACK, PROJECT, namespaces, require_root, require_tool
from tests.test_nftables import PROBE

FORWARDS = [
    {"name": "game", "mode": "forward", "protocol": "udp", "port": "27015-27030", "target": "192.168.1.30:27015"},
    {"name": "mail", "mode": "forward", "protocol": "tcp", "port": 25, "target": "192.168.1.40:2525"},
]


@pytest.fixture
def cfg(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["services"] = [*raw["services"], *FORWARDS]
    return config_module.parse(raw, stack="dev")


def _home(cfg):
    keys = {"home": generate_keypair(), **{e.name: generate_keypair() for e in cfg.edges}}
    ips = ["203.0.113.10", "203.0.113.20", "203.0.113.30"]
    peers = [DeployedEdge(e, ips[i], None, keys[e.name][1]) for i, e in enumerate(cfg.edges)]
    return home_configs.render(cfg, peers, keys["home"][0])


def test_forward_services_parse_with_ranges(cfg):
    game, mail = (s for s in cfg.services if s.mode == "forward")
    assert (game.protocol, game.port, game.port_end, list(game.ports)[-1]) == ("udp", 27015, 27030, 27030)
    assert (mail.protocol, mail.port, mail.port_end, str(mail.target)) == ("tcp", 25, 0, "192.168.1.40:2525")
    assert set(range(27015, 27031)) <= set(cfg.public_ports("udp")) and 25 in cfg.public_ports("tcp")


def test_provider_firewall_takes_a_range_as_one_rule(cfg):
    from components.model.firewall import firewall_rules

    spans = [r for r in firewall_rules(cfg) if r.protocol == "udp"]
    assert any(r.ports == (27015, 27030) for r in spans), spans


def test_traefik_never_sees_forward_services(cfg):
    static, dynamic = traefik.static_config(cfg), traefik.dynamic_config(cfg)
    assert not any(name in json.dumps(static) for name in ("27015", ":25/"))
    assert "game" not in json.dumps(dynamic) and "mail" not in json.dumps(dynamic)


@pytest.mark.netns
def test_edge_ruleset_dnats_keeping_the_source_and_loads(cfg, tmp_path):
    require_tool("nft")
    text = nftables.ruleset(cfg)
    assert (
        "fib daddr type local udp dport 27015-27030 counter name forward_game dnat ip to 192.168.1.30"
        ' comment "service game"'
    ) in text
    assert "tcp dport 25 counter name forward_mail dnat ip to 192.168.1.40:2525" in text
    assert "masquerade" not in text and "snat" not in text, "the visitor's address must reach home"
    assert 'ct status dnat oifname "wg0" ip daddr 192.168.1.30 udp dport 27015-27030 accept' in text
    input_chain = text.split("chain forward {")[0]
    # DNATed ports never reach the edge's input chain over IPv4; over IPv6 they are refused there.
    assert [line.strip() for line in input_chain.splitlines() if "27015" in line or "dport 25 " in line] == [
        "meta nfproto ipv6 tcp dport 25 reject with tcp reset",
        "meta nfproto ipv6 udp dport 27015-27030 reject with icmpx port-unreachable",
    ]
    path = tmp_path / "nftables.conf"
    path.write_text(text)
    res = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.netns
def test_ipv6_visitors_of_a_forward_port_are_refused_at_once(cfg, tmp_path):
    """The targets are IPv4, so an IPv6 visitor (the name has the edges' AAAA records) is
    told no at once, a reset or port unreachable, and moves on to IPv4."""
    require_root()
    require_tool("nft")
    path = tmp_path / "nftables.conf"
    path.write_text(nftables.ruleset(cfg))
    with namespaces("nft") as lab:
        edge, net = lab.node("edge"), lab.node("net")
        lab.link(edge, "e0", ["2001:db8:1::1/64"], net, "n0", ["2001:db8:1::2/64"])
        loaded = edge.run("nft", "-f", str(path), check=False)
        assert loaded.returncode == 0, loaded.stderr

        def probe(kind: str, port: int) -> str:
            argv = (sys.executable, "-c", PROBE, kind, "2001:db8:1::2", "2001:db8:1::1", str(port))
            return net.run(*argv, timeout=10).stdout.strip()

        assert probe("tcp", 25) == "refused"
        assert probe("udp", 27020) == "refused"
        assert probe("tcp", 8080) == "dropped"  # the control: any other port stays a silent drop


def test_edge_gets_forwarding_only_with_forward_services(cfg, fleet_config):
    def files(c):
        return {f.path: f.content for f in bootstrap.node_files(c, c.edges[0], "[Interface]\n")}

    assert files(cfg)[edge_contract.FORWARD_SYSCTL].strip().endswith("net.ipv4.ip_forward = 1")
    assert edge_contract.FORWARD_SYSCTL not in files(fleet_config)
    assert "dnat" not in nftables.ruleset(fleet_config)


def test_wg_quick_routes_replies_back_through_their_tunnel(cfg):
    out = _home(cfg)
    confs = out["wgQuick"]
    marks = set()
    for tunnel in out["structured"]["tunnels"]:
        text = confs[tunnel["edge"]]
        pr = tunnel["policyRouting"]
        marks.add(pr["mark"])
        assert "Table = off" in text, "wg-quick must not install a default route for AllowedIPs 0.0.0.0/0"
        assert "AllowedIPs = 0.0.0.0/0" in text
        assert f'iifname "%i" ct mark set {pr["mark"]:#x}' in text
        assert f"fwmark {pr['mark']:#x} lookup main suppress_prefixlength 0" in text
        assert f"PostUp = ip -4 route replace default dev %i table {pr['table']}" in text
        for route in tunnel["routes"]:
            assert f"route replace {route} dev %i" in text
        assert "dport 27015-27030 accept" in text
    assert len(marks) == len(out["structured"]["tunnels"]), "every tunnel needs a mark of its own"


@pytest.mark.netns
def test_wg_quick_nft_lines_load(cfg):
    """The reply-mark table (one self-contained nft transaction) parses, as wg-quick runs it."""
    require_tool("nft")
    for edge, text in _home(cfg)["wgQuick"].items():
        for line in text.splitlines():
            if line.startswith("PreUp = nft ") and "cgnat_replies" in line:
                command = line.split(" = ", 1)[1].replace("%i", f"wg-{edge}")
                res = subprocess.run(
                    ["bash", "-c", command.replace("nft ", "nft -c ", 1)], capture_output=True, text=True
                )
                assert res.returncode == 0, f"{command}: {res.stderr}"


def test_openwrt_and_routeros_get_the_same_reply_routing(cfg):
    out = _home(cfg)
    tunnel = out["structured"]["tunnels"][0]
    sec, pr = tunnel["interface"].replace("-", "_"), tunnel["policyRouting"]
    assert f"set network.{sec}_edge.route_allowed_ips='0'" in out["openwrt"]
    assert f"set network.{sec}_pr4b.lookup='{pr['table']}'" in out["openwrt"]
    assert f'iifname "{tunnel["interface"]}" ct mark set {pr["mark"]:#x}' in out["openwrt"]
    assert "dest_port='27015-27030'" in out["openwrt"]
    ros = out["routeros"]
    assert f"new-connection-mark=cgnat-edge-{tunnel['interface']}" in ros
    assert f"gateway={tunnel['interface']} routing-table=cgnat-edge-{tunnel['interface']}" in ros
    assert "dst-port=27015-27030" in ros


def test_without_forward_services_home_is_unchanged(fleet_config):
    out = _home(fleet_config)
    assert all(t["policyRouting"] is None for t in out["structured"]["tunnels"])
    assert not any("Table = off" in text or "fwmark" in text for text in out["wgQuick"].values())
    assert "mangle" not in out["routeros"].split("remove [find")[-1]


@pytest.mark.netns
@pytest.mark.lab
def test_lab_forward_report(tmp_path):
    """``cgnat-edge lab --forward --report FILE``: both edges forward at once; home logs
    the visitor's own address for tcp and udp, and replies leave through the edge the
    request came in by while home's default route stays the ISP's.  The road warrior
    reaches the LAN through one edge, then the other when the first is dark, and is
    refused outside its prefixes and towards the internet."""
    require_root()
    require_tool(*runner.TOOLS)
    report_file = tmp_path / "report.json"
    ok, text = runner.run(
        LAB_STACK,
        project_file=PROJECT,
        out=tmp_path,
        forward=True,
        report=report_file,
    )
    rows = {c["name"]: c for c in json.loads(report_file.read_text())["checks"]}
    names = (
        "forward:tcp:real-ip",
        "forward:udp:real-ip",
        "forward:reply-path",
        "vpn:reach",
        "vpn:failover",
        "vpn:denied",
    )
    for name in names:
        assert rows[name]["ok"], rows[name]
    assert (
        "home saw 192.0.2.225" in rows["vpn:reach"]["detail"] and "through edge ams" in rows["vpn:failover"]["detail"]
    )
    assert rows["vpn:denied"]["value"] == 0 and "answers" in rows["vpn:denied"]["detail"]
    assert rows["forward:tcp:real-ip"]["value"] == 2 and rows["forward:udp:real-ip"]["value"] == 2
    assert rows["forward:reply-path"]["detail"].count("8 replies out of its tunnel, 0 out of others") == 2
    assert ok, text
