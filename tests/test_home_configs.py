"""Home-side renderings and the files written from them."""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import json
import stat
import subprocess

import pytest

from components.model.deployed import DeployedEdge
from components.model.keys import generate_keypair
from components.renderers import home_configs
from components.tools import cli, home_files
from tests.support import require_tool


@pytest.fixture
def keys():
    return {"home": generate_keypair(), "fsn": generate_keypair(), "ams": generate_keypair()}


def _peers(cfg, keys):
    ips = {"fsn": ("203.0.113.10", "2001:db8:10::1"), "ams": ("203.0.113.20", None)}
    return [DeployedEdge(e, *ips[e.name], keys[e.name][1]) for e in cfg.edges]


def _v6(cfg, offset):
    return ipaddress.IPv6Address(int(cfg.tunnel.ipv6_prefix.network_address) + offset)


def _wg_values(text):
    """(section, key, value) of every setting line of a wg-quick file."""
    section, out = None, []
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            k, _, v = line.partition(" = ")
            out.append((section, k, v))
    return out


def test_structured_form(fleet_config, keys):
    data = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])["structured"]
    assert data["privateKey"] == keys["home"][0] and data["publicKey"] == keys["home"][1]
    assert data["privateKeyFile"] is None and data["role"] == "router" and data["masquerade"] is False
    assert data["lanPrefixes"] == ["192.168.1.0/24"]
    fsn, ams = data["tunnels"]
    assert fsn == {
        "edge": "fsn",
        "provider": "hetzner",
        "location": "fsn1",
        "country": "DE",
        "interface": "wg-fsn",
        "addresses": ["10.254.0.6/30", f"{_v6(fleet_config, 6)}/126"],
        "mtu": 1380,
        "peer": {
            "publicKey": keys["fsn"][1],
            "endpoint": "203.0.113.10:51820",
            "endpointIpv6": "[2001:db8:10::1]:51820",
            "allowedIps": ["10.254.0.5/32", f"{_v6(fleet_config, 5)}/128"],
            "persistentKeepalive": 25,
        },
        "routes": ["10.254.0.5/32", f"{_v6(fleet_config, 5)}/128"],
    }
    assert (
        ams["interface"] == "wg-ams"
        and ams["peer"]["endpoint"] == "203.0.113.20:51820"
        and ams["peer"]["endpointIpv6"] is None
    )
    assert ams["addresses"][0] == "10.254.0.10/30"
    for t in data["tunnels"]:
        assert not any(ipaddress.ip_network(a).prefixlen == 0 for a in t["peer"]["allowedIps"]), (
            "home must never route everything into a tunnel"
        )
    assert {(r["address"], r["port"], r["protocol"]) for r in data["forwardAllow"]} == {
        ("192.168.1.10", 443, "tcp"),
        ("192.168.1.10", 80, "tcp"),
        ("192.168.1.20", 8080, "tcp"),
        ("192.168.1.10", 22, "tcp"),
        ("192.168.1.30", 25565, "tcp"),
        ("192.168.1.30", 2456, "udp"),
    }
    json.dumps(data)  # the stack output must be JSON


def test_wg_quick_file(fleet_config, keys):
    out = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])
    assert set(out["wgQuick"]) == {"fsn", "ams"}
    assert _wg_values(out["wgQuick"]["fsn"]) == [
        ("Interface", "Address", f"10.254.0.6/30, {_v6(fleet_config, 6)}/126"),
        ("Interface", "MTU", "1380"),
        ("Interface", "PrivateKey", keys["home"][0]),
        ("Peer", "PublicKey", keys["fsn"][1]),
        ("Peer", "Endpoint", "203.0.113.10:51820"),
        ("Peer", "AllowedIPs", f"10.254.0.5/32, {_v6(fleet_config, 5)}/128"),
        ("Peer", "PersistentKeepalive", "25"),
    ]
    assert "Table" not in out["wgQuick"]["fsn"] and "0.0.0.0/0" not in out["wgQuick"]["fsn"]


def test_user_supplied_home_key_never_needs_the_private_key(raw_config, keys):
    from components.model import config as config_module

    raw_config["homePublicKey"] = keys["home"][1]
    cfg = config_module.parse(raw_config)
    out = home_configs.render(cfg, _peers(cfg, keys), None)
    data = out["structured"]
    assert data["privateKey"] is None and data["publicKey"] == keys["home"][1]
    assert data["privateKeyFile"] == home_configs.HOME_KEY_FILE
    values = _wg_values(out["wgQuick"]["fsn"])
    assert ("Interface", "PostUp", f"wg set %i private-key {home_configs.HOME_KEY_FILE}") in values
    assert not any(k == "PrivateKey" for _, k, _ in values)
    assert f"private_key='{home_configs.PRIVATE_KEY_PLACEHOLDER}'" in out["openwrt"]
    assert f'private-key="{home_configs.PRIVATE_KEY_PLACEHOLDER}"' in out["routeros"]
    assert keys["home"][0] not in json.dumps(out)


