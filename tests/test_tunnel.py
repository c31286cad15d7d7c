"""Tunnel addressing, the edge's wg0.conf and the WireGuard key resource."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import subprocess
import sys
import textwrap

import pulumi
import pytest

from components import config as config_module
from components.config.parser import WG_KEY_RE
from components.model.keys import generate_keypair, public_key_of
from components.renderers import tunnel
from components.resources.keys import WireGuardKey, WireGuardKeyProvider
from tests.support import require_tool

# --- addressing --------------------------------------------------------------


def test_addresses_follow_the_edge_index(fleet_config):
    fsn, ams = fleet_config.edges
    a1 = tunnel.addresses(fleet_config.tunnel, fsn)
    a2 = tunnel.addresses(fleet_config.tunnel, ams)
    assert (fsn.index, ams.index) == (1, 2)
    assert a1.edge_v4 == ipaddress.ip_interface("10.254.0.5/30")
    assert a1.home_v4 == ipaddress.ip_interface("10.254.0.6/30")
    assert a2.edge_v4 == ipaddress.ip_interface("10.254.0.9/30")
    assert a2.home_v4 == ipaddress.ip_interface("10.254.0.10/30")
    v6 = fleet_config.tunnel.ipv6_prefix
    assert v6.prefixlen == 64 and v6.subnet_of(ipaddress.ip_network("fd00::/8"))
    assert a1.edge_v6 == ipaddress.IPv6Interface((int(v6.network_address) + 5, 126))
    assert a1.home_v6 == ipaddress.IPv6Interface((int(v6.network_address) + 6, 126))
    assert a2.edge_v6 == ipaddress.IPv6Interface((int(v6.network_address) + 9, 126))
    assert a1.edge_hosts == [
        ipaddress.ip_network("10.254.0.5/32"),
        ipaddress.IPv6Network((int(v6.network_address) + 5, 128)),
    ]


def test_addresses_do_not_depend_on_other_edges(raw_config):
    """Removing the first edge must not re-address the second (its index is explicit)."""
    both = config_module.parse(raw_config)
    raw_config["edges"] = [dict(raw_config["edges"][1], index=2)]
    raw_config["ha"] = False
    only_ams = config_module.parse(raw_config)
    assert tunnel.addresses(only_ams.tunnel, only_ams.edges[0]) == tunnel.addresses(both.tunnel, both.edges[1])


def test_every_edge_gets_a_disjoint_subnet(raw_config):
    raw_config["tunnelIpv4Prefix"] = "10.254.0.0/26"
    raw_config["edges"] = [
        {
            "name": f"e{i}",
            "provider": "hetzner" if i % 2 else "digitalocean",
            "location": "fsn1" if i % 2 else "fra1",
            "index": i,
        }
        for i in range(1, 16)
    ]
    cfg = config_module.parse(raw_config)
    subnets = [n for e in cfg.edges for n in tunnel.addresses(cfg.tunnel, e).subnets]
    assert len(subnets) == 30
    for i, a in enumerate(subnets):
        assert a.subnet_of(cfg.tunnel.ipv4_prefix if a.version == 4 else cfg.tunnel.ipv6_prefix)
        for b in subnets[i + 1 :]:
            assert a.version != b.version or not a.overlaps(b), (a, b)
    assert str(tunnel.addresses(cfg.tunnel, cfg.edges[-1]).home_v4) == "10.254.0.62/30"


def test_index_outside_the_prefix_is_refused(fleet_config):
    edge = dataclasses.replace(fleet_config.edges[0], index=64)
    with pytest.raises(ValueError, match="does not fit"):
        tunnel.addresses(fleet_config.tunnel, edge)


def test_ipv4_only_tunnel(raw_config):
    raw_config["tunnelIpv6"] = False
    cfg = config_module.parse(raw_config)
    addrs = tunnel.addresses(cfg.tunnel, cfg.edges[0])
    assert addrs.edge_v6 is None and addrs.home_v6 is None
    assert addrs.home_hosts == [ipaddress.ip_network("10.254.0.6/32")]


# --- config: tunnel prefix vs home LAN ---------------------------------------


def test_tunnel_prefix_inside_home_lan_is_refused(raw_config):
    raw_config["homeLanPrefixes"] = ["10.0.0.0/8", "192.168.1.0/24"]
    with pytest.raises(config_module.ConfigError) as err:
        config_module.parse(raw_config)
    (problem,) = err.value.problems
    assert problem.startswith(
        "cgnat-edge:tunnelIpv4Prefix: 10.254.0.0/24 overlaps cgnat-edge:homeLanPrefixes[0] 10.0.0.0/8"
    )
    assert "pulumi config set cgnat-edge:tunnelIpv4Prefix 172.31.254.0/24" in problem


def test_home_lan_inside_tunnel_prefix_is_refused(raw_config):
    raw_config["homeLanPrefixes"] = ["192.168.1.0/24", "10.254.0.128/25"]
    with pytest.raises(config_module.ConfigError) as err:
        config_module.parse(raw_config)
    assert any(
        "homeLanPrefixes[1] 10.254.0.128/25" in p and p.startswith("cgnat-edge:tunnelIpv4Prefix")
        for p in err.value.problems
    )


def test_ipv6_tunnel_prefix_inside_home_lan_is_refused(raw_config):
    raw_config["homeLanPrefixes"] = ["192.168.1.0/24", "fd00::/8"]
    with pytest.raises(config_module.ConfigError) as err:
        config_module.parse(raw_config)
    (problem,) = err.value.problems
    assert problem.startswith("cgnat-edge:tunnelIpv6Prefix:") and "homeLanPrefixes[1] fd00::/8" in problem


# --- edge wg0.conf --------------------------------------------------------------


def test_edge_config_values(fleet_config):
    edge_priv, _ = generate_keypair()
    _, home_pub = generate_keypair()
    text = tunnel.edge_wg_conf(fleet_config, fleet_config.edges[1], edge_priv, home_pub)
    v6 = fleet_config.tunnel.ipv6_prefix.network_address
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "[Interface]",
        f"Address = 10.254.0.9/30, {ipaddress.IPv6Address(int(v6) + 9)}/126",
        "ListenPort = 51820",
        "MTU = 1380",
        f"PrivateKey = {edge_priv}",
        "PostUp = /usr/local/sbin/cgnat-edge-wg-endpoint restore %i 25",
        "PreDown = /usr/local/sbin/cgnat-edge-wg-endpoint save %i",
        "[Peer]",
        f"PublicKey = {home_pub}",
        f"AllowedIPs = 10.254.0.10/32, {ipaddress.IPv6Address(int(v6) + 10)}/128, 192.168.1.0/24",
    ]
    # The edge never dials on its own config: the endpoint (and a keepalive) come only
    # from the saved address of home's last session, restored by the PostUp hook.
    assert "Endpoint" not in text and "PersistentKeepalive" not in text


def test_edge_config_takes_port_and_mtu_from_config(raw_config):
    raw_config.update(
        wireguardPort=443 + 50000,
        tunnelMtu=1280,
        tunnelIpv6=False,
        homeLanPrefixes=["192.168.1.0/24", "fd12:3456:789a::/48"],
    )
    cfg = config_module.parse(raw_config)
    text = tunnel.edge_wg_conf(cfg, cfg.edges[0], generate_keypair()[0], generate_keypair()[1])
    assert "\nListenPort = 50443\n" in text and "\nMTU = 1280\n" in text
    # Without tunnel IPv6 the edge has no IPv6 source address for the LAN: leave it out.
    assert "\nAllowedIPs = 10.254.0.6/32, 192.168.1.0/24\n" in text


# --- keys ------------------------------------------------------------------------


@pytest.mark.netns
def test_keypair_matches_wg_pubkey():
    require_tool("wg")
    private, public = generate_keypair()
    assert len(base64.b64decode(private)) == 32 and len(base64.b64decode(public)) == 32
    assert public_key_of(private) == public
    assert (
        subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True).stdout.strip()
        == public
    )
    # and the other way round: a key made by wg is understood here
    wg_private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    wg_public = subprocess.run(
        ["wg", "pubkey"], input=wg_private, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert public_key_of(wg_private) == wg_public
    assert WG_KEY_RE.match(public)


def test_public_key_of_rejects_garbage():
    with pytest.raises(ValueError):
        public_key_of(base64.b64encode(b"short").decode())


def test_provider_create_returns_a_valid_pair_and_a_public_id():
    result = WireGuardKeyProvider().create({"rotation": 0})
    outs = result.outs
    assert public_key_of(outs["private_key"]) == outs["public_key"]
    assert outs["rotation"] == 0
    assert outs["private_key"] not in result.id and result.id != outs["private_key"]
    second = WireGuardKeyProvider().create({"rotation": 0}).outs
    assert second["private_key"] != outs["private_key"] and second["public_key"] != outs["public_key"]


def test_provider_diff_keeps_keys_unless_rotated():
    provider = WireGuardKeyProvider()
    olds = dict(provider.create({"rotation": 0}).outs, __provider="old-pickle")
    same = provider.diff(
        "id", olds, {"rotation": 0, "public_key": None, "private_key": None, "__provider": "new-pickle"}
    )
    assert same.changes is False and not same.replaces
    # numbers arrive from the engine as floats
    assert provider.diff("id", olds, {"rotation": 0.0}).changes is False
    rotated = provider.diff("id", olds, {"rotation": 1, "__provider": "old-pickle"})
    assert rotated.changes is True and rotated.replaces == ["rotation"]
    kept = provider.update("id", olds, {"rotation": 0}).outs
    assert (kept["public_key"], kept["private_key"]) == (olds["public_key"], olds["private_key"])


def test_provider_check_refuses_bad_rotation():
    provider = WireGuardKeyProvider()
    assert provider.check({}, {"rotation": 2}).failures == []
    assert [f.property for f in provider.check({}, {"rotation": -1}).failures] == ["rotation"]
    assert [f.property for f in provider.check({}, {"rotation": "x"}).failures] == ["rotation"]


def test_provider_survives_the_state_pickle(tmp_path):
    """The pickled provider in the state must load in a fresh process (the provider
    process Pulumi starts) and keep its no-change diff."""
    from components.tools import offline

    pickled: list[str] = []

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args):
            pickled.append(offline.reveal(args.inputs)["__provider"])
            return "id", {}

        def call(self, args):
            return {}, []

    pulumi.runtime.set_mocks(Mocks(), preview=False)
    pulumi.runtime.test(lambda: WireGuardKey("home").urn)()
    (blob,) = pickled
    script = textwrap.dedent(
        f"""
        import base64, dill, json
        p = dill.loads(base64.b64decode({blob!r}))
        outs = p.create({{"rotation": 0}}).outs
        d = p.diff("x", outs, {{"rotation": 0}})
        print(json.dumps([outs["public_key"], d.changes]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    public, changes = __import__("json").loads(done.stdout)
    assert len(base64.b64decode(public)) == 32 and changes is False


def test_resource_marks_private_key_secret(monkeypatch):
    captured = {}

    def fake_init(self, t, name, props=None, opts=None, *args, **kwargs):
        captured.update(type=t, name=name, props=props, opts=opts)

    monkeypatch.setattr(pulumi.CustomResource, "__init__", fake_init)
    WireGuardKey("home", rotation=3, opts=pulumi.ResourceOptions(protect=True))
    assert captured["type"] == "pulumi-python:dynamic/cgnat-edge:WireGuardKey"
    assert captured["opts"].additional_secret_outputs == ["private_key"]
    assert captured["opts"].protect is True
    assert captured["props"]["rotation"] == 3
    assert set(captured["props"]) == {"rotation", "public_key", "private_key", "__provider"}
    # the key resource takes no server input: replacing a VPS cannot touch it
    assert not captured["opts"].depends_on and captured["opts"].parent is None
