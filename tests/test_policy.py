"""The policy check: each rule passes what the program builds and fails the mistake it
exists for, with a message that names the fix.  Keys are generated here, per test."""

from __future__ import annotations

import base64
import json
import shutil

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from components import cli, providers
from components.config import parse
from components.model.firewall import firewall_rules
from components.tools import policy
from tests.support import DEV_STACK, PROD_STACK, ROOT

HETZNER = providers.get("hetzner")
DO = providers.get("digitalocean")


def wg_keypair() -> tuple[str, str]:
    key = x25519.X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    private = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


def openssh_private_key() -> str:
    return (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        .decode()
    )


# -- resources shaped like the render's resources.json ------------------------------


def hcloud_firewall(rules: list[dict], name: str = "fsn-firewall", parent: str = "urn:edge::fsn") -> dict:
    return {
        "type": HETZNER.firewall_resource_type,
        "name": name,
        "urn": f"urn:fw::{name}",
        "parent": parent,
        "inputs": {"rules": rules},
    }


def do_firewall(inbound: list[dict], name: str = "ams-firewall", parent: str = "urn:edge::ams") -> dict:
    # snake_case on purpose: the check must read both spellings
    return {
        "type": DO.firewall_resource_type,
        "name": name,
        "urn": f"urn:fw::{name}",
        "parent": parent,
        "inputs": {"inbound_rules": inbound, "outbound_rules": [{"protocol": "tcp", "port_range": "all"}]},
    }


def firewalls_as_built(cfg) -> list[dict]:
    """What the program's provider modules pass, from the same rule list."""
    rules = firewall_rules(cfg)
    hetzner = [
        {
            "direction": "in",
            "protocol": r.protocol,
            "port": str(r.port) if r.port else None,
            "sourceIps": list(r.sources),
            "description": r.description,
        }
        for r in rules
    ]
    digitalocean = [
        {"protocol": r.protocol, "port_range": str(r.port) if r.port else None, "source_addresses": list(r.sources)}
        for r in rules
    ]
    return [hcloud_firewall(hetzner), do_firewall(digitalocean)]


def messages(violations) -> list[str]:
    return [str(v) for v in violations]


# -- (a) ports ------------------------------------------------------------------------


def test_firewalls_built_from_the_config_pass(fleet_config):
    resources = firewalls_as_built(fleet_config)
    # ssh, tcp 53 80 443 2222 25565, udp 53 2456 51820, the health agents' tcp 8053, icmp (dnsMode edges)
    assert len(resources[0]["inputs"]["rules"]) == 1 + 5 + 3 + 1 + 1
    assert policy.check(fleet_config, resources, {}, set()) == []


def test_an_extra_tcp_port_is_named_with_its_fix(fleet_config):
    resources = firewalls_as_built(fleet_config)
    resources[0]["inputs"]["rules"].append(
        {"direction": "in", "protocol": "tcp", "port": "8080", "sourceIps": ["0.0.0.0/0"]}
    )
    assert messages(policy.check_ports(fleet_config, resources)) == [
        "[undeclared-port] hcloud:index/firewall:Firewall fsn-firewall: tcp port 8080 is open inbound but no service "
        "declares it; declare a tcp service with port 8080 in cgnat-edge:services or remove the rule "
        "(declared tcp: 22, 53, 80, 443, 2222, 8053, 25565)"
    ]


def test_udp_and_tcp_are_not_interchangeable(fleet_config):
    # 2222 is a declared *tcp* port; opening it for udp is still undeclared
    resources = [do_firewall([{"protocol": "udp", "port_range": "2222", "source_addresses": ["0.0.0.0/0"]}])]
    [violation] = policy.check_ports(fleet_config, resources)
    assert violation.subject == "digitalocean:index/firewall:Firewall ams-firewall"
    assert violation.message.startswith("udp port 2222 is open inbound but no service declares it")
    assert violation.message.endswith("(declared udp: 53, 2456, 51820)")


@pytest.mark.parametrize(
    "port_range, opened", [("all", "every port"), ("1-65535", "ports 1-65535"), (None, "every port")]
)
def test_whole_range_rules_fail_once(fleet_config, port_range, opened):
    resources = [do_firewall([{"protocol": "tcp", "port_range": port_range, "source_addresses": ["::/0"]}])]
    [violation] = policy.check_ports(fleet_config, resources)
    assert violation.message == (
        f"inbound tcp is open on {opened}, 65528 of them declared by no service (first: 1, 2, 3); "
        "open each declared port on its own instead of a range (declared tcp: 22, 53, 80, 443, 2222, 8053, 25565)"
    )


def test_a_range_of_declared_ports_passes(raw_config):
    raw_config["services"] = raw_config["services"] + [
        {"name": f"game-{p}", "mode": "udp", "port": p, "target": "192.168.1.30:2456"} for p in (27015, 27016)
    ]
    cfg = parse(raw_config)
    assert (
        policy.check_ports(
            cfg, [do_firewall([{"protocol": "udp", "port_range": "27015-27016", "source_addresses": ["0.0.0.0/0"]}])]
        )
        == []
    )
    [violation] = policy.check_ports(
        cfg, [do_firewall([{"protocol": "udp", "port_range": "27015-27017", "source_addresses": ["0.0.0.0/0"]}])]
    )
    assert "1 of them declared by no service (first: 27017)" in violation.message