def test_home_key_must_match_configured_public_key(raw_config, keys):
    from components.model import config as config_module

    raw_config["homePublicKey"] = keys["fsn"][1]
    cfg = config_module.parse(raw_config)
    with pytest.raises(ValueError, match="does not match"):
        home_configs.render(cfg, _peers(cfg, keys), keys["home"][0])


def test_role_host_masquerades(fleet_config, keys):
    cfg = dataclasses.replace(fleet_config, home=dataclasses.replace(fleet_config.home, role="host"))
    out = home_configs.render(cfg, _peers(cfg, keys), keys["home"][0])
    assert out["structured"]["masquerade"] is True
    hooks = [(k, v) for s, k, v in _wg_values(out["wgQuick"]["ams"]) if k in ("PreUp", "PostUp", "PostDown")]
    assert hooks == [
        ("PreUp", "sysctl -qw net.ipv4.ip_forward=1"),
        ("PostUp", "nft add table inet cgnat_edge_wg_ams"),
        ("PostUp", "nft 'add chain inet cgnat_edge_wg_ams postrouting { type nat hook postrouting priority srcnat; }'"),
        ("PostUp", "nft 'add rule inet cgnat_edge_wg_ams postrouting iifname \"%i\" masquerade'"),
        ("PostDown", "nft delete table inet cgnat_edge_wg_ams"),
    ]
    assert "set firewall.cgnat_edge_masq=nat" in out["openwrt"]
    assert "add_list firewall.cgnat_edge_masq.src_ip='10.254.0.9/32'" in out["openwrt"]
    assert "/ip firewall nat add chain=srcnat src-address=10.254.0.5/32 action=masquerade" in out["routeros"]
    router = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])
    assert (
        "nft" not in router["wgQuick"]["ams"] and "masq" not in router["openwrt"] and "srcnat" not in router["routeros"]
    )


def test_openwrt_values(fleet_config, keys):
    text = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])["openwrt"]
    lines = text.splitlines()
    for expected in [
        "set network.wg_fsn=interface",
        "set network.wg_fsn.proto='wireguard'",
        f"set network.wg_fsn.private_key='{keys['home'][0]}'",
        "set network.wg_fsn.mtu='1380'",
        "add_list network.wg_fsn.addresses='10.254.0.6/30'",
        "set network.wg_fsn_edge=wireguard_wg_fsn",
        f"set network.wg_fsn_edge.public_key='{keys['fsn'][1]}'",
        "set network.wg_fsn_edge.endpoint_host='203.0.113.10'",
        "set network.wg_fsn_edge.endpoint_port='51820'",
        "set network.wg_fsn_edge.persistent_keepalive='25'",
        "set network.wg_fsn_edge.route_allowed_ips='1'",
        "add_list network.wg_fsn_edge.allowed_ips='10.254.0.5/32'",
        "set network.wg_ams_edge.endpoint_host='203.0.113.20'",
        "add_list firewall.cgnat_edge.network='wg_fsn'",
        "add_list firewall.cgnat_edge.network='wg_ams'",
        "set firewall.cgnat_edge.forward='REJECT'",
        "set firewall.cgnat_edge_allow5.dest_ip='192.168.1.30'",
        "set firewall.cgnat_edge_allow5.dest_port='2456'",
        "set firewall.cgnat_edge_allow5.proto='udp'",
    ]:
        assert expected in lines, expected
    assert not any("allowed_ips='0.0.0.0/0'" in line for line in lines)
    commands = [line.split()[0] for line in lines if line and not line.startswith("#")]
    assert set(commands) <= {"set", "add_list", "delete"}


def test_routeros_values(fleet_config, keys):
    text = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])["routeros"]
    lines = text.splitlines()
    v6 = _v6(fleet_config, 5)
    for expected in [
        f'/interface wireguard add name=wg-fsn mtu=1380 private-key="{keys["home"][0]}" comment="cgnat-edge cgnat-edge/dev: tunnel to edge fsn"',
        f'/interface wireguard peers add interface=wg-fsn public-key="{keys["fsn"][1]}" endpoint-address=203.0.113.10 endpoint-port=51820 '
        f'allowed-address=10.254.0.5/32,{v6}/128 persistent-keepalive=25s comment="cgnat-edge cgnat-edge/dev"',
        '/ip address add address=10.254.0.6/30 interface=wg-fsn comment="cgnat-edge cgnat-edge/dev"',
        f'/ipv6 address add address={_v6(fleet_config, 6)}/126 interface=wg-fsn advertise=no comment="cgnat-edge cgnat-edge/dev"',
        '/ip firewall filter add chain=forward in-interface-list=cgnat-edge dst-address=192.168.1.30 protocol=udp dst-port=2456 action=accept comment="cgnat-edge cgnat-edge/dev: valheim"',
    ]:
        assert expected in lines, expected
    assert lines.index(
        '/ip firewall filter add chain=forward in-interface-list=cgnat-edge connection-state=new action=drop comment="cgnat-edge cgnat-edge/dev: nothing else"'
    ) > max(i for i, line in enumerate(lines) if "action=accept" in line)


