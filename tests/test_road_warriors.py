"""Road warriors: parsing, the edge's port forward, home's interface in every router
form, the device files, the secrets.

The data path (through every edge to the declared targets and nothing else; a
taken-over edge that sends in a device's name reaching nothing; only ciphertext on the
edge) is proven in the lab, in tests/test_forward.py::test_lab_forward_report and
tests/test_attacks.py.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import re
import subprocess

import pytest

from components import config as config_module
from components.model.deployed import DeployedEdge
from components.model.keys import generate_keypair, public_key_of
from components.renderers import home_configs, nftables, tunnel
from components.tools import home_files, offline
from tests.support import LAB_STACK, PROJECT, require_tool
from tests.test_home_configs import (
    ROUTEROS_DEFCONF,
    OpenWrtModel,
    RouterOSModel,
    _fw4_input_verdict,
    _owned,
    _ros_verdict,
)

LAB_STACK = LAB_STACK
POOL = ipaddress.ip_network("10.252.0.0/24")


@pytest.fixture
def cfg(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["roadWarriors"] = [
        {"name": "phone", "allowedPrefixes": ["lan"]},
        {"name": "laptop", "publicKey": generate_keypair()[1], "allowedPrefixes": ["192.168.1.0/28"], "internet": True},
    ]
    raw["roadWarriorDns"] = "192.168.1.1"
    return config_module.parse(raw, stack="dev")


def _render(cfg, home_private=None):
    keys = {e.name: generate_keypair() for e in cfg.edges}
    peers = [DeployedEdge(e, f"203.0.113.{e.index + 1}", None, keys[e.name][1]) for e in cfg.edges]
    phone_private = generate_keypair()[0]
    home_private = home_private or generate_keypair()[0]
    out = home_configs.render(cfg, peers, home_private, {"phone": phone_private, "laptop": None})
    return out, home_private, phone_private


def test_road_warriors_parse(cfg):
    rw = cfg.road_warriors
    phone, laptop = rw.peers
    assert rw.pool == POOL and str(rw.dns) == "192.168.1.1"
    assert (rw.port, str(rw.home_address), rw.hosts) == (51821, "10.252.0.254", 253)
    assert (str(phone.address), phone.allowed, phone.public_key) == ("10.252.0.1", cfg.home.lan_prefixes, None)
    assert str(laptop.address) == "10.252.0.2" and laptop.internet and laptop.public_key


def test_a_device_without_declared_targets_is_refused(raw_config):
    """The old default (the whole LAN) is no default any more: the key and its fix."""
    raw = copy.deepcopy(raw_config)
    raw["roadWarriors"] = [{"name": "phone"}]
    with pytest.raises(config_module.ConfigError) as err:
        config_module.parse(raw, stack="dev")
    assert "cgnat-edge:roadWarriors[0].allowedPrefixes: is required" in str(err.value)
    assert "write [lan] for all of cgnat-edge:homeLanPrefixes (192.168.1.0/24" in str(err.value)


def test_the_port_opens_on_the_provider_firewall(cfg):
    from components.model.firewall import firewall_rules

    rules = {(r.protocol, r.port): r.description for r in firewall_rules(cfg)}
    assert rules[("udp", "51820-51821")] == "service WireGuard, road warriors"
    cfg = dataclasses.replace(cfg, road_warriors=dataclasses.replace(cfg.road_warriors, port=40000))
    rules = {(r.protocol, r.port): r.description for r in firewall_rules(cfg)}
    assert rules[("udp", "40000")] == "road warriors (WireGuard to home)"


def test_no_edge_holds_a_device(cfg):
    """wg0 has home as its one peer; no device key, address or route on the edge; the
    one pool address routed to home is home's own (the forwarded port's target)."""
    for edge in cfg.edges:
        text = tunnel.edge_wg_conf(cfg, edge, generate_keypair()[0], generate_keypair()[1])
        assert text.count("[Peer]") == 1
        assert cfg.road_warriors.peers[1].public_key not in text
        allowed = [ipaddress.ip_network(n) for n in re.search(r"AllowedIPs = (.*)", text)[1].split(", ")]
        in_pool = [n for n in allowed if n.version == 4 and n.subnet_of(POOL)]
        assert in_pool == [ipaddress.ip_network("10.252.0.254/32")]
    text = nftables.ruleset(cfg)
    assert not re.search(r"10\.252\.0\.(1|2)\b", text) and "masquerade" not in text


def test_the_edge_forwards_the_port_to_home(cfg):
    text = nftables.ruleset(cfg)
    assert 'iifname != "wg0" fib daddr type local udp dport 51821 dnat ip to 10.252.0.254' in text
    assert 'ct status dnat oifname "wg0" ip daddr 10.252.0.254 udp dport 51821 accept' in text
    # DNATed before the input chain (not opened there); IPv6, which cannot be forwarded, refused at once
    input_chain = text.split("chain input {")[1].split("\n    }")[0]
    assert "51821" not in re.sub(r"meta nfproto ipv6 udp dport \S+( \{[^}]*\})? reject[^\n]*", "", input_chain)
    assert re.search(r"meta nfproto ipv6 udp dport (51821|\{[^}]*51821[^}]*\}) reject", input_chain)


@pytest.mark.netns
def test_the_edge_ruleset_loads(cfg, tmp_path):
    require_tool("nft")
    path = tmp_path / "nftables.conf"
    path.write_text(nftables.ruleset(cfg))
    res = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _nft_commands(text, iface):
    return [
        line.split(" = ", 1)[1].removeprefix("nft ").strip("'").replace("%i", iface)
        for line in text.splitlines()
        if line.startswith("PreUp = nft ")
    ]


def test_wg_quick_home_interface_and_tunnels(cfg):
    out, home_private, phone_private = _render(cfg)
    rw = out["wgQuickRoadWarriors"]
    assert "ListenPort = 51821" in rw and "Address = 10.252.0.254/24" in rw
    assert f"MTU = {cfg.tunnel.mtu - 80}" in rw and f"PrivateKey = {home_private}" in rw
    assert f"PublicKey = {public_key_of(phone_private)}\nAllowedIPs = 10.252.0.1/32" in rw
    laptop_key = cfg.road_warriors.peers[1].public_key
    assert f"PublicKey = {laptop_key}\nAllowedIPs = 10.252.0.2/32" in rw
    t = "cgnat_edge_cgnat_rw"
    cmds = _nft_commands(rw, "cgnat-rw")
    assert f"add rule inet {t} from_device ip saddr 10.252.0.1 ip daddr {{ 192.168.1.0/24 }} accept" in cmds
    assert f"add rule inet {t} from_device ip saddr 10.252.0.2 ip daddr {{ 192.168.1.0/28 }} accept" in cmds
    not_internet = "{ 192.168.1.0/24, 10.254.0.0/24, 10.252.0.0/24 }"
    assert f"add rule inet {t} from_device ip saddr 10.252.0.2 ip daddr != {not_internet} accept" in cmds
    assert not any("ip saddr 10.252.0.1 ip daddr !=" in c for c in cmds)  # only the laptop asked for the internet
    # the laptop leaves through home's uplink, masqueraded; nothing into the LAN is
    assert cmds[-1] == (
        f'add rule inet {t} postrouting iifname "cgnat-rw" ip saddr {{ 10.252.0.2 }} ip daddr != {not_internet} '
        "masquerade"
    )
    for edge, text in out["wgQuick"].items():
        iface = next(x["interface"] for x in out["structured"]["tunnels"] if x["edge"] == edge)
        table = f"cgnat_edge_{iface.replace('-', '_')}"
        tcmds = _nft_commands(text, iface)
        assert f"add chain inet {table} pool {{ type filter hook prerouting priority raw; }}" in tcmds
        assert f'add rule inet {table} pool iifname "{iface}" ip saddr 10.252.0.0/24 drop' in tcmds
        assert f"add rule inet {table} from_edge ip daddr 10.252.0.254 udp dport 51821 accept" in tcmds
        assert not any("ip saddr 10.252.0." in c for c in tcmds if "from_edge" in c)  # no device from an edge


@pytest.mark.netns
def test_wg_quick_nft_commands_load(cfg):
    """Every nft command of home's files, as one transaction, through the real nft."""
    require_tool("nft")
    out, _, _ = _render(cfg)
    script = _nft_commands(out["wgQuickRoadWarriors"], "cgnat-rw")
    for t in out["structured"]["tunnels"]:
        script += _nft_commands(out["wgQuick"][t["edge"]], t["interface"])
    res = subprocess.run(["nft", "-c", "-f", "-"], input="\n".join(script) + "\n", capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_openwrt_home_interface_zone_and_pool_drop(cfg, raw_config, tmp_path):
    require_tool("sh", "sed")
    out, _, phone_private = _render(cfg)
    state = OpenWrtModel(tmp_path).apply(out["openwrt"])
    net, fw = state["network"], state["firewall"]
    assert net["cgnat_rw"]["listen_port"] == "51821" and net["cgnat_rw"]["addresses"] == ["10.252.0.254/24"]
    assert net["cgnat_rw_dev0"]["public_key"] == public_key_of(phone_private)
    assert net["cgnat_rw_dev0"]["allowed_ips"] == ["10.252.0.1/32"]
    assert fw["cgnat_edge_rwzone"]["name"] == "cgnat_rw" and fw["cgnat_edge_rwzone"]["network"] == ["cgnat_rw"]
    assert fw["cgnat_edge_rw0"]["dest"] == "lan" and fw["cgnat_edge_rw1"]["dest_ip"] == ["192.168.1.0/28"]
    assert fw["cgnat_edge_rw1_wan"]["dest"] == "wan" and "cgnat_edge_rw0_wan" not in fw
    # the router itself: a device reaches its address only if inside its prefixes
    for packet, verdict in [
        ({"state": "new", "proto": "tcp", "port": 22, "src": "10.252.0.1", "dst": "192.168.1.1"}, "ACCEPT"),
        ({"state": "new", "proto": "tcp", "port": 22, "src": "10.252.0.2", "dst": "192.168.1.200"}, "REJECT"),
        ({"state": "new", "proto": "udp", "port": 53, "src": "10.252.0.2", "dst": "192.168.1.1"}, "ACCEPT"),
    ]:
        assert _fw4_input_verdict(fw, "cgnat_rw", packet) == verdict, packet
    # from an edge: the devices' WireGuard to home's address, nothing else
    udp = {"state": "new", "proto": "udp", "port": 51821, "src": "198.51.100.7", "dst": "10.252.0.254"}
    assert _fw4_input_verdict(fw, "wg_fsn", udp) == "ACCEPT"
    assert _fw4_input_verdict(fw, "wg_fsn", {**udp, "port": 51820}) == "REJECT"
    include = out["openwrt"].split("60-cgnat-edge-marks.nft <<'EOF'\n")[1].split("\nEOF")[0]
    assert "type filter hook prerouting priority raw; policy accept;" in include
    assert '\tiifname { "wg-fsn", "wg-ams" } ip saddr 10.252.0.0/24 drop' in include
    # re-applied without road warriors, nothing of them is left
    model = OpenWrtModel(tmp_path / "again")
    assert "cgnat_rw_dev1" in _owned(model.apply(out["openwrt"]))["network"]
    again = model.apply(_render(config_module.parse(raw_config, stack="dev"))[0]["openwrt"])
    assert not any("rw" in name for names in _owned(again).values() for name in names), _owned(again)


def test_routeros_home_interface_and_filters(cfg):
    out, _, _ = _render(cfg)
    view = RouterOSModel(ROUTEROS_DEFCONF).apply(out["routeros"])
    [iface] = [i for i in view["/interface wireguard"] if i["name"] == "cgnat-rw"]
    assert iface["listen-port"] == "51821" and iface["mtu"] == str(cfg.tunnel.mtu - 80)
    peers = [p for p in view["/interface wireguard peers"] if p["interface"] == "cgnat-rw"]
    assert [p["allowed-address"] for p in peers] == ["10.252.0.1/32", "10.252.0.2/32"]
    [raw] = view["/ip firewall raw"]
    assert (raw["chain"], raw["in-interface-list"], raw["src-address"], raw["action"]) == (
        "prerouting",
        "cgnat-edge",
        "10.252.0.0/24",
        "drop",
    )
    new = {"state": "new", "protocol": "tcp", "dst-port": 22}
    for packet, chain, verdict in [
        (
            {**new, "in": "wg-fsn", "dst-address": "10.252.0.254", "protocol": "udp", "dst-port": 51821},
            "input",
            "accept",
        ),
        ({**new, "in": "wg-fsn", "dst-address": "10.252.0.254"}, "input", "reject tcp-reset"),
        ({**new, "in": "cgnat-rw", "src-address": "10.252.0.1", "dst-address": "192.168.1.1"}, "input", "accept"),
        ({**new, "in": "cgnat-rw", "src-address": "10.252.0.2", "dst-address": "192.168.1.100"}, "input", "drop"),
        ({**new, "in": "cgnat-rw", "src-address": "10.252.0.1", "dst-address": "192.168.1.100"}, "forward", "accept"),
        ({**new, "in": "cgnat-rw", "src-address": "10.252.0.2", "dst-address": "192.168.1.100"}, "forward", "drop"),
        ({**new, "in": "cgnat-rw", "src-address": "10.252.0.2", "dst-address": "198.51.100.9"}, "forward", "accept"),
        ({**new, "in": "cgnat-rw", "src-address": "10.252.0.1", "dst-address": "198.51.100.9"}, "forward", "drop"),
        ({**new, "in": "cgnat-rw", "src-address": "10.252.0.2", "dst-address": "10.254.0.1"}, "forward", "drop"),
    ]:
        assert _ros_verdict(view, "ip", packet, chain) == verdict, (chain, packet)
    nat = [r for r in view["/ip firewall nat"] if "road warrior" in r.get("comment", "")]
    assert [(r["src-address"], r["action"]) for r in nat] == [("10.252.0.2", "masquerade")]
    # importing again replaces, never duplicates
    assert RouterOSModel(ROUTEROS_DEFCONF).apply(out["routeros"] * 2) == view


def test_device_files_point_at_home_through_each_edge(cfg):
    out, home_private, phone_private = _render(cfg)
    files = out["roadWarriors"]["phone"]
    assert set(files) == {e.name for e in cfg.edges}
    for edge in cfg.edges:
        text = files[edge.name]
        assert f"Endpoint = 203.0.113.{edge.index + 1}:51821" in text
        assert f"PublicKey = {public_key_of(home_private)}" in text
        assert f"PrivateKey = {phone_private}" in text and "Address = 10.252.0.1/32" in text
        assert f"MTU = {cfg.tunnel.mtu - 80}" in text
    assert "AllowedIPs = 0.0.0.0/0" in out["roadWarriors"]["laptop"][cfg.edges[0].name]


def test_exit_only_device_and_ipv6_lan_leave_home_rules_well_formed(raw_config):
    """A device with no LAN prefix gets no prefix rule at home (an empty nft set is a
    syntax error, an OpenWrt rule without dest_ip lets it reach the whole LAN), and an
    IPv6 LAN prefix, which a device's IPv4 address cannot reach, is not in ``lan``."""
    raw = copy.deepcopy(raw_config)
    raw["homeLanPrefixes"] = [*raw["homeLanPrefixes"], "fd00:1::/64"]
    raw["roadWarriors"] = [
        {"name": "phone", "allowedPrefixes": ["lan"]},
        {"name": "exit", "allowedPrefixes": [], "internet": True},
    ]
    cfg = config_module.parse(raw, stack="dev")
    v4_lans = tuple(n for n in cfg.home.lan_prefixes if n.version == 4)
    assert [rw.allowed for rw in cfg.road_warriors.peers] == [v4_lans, ()]
    out, _, _ = _render(cfg)
    text = out["wgQuickRoadWarriors"]
    assert "{  }" not in text and "ip saddr 10.252.0.2 ip daddr {" not in text
    assert f"ip saddr 10.252.0.1 ip daddr {{ {', '.join(map(str, v4_lans))} }} accept" in text
    assert "cgnat_edge_rw1'" not in out["openwrt"] and "fd00:1::/64" not in out["openwrt"].split("road warrior")[1]


def test_generated_device_keys_are_secret_and_files_written(tmp_path):
    run = offline.run_program(LAB_STACK, project_file=PROJECT)
    assert offline.is_secret(run.outputs["homeConfigs"])
    assert run.by_type("cgnat-edge:index:WireGuardKey") or any("road-warrior-phone" in r.name for r in run.resources), (
        "a device without publicKey gets a generated key resource"
    )
    configs = offline.reveal(run.outputs["homeConfigs"])
    files = configs["roadWarriors"]["phone"]
    assert set(files) == {"fsn", "ams"}
    edges = run.output("edges")
    home_public = configs["structured"]["publicKey"]
    for edge, text in files.items():
        assert "PrivateKey = " in text and "<the private key" not in text
        assert f"Endpoint = {edges[edge]['ipv4']}:51821" in text
        assert f"PublicKey = {home_public}" in text and edges[edge]["wireguardPublicKey"] not in text
        assert "AllowedIPs = 192.0.2.0/26" in text and "Address = 192.0.2.225/32" in text
    written = home_files.write({"homeConfigs": configs}, tmp_path / "out", qr=True)
    names = {p.name for p in written}
    assert {"road-warrior-phone-fsn.conf", "road-warrior-phone-ams.png", "cgnat-rw.conf"} <= names
    assert (tmp_path / "out" / "cgnat-rw.conf").read_text() == configs["wgQuickRoadWarriors"]
    assert home_files.wg_quick(configs, "phone/ams") == files["ams"]
    with pytest.raises(home_files.HomeConfigError, match="phone/fsn"):
        home_files.wg_quick(configs, "tablet/fsn")