def test_ssh_open_wider_than_declared_fails(raw_config):
    raw_config["sshAllowedCidrs"] = ["198.51.100.0/24", "2001:db8:1::/48"]
    cfg = parse(raw_config)
    narrow = [
        {"direction": "in", "protocol": "tcp", "port": "22", "sourceIps": ["198.51.100.64/26", "2001:db8:1:2::/64"]}
    ]
    assert policy.check_ports(cfg, [hcloud_firewall(narrow)]) == []
    wide = [{"direction": "in", "protocol": "tcp", "port": "22", "sourceIps": ["198.51.100.0/24", "0.0.0.0/0"]}]
    assert messages(policy.check_ports(cfg, [hcloud_firewall(wide)])) == [
        "[undeclared-port] hcloud:index/firewall:Firewall fsn-firewall: tcp port 22 (SSH) is open to 0.0.0.0/0, "
        "outside cgnat-edge:sshAllowedCidrs (198.51.100.0/24, 2001:db8:1::/48); "
        "add the prefix to sshAllowedCidrs or take it out of the rule"
    ]


def test_other_protocols_fail_and_icmp_and_outbound_pass(fleet_config):
    rules = [
        {"direction": "in", "protocol": "icmp", "sourceIps": ["0.0.0.0/0", "::/0"]},
        {"direction": "out", "protocol": "tcp", "port": "9999", "destination_ips": ["0.0.0.0/0"]},
        {"direction": "in", "protocol": "gre", "sourceIps": ["0.0.0.0/0"]},
    ]
    assert messages(policy.check_ports(fleet_config, [hcloud_firewall(rules)])) == [
        "[undeclared-port] hcloud:index/firewall:Firewall fsn-firewall: inbound protocol 'gre' is open, "
        "but edges only serve tcp and udp; remove the rule"
    ]


def test_a_machine_without_a_firewall_fails():
    server = {
        "type": HETZNER.server_resource_type,
        "name": "fsn-server",
        "parent": "urn:edge::fsn",
        "inputs": {"firewallIds": []},
    }
    droplet = {
        "type": DO.server_resource_type,
        "name": "ams-droplet",
        "parent": "urn:edge::ams",
        "inputs": {"tags": ["cgnat-edge"]},
    }
    assert messages(policy.check_firewalled([server, droplet])) == [
        "[unfirewalled-machine] hcloud:index/server:Server fsn-server: has no Hetzner Cloud firewall; "
        "pass firewall_ids with a firewall built from base.firewall_rules",
        "[unfirewalled-machine] digitalocean:index/droplet:Droplet ams-droplet: has no DigitalOcean firewall; "
        "create a digitalocean.Firewall with its droplet_ids next to it",
    ]
    server["inputs"]["firewallIds"] = [12345]
    tagged = dict(do_firewall([]), parent="urn:elsewhere")
    tagged["inputs"]["tags"] = ["cgnat-edge"]
    assert policy.check_firewalled([server, droplet, tagged]) == []
    assert policy.check_firewalled([dict(server, inputs={}), hcloud_firewall([]), droplet, do_firewall([])]) == []


# -- (b) private keys -----------------------------------------------------------------


def test_wg_quick_text_with_a_private_key_in_a_plain_output_fails():
    private, public = wg_keypair()
    _peer_private, peer_public = wg_keypair()
    conf = f"[Interface]\nPrivateKey = {private}\nAddress = 10.254.0.2/30\n\n[Peer]\nPublicKey = {peer_public}\n"
    outputs = {"homeConfigs": {"fsn": {"wgQuick": conf}}, "edges": {"fsn": {"publicKey": public}}}
    assert messages(policy.check_outputs(outputs, set())) == [
        "[private-key-in-output] output homeConfigs.fsn.wgQuick: holds a WireGuard private or preshared key in a plain "
        "stack output, printed by every `pulumi stack output`; wrap it with pulumi.Output.secret(...) or export only the public key"
    ]
    # the same output marked secret is fine, and so is what the render prints for it
    assert policy.check_outputs(outputs, {"homeConfigs"}) == []
    assert policy.check_outputs({"homeConfigs": "[secret]", "edges": outputs["edges"]}, {"homeConfigs"}) == []


def test_public_keys_pass_and_a_key_named_private_fails():
    private, public = wg_keypair()
    assert policy.check_outputs({"edges": {"fsn": {"publicKey": public, "wireguardPublicKey": public}}}, set()) == []
    [violation] = policy.check_outputs({"home": {"privateKey": private, "publicKey": public}}, set())
    assert violation.subject == "output home.privateKey"
    assert violation.message.startswith("holds a private key value in a plain stack output")
    [violation] = policy.check_outputs({"homePrivateKey": private}, set())
    assert violation.subject == "output homePrivateKey"
    assert policy.check_outputs({"home": {"privateKey": "[secret]"}}, set()) == []


