"""The whole program (``__main__.py``) under Pulumi's mocks: the resource graph a
``pulumi up`` of the example stack would register, and how it behaves across runs."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from components.config import ConfigError
from components.model import edge_contract
from components.renderers import bundle, edge_dns
from components.tools import offline
from tests.support import DEV_STACK, ROOT, stack_raw

WG_KEY = "pulumi-python:dynamic/cgnat-edge:WireGuardKey"
HOST_KEY = "pulumi-python:dynamic/cgnat-edge:SshHostKey"
SERVER_TYPES = ("hcloud:index/server:Server", "digitalocean:index/droplet:Droplet")


@pytest.fixture
def run(dev_run) -> offline.Run:
    return dev_run


def _services_with(extra: dict) -> list:
    services = copy.deepcopy(stack_raw()["services"])
    services.append(extra)
    return services


def test_resource_graph(run):
    counts = Counter(r.type for r in run.resources)
    assert counts == {
        "cgnat-edge:index:EdgeFleet": 1,
        "cgnat-edge:index:EdgeNode": 2,
        WG_KEY: 3,
        WG_KEY.replace("WireGuardKey", "StackSshKey"): 1,  # the one key the providers get, for every edge
        HOST_KEY: 4,  # per edge: the bootstrap key (user data) and the host key the SSH steps pin
        "hcloud:index/sshKey:SshKey": 1,
        "hcloud:index/primaryIp:PrimaryIp": 2,
        "hcloud:index/firewall:Firewall": 1,
        "hcloud:index/server:Server": 1,
        "digitalocean:index/sshKey:SshKey": 1,
        "digitalocean:index/droplet:Droplet": 1,
        "digitalocean:index/reservedIp:ReservedIp": 1,
        "digitalocean:index/reservedIpAssignment:ReservedIpAssignment": 1,
        "digitalocean:index/firewall:Firewall": 1,
        "command:remote:Command": 6,  # per edge: boot (retires the bootstrap key), host key, config push
    }


def test_every_resource_is_parented_to_a_component(run):
    by_urn = {r.urn: r for r in run.resources}
    fleet = run.one("cgnat-edge:index:EdgeFleet", "fleet")
    assert fleet.parent.endswith("::pulumi:pulumi:Stack::cgnat-edge-dev")
    for r in run.resources:
        if r is fleet:
            continue
        assert r.parent in by_urn, f"{r.type} {r.name} is not under a component"
        assert by_urn[r.parent].type.startswith("cgnat-edge:index:")
    per_edge = {
        r.name: by_urn[r.parent].name
        for r in run.resources
        if by_urn.get(r.parent, fleet).type == "cgnat-edge:index:EdgeNode"
    }
    assert per_edge["fsn-server"] == "fsn" and per_edge["ams-droplet"] == "ams"
    assert per_edge["fsn-wireguard-key"] == "fsn" and per_edge["ams-config"] == "ams"


def test_hetzner_server_is_arm64_on_persistent_addresses(run):
    server = run.one("hcloud:index/server:Server", "fsn-server")
    ips = {r.name: r for r in run.by_type("hcloud:index/primaryIp:PrimaryIp")}
    inputs = offline.reveal(server.inputs)
    assert (inputs["name"], inputs["serverType"], inputs["image"], inputs["location"]) == (
        "cgnat-edge-dev-fsn",
        "cax11",
        "debian-12",
        "fsn1",
    )
    assert inputs["publicNets"] == [
        {"ipv4Enabled": True, "ipv4": int(ips["fsn-ipv4"].id), "ipv6Enabled": True, "ipv6": int(ips["fsn-ipv6"].id)}
    ]
    for ip in ips.values():
        assert (
            ip.inputs["autoDelete"] is False
            and ip.inputs["assigneeType"] == "server"
            and ip.inputs["location"] == "fsn1"
        )
    assert sorted(server.ignore_changes) == ["sshKeys", "userData"]
    assert inputs["labels"] == {"app": "cgnat-edge", "stack": "dev", "edge": "fsn"}
    assert inputs["userData"].startswith("#cloud-config")
    assert offline.is_secret(server.inputs["userData"])


def test_digitalocean_droplet_keeps_its_reserved_ip(run):
    droplet = offline.reveal(run.one("digitalocean:index/droplet:Droplet", "ams-droplet").inputs)
    assert (droplet["name"], droplet["size"], droplet["region"], droplet["image"]) == (
        "cgnat-edge-dev-ams",
        "s-1vcpu-1gb",
        "ams3",
        "debian-12-x64",
    )
    assert droplet["ipv6"] is True
    assignment = run.one("digitalocean:index/reservedIpAssignment:ReservedIpAssignment", "ams-reserved-ip-assignment")
    reserved = run.one("digitalocean:index/reservedIp:ReservedIp", "ams-reserved-ip")
    assert assignment.inputs["ipAddress"] == reserved.outputs["ipAddress"]
    assert run.output("edges")["ams"]["ipv4"] == reserved.outputs["ipAddress"]
    assert any("DigitalOcean sells no arm64" in msg and "'ams'" in msg for level, msg in run.logs if level == "warning")


def test_provider_firewalls_mirror_declared_ports(run):
    hz = run.one("hcloud:index/firewall:Firewall", "fsn-firewall").inputs["rules"]
    opened = sorted((r["protocol"], r.get("port")) for r in hz)
    assert opened == sorted(
        [
            ("tcp", "22"),
            ("tcp", "53"),  # dnsMode edges: the edges are the nameservers
            ("tcp", "80"),
            ("tcp", "443"),
            ("tcp", "2222"),
            ("tcp", "8053"),  # the health agents (nftables lets only the fleet in)
            ("tcp", "25565"),
            ("udp", "53"),
            ("udp", "2456"),
            ("udp", "51820"),
            ("icmp", None),
        ]
    )
    do = run.one("digitalocean:index/firewall:Firewall", "ams-firewall").inputs
    assert sorted((r["protocol"], r.get("portRange")) for r in do["inboundRules"]) == opened
    assert {r["protocol"] for r in do["outboundRules"]} == {"tcp", "udp", "icmp"}


def test_outputs(run):
    edges = run.output("edges")
    assert set(edges) == {"fsn", "ams"}
    assert (edges["fsn"]["provider"], edges["fsn"]["arch"], edges["fsn"]["country"]) == ("hetzner", "arm64", "DE")
    assert (edges["ams"]["provider"], edges["ams"]["arch"], edges["ams"]["country"]) == ("digitalocean", "x86_64", "NL")
    assert edges["fsn"]["ipv4"].startswith("203.0.113.") and edges["fsn"]["ipv6"].startswith("2001:db8:")
    assert edges["fsn"]["wireguardEndpoint"] == f"{edges['fsn']['ipv4']}:51820"
    assert edges["fsn"]["tunnelIpv4"] == "10.254.0.5" and edges["ams"]["tunnelIpv4"] == "10.254.0.9"
    cost = run.output("monthlyCost")
    assert cost["totals"] == {"EUR": 4.29, "USD": 6.0}
    assert cost["perEdge"]["fsn"] == {"amount": 4.29, "currency": "EUR"}
    assert run.secret_outputs() == ["homeConfigs"]


def test_no_private_key_in_plain_outputs_or_inputs(run):
    keys = [r for r in run.resources if r.type in (WG_KEY, HOST_KEY)]
    privates = [offline.reveal(r.outputs["private_key"]) for r in keys]
    assert len(privates) == 7 and sum(len(p) == 44 for p in privates) == 3
    for r in keys:
        assert r.additional_secret_outputs == ["private_key"]
    plain = json.dumps(offline.masked(run.outputs)) + json.dumps([offline.masked(r.inputs) for r in run.resources])
    for private in privates:
        assert private not in plain
    # ... while the secret home config does carry the home key, for the user to fetch.
    assert privates[[r.name for r in keys].index("home-wireguard-key")] in json.dumps(run.output("homeConfigs"))


def _user_data(run: offline.Run, edge: str) -> str:
    server = run.one(
        SERVER_TYPES[0] if edge == "fsn" else SERVER_TYPES[1], "fsn-server" if edge == "fsn" else "ams-droplet"
    )
    return offline.reveal(server.inputs["userData"])


def test_user_data_holds_no_key_valid_after_the_first_push(run):
    """The provider's metadata serves the user data for the server's whole life: it
    holds the bootstrap host key (retired by the boot step) and no other private key."""
    import yaml

    privates = {r.name: offline.reveal(r.outputs["private_key"]) for r in run.resources if r.type in (WG_KEY, HOST_KEY)}
    for edge in ("fsn", "ams"):
        text = _user_data(run, edge)
        bootstrap_key = privates.pop(f"{edge}-ssh-bootstrap-key")
        assert yaml.safe_load(text)["ssh_keys"]["ed25519_private"] == bootstrap_key
        assert text.count("PRIVATE KEY-----") == 2  # BEGIN and END of the bootstrap key
        assert "PrivateKey" not in text
    assert len(privates) == 5  # every edge's WireGuard and pinned host key, home's key
    for edge in ("fsn", "ams"):
        text = _user_data(run, edge)
        for name, private in privates.items():
            assert private.strip() not in text, name


def test_boot_retires_the_bootstrap_key_and_later_steps_pin_the_edge_host_key(run):
    for edge in ("fsn", "ams"):
        bootstrap_key = run.one(HOST_KEY, f"{edge}-ssh-bootstrap-key")
        host_key = run.one(HOST_KEY, f"{edge}-ssh-pinned-host-key")
        public, private = host_key.outputs["public_key"], offline.reveal(host_key.outputs["private_key"])
        assert bootstrap_key.outputs["public_key"] != public
        # An existing stack keeps the key its servers' metadata already holds as the bootstrap key.
        assert f"{edge}-ssh-host-key" in json.dumps([str(a) for a in bootstrap_key.aliases])
        assert bootstrap_key.ignore_changes == ["rotation"]
        steps = {s: run.one("command:remote:Command", f"{edge}-{s}") for s in ("boot", "host-key", "config")}
        pins = {s: offline.reveal(step.inputs["connection"])["hostKey"] for s, step in steps.items()}
        assert pins["boot"] == bootstrap_key.outputs["public_key"]
        assert "retired" in steps["boot"].inputs["create"] and "stdin" not in steps["boot"].inputs
        # The host-key step pins the install key the boot step reports ("" under the mocks).
        assert pins["host-key"] == "" and steps["host-key"].inputs["triggers"][0] == public
        assert offline.is_secret(steps["host-key"].inputs["stdin"])
        assert offline.reveal(steps["host-key"].inputs["stdin"]) == private
        assert pins["config"] == public == run.output("edges")[edge]["hostPublicKey"]
        for step in steps.values():
            assert offline.reveal(step.inputs["connection"])["host"] == run.output("edges")[edge]["ipv4"]


def test_same_state_gives_identical_inputs(run):
    again = offline.run_program(DEV_STACK, state=offline.key_state(run))
    first = {r.urn: offline.reveal(r.inputs) for r in run.resources}
    second = {r.urn: offline.reveal(r.inputs) for r in again.resources}
    assert first == second
    assert offline.reveal(run.outputs) == offline.reveal(again.outputs)


def _replacement_inputs(run: offline.Run) -> dict:
    out = {}
    for r in run.resources:
        if r.type in SERVER_TYPES or r.type in (
            "hcloud:index/primaryIp:PrimaryIp",
            "digitalocean:index/reservedIp:ReservedIp",
        ):
            out[r.name] = {k: v for k, v in offline.reveal(r.inputs).items() if k not in r.ignore_changes}
    return out


def test_service_change_touches_no_server_argument(run):
    changed = offline.run_program(
        DEV_STACK,
        state=offline.key_state(run),
        config_overrides={
            "services": _services_with({"name": "dns", "mode": "udp", "port": 5353, "target": "192.168.1.53:53"})
        },
    )
    assert _replacement_inputs(changed) == _replacement_inputs(run)
    # ... and the change reaches the running nodes through the config push instead.
    for edge in ("fsn", "ams"):
        before = offline.reveal(run.one("command:remote:Command", f"{edge}-config").inputs)
        after = offline.reveal(changed.one("command:remote:Command", f"{edge}-config").inputs)
        assert before["stdin"] != after["stdin"] and before["triggers"][1] != after["triggers"][1]
        assert before["triggers"][0] == after["triggers"][0]  # same server
    rules = changed.one("hcloud:index/firewall:Firewall", "fsn-firewall").inputs["rules"]
    assert {"udp", "5353"} <= {v for r in rules for v in (r["protocol"], r.get("port"))}


def test_server_replacement_keeps_wireguard_keys(run):
    bigger = copy.deepcopy(stack_raw()["edges"])
    bigger[0]["serverType"] = "cax21"
    replaced = offline.run_program(DEV_STACK, state=offline.key_state(run), config_overrides={"edges": bigger})
    assert offline.reveal(replaced.one("hcloud:index/server:Server", "fsn-server").inputs)["serverType"] == "cax21"
    keys_before = {r.name: offline.reveal(r.inputs) for r in run.resources if r.type in (WG_KEY, HOST_KEY)}
    keys_after = {r.name: offline.reveal(r.inputs) for r in replaced.resources if r.type in (WG_KEY, HOST_KEY)}
    assert len(keys_before) == 7
    assert keys_before == keys_after
    assert run.output("edges")["fsn"]["wireguardPublicKey"] == replaced.output("edges")["fsn"]["wireguardPublicKey"]
    assert offline.reveal(run.outputs["homeConfigs"]) == offline.reveal(replaced.outputs["homeConfigs"])


def test_bad_config_registers_nothing(monkeypatch):
    created: list[str] = []
    monkeypatch.setattr(offline.CloudMocks, "new_resource", lambda _self, args: created.append(args.name))
    with pytest.raises(ConfigError, match=r"cgnat-edge:edges\[0\].provider"):
        offline.run_program(
            DEV_STACK, config_overrides={"edges": [{"name": "x", "provider": "aws", "location": "us-east-1"}]}
        )
    assert created == []


def test_prod_stack_manages_the_edge_zone_delegation_in_the_hetzner_zone(prod_run):
    """dnsMode edges with dnsProvider hetzner: NS and glue for edge.example.com and a CNAME
    per hostname go into the user's zone; the edges answer for the rest."""
    prod = prod_run
    by_urn = {r.urn: r for r in prod.resources}
    rrsets = prod.by_type("hcloud:index/zoneRrset:ZoneRrset")
    assert rrsets and all(by_urn[r.parent].type == "cgnat-edge:index:ManagedDns" for r in rrsets)
    edges = prod.output("edges")
    ns = offline.reveal(prod.one("hcloud:index/zoneRrset:ZoneRrset", "dns-edge.example.com-ns").inputs)
    assert (ns["zone"], ns["name"], ns["type"]) == ("example.com", "edge", "NS")
    assert sorted(r["value"] for r in ns["records"]) == sorted(f"ns-{name}.edge.example.com." for name in edges)
    glue = offline.reveal(prod.one("hcloud:index/zoneRrset:ZoneRrset", "dns-ns-fsn.edge.example.com-a").inputs)
    assert [r["value"] for r in glue["records"]] == [edges["fsn"]["ipv4"]]
    blog = offline.reveal(prod.one("hcloud:index/zoneRrset:ZoneRrset", "dns-blog.example.com-cname").inputs)
    assert (blog["name"], blog["type"], [r["value"] for r in blog["records"]]) == (
        "blog",
        "CNAME",
        ["blog.edge.example.com."],
    )
    assert prod.output("dns")["edgeServed"]["nameservers"] == {n: f"ns-{n}.edge.example.com" for n in edges}
    assert len(edges) == 4 and {e["provider"] for e in edges.values()} == {"hetzner", "digitalocean", "oracle"}


