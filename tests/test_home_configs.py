"""Home-side renderings and the files written from them."""

from __future__ import annotations

import dataclasses
import errno
import io
import ipaddress
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from components import cli
from components.model.deployed import DeployedEdge
from components.model.keys import generate_keypair
from components.renderers import home_configs
from components.tools import home_files
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
        "policyRouting": None,
        "metrics": "10.254.0.5:9100",
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
    settings = [v for v in _wg_values(out["wgQuick"]["fsn"]) if v[1] not in ("PreUp", "PostDown")]
    assert settings == [
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
    from components import config as config_module

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
    from components import config as config_module

    raw_config["homePublicKey"] = keys["fsn"][1]
    cfg = config_module.parse(raw_config)
    with pytest.raises(ValueError, match="does not match"):
        home_configs.render(cfg, _peers(cfg, keys), keys["home"][0])


def _hooks(text):
    return [(k, v) for _, k, v in _wg_values(text) if k in ("PreUp", "PostUp", "PreDown", "PostDown")]


def test_wg_quick_lets_the_edge_reach_only_the_declared_targets(fleet_config, keys):
    text = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])["wgQuick"]["fsn"]
    t = "cgnat_edge_wg_fsn"
    assert _hooks(text) == [
        ("PreUp", f"nft 'add table inet {t}; delete table inet {t}; add table inet {t}'"),
        ("PreUp", f"nft 'add chain inet {t} from_edge'"),
        ("PreUp", f"nft 'add rule inet {t} from_edge ct state established,related accept'"),
        ("PreUp", f"nft 'add rule inet {t} from_edge ip daddr 192.168.1.10 tcp dport 443 accept'"),
        ("PreUp", f"nft 'add rule inet {t} from_edge ip daddr 192.168.1.10 tcp dport 80 accept'"),  # httpTarget
        ("PreUp", f"nft 'add rule inet {t} from_edge ip daddr 192.168.1.20 tcp dport 8080 accept'"),
        ("PreUp", f"nft 'add rule inet {t} from_edge ip daddr 192.168.1.10 tcp dport 22 accept'"),
        ("PreUp", f"nft 'add rule inet {t} from_edge ip daddr 192.168.1.30 tcp dport 25565 accept'"),
        ("PreUp", f"nft 'add rule inet {t} from_edge ip daddr 192.168.1.30 udp dport 2456 accept'"),
        ("PreUp", f"nft 'add rule inet {t} from_edge meta l4proto tcp reject with tcp reset'"),
        ("PreUp", f"nft 'add rule inet {t} from_edge reject'"),
        ("PreUp", f"nft 'add chain inet {t} input {{ type filter hook input priority filter; }}'"),
        ("PreUp", f"nft 'add rule inet {t} input iifname \"%i\" jump from_edge'"),
        ("PreUp", f"nft 'add chain inet {t} forward {{ type filter hook forward priority filter; }}'"),
        ("PreUp", f"nft 'add rule inet {t} forward iifname \"%i\" jump from_edge'"),
        ("PostDown", f"nft delete table inet {t}"),
    ]
    # IPv6 targets are matched as ip6
    data = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])["structured"]
    data["forwardAllow"] = [{"service": "v6", "address": "fd00:1::10", "port": 443, "protocol": "tcp"}]
    assert "from_edge ip6 daddr fd00:1::10 tcp dport 443 accept'" in home_configs.wg_quick(data, data["tunnels"][0])


def test_role_host_masquerades(fleet_config, keys):
    cfg = dataclasses.replace(fleet_config, home=dataclasses.replace(fleet_config.home, role="host"))
    out = home_configs.render(cfg, _peers(cfg, keys), keys["home"][0])
    assert out["structured"]["masquerade"] is True
    hooks = _hooks(out["wgQuick"]["ams"])
    t = "cgnat_edge_wg_ams"
    assert hooks[0] == ("PreUp", "sysctl -qw net.ipv4.ip_forward=1")
    assert hooks[-3:] == [
        ("PreUp", f"nft 'add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; }}'"),
        ("PreUp", f"nft 'add rule inet {t} postrouting iifname \"%i\" masquerade'"),
        ("PostDown", f"nft delete table inet {t}"),
    ]
    batch = _uci_batch(out["openwrt"])
    assert "set firewall.cgnat_edge_masq_wg_ams_0=nat" in batch
    assert "set firewall.cgnat_edge_masq_wg_ams_0.src_ip='10.254.0.9/32'" in batch
    assert not [x for x in batch if ".src_ip=" in x and x.startswith("add_list")], "firewall4: src_ip is no list"
    assert (
        '/ip firewall nat add chain=srcnat src-address=10.254.0.5/32 action=masquerade comment="cgnat-edge cgnat-edge/dev: role host, edge fsn"'
        in out["routeros"].splitlines()
    )
    router = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])
    assert (
        "masquerade" not in router["wgQuick"]["ams"]
        and "masq" not in router["openwrt"]
        and "srcnat" not in router["routeros"]
    )


def _uci_batch(script):
    """The `uci batch` input inside the OpenWrt script."""
    lines = script.splitlines()
    start = lines.index("uci batch <<'EOF'")
    return lines[start + 1 : lines.index("EOF", start)]


def test_openwrt_values(fleet_config, keys):
    text = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])["openwrt"]
    assert text.startswith("#!/bin/sh\n")
    lines = _uci_batch(text)
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
    assert {line.split()[0] for line in lines} == {"set", "add_list"}
    # the commit names its packages: the user's other staged changes stay staged
    assert text.rstrip().splitlines()[-3:] == ["uci commit network", "uci commit firewall", "reload_config"]