def test_preshared_keys_count_as_private():
    psk, _ = wg_keypair()
    [violation] = policy.check_outputs({"peer": f"[Peer]\nPresharedKey = {psk}\n"}, set())
    assert violation.subject == "output peer"


def test_json_encoded_and_pem_keys_are_found():
    private, _ = wg_keypair()
    outputs = {
        "blob": json.dumps({"interface": {"private_key": private}}),
        "ssh": [openssh_private_key()],
    }
    assert [(v.subject, v.message.split(" in a plain")[0]) for v in policy.check_outputs(outputs, set())] == [
        ("output blob", "holds a WireGuard private or preshared key"),
        ("output ssh[0]", "holds a PEM/OpenSSH private key block"),
    ]


def test_a_private_key_in_a_plain_resource_input_fails():
    private, _ = wg_keypair()
    user_data = f"#cloud-config\nwrite_files:\n- path: /etc/wireguard/wg0.conf\n  content: |\n    [Interface]\n    PrivateKey = {private}\n"
    server = {
        "type": HETZNER.server_resource_type,
        "name": "fsn-server",
        "inputs": {"userData": user_data, "firewallIds": [1]},
    }
    assert messages(policy.check_inputs([server])) == [
        "[private-key-in-input] hcloud:index/server:Server fsn-server input userData: holds a WireGuard private or "
        "preshared key as a plain input (unencrypted in state, shown in previews); pass it as a secret "
        "(pulumi.Output.secret or a secret config value)"
    ]
    assert policy.check_inputs([dict(server, inputs={"userData": "[secret]"})]) == []


# -- (c) HA -----------------------------------------------------------------------------


# -- the real program ---------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_committed_stacks_pass(stack, capsys):
    assert cli.main(["policy", "--stack", stack, "--project-dir", str(ROOT)]) == 0
    assert capsys.readouterr().out.startswith(f"policy: stack {stack} (")


@pytest.fixture(scope="module")
def dev_render(tmp_path_factory):
    from components.tools import render

    out = tmp_path_factory.mktemp("render") / "dev"
    render.render(DEV_STACK, out)
    return out


def test_the_command_checks_a_render_folder_and_fails_on_a_leak(dev_render, tmp_path, capsys):
    out = tmp_path / "dev"
    shutil.copytree(dev_render, out)
    command = ["policy", "--stack-file", str(DEV_STACK), "--render-dir", str(out)]
    assert cli.main(command) == 0
    assert capsys.readouterr().out == f"policy: {out} (27 resources, 4 outputs): no violations\n"

    outputs = json.loads((out / "outputs.json").read_text())
    private, _ = wg_keypair()
    outputs["debugHome"] = f"[Interface]\nPrivateKey = {private}\n"
    (out / "outputs.json").write_text(json.dumps(outputs))
    resources = json.loads((out / "resources.json").read_text())
    firewall = next(r for r in resources if r["type"] == HETZNER.firewall_resource_type)
    firewall["inputs"]["rules"].append(
        {"direction": "in", "protocol": "tcp", "port": "3306", "sourceIps": ["0.0.0.0/0"]}
    )
    (out / "resources.json").write_text(json.dumps(resources))

    assert cli.main(command) == 1
    err = capsys.readouterr().err
    assert "2 violation(s)" in err
    assert "[undeclared-port]" in err and "tcp port 3306" in err
    assert "[private-key-in-output] output debugHome" in err
    assert private not in err


def test_the_command_without_a_render_says_how_to_make_one(tmp_path, capsys):
    none = tmp_path / "none"
    assert cli.main(["policy", "--stack-file", str(DEV_STACK), "--render-dir", str(none)]) == 2
    assert capsys.readouterr().err == (
        f"cgnat-edge policy: {none} has no resources.json, outputs.json, secret_outputs.json; "
        f"run `cgnat-edge render --stack <stack> --out {none}` first\n"
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("outputs.json", "{not json"),
        ("resources.json", '{"a": 1}'),
        ("resources.json", "[1, 2]"),
        ("secret_outputs.json", b"\xff\xfe"),
    ],
)
def test_the_command_refuses_a_damaged_render(dev_render, tmp_path, capsys, name, content):
    out = tmp_path / "dev"
    shutil.copytree(dev_render, out)
    (out / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    assert cli.main(["policy", "--stack-file", str(DEV_STACK), "--render-dir", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"cgnat-edge policy: {out / name} is not what `cgnat-edge render` writes; "
        f"render again with `cgnat-edge render --stack <stack> --out {out}`\n"
    )


def test_the_command_refuses_a_render_of_another_stack(dev_render, capsys):
    command = ["policy", "--stack-file", str(PROD_STACK), "--render-dir", str(dev_render)]
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert f"{dev_render} is a render of stack 'dev' of project 'cgnat-edge', not of stack 'prod'" in err
    assert f"cgnat-edge render --stack-file {PROD_STACK} --out {dev_render}" in err