def test_interface_names_fit_ifnamsiz_and_stay_unique():
    names = home_configs.interface_names(
        ["fsn", "a-very-long-edge-name-1", "a-very-long-edge-name-2", "exactly-twelv"[:12]]
    )
    assert names["fsn"] == "wg-fsn"
    assert names["exactly-twelv"[:12]] == "wg-exactly-twel"
    assert all(len(n) <= 15 for n in names.values())
    assert len(set(names.values())) == 4
    assert names["a-very-long-edge-name-1"].startswith("wg-a-very-") and names == home_configs.interface_names(
        list(reversed(list(names)))
    )


def test_edge_without_ipv4_uses_ipv6_endpoint(fleet_config, keys):
    peers = _peers(fleet_config, keys)
    peers[0] = dataclasses.replace(peers[0], ipv4=None)
    data = home_configs.render(fleet_config, peers, keys["home"][0])["structured"]
    assert data["tunnels"][0]["peer"]["endpoint"] == "[2001:db8:10::1]:51820"


# --- files -----------------------------------------------------------------------


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_write_from_stack_output(fleet_config, keys, tmp_path):
    configs = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])
    stack_output = json.loads(json.dumps({"homeConfigs": configs, "edges": {"fsn": "203.0.113.10"}}))
    out = tmp_path / "home"
    paths = home_files.write(stack_output, out, qr=True)
    assert sorted(p.name for p in paths) == [
        "home.json",
        "openwrt.uci",
        "routeros.rsc",
        "wg-ams.conf",
        "wg-ams.png",
        "wg-fsn.conf",
        "wg-fsn.png",
    ]
    assert _mode(out) == 0o700
    assert {p.name: _mode(p) for p in paths} == {p.name: 0o600 for p in paths}
    assert (out / "wg-fsn.conf").read_text() == configs["wgQuick"]["fsn"]
    assert json.loads((out / "home.json").read_text()) == configs["structured"]
    assert (out / "wg-fsn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary files left behind"


def test_qr_code_decodes_back_to_the_config(fleet_config, keys, tmp_path):
    """What a phone scans must be the wg-quick file, byte for byte."""
    require_tool("zbarimg")
    text = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])["wgQuick"]["fsn"]
    png = tmp_path / "qr.png"
    png.write_bytes(home_files.qr_png(text))
    done = subprocess.run(["zbarimg", "--raw", "-q", "-Sbinary", str(png)], capture_output=True, check=True)
    assert done.stdout.decode().rstrip("\n") == text.rstrip("\n")
    term = home_files.qr_terminal(text)
    assert {"█", "▀", "▄"} & set(term) and len(term.splitlines()) > 20


def test_write_from_render_dir_and_refuses_hidden_secrets(fleet_config, keys, tmp_path):
    configs = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])
    render = tmp_path / "render"
    render.mkdir()
    (render / "outputs.json").write_text(json.dumps({"homeConfigs": configs}))
    existing = tmp_path / "out"
    existing.mkdir(mode=0o755)
    (existing / "wg-fsn.conf").write_text("old")
    (existing / "wg-fsn.conf").chmod(0o644)
    paths = home_files.write(render, existing, qr=False)
    assert _mode(existing) == 0o700 and _mode(existing / "wg-fsn.conf") == 0o600
    assert (existing / "wg-fsn.conf").read_text() == configs["wgQuick"]["fsn"]
    assert not any(p.suffix == ".png" for p in paths)
    with pytest.raises(home_files.HomeConfigError, match="--show-secrets"):
        home_files.write({"homeConfigs": "[secret]"}, tmp_path / "x")
    with pytest.raises(home_files.HomeConfigError, match="homeConfigs"):
        home_files.write({"edges": {}}, tmp_path / "x")


def test_home_config_command_reads_stdin(fleet_config, keys, tmp_path, monkeypatch, capsys):
    configs = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"homeConfigs": configs})))
    assert cli.main(["home-config", "-", "--out", str(tmp_path / "o"), "--qr-terminal", "ams"]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "o" / "wg-ams.conf") in printed and {"█", "▀", "▄"} & set(printed)
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"homeConfigs": configs})))
    assert cli.main(["home-config", "-", "--out", str(tmp_path / "new"), "--qr-terminal", "nope"]) == 2
    assert capsys.readouterr().err == "cgnat-edge home-config: no edge 'nope'; edges are ams, fsn\n"
    assert not (tmp_path / "new").exists()