def test_ssh_private_key_reaches_the_ssh_steps_only_as_a_secret():
    from components.model.keys import generate_host_key

    key = generate_host_key()[0]  # made at test time: no key material in the repository
    run = offline.run_program(DEV_STACK, config_overrides={"sshPrivateKey": key})
    for step in ("fsn-boot", "fsn-config", "ams-boot", "ams-config"):
        command = run.one("command:remote:Command", step)
        assert offline.reveal(command.inputs["connection"])["privateKey"] == key
    shared = json.dumps([offline.masked(r.inputs) for r in run.resources]) + json.dumps(offline.masked(run.outputs))
    assert "BEGIN OPENSSH PRIVATE KEY" not in shared


def test_crowdsec_enrolment_runs_once_per_edge_with_the_key_only_as_a_secret():
    key = "enrol-" + os.urandom(8).hex()
    run = offline.run_program(DEV_STACK, config_overrides={"crowdsec": "online"}, secrets={"crowdsecEnrollKey": key})
    steps = {r.name: r for r in run.resources if r.name.endswith("-crowdsec-enroll")}
    assert sorted(steps) == sorted(f"{e}-crowdsec-enroll" for e in ("fsn", "ams"))
    for edge in ("fsn", "ams"):
        step = steps[f"{edge}-crowdsec-enroll"]
        assert offline.reveal(step.inputs["stdin"]) == key
        assert f" {edge} cgnat-edge && systemctl" in step.inputs["create"] and key not in step.inputs["create"]
        # After the edge's own push (CrowdSec is installed by then), again only for a new server or key.
        assert run.one("command:remote:Command", f"{edge}-config").urn in step.dependencies
        assert len(step.inputs["triggers"]) == 2
    shared = json.dumps([offline.masked(r.inputs) for r in run.resources]) + json.dumps(offline.masked(run.outputs))
    assert key not in shared

    without = offline.run_program(DEV_STACK, config_overrides={"crowdsec": "online"})
    assert not [r for r in without.resources if r.name.endswith("-crowdsec-enroll")]
    with pytest.raises(Exception, match="crowdsecEnrollKey: needs CrowdSec's Central API"):
        offline.run_program(DEV_STACK, config_overrides={"crowdsec": "offline"}, secrets={"crowdsecEnrollKey": key})