def test_routeros_values(fleet_config, keys):
    text = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])["routeros"]
    lines = text.splitlines()
    v6 = _v6(fleet_config, 5)
    tag = "cgnat-edge cgnat-edge/dev"
    for expected in [
        f'/interface wireguard add name=wg-fsn mtu=1380 private-key="{keys["home"][0]}" comment="{tag}: tunnel to edge fsn"',
        f'/interface wireguard peers add interface=wg-fsn public-key="{keys["fsn"][1]}" endpoint-address=203.0.113.10 endpoint-port=51820 '
        f'allowed-address=10.254.0.5/32,{v6}/128 persistent-keepalive=25s comment="{tag}: edge fsn"',
        f'/ip address add address=10.254.0.6/30 interface=wg-fsn comment="{tag}: wg-fsn"',
        f'/ipv6 address add address={_v6(fleet_config, 6)}/126 interface=wg-fsn advertise=no comment="{tag}: wg-fsn"',
        "/ip firewall filter add chain=forward in-interface-list=cgnat-edge dst-address=192.168.1.30 protocol=udp dst-port=2456 "
        f'action=accept comment="{tag}: valheim" place-before=[:pick [/ip firewall filter find where comment="{tag}: nothing else"] 0]',
        f'/ip firewall filter remove [find where comment~"^{tag}(:|\\$)"]',
    ]:
        assert expected in lines, expected
    # every item the script adds carries the tag its removals look for
    adds = [i for i, line in enumerate(lines) if " add " in line]
    assert adds and all(f'comment="{tag}: ' in lines[i] for i in adds)
    assert max(i for i, line in enumerate(lines) if " remove " in line) < min(adds)


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


# --- re-applying: the OpenWrt script against a model of uci ------------------------
#
# No OpenWrt binaries run on Debian, so the real script runs under the real sh and sed
# with `uci` and `reload_config` replaced by the small model below: named sections only,
# changes staged until `uci commit <package>`, batch errors reported and skipped like
# uci's own batch mode does.

FAKE_UCI = r"""
import json, os, re, shlex, sys

STATE = os.environ["UCI_MODEL_STATE"]
state = json.load(open(STATE))
NAME = re.compile(r"^[A-Za-z0-9_]+$")


class UciError(Exception):
    pass


def split(path):
    parts = path.split(".")
    if not 2 <= len(parts) <= 3 or not all(NAME.match(p) for p in parts):
        raise UciError(f"Invalid argument: {path}")
    return parts


def section(pkg, sec, create_type=None):
    sections = state["staged"].setdefault(pkg, {})
    if sec not in sections:
        if create_type is None:
            raise UciError(f"Entry not found: {pkg}.{sec}")
        sections[sec] = {}
    if create_type is not None:
        sections[sec][".type"] = create_type
    return sections[sec]


def assign(cmd, arg):
    path, eq, value = arg.partition("=")
    if not eq:
        raise UciError(f"Invalid argument: {arg}")
    parts = split(path)
    if len(parts) == 2:
        if cmd != "set" or not NAME.match(value):
            raise UciError(f"Invalid argument: {arg}")
        section(*parts, create_type=value)
        return
    options = section(*parts[:2])
    if cmd == "set":
        options[parts[2]] = value
    else:
        old = options.get(parts[2], [])
        options[parts[2]] = (old if isinstance(old, list) else [old]) + [value]


def delete(path):
    parts = split(path)
    sections = state["staged"].get(parts[0], {})
    if parts[1] not in sections or (len(parts) == 3 and parts[2] not in sections[parts[1]]):
        raise UciError(f"Entry not found: {path}")
    if len(parts) == 2:
        del sections[parts[1]]
    else:
        del sections[parts[1]][parts[2]]


def fmt(value):
    return " ".join(f"'{v}'" for v in value) if isinstance(value, list) else f"'{value}'"


def run(args):
    cmd, rest = args[0], args[1:]
    if cmd == "get":
        parts = split(rest[0])
        options = section(*parts[:2])
        if len(parts) == 2:
            return options[".type"]
        if parts[2] not in options:
            raise UciError(f"Entry not found: {rest[0]}")
        value = options[parts[2]]
        return " ".join(value) if isinstance(value, list) else value
    if cmd == "show":
        if rest[0] not in state["staged"]:
            raise UciError(f"Entry not found: {rest[0]}")
        lines = []
        for name, options in state["staged"][rest[0]].items():
            lines.append(f"{rest[0]}.{name}={options['.type']}")
            lines += [f"{rest[0]}.{name}.{k}={fmt(v)}" for k, v in options.items() if k != ".type"]
        return "\n".join(lines)
    if cmd == "delete":
        delete(rest[0])
        return None
    if cmd in ("set", "add_list"):
        assign(cmd, rest[0])
        return None
    if cmd == "commit":
        state["committed"][rest[0]] = json.loads(json.dumps(state["staged"].get(rest[0], {})))
        state["commits"].append(rest[0])
        return None
    if cmd == "batch":
        for line in sys.stdin:
            words = shlex.split(line, comments=True)
            if not words:
                continue
            try:
                if words[0] not in ("set", "add_list", "delete") or len(words) != 2:
                    raise UciError(f"Unknown command: {line.strip()}")
                run(words)
            except UciError as e:
                state["errors"].append(str(e))
                print(f"uci: {e}", file=sys.stderr)
        return None
    raise UciError(f"Unknown command: {cmd}")


args = sys.argv[1:]
quiet = bool(args) and args[0] == "-q"
args = args[1:] if quiet else args
try:
    out = run(args)
    code = 0
except UciError as e:
    out, code = None, 1
    if not quiet:
        print(f"uci: {e}", file=sys.stderr)
json.dump(state, open(STATE, "w"))
if out is not None:
    print(out)
sys.exit(code)
"""

