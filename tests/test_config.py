"""Bad stack input fails before any resource, with one message naming key and fix."""

from __future__ import annotations

import copy
import ipaddress
import re
import time

import pytest

from components import config
from components.config.keys import KEYS, REQUIRED
from components.config.ssh import SSH_KEY_TYPES
from tests.support import PROJECT

GOOD_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqxVQIfSWZkNgKOGy4QDZWNWQXUdqSrhLrsrfJKPFB+ admin@laptop"


def problems(raw: dict) -> list[str]:
    with pytest.raises(config.ConfigError) as info:
        config.parse(raw)
    return info.value.problems


def test_example_stack_parses(fleet_config):
    assert [e.name for e in fleet_config.edges] == ["fsn", "ams"]
    fsn, ams = fleet_config.edges
    assert (fsn.provider, fsn.location.code, fsn.server_type.name, fsn.arch) == ("hetzner", "fsn1", "cax11", "arm64")
    assert (ams.provider, ams.location.code, ams.server_type.name, ams.arch) == (
        "digitalocean",
        "ams3",
        "s-1vcpu-1gb",
        "x86_64",
    )
    # dnsMode edges: the edges are the nameservers, so 53 is open on both protocols.
    assert (fleet_config.dns.mode, fleet_config.dns.edge_zone) == ("edges", "edge.example.org")
    assert fleet_config.public_ports("tcp") == [53, 80, 443, 2222, 25565]
    assert fleet_config.public_ports("udp") == [53, 2456, 51820]
    cloud = fleet_config.services[0]
    assert (cloud.mode, cloud.hostnames, str(cloud.target), cloud.proxy_protocol) == (
        "passthrough",
        ("cloud.example.org", "photos.example.org"),
        "192.168.1.10:443",
        True,
    )


def test_ula_prefix_is_stable_and_per_stack(raw_config):
    a = config.parse(raw_config, stack="dev").tunnel.ipv6_prefix
    assert a == config.parse(raw_config, stack="dev").tunnel.ipv6_prefix
    assert a != config.parse(raw_config, stack="prod").tunnel.ipv6_prefix
    assert a.prefixlen == 64 and a.subnet_of(ipaddress.ip_network("fd00::/8"))


def _edit(raw, path, value):
    raw = copy.deepcopy(raw)
    target = raw
    for part in path[:-1]:
        target = target[part]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return raw