_BUILD_FAILS = """
import sys
from components import providers
from components.tools import offline
from tests.support import DEV_STACK

def fail(*args, **kwargs):
    raise RuntimeError("the machine could not be described")

type(providers.get("hetzner")).create_machine = fail
try:
    offline.run_program(DEV_STACK, config_overrides={"dnsMode": sys.argv[1]})
except RuntimeError as error:
    print(error)
"""


@pytest.mark.parametrize("dns_mode", ["records", "edges"])
def test_an_edge_that_fails_to_build_ends_the_run_with_its_error(dns_mode):
    """In dnsMode edges every edge's zone waits on the whole fleet; an edge that raises
    while it is built must end the run with that error, not leave the others waiting."""
    done = subprocess.run(
        [sys.executable, "-c", _BUILD_FAILS, dns_mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "the machine could not be described"


def test_every_edge_accepts_health_checks_from_a_droplets_own_address(prod_run):
    """dnsMode edges: a Droplet's checks leave from its own address, not the reserved IP
    its records name, so every edge's agent port admits both."""
    droplets = {
        r.name.removesuffix("-droplet"): offline.reveal(r.outputs)["ipv4Address"]
        for r in prod_run.by_type("digitalocean:index/droplet:Droplet")
    }
    edges = prod_run.output("edges")
    assert sorted(droplets) == ["fra", "nyc"]
    assert not set(droplets.values()) & {e["ipv4"] for e in edges.values()}  # not the reserved IPs
    for name in edges:
        pushed = offline.reveal(prod_run.one("command:remote:Command", f"{name}-config").inputs["stdin"])
        (rules,) = [f.content for f in bundle.decode(pushed) if f.path == edge_contract.NFT_CONF]
        (allowed,) = [
            line.strip()
            for line in rules.splitlines()
            if line.strip().startswith("ip saddr") and f"tcp dport {edge_dns.HEALTH_PORT} accept" in line
        ]
        sources = set(allowed.split("{")[1].split("}")[0].replace(",", " ").split())
        assert sources == {e["ipv4"] for e in edges.values()} | set(droplets.values()), name