# What a fresh OpenWrt has, plus a WireGuard tunnel and a rule of the user's own.
OPENWRT_BASE = {
    "network": {
        "loopback": {".type": "interface", "device": "lo", "proto": "static"},
        "lan": {".type": "interface", "device": "br-lan", "proto": "static", "ipaddr": "192.168.1.1"},
        "wan": {".type": "interface", "device": "eth1", "proto": "dhcp"},
        "wg_vpn": {".type": "interface", "proto": "wireguard", "addresses": ["10.9.0.1/24"]},
        "vpn_phone": {".type": "wireguard_wg_vpn", "public_key": "phone", "allowed_ips": ["10.9.0.2/32"]},
    },
    "firewall": {
        "cfg01e63d": {".type": "defaults", "input": "REJECT", "output": "ACCEPT", "forward": "REJECT"},
        "cfg02dc81": {".type": "zone", "name": "lan", "network": ["lan", "wg_vpn"], "input": "ACCEPT"},
        "cfg03dc81": {".type": "zone", "name": "wan", "network": ["wan"], "input": "REJECT", "masq": "1"},
        "allow_ssh_from_work": {".type": "rule", "src": "wan", "dest_port": "22", "target": "ACCEPT"},
    },
}

# firewall4's parse_zone / parse_rule / parse_nat: the options each section type takes
# and which of them may be lists (any other option given as a list: "must not be a list").
FW4_OPTIONS = {
    "zone": ({"name", "input", "output", "forward"}, {"network"}),
    "rule": ({"name", "src", "dest", "target"}, {"src_ip", "dest_ip", "dest_port", "proto"}),
    "nat": ({"name", "src", "src_ip", "target"}, {"proto"}),
}
# netifd's wireguard protocol handler (interface) and its peer sections
WIREGUARD_OPTIONS = {
    "interface": ({"proto", "private_key", "mtu", "listen_port"}, {"addresses"}),
    "peer": (
        {"description", "public_key", "endpoint_host", "endpoint_port", "persistent_keepalive", "route_allowed_ips"},
        {"allowed_ips"},
    ),
}


