"""Road warriors: parsing, the edge's peers and filter, the device files, the secrets.

The data path (reach through one edge, then another when it is dark; refused outside
the device's prefixes and to the internet) is proven in the lab, in
tests/test_forward.py::test_lab_forward_report.
"""

from __future__ import annotations

import copy
import ipaddress
import subprocess

import pytest

from components import config as config_module
from components.model.deployed import DeployedEdge
from components.model.keys import generate_keypair
from components.renderers import home_configs, nftables, tunnel
from components.tools import home_files, offline
from tests.support import LAB_STACK, PROJECT, require_tool

LAB_STACK = LAB_STACK


@pytest.fixture
def cfg(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["roadWarriors"] = [
        {"name": "phone"},
        {"name": "laptop", "publicKey": generate_keypair()[1], "allowedPrefixes": ["192.168.1.0/28"], "internet": True},
    ]
    raw["roadWarriorDns"] = "192.168.1.1"
    return config_module.parse(raw, stack="dev")


def test_road_warriors_parse(cfg):
    rw = cfg.road_warriors
    phone, laptop = rw.peers
    assert rw.pool == ipaddress.ip_network("10.252.0.0/24") and str(rw.dns) == "192.168.1.1"
    assert (str(phone.address), phone.allowed, phone.public_key) == ("10.252.0.1", cfg.home.lan_prefixes, None)
    assert str(laptop.address) == "10.252.0.2" and laptop.internet and laptop.public_key


def test_every_edge_carries_every_device(cfg):
    keys = {"phone": generate_keypair()[1], "laptop": cfg.road_warriors.peers[1].public_key}
    for edge in cfg.edges:
        text = tunnel.edge_wg_conf(cfg, edge, generate_keypair()[0], generate_keypair()[1], keys)
        assert f"PublicKey = {keys['phone']}\nAllowedIPs = 10.252.0.1/32" in text
        assert f"PublicKey = {keys['laptop']}\nAllowedIPs = 10.252.0.2/32" in text


def test_exit_only_device_and_ipv6_lan_leave_home_rules_well_formed(raw_config):
    """A device with no LAN prefix gets no rule at home (an empty nft set is a syntax
    error, an OpenWrt rule without dest_ip lets it reach the whole LAN), and an IPv6 LAN
    prefix, which a device's IPv4 address cannot reach, is not in its defaults."""
    raw = copy.deepcopy(raw_config)
    raw["homeLanPrefixes"] = [*raw["homeLanPrefixes"], "fd00:1::/64"]
    raw["roadWarriors"] = [{"name": "phone"}, {"name": "exit", "allowedPrefixes": [], "internet": True}]
    cfg = config_module.parse(raw, stack="dev")
    v4_lans = tuple(n for n in cfg.home.lan_prefixes if n.version == 4)
    assert [rw.allowed for rw in cfg.road_warriors.peers] == [v4_lans, ()]
    keys = {e.name: generate_keypair() for e in cfg.edges}
    peers = [DeployedEdge(e, f"203.0.113.{e.index}", None, keys[e.name][1]) for e in cfg.edges]
    out = home_configs.render(cfg, peers, generate_keypair()[0])
    assert [rw["name"] for rw in out["structured"]["roadWarriorAllow"]] == ["phone"]
    for text in out["wgQuick"].values():
        assert "{  }" not in text and "ip saddr 10.252.0.2" not in text
        assert f"ip saddr 10.252.0.1 ip daddr {{ {', '.join(map(str, v4_lans))} }} accept" in text
    assert "road warrior exit" not in out["openwrt"] and "road warrior exit" not in out["routeros"]
    assert "fd00:1::/64" not in out["openwrt"].split("road warrior phone")[1]


@pytest.mark.netns
def test_edge_forwards_devices_only_to_their_prefixes(cfg, tmp_path):
    require_tool("nft")
    text = nftables.ruleset(cfg)
    assert 'iifname "wg0" oifname "wg0" ip saddr 10.252.0.1 ip daddr { 192.168.1.0/24 } accept' in text
    assert 'iifname "wg0" oifname "wg0" ip saddr 10.252.0.2 ip daddr { 192.168.1.0/28 } accept' in text
    # only the laptop asked for the internet
    assert 'oifname != "wg0" ip saddr 10.252.0.2 accept' in text and "ip saddr 10.252.0.1 accept" not in text
    assert 'oifname != "wg0" ip saddr { 10.252.0.2 } masquerade' in text
    path = tmp_path / "nftables.conf"
    path.write_text(text)
    res = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


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
    for edge, text in files.items():
        assert "PrivateKey = " in text and "<the private key" not in text
        assert f"Endpoint = {edges[edge]['ipv4']}:51820" in text
        assert f"PublicKey = {edges[edge]['wireguardPublicKey']}" in text
        assert "AllowedIPs = 192.0.2.0/26" in text and "Address = 192.0.2.225/32" in text
    written = home_files.write({"homeConfigs": configs}, tmp_path / "out", qr=True)
    names = {p.name for p in written}
    assert {"road-warrior-phone-fsn.conf", "road-warrior-phone-ams.png"} <= names
    assert home_files.wg_quick(configs, "phone/ams") == files["ams"]
    with pytest.raises(home_files.HomeConfigError, match="phone/fsn"):
        home_files.wg_quick(configs, "tablet/fsn")