BAD_INPUTS = [
    # (id, edit path, new value, expected key in the message, expected fix fragment)
    (
        "unknown provider",
        ("edges", 0, "provider"),
        "aws",
        "cgnat-edge:edges[0].provider",
        "use one of hetzner, digitalocean",
    ),
    ("unknown location", ("edges", 0, "location"), "fsn9", "cgnat-edge:edges[0].location", "use one of fsn1"),
    ("unknown server type", ("edges", 1, "serverType"), "c-huge", "cgnat-edge:edges[1].serverType", "use one of"),
    (
        "too little RAM",
        ("edges", 1, "serverType"),
        "s-1vcpu-512mb-10gb",
        "cgnat-edge:edges[1].serverType",
        "at least 1 GB",
    ),
    ("duplicate edge names", ("edges", 1, "name"), "fsn", "cgnat-edge:edges[1].name", "used twice"),
    ("bad edge name", ("edges", 0, "name"), "Falkenstein_1", "cgnat-edge:edges[0].name", "lowercase"),
    (
        "tcp port used twice",
        ("services", 3, "port"),
        2222,
        "cgnat-edge:services[3].port",
        "already used by service 'git-ssh'",
    ),
    ("udp port is WireGuard's", ("services", 4, "port"), 51820, "cgnat-edge:services[4].port", "WireGuard"),
    ("tcp service on 443", ("services", 2, "port"), 443, "cgnat-edge:services[2].port", "HTTPS"),
    ("invalid CIDR", ("homeLanPrefixes", 0), "192.168.1.0/33", "cgnat-edge:homeLanPrefixes[0]", "not a valid CIDR"),
    (
        "host bits set",
        ("homeLanPrefixes", 0),
        "192.168.1.7/24",
        "cgnat-edge:homeLanPrefixes[0]",
        "did you mean 192.168.1.0/24",
    ),
    (
        "hostname not a hostname",
        ("services", 0, "hostnames", 0),
        "cloud_example",
        "cgnat-edge:services[0].hostnames[0]",
        "fully qualified",
    ),
    (
        "hostname outside domain",
        ("services", 0, "hostnames", 0),
        "cloud.example.net",
        "cgnat-edge:services[0].hostnames[0]",
        "outside the domain",
    ),
    ("missing domain", ("domain",), KeyError, "cgnat-edge:domain", "is required"),
    ("missing edges", ("edges",), KeyError, "cgnat-edge:edges", "is required"),
    ("missing ssh keys", ("sshPublicKeys",), KeyError, "cgnat-edge:sshPublicKeys", "is required"),
    (
        "bad ssh key",
        ("sshPublicKeys", 0),
        "ssh-ed25519 not-base64!",
        "cgnat-edge:sshPublicKeys[0]",
        "OpenSSH public key",
    ),
    (
        "target outside home LAN",
        ("services", 1, "target"),
        "10.9.9.9:8080",
        "cgnat-edge:services[1].target",
        "homeLanPrefixes",
    ),
    ("target without port", ("services", 1, "target"), "192.168.1.20", "cgnat-edge:services[1].target", "address:port"),
    ("unknown mode", ("services", 0, "mode"), "https", "cgnat-edge:services[0].mode", "passthrough"),
    ("tunnel in CGNAT range", ("tunnelIpv4Prefix",), "100.64.10.0/24", "cgnat-edge:tunnelIpv4Prefix", "ISP's CGNAT"),
    ("public tunnel prefix", ("tunnelIpv4Prefix",), "8.8.8.0/24", "cgnat-edge:tunnelIpv4Prefix", "private prefix"),
    ("mtu too large", ("tunnelMtu",), 1500, "cgnat-edge:tunnelMtu", "1380"),
    ("keepalive not a number", ("keepaliveSeconds",), "often", "cgnat-edge:keepaliveSeconds", "whole number"),
    ("bad home public key", ("homePublicKey",), "not-a-key", "cgnat-edge:homePublicKey", "wg pubkey"),
    ("unknown dns provider", ("dnsProvider",), "route53", "cgnat-edge:dnsProvider", "none, hetzner, digitalocean"),
    ("typo in a key", ("edge",), [], "cgnat-edge:edge", "did you mean cgnat-edge:edges"),
    (
        "unknown service field",
        ("services", 2, "hostnames"),
        ["x.example.org"],
        "cgnat-edge:services[2].hostnames",
        "not a field of a tcp service",
    ),
    (
        "bad basic auth line",
        ("services", 1, "middlewares", "basicAuth"),
        ["admin:plaintext"],
        "cgnat-edge:services[1].middlewares.basicAuth[0]",
        "htpasswd",
    ),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_names_key_and_fix(raw_config, case):
    _, path, value, key, fix = case
    found = problems(_edit(raw_config, path, value))
    matching = [p for p in found if p.startswith(key + ":")]
    assert matching, f"no problem for {key} in {found}"
    assert any(fix in p for p in matching), matching


def test_all_problems_reported_at_once(raw_config):
    raw = _edit(raw_config, ("edges", 0, "provider"), "aws")
    raw = _edit(raw, ("tunnelMtu",), 9000)
    raw = _edit(raw, ("services", 0, "hostnames", 0), "bad_name")
    with pytest.raises(config.ConfigError) as info:
        config.parse(raw)
    message = str(info.value)
    assert "3 problem(s); nothing was created" in message
    for key in ("edges[0].provider", "tunnelMtu", "services[0].hostnames[0]"):
        assert f"cgnat-edge:{key}:" in message


def test_http_service_needs_acme_email(raw_config):
    found = problems(_edit(raw_config, ("acmeEmail",), KeyError))
    assert any(p.startswith("cgnat-edge:acmeEmail:") and "http service" in p for p in found)


def test_values_as_the_cli_stores_them(raw_config):
    """pulumi hands scalars over as strings and structured values as JSON."""
    import json

    raw = {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in raw_config.items()}
    raw["wireguardPort"] = "51821"
    raw["ha"] = "false"
    cfg = config.parse(raw)
    assert cfg.tunnel.listen_port == 51821 and cfg.ha is False
    assert cfg.public_ports("udp") == [53, 2456, 51821]


def test_pulumi_yaml_declares_the_same_defaults():
    import yaml

    declared = yaml.safe_load(PROJECT.read_text())["config"]
    for key, (kind, default, description) in KEYS.items():
        if kind == "object-array":
            assert key not in declared, key
            continue
        assert key in declared, f"{key} missing from Pulumi.yaml"
        decl = declared[key]
        assert decl["type"] in ("string", "integer", "boolean", "array")
        assert decl["description"] == description
        if kind == "secret":
            assert decl.get("secret") is True and "default" not in decl
        elif default is REQUIRED:
            assert "default" not in decl
        else:
            assert decl["default"] == default, key


def _openssh(key) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _security_key_lines() -> list[str]:
    """The two FIDO key types as ssh-keygen -t ed25519-sk / ecdsa-sk writes them (RFC 4251
    strings: type, key, then the application, "ssh:")."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    def string(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    bodies = {
        "sk-ssh-ed25519@openssh.com": string(bytes(range(1, 33))),
        "sk-ecdsa-sha2-nistp256@openssh.com": string(b"nistp256") + string(point),
    }
    return [
        f"{kind} {base64.b64encode(string(kind.encode()) + body + string(b'ssh:')).decode()} yubikey"
        for kind, body in bodies.items()
    ]


def test_real_keys_of_every_type_are_accepted(raw_config):
    """The key checks refuse damaged keys, not real ones: one key of every type sshd takes."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    from components.model import keys

    lines = [
        _openssh(ed25519.Ed25519PrivateKey.generate()) + " a@b",
        _openssh(ec.generate_private_key(ec.SECP256R1())),
        _openssh(ec.generate_private_key(ec.SECP384R1())),
        _openssh(ec.generate_private_key(ec.SECP521R1())),
        _openssh(rsa.generate_private_key(public_exponent=65537, key_size=2048)) + " with a spaced comment",
        *_security_key_lines(),
    ]
    raw_config["sshPublicKeys"] = lines
    raw_config["homePublicKey"] = keys.generate_keypair()[1]
    cfg = config.parse(raw_config)
    assert cfg.ssh.public_keys == tuple(lines)
    assert cfg.home.public_key == raw_config["homePublicKey"]
    assert {line.split()[0] for line in lines} == set(SSH_KEY_TYPES)


def test_index_at_the_end_of_the_prefix_fits(raw_config):
    """63 is the last /30 of a /24: accepted, and the tunnel addresses exist."""
    from components.renderers import tunnel

    raw_config["edges"][1]["index"] = 63
    cfg = config.parse(raw_config)
    assert str(tunnel.addresses(cfg.tunnel, cfg.edges[1]).edge_v4) == "10.254.0.253/30"
    raw_config["edges"][1]["index"] = 64
    assert problems(raw_config) == [
        "cgnat-edge:edges[1].index: 64 does not fit in cgnat-edge:tunnelIpv4Prefix 10.254.0.0/24, which has room for "
        "indexes 1 to 63 (one /30 each); use a free index in that range or a shorter prefix"
    ]


def test_ha_false_allows_one_provider(raw_config):
    raw_config["edges"] = raw_config["edges"][:1]
    assert any(p.startswith("cgnat-edge:ha:") for p in problems(raw_config))
    raw_config["ha"] = False
    assert [e.provider for e in config.parse(raw_config).edges] == ["hetzner"]


SCALE = 3000
"""Services in a stack far larger than any home's: every collision check (hostnames,
ports, forward ranges, the edges' zone names, firewall spans) is a lookup, so parsing
stays linear; a check over every pair would take minutes here."""
SCALE_SECONDS = 5.0


def _timed_parse(raw: dict) -> tuple[float, object]:
    start = time.perf_counter()
    try:
        result: object = config.parse(raw)
    except config.ConfigError as exc:
        result = exc
    return time.perf_counter() - start, result


def test_thousands_of_http_services_are_accepted_in_bounded_time(raw_config):
    raw_config["services"] = [
        {"name": f"s{i}", "mode": "http", "hostnames": [f"s{i}.example.org"], "target": "192.168.1.20:8080"}
        for i in range(SCALE)
    ]
    seconds, cfg = _timed_parse(raw_config)
    assert isinstance(cfg, config.FleetConfig), cfg
    assert len(cfg.services) == SCALE and cfg.services[-1].hostnames == (f"s{SCALE - 1}.example.org",)
    assert seconds < SCALE_SECONDS


def test_thousands_of_scattered_ports_are_refused_for_the_firewall_rules(raw_config):
    """Every other port: no two merge into a range rule, so each provider firewall would
    need thousands of rules; refused for that, once per provider, with the fix."""
    raw_config["services"] = [
        {"name": f"s{i}", "mode": "tcp", "port": 10000 + 2 * i, "target": "192.168.1.20:8080"} for i in range(SCALE)
    ]
    seconds, error = _timed_parse(raw_config)
    assert isinstance(error, config.ConfigError), error
    assert len(error.problems) == 2
    for label in ("DigitalOcean", "Hetzner Cloud"):
        assert any(
            re.fullmatch(
                rf"cgnat-edge:services: the declared tcp/udp ports need 300\d rules in each {label} firewall, over its "
                r"limit of 50; give services consecutive ports .*",
                problem,
            )
            for problem in error.problems
        ), error.problems
    assert seconds < SCALE_SECONDS


def test_thousands_of_forward_ranges_find_the_one_collision_in_bounded_time(raw_config):
    raw_config["services"] = [
        {
            "name": f"s{i}",
            "mode": "forward",
            "protocol": "udp",
            "port": f"{20000 + 10 * i}-{20009 + 10 * i}",
            "target": f"192.168.1.20:{20000 + 10 * i}",
        }
        for i in range(SCALE)
    ]
    raw_config["services"][-1].update(port="20005-20014", target="192.168.1.20:20005")
    seconds, error = _timed_parse(raw_config)
    assert isinstance(error, config.ConfigError), error
    assert error.problems == [
        f"cgnat-edge:services[{SCALE - 1}].port: udp port 20005 is already used by service 's0'; pick another public port"
    ]
    assert seconds < SCALE_SECONDS