class OpenWrtModel:
    def __init__(self, tmp_path):
        self.bin = tmp_path / "bin"
        self.bin.mkdir(parents=True)
        self.state = tmp_path / "uci-state.json"
        self.state.write_text(
            json.dumps({"staged": OPENWRT_BASE, "committed": OPENWRT_BASE, "errors": [], "commits": []})
        )
        (self.bin / "uci").write_text(f"#!{sys.executable}\n{FAKE_UCI}")
        (self.bin / "reload_config").write_text('#!/bin/sh\necho reload >> "$UCI_MODEL_STATE.reloads"\n')
        for tool in self.bin.iterdir():
            tool.chmod(0o755)
        self.script = tmp_path / "openwrt.sh"

    def apply(self, script: str) -> dict:
        self.script.write_text(script)
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "UCI_MODEL_STATE": str(self.state)}
        done = subprocess.run(["sh", str(self.script)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        state = json.loads(self.state.read_text())
        assert state["errors"] == [] and done.stderr == "", done.stderr
        assert state["commits"][-2:] == ["network", "firewall"]
        return state["committed"]


def _home(raw_config, keys, **changes):
    from components import config as config_module

    raw = {**raw_config, **changes}
    cfg = config_module.parse(raw, stack="dev")
    return home_configs.render(cfg, _peers(cfg, {**keys}), keys["home"][0])


def _without_ams_and_games(raw_config):
    return {
        "edges": [e for e in raw_config["edges"] if e["name"] != "ams"],
        "ha": False,  # one provider left
        "services": [s for s in raw_config["services"] if s["name"] not in ("minecraft", "valheim")],
    }


def _owned(state):
    """The sections the script made, by package."""
    base = {pkg: set(sections) for pkg, sections in OPENWRT_BASE.items()}
    return {pkg: {n for n in sections if n not in base[pkg]} for pkg, sections in state.items()}


def test_openwrt_script_replaces_everything_an_earlier_run_made(raw_config, keys, tmp_path):
    require_tool("sh", "sed")
    full = _home(raw_config, keys, homeRole="host")
    smaller = _home(raw_config, keys, homeRole="router", **_without_ams_and_games(raw_config))

    model = OpenWrtModel(tmp_path / "a")
    first = model.apply(full["openwrt"])
    assert _owned(first)["network"] == {"wg_fsn", "wg_fsn_edge", "wg_ams", "wg_ams_edge"}
    assert _owned(first)["firewall"] == (
        {"cgnat_edge"}
        | {f"cgnat_edge_allow{i}" for i in range(6)}
        | {f"cgnat_edge_masq_wg_{e}_{n}" for e in ("fsn", "ams") for n in (0, 1)}
    )
    assert first["firewall"]["cgnat_edge_masq_wg_ams_0"]["src_ip"] == "10.254.0.9/32"

    # an edge, two services and the role are gone: so are their sections
    second = model.apply(smaller["openwrt"])
    assert _owned(second) == {
        "network": {"wg_fsn", "wg_fsn_edge"},
        "firewall": {"cgnat_edge", "cgnat_edge_allow0", "cgnat_edge_allow1", "cgnat_edge_allow2", "cgnat_edge_allow3"},
    }
    assert second["firewall"]["cgnat_edge"]["network"] == ["wg_fsn"]
    # the same as applying the smaller stack to a fresh router, and again is a no-op
    fresh = OpenWrtModel(tmp_path / "b").apply(smaller["openwrt"])
    assert second == fresh
    assert model.apply(smaller["openwrt"]) == second
    # nothing of the user's own was touched
    for pkg, sections in OPENWRT_BASE.items():
        assert {n: second[pkg][n] for n in sections} == sections
    assert (tmp_path / "a" / "uci-state.json.reloads").read_text() == "reload\n" * 3


def test_openwrt_sections_follow_firewall4_and_netifd(raw_config, keys, tmp_path):
    """Every option the script writes is one firewall4 / netifd's wireguard handler
    reads, and only those that take lists get lists (firewall4 rejects a nat section's
    src_ip given as a list: the masquerade would silently do nothing)."""
    require_tool("sh", "sed")
    state = OpenWrtModel(tmp_path).apply(_home(raw_config, keys, homeRole="host")["openwrt"])
    owned = _owned(state)
    checked = set()
    for pkg, names in owned.items():
        for name in names:
            options = dict(state[pkg][name])
            kind = options.pop(".type")
            if pkg == "firewall":
                single, lists = FW4_OPTIONS[kind]
            else:
                single, lists = WIREGUARD_OPTIONS["peer" if kind.startswith("wireguard_") else kind]
            for key, value in options.items():
                assert key in single | lists, f"{pkg}.{name}: {key} is no {kind} option"
                assert not isinstance(value, list) or key in lists, f"{pkg}.{name}: option '{key}' must not be a list"
            checked.add(kind)
    assert checked == {"zone", "rule", "nat", "interface", "wireguard_wg_fsn", "wireguard_wg_ams"}


def _fw4_address(want, address):
    """A rule's src_ip / dest_ip (one or a list, absent: any) against a packet's address."""
    if want is None:
        return True
    if address is None:
        return False
    wants = want if isinstance(want, list) else [want]
    return any(ipaddress.ip_address(address) in ipaddress.ip_network(w) for w in wants)


def _fw4_input_verdict(firewall, network, packet):
    """What firewall4 does with ``packet`` arriving on ``network`` for the router itself:
    its input chain accepts established and related traffic first, then jumps to the
    zone of the arriving interface, whose input rules (``src`` the zone or ``*``, no
    ``dest``) decide in order, and the zone's ``input`` policy after them."""
    if packet["state"] in ("established", "related"):
        return "ACCEPT"
    [zone] = [z for z in firewall.values() if z[".type"] == "zone" and network in z.get("network", [])]
    for rule in firewall.values():
        if rule[".type"] != "rule" or "dest" in rule or rule.get("src") not in (zone["name"], "*"):
            continue
        unknown = set(rule) - {".type", "name", "src", "proto", "dest_port", "target", "src_ip", "dest_ip"}
        assert not unknown, f"the model cannot match {unknown}"
        protos = rule.get("proto", ["tcp", "udp"])
        if protos == "all":
            protos = [packet["proto"]]
        if (
            packet["proto"] in (protos if isinstance(protos, list) else protos.split())
            and ("dest_port" not in rule or str(packet.get("port")) == rule["dest_port"])
            and _fw4_address(rule.get("src_ip"), packet.get("src"))
            and _fw4_address(rule.get("dest_ip"), packet.get("dst"))
        ):
            return rule["target"]
    return zone.get("input", "REJECT")


def test_openwrt_keeps_the_tunnels_off_the_router_itself(raw_config, keys, tmp_path):
    """firewall4's REJECT answers TCP with a reset (the health agent's tunnel probe) and
    anything else with port unreachable; replies to the router come back."""
    require_tool("sh", "sed")
    state = OpenWrtModel(tmp_path).apply(_home(raw_config, keys, homeRole="host")["openwrt"])
    for network in ("wg_fsn", "wg_ams"):
        for packet, verdict in [
            ({"state": "new", "proto": "tcp", "port": 22}, "REJECT"),
            ({"state": "new", "proto": "tcp", "port": 9}, "REJECT"),
            ({"state": "new", "proto": "udp", "port": 53}, "REJECT"),
            ({"state": "new", "proto": "icmp"}, "REJECT"),
            ({"state": "established", "proto": "tcp", "port": 40000}, "ACCEPT"),
            ({"state": "related", "proto": "icmp"}, "ACCEPT"),
        ]:
            assert _fw4_input_verdict(state["firewall"], network, packet) == verdict, (network, packet)
    # the router's own tunnel stays in its lan zone, which its input policy accepts
    assert _fw4_input_verdict(state["firewall"], "wg_vpn", {"state": "new", "proto": "tcp", "port": 22}) == "ACCEPT"


# --- re-applying: the RouterOS script against a model of its menus ----------------------


class RouterOSModel:
    """The few RouterOS 7 script forms the script uses: ``/menu add k=v``,
    ``/menu remove [find where ...]``, ``place-before=[:pick [/menu find where ...] 0]``
    and ``:if ([:len [...]] > 0) do={...} else={...}``.  Removing an item that others
    still use fails, as it does on a router; so does ``place-before`` with nothing."""

    MENUS = (
        "/interface wireguard peers",
        "/interface wireguard",
        "/interface list member",
        "/interface list",
        "/ipv6 firewall mangle",
        "/ipv6 route",
        "/ip firewall mangle",
        "/ip route",
        "/routing table",
        "/ipv6 firewall filter",
        "/ipv6 firewall nat",
        "/ipv6 address",
        "/ip firewall filter",
        "/ip firewall nat",
        "/ip firewall raw",
        "/ip firewall address-list",
        "/ip address",
    )

    def __init__(self, items: dict[str, list[dict]]):
        self.items = {m: [dict(i) for i in items.get(m, [])] for m in self.MENUS}
        self.next_id = 1
        for menu_items in self.items.values():
            for item in menu_items:
                item[".id"] = self._id()

    def _id(self):
        self.next_id += 1
        return f"*{self.next_id:X}"

    @staticmethod
    def _words(text):
        """Split on spaces outside quotes, brackets and braces."""
        words, depth, quoted, cur = [], 0, False, ""
        for ch in text:
            if ch == '"':
                quoted = not quoted
            elif not quoted and ch in "[{(":
                depth += 1
            elif not quoted and ch in "]})":
                depth -= 1
            if ch == " " and not quoted and depth == 0:
                if cur:
                    words.append(cur)
                cur = ""
            else:
                cur += ch
        assert not quoted and depth == 0, text
        return words + ([cur] if cur else [])

    def _menu(self, line):
        for menu in self.MENUS:
            if line.startswith(menu + " "):
                return menu, line[len(menu) + 1 :]
        raise AssertionError(f"unknown menu in {line!r}")

    def _matches(self, item, where):
        tokens = re.findall(r'\(|\)|!|[\w-]+[=~]"[^"]*"|[\w-]+=[^\s()]+|\band\b|\bor\b', where)
        assert re.sub(r"\s", "", "".join(tokens)) == re.sub(r"\s", "", where), f"cannot read {where!r}"
        py = []
        for tok in tokens:
            if tok in ("(", ")", "and", "or"):
                py.append(f" {tok} ")
            elif tok == "!":
                py.append(" not ")
            else:
                key, op, value = re.fullmatch(r"([\w-]+)([=~])(.*)", tok).groups()
                value = value.strip('"').replace("\\$", "$")
                have = item.get(key, "no" if key in ("dynamic", "disabled") else "")
                py.append(str(bool(re.search(value, have)) if op == "~" else have == value))
        return eval("".join(py))  # only True, False, and, or, not and parentheses

    def _value(self, text):
        """A value: "quoted", [/menu find where ...], [:pick [...] 0], [:len [...]] or a word."""
        if text.startswith('"'):
            return text[1:-1].replace("\\$", "$")
        if text.startswith("[:pick ") and text.endswith(" 0]"):
            found = self._value(text[len("[:pick ") : -len(" 0]")])
            return found[0] if found else None
        if text.startswith("[:len "):
            return len(self._value(text[len("[:len ") : -1]))
        found = re.fullmatch(r"\[(?:(/.+?) )?find where (.*)\]", text)
        if found:
            menu = found.group(1) or self._context
            assert menu in self.MENUS, text
            return [i[".id"] for i in self.items[menu] if self._matches(i, found.group(2))]
        return text

    def _remove(self, menu, ids):
        name_of = {i[".id"]: i.get("name") for i in self.items[menu]}
        for item_id in ids:
            name = name_of[item_id]
            users = {
                "/interface wireguard": [
                    ("/interface wireguard peers", "interface"),
                    ("/interface list member", "interface"),
                    ("/ip address", "interface"),
                    ("/ipv6 address", "interface"),
                ],
                "/interface list": [
                    ("/interface list member", "list"),
                    ("/ip firewall filter", "in-interface-list"),
                    ("/ipv6 firewall filter", "in-interface-list"),
                ],
            }.get(menu, [])
            for user_menu, key in users:
                assert not [i for i in self.items[user_menu] if i.get(key) == name], f"{name} is still used"
        self.items[menu] = [i for i in self.items[menu] if i[".id"] not in ids]

    def run(self, line):
        line = line.strip()
        if not line or line.startswith("#"):
            return
        m = re.fullmatch(r":if \(\[:len (.*)\] > 0\) do=\{(.*)\} else=\{(.*)\}", line)
        if m:
            self.run(m.group(2) if self._value(m.group(1)) else m.group(3))
            return
        menu, rest = self._menu(line)
        self._context = menu
        cmd, *words = self._words(rest)
        if cmd == "remove":
            [target] = words
            self._remove(menu, self._value(target))
        elif cmd == "add":
            item = {}
            for word in words:
                key, _, value = word.partition("=")
                item[key] = self._value(value)
            before = item.pop("place-before", "append")
            assert before is not None, f"place-before found nothing: {line}"
            item[".id"] = self._id()
            if before == "append":
                self.items[menu].append(item)
            else:
                ids = [i[".id"] for i in self.items[menu]]
                self.items[menu].insert(ids.index(before), item)
        else:
            raise AssertionError(f"unexpected command {cmd!r}")

    def apply(self, script):
        for line in script.splitlines():
            self.run(line)
        return self.view()

    def view(self):
        return {m: [{k: v for k, v in i.items() if k != ".id"} for i in items] for m, items in self.items.items()}


# RouterOS 7's default configuration (the firewall parts that matter here), plus a
# WireGuard tunnel of the user's own.
ROUTEROS_DEFCONF = {
    "/interface list": [{"name": "WAN", "comment": "defconf"}, {"name": "LAN", "comment": "defconf"}],
    "/interface wireguard": [{"name": "wg-mine", "mtu": "1420"}],
    "/ip firewall filter": [
        {"chain": "forward", "action": "passthrough", "dynamic": "yes", "comment": "special dummy rule"},
        {"chain": "input", "action": "accept", "connection-state": "established,related,untracked"},
        {"chain": "input", "action": "drop", "in-interface-list": "!LAN", "comment": "defconf: drop all not from LAN"},
        {"chain": "forward", "action": "fasttrack-connection", "connection-state": "established,related"},
        {"chain": "forward", "action": "accept", "connection-state": "established,related,untracked"},
        {"chain": "forward", "action": "drop", "connection-state": "invalid", "comment": "defconf: drop invalid"},
        {"chain": "forward", "action": "drop", "in-interface-list": "WAN", "comment": "defconf: drop from WAN"},
    ],
    "/ipv6 firewall filter": [
        {"chain": "forward", "action": "accept", "connection-state": "established,related,untracked"},
        {"chain": "forward", "action": "drop", "in-interface-list": "!LAN", "comment": "defconf: drop not from LAN"},
    ],
}


def _forward(view, family="ip"):
    return [r for r in view[f"/{family} firewall filter"] if r["chain"] == "forward"]


def test_routeros_rules_go_before_the_routers_drops_and_are_replaced(raw_config, keys):
    tag = "cgnat-edge cgnat-edge/dev: "
    full = _home(raw_config, keys, homeRole="host")["routeros"]
    smaller = _home(raw_config, keys, **_without_ams_and_games(raw_config))["routeros"]
    router = RouterOSModel(ROUTEROS_DEFCONF)
    first = router.apply(full)

    forward = _forward(first)
    ours = [i for i, r in enumerate(forward) if r.get("comment", "").startswith(tag)]
    first_drop = min(i for i, r in enumerate(forward) if r["action"] == "drop" and not r["comment"].startswith(tag))
    assert len(ours) == 7 and max(ours) < first_drop, forward
    assert [forward[i]["action"] for i in ours] == ["accept"] * 6 + ["drop"]
    assert [forward[i]["dst-port"] for i in ours[:-1]] == ["443", "80", "8080", "22", "25565", "2456"]
    assert forward[ours[-1]]["connection-state"] == "new"
    v6 = _forward(first, "ipv6")
    assert v6[1]["comment"] == tag + "nothing else" and v6[2]["comment"] == "defconf: drop not from LAN"
    assert {i["name"] for i in first["/interface wireguard"]} == {"wg-mine", "wg-fsn", "wg-ams"}
    assert len(first["/ip firewall nat"]) == 2

    # importing again replaces: nothing doubles
    assert router.apply(full) == first
    # an edge, two services and the role are gone: so is everything of theirs
    second = router.apply(smaller)
    assert second == RouterOSModel(ROUTEROS_DEFCONF).apply(smaller)
    assert {i["name"] for i in second["/interface wireguard"]} == {"wg-mine", "wg-fsn"}
    assert [r["dst-port"] for r in _forward(second) if r["action"] == "accept" and "dst-port" in r] == [
        "443",
        "80",
        "8080",
        "22",
    ]
    assert second["/ip firewall nat"] == [] and second["/ipv6 firewall nat"] == []
    assert not [i for items in second.values() for i in items if "ams" in str(i)]
    # nothing of the router's own was touched
    for menu, items in ROUTEROS_DEFCONF.items():
        assert [i for i in second[menu] if not i.get("comment", "").startswith(tag)] == items


def test_routeros_rules_without_any_drop_rule(raw_config, keys):
    view = RouterOSModel({}).apply(_home(raw_config, keys)["routeros"])
    assert [r["action"] for r in _forward(view)] == ["accept"] * 6 + ["drop"]
    assert [r["action"] for r in _forward(view, "ipv6")] == ["drop"]


# --- the router itself, from its tunnels: each form's rules as the router walks them ----


def _ros_matches(rule, packet, lists):
    """One RouterOS filter rule against a packet; a match on anything this model does
    not know fails the test rather than being guessed."""
    for key, want in rule.items():
        if key in ("chain", "action", "comment", "reject-with", "dynamic", "disabled"):
            continue
        if key == "in-interface-list":
            member = packet["in"] in lists.get(want.lstrip("!"), ())
            if member == want.startswith("!"):
                return False
        elif key == "connection-state":
            if packet["state"] not in want.split(","):
                return False
        elif key == "in-interface":
            if packet["in"] != want:
                return False
        elif key == "dst-address-list":
            listed = any(
                ipaddress.ip_address(packet["dst-address"]) in ipaddress.ip_network(a)
                for a in lists.get("addr:" + want.lstrip("!"), ())
            )
            if listed == want.startswith("!"):
                return False
        elif key in ("src-address", "dst-address"):
            address = packet.get(key)
            if address is None or ipaddress.ip_address(address) not in ipaddress.ip_network(want):
                return False
        elif key in ("protocol", "dst-port"):
            if str(packet.get(key)) != want:
                return False
        else:
            raise AssertionError(f"the model cannot match {key}={want}")
    return True


def _ros_verdict(view, family, packet, chain="input"):
    """What the router does with ``packet`` in ``chain``: the first matching rule's
    action (with its reject-with), else the chain's default, accept."""
    lists = {}
    for member in view["/interface list member"]:
        lists.setdefault(member["list"], set()).add(member["interface"])
    lists.setdefault("LAN", set()).add("bridge")  # the router's own LAN, as defconf has it
    for entry in view.get("/ip firewall address-list", []):
        lists.setdefault("addr:" + entry["list"], set()).add(entry["address"])
    for rule in view[f"/{family} firewall filter"]:
        if rule["chain"] != chain or rule.get("dynamic") == "yes" or rule["action"] == "passthrough":
            continue
        if _ros_matches(rule, packet, lists):
            return " ".join(filter(None, (rule["action"], rule.get("reject-with"))))
    return "accept"


# The router's own address on each tunnel, and what an edge might send it.
TUNNEL_PACKETS = [
    ({"state": "new", "protocol": "tcp", "dst-port": 22}, "reject tcp-reset"),  # its SSH, its web UI ...
    ({"state": "new", "protocol": "tcp", "dst-port": 9}, "reject tcp-reset"),  # the health agent's tunnel probe
    ({"state": "new", "protocol": "udp", "dst-port": 53}, "drop"),
    ({"state": "new", "protocol": "icmp"}, "drop"),
    ({"state": "invalid", "protocol": "tcp", "dst-port": 22}, "reject tcp-reset"),
    ({"state": "established", "protocol": "tcp", "dst-port": 40000}, "accept"),  # replies to the router
    ({"state": "related", "protocol": "icmp"}, "accept"),  # e.g. packet too big (path MTU)
]

ROUTEROS_OPEN = {"/interface list": [{"name": "LAN"}]}  # no firewall rules at all: input accepts everything
ROUTEROS_ACCEPTING = {  # a user's accept ahead of everything, as "accept ICMP" is in defconf
    "/interface list": [{"name": "LAN"}],
    "/ip firewall filter": [
        {"chain": "input", "action": "passthrough", "dynamic": "yes", "comment": "special dummy rule"},
        {"chain": "input", "action": "accept", "comment": "mine: anything"},
    ],
    "/ipv6 firewall filter": [{"chain": "input", "action": "accept", "comment": "mine: anything"}],
}


@pytest.mark.parametrize(
    "router", [ROUTEROS_DEFCONF, ROUTEROS_OPEN, ROUTEROS_ACCEPTING], ids=["defconf", "open", "accepting"]
)
def test_routeros_keeps_the_tunnels_off_the_router_itself(raw_config, keys, router):
    """Whatever the router's own input chain says, a tunnel gets replies and a TCP reset
    (the health agent's probe of home's tunnel address needs one), nothing else; the
    router's LAN is judged by the router's own rules, as before."""
    script = _home(raw_config, keys)["routeros"]
    view = RouterOSModel(router).apply(script)
    for iface in ("wg-fsn", "wg-ams"):
        for family in ("ip", "ipv6"):
            for packet, verdict in TUNNEL_PACKETS:
                packet = {**packet, "in": iface, "dst-address": "10.254.0.6" if family == "ip" else "fd00::6"}
                assert _ros_verdict(view, family, packet) == verdict, (router, family, packet)
    lan = {"in": "bridge", "state": "new", "protocol": "tcp", "dst-port": 22, "dst-address": "192.168.1.1"}
    before = RouterOSModel(router).view()
    assert _ros_verdict(view, "ip", lan) == _ros_verdict(before, "ip", lan)
    # importing again keeps one set of rules, still ahead of the router's own
    assert RouterOSModel(router).apply(script + script) == view
    ours = [r for r in view["/ip firewall filter"] if r["chain"] == "input" and "cgnat-edge" in r.get("comment", "")]
    assert [r["action"] for r in ours] == ["accept", "reject", "drop"]


# --- files -----------------------------------------------------------------------


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_write_from_stack_output(fleet_config, keys, tmp_path):
    configs = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])
    stack_output = json.loads(json.dumps({"homeConfigs": configs, "edges": {"fsn": "203.0.113.10"}}))
    out = tmp_path / "home"
    paths = home_files.write(stack_output, out, qr=True)
    assert sorted(p.name for p in paths) == [
        "grafana-edges.json",
        "home.json",
        "openwrt.sh",
        "prometheus-edges.yml",
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


@pytest.mark.netns
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
    assert _mode(existing) == 0o755 and _mode(existing / "wg-fsn.conf") == 0o600
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


# --- outputs that are not what this version writes, and folders that are not ours ----


@pytest.fixture
def outputs(fleet_config, keys):
    """``homeConfigs`` as JSON gives it back, with a road warrior's files."""
    configs = home_configs.render(fleet_config, _peers(fleet_config, keys), keys["home"][0])
    configs["roadWarriors"] = {"phone": {"fsn": "[Interface]\n# phone via fsn\n", "ams": "[Interface]\n# via ams\n"}}
    return json.loads(json.dumps(configs))


def _home_config(monkeypatch, capsys, configs, out, *options):
    """Exit code, stdout and stderr of ``cgnat-edge home-config - --out OUT`` fed ``configs``."""
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"homeConfigs": configs})))
    code = cli.main(["home-config", "-", "--out", str(out), *options])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def _tree(root):
    """Every path below ``root`` (hidden ones too) with its mode and content."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            found[str(path.relative_to(root))] = (path.lstat().st_mode, path.read_bytes() if name in files else None)
    return found


def _with_name(configs, place, name):
    """``configs`` with ``name`` where a file name is made of it; the field the error must name."""
    tunnel = configs["structured"]["tunnels"][0]
    if place == "tunnel edge":
        configs["wgQuick"][name] = configs["wgQuick"].pop(tunnel["edge"])
        tunnel["edge"] = name
        return "homeConfigs.structured.tunnels[0].edge"
    if place == "interface":
        tunnel["interface"] = name
        return "homeConfigs.structured.tunnels[0].interface"
    if place == "wgQuick":
        configs["wgQuick"][name] = "[Interface]\n"
        return "homeConfigs.wgQuick"
    if place == "device":
        configs["roadWarriors"][name] = {"fsn": "[Interface]\n"}
        return "homeConfigs.roadWarriors"
    configs["roadWarriors"]["phone"][name] = "[Interface]\n"
    return "homeConfigs.roadWarriors.phone"


@pytest.mark.parametrize("place", ["tunnel edge", "interface", "wgQuick", "device", "device's edge"])
@pytest.mark.parametrize("name", ["../x", "ABSOLUTE", "a/b", "..", "", "x\x00y", "fsn\n", "fsn\nPostUp = id", "Fsn"])
def test_a_name_that_would_leave_the_folder_is_refused_and_nothing_is_written(
    outputs, place, name, tmp_path, monkeypatch, capsys
):
    name = name.replace("ABSOLUTE", str(tmp_path / "evil"))
    (tmp_path / "share").mkdir()
    before = _tree(tmp_path)
    field = _with_name(outputs, place, name)
    code, printed, err = _home_config(monkeypatch, capsys, outputs, tmp_path / "share" / "home")
    assert (code, printed) == (2, "")
    assert err.startswith(f"cgnat-edge home-config: {field}: {repr(name)[:30]}"), err
    assert "Read the outputs again from the deployed stack" in err and len(err.splitlines()) == 1
    assert _tree(tmp_path) == before


def test_an_existing_shared_folder_keeps_its_mode_and_its_other_files(outputs, tmp_path, monkeypatch, capsys):
    share = tmp_path / "share"
    share.mkdir()
    share.chmod(0o1777)
    (share / "notes.txt").write_text("mine")
    (share / "notes.txt").chmod(0o644)
    (share / "wg-fsn.conf").write_text("old")
    (share / "wg-fsn.conf").chmod(0o644)
    code, printed, err = _home_config(monkeypatch, capsys, outputs, share, "--qr")
    assert (code, err) == (0, "")
    assert _mode(share) == 0o1777
    assert (share / "notes.txt").read_text() == "mine" and _mode(share / "notes.txt") == 0o644
    assert (share / "wg-fsn.conf").read_text() == outputs["wgQuick"]["fsn"]
    written = [share / line.rsplit("/", 1)[1] for line in printed.splitlines()]
    assert printed.splitlines() == [str(p) for p in written]
    assert sorted(p.name for p in share.iterdir()) == sorted([*(p.name for p in written), "notes.txt"])
    assert {p.name: _mode(p) for p in written} == {p.name: 0o600 for p in written}
    assert (share / "road-warrior-phone-ams.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_new_folder_and_its_parents_are_made_the_new_folder_private(outputs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "a" / "b" / "home"
    assert _home_config(monkeypatch, capsys, outputs, out)[0] == 0
    assert _mode(out) == 0o700
    assert sorted(_tree(tmp_path)) == ["a", "a/b", "a/b/home", *sorted(f"a/b/home/{p.name}" for p in out.iterdir())]
    # 2 edges, 2 road warrior files, openwrt, routeros, home.json, scrape config, dashboard
    assert len(list(out.iterdir())) == 9


@pytest.mark.parametrize(
    ("road_warriors", "message"),
    [
        (["phone"], "homeConfigs.roadWarriors: must be an object (a wg-quick file per device and edge), got an array"),
        (
            {"phone": "[Interface]"},
            "homeConfigs.roadWarriors.phone: must be an object (a wg-quick file per edge), got a string",
        ),
        ({"phone": {"fsn": 7}}, "homeConfigs.roadWarriors.phone.fsn: must be the text of a config file, got a number"),
        ({"phone": {"fsn": None}}, "homeConfigs.roadWarriors.phone.fsn: must be the text of a config file, got null"),
        ({"phone": {"FSN": "x"}}, "homeConfigs.roadWarriors.phone: 'FSN' is not a valid edge name (use 1-24"),
        ({"my phone": {"fsn": "x"}}, "homeConfigs.roadWarriors: 'my phone' is not a valid road warrior name"),
        ({"phone": {"fsn": "\ud800"}}, "homeConfigs.roadWarriors.phone.fsn: is not UTF-8 text"),
    ],
)
@pytest.mark.parametrize("out", ["new", "existing"])
def test_a_malformed_road_warrior_leaves_no_file_and_no_staging_folder(
    outputs, road_warriors, message, out, tmp_path, monkeypatch, capsys
):
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "wg-fsn.conf").write_text("old")
    before = _tree(tmp_path)
    outputs["roadWarriors"] = road_warriors
    code, printed, err = _home_config(
        monkeypatch, capsys, outputs, tmp_path / out / "home" if out == "new" else tmp_path / out
    )
    assert (code, printed) == (2, "")
    assert err.startswith(f"cgnat-edge home-config: {message}") and len(err.splitlines()) == 1
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("wgQuick"), "homeConfigs.wgQuick: is missing"),
        (
            lambda c: c.update(structured=[]),
            "homeConfigs.structured: must be an object (the structured form), got an array",
        ),
        (
            lambda c: c["structured"].update(tunnels={}),
            "homeConfigs.structured.tunnels: must be an array (one tunnel per edge), got an object",
        ),
        (
            lambda c: c["structured"]["tunnels"].__setitem__(0, "fsn"),
            "homeConfigs.structured.tunnels[0]: must be an object (edge, interface, ...), got a string",
        ),
        (
            lambda c: c["structured"]["tunnels"][0].pop("interface"),
            "homeConfigs.structured.tunnels[0].interface: is missing",
        ),
        (
            lambda c: c["structured"]["tunnels"][0].update(edge=5),
            "homeConfigs.structured.tunnels[0].edge: 5 is not a valid edge name",
        ),
        (
            lambda c: c["structured"]["tunnels"][0].update(interface="wg-sixteen-chars"),
            "homeConfigs.structured.tunnels[0].interface: 'wg-sixteen-chars' is not a Linux interface name (at most 15",
        ),
        (
            lambda c: c["structured"]["tunnels"][1].update(interface="wg-fsn"),
            "homeConfigs.structured.tunnels[1].interface: 'wg-fsn' is another edge's interface already",
        ),
        (
            lambda c: c["structured"]["tunnels"][1].update(edge="fsn"),
            "homeConfigs.structured.tunnels[1].edge: edge 'fsn' has a tunnel already",
        ),
        (
            lambda c: c["wgQuick"].update(fsn=["[Interface]"]),
            "homeConfigs.wgQuick.fsn: must be the text of a config file, got an array",
        ),
        (
            lambda c: c["wgQuick"].update(ghost="[Interface]"),
            "homeConfigs.wgQuick.ghost: has no tunnel in structured.tunnels",
        ),
        (lambda c: c.update(openwrt=None), "homeConfigs.openwrt: must be the text of a config file, got null"),
        (lambda c: c.update(routeros=True), "homeConfigs.routeros: must be the text of a config file, got true/false"),
        (lambda c: c.update(routeros="\udcff"), "homeConfigs.routeros: is not UTF-8 text"),
        (
            lambda c: c.update(roadWarriors={"a-b": {"c": "x"}, "a": {"b-c": "y"}}),
            "two configs would both be written as road-warrior-a-b-c.conf; rename a road warrior or an edge",
        ),
    ],
)
def test_each_malformed_field_is_one_line_naming_it(outputs, change, message, tmp_path, monkeypatch, capsys):
    change(outputs)
    code, printed, err = _home_config(monkeypatch, capsys, outputs, tmp_path / "home")
    assert (code, printed) == (2, "")
    assert err.startswith(f"cgnat-edge home-config: {message}"), err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out", ["new", "existing"])
def test_a_failure_while_writing_leaves_the_folder_as_it_was(outputs, out, tmp_path, monkeypatch, capsys):
    """Checks pass, the disk fills up at the fourth file: no half-written folder."""
    (tmp_path / "existing").mkdir(mode=0o750)
    (tmp_path / "existing" / "wg-fsn.conf").write_text("old")
    before = _tree(tmp_path)
    calls = []
    real = home_files.write_private

    def disk_full(path, data):
        calls.append(path)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(home_files, "write_private", disk_full)
    target = tmp_path / "new" / "deeper" / "home" if out == "new" else tmp_path / "existing"
    code, printed, err = _home_config(monkeypatch, capsys, outputs, target)
    assert (code, printed) == (2, "")
    assert err.endswith(": No space left on device\n") and len(calls) == 4
    assert _tree(tmp_path) == before


def test_a_road_warrior_file_too_big_for_a_qr_code_gets_none(outputs, tmp_path, monkeypatch, capsys):
    outputs["roadWarriors"]["phone"]["fsn"] = "[Interface]\n" + "# padding\n" * 400
    assert _home_config(monkeypatch, capsys, outputs, tmp_path / "home", "--qr")[0] == 0
    names = {p.name for p in (tmp_path / "home").iterdir()}
    assert {"road-warrior-phone-fsn.conf", "road-warrior-phone-ams.png"} <= names
    assert "road-warrior-phone-fsn.png" not in names
