"""An Oracle Cloud edge under Pulumi's mocks (the example prod stack's ``ams``): the
network and Always Free instance it creates, its reserved address, its security list
against the host firewall, and its user data as the instance metadata carries it."""

from __future__ import annotations

import base64
import copy
import gzip
import subprocess

import pytest
import yaml

from components.config import stack
from components.model.firewall import firewall_rules
from components.providers import oracle
from components.renderers import bootstrap, edge_dns, nftables
from components.tools import offline
from tests.support import PROD_STACK, require_tool

INSTANCE = "oci:Core/instance:Instance"
PUBLIC_IP = "oci:Core/publicIp:PublicIp"
SECURITY_LIST = "oci:Core/securityList:SecurityList"


@pytest.fixture
def prod(prod_run) -> offline.Run:
    return prod_run


def _oci(run: offline.Run) -> dict[str, offline.Registration]:
    return {r.name: r for r in run.resources if r.type.startswith("oci:")}


def _inputs(run: offline.Run, typ: str) -> dict:
    (resource,) = run.by_type(typ)
    return offline.reveal(resource.inputs)


def test_an_oracle_edge_is_its_own_network_and_an_always_free_a1_instance(prod):
    assert sorted(r.type.split(":")[-1] for r in _oci(prod).values()) == [
        "Instance",
        "InternetGateway",
        "PublicIp",
        "RouteTable",
        "SecurityList",
        "Subnet",
        "Vcn",
    ]
    instance = _inputs(prod, INSTANCE)
    assert instance["shape"] == "VM.Standard.A1.Flex"
    assert instance["shapeConfig"] == {"ocpus": 1.0, "memoryInGbs": 6.0}
    assert instance["sourceDetails"]["bootVolumeSizeInGbs"] == "50"
    assert instance["createVnicDetails"]["assignPublicIp"] == "false"  # only the reserved address is public
    assert instance["availabilityDomain"] == "Mock:REGION-AD-1"
    assert instance["instanceOptions"] == {"areLegacyImdsEndpointsDisabled": True}
    vcn = _inputs(prod, "oci:Core/vcn:Vcn")
    assert vcn["isIpv6enabled"] is True
    routes = _inputs(prod, "oci:Core/routeTable:RouteTable")
    assert sorted(r["destination"] for r in routes["routeRules"]) == ["0.0.0.0/0", "::/0"]
    edge = prod.output("edges")["ams"]
    assert edge["serverType"] == "A1.Flex-1-6" and edge["arch"] == "arm64"
    assert edge["ipv6"].endswith("::ed6e")
    cost = prod.output("monthlyCost")["perEdge"]["ams"]
    assert (cost["amount"], cost["currency"]) == (0, "USD") and cost["note"].startswith("Always Free")


def test_an_edge_outside_the_allowance_costs_a1s_list_price():
    edges = copy.deepcopy(stack.load(PROD_STACK).raw()["edges"])
    for edge in edges:
        if edge["provider"] == "oracle":
            edge.update(alwaysFree=False, serverType="A1.Flex-2-12")
    cost = offline.run_program(PROD_STACK, config_overrides={"edges": edges}).output("monthlyCost")["perEdge"]["ams"]
    # 730 h x (2 OCPU x 0.01 + 12 GB x 0.0015)
    assert cost["amount"] == 27.74 and "pay-as-you-go" in cost["note"]


def test_the_reserved_ipv4_is_protected_and_moves_to_a_replaced_instance(prod):
    (public_ip,) = prod.by_type(PUBLIC_IP)
    (instance,) = prod.by_type(INSTANCE)
    inputs = offline.reveal(public_ip.inputs)
    assert public_ip.protect and inputs["lifetime"] == "RESERVED"
    # The only tie to the instance is the private IP it is bound to: an updatable field,
    # so a new instance takes the address over in place.
    assert instance.id in inputs["privateIpId"]
    assert set(inputs) - {"__provider"} == {"compartmentId", "lifetime", "privateIpId", "displayName", "freeformTags"}
    assert instance.delete_before_replace and not instance.protect
    assert {"metadata", "sourceDetails", "availabilityDomain"} <= set(instance.ignore_changes)
    assert prod.output("edges")["ams"]["ipv4"] == public_ip.outputs["ipAddress"]


def _rules(run: offline.Run) -> set[tuple[str, str | None, str]]:
    return {
        (rule.protocol, rule.port, source)
        for rule in oracle.PROVIDER.inbound_rules(_inputs(run, SECURITY_LIST))
        for source in rule.sources
    }


def test_the_security_list_opens_exactly_what_the_host_firewall_opens(prod):
    cfg = stack.load(PROD_STACK).parse()
    want = {(r.protocol, r.port, source) for r in firewall_rules(cfg) for source in r.sources}
    assert _rules(prod) == want
    # dnsMode edges opens 53 and the agent (for the fleet) with the first push, which knows the fleet.
    ruleset = nftables.ruleset(cfg, (["192.0.2.1"], []) if cfg.dns.edge_served else None)
    for protocol in ("tcp", "udp"):
        ports = {int(p) for proto, span, _ in want if proto == protocol and span for p in span.split("-")}
        # SSH, and the health agent the DNS health checks ask (every dnsMode; nftables narrows it)
        host_only = {22, edge_dns.HEALTH_PORT}
        assert ports == set(cfg.public_ports(protocol)) | (host_only if protocol == "tcp" else set())
        assert all(str(p) in ruleset for p in ports)
    # both families, each with its own ICMP
    assert {s for p, _, s in want if p == "icmp"} == {"0.0.0.0/0", "::/0"}
    protocols = {r["protocol"] for r in _inputs(prod, SECURITY_LIST)["ingressSecurityRules"]}
    assert protocols == {"6", "17", "1", "58"}


def test_a_change_of_services_changes_the_security_list_in_place_and_replaces_nothing(prod):
    services = copy.deepcopy(stack.load(PROD_STACK).raw()["services"])
    services.append({"name": "dns", "mode": "udp", "port": 5353, "target": "192.168.1.53:53"})
    changed = offline.run_program(PROD_STACK, state=offline.key_state(prod), config_overrides={"services": services})
    before, after = _oci(prod), _oci(changed)
    assert set(before) == set(after)
    differ = sorted(
        name
        for name, r in before.items()
        if {k: v for k, v in offline.reveal(r.inputs).items() if k not in r.ignore_changes}
        != {k: v for k, v in offline.reveal(after[name].inputs).items() if k not in after[name].ignore_changes}
    )
    assert differ == ["ams-security-list"]  # ingress rules are updated in place
    assert ("udp", "5353", "0.0.0.0/0") in _rules(changed) - _rules(prod)
    config_before = offline.reveal(prod.one("command:remote:Command", "ams-config").inputs)
    config_after = offline.reveal(changed.one("command:remote:Command", "ams-config").inputs)
    assert config_before["stdin"] != config_after["stdin"]  # the change travels in the push


def _user_data(run: offline.Run) -> tuple[dict, str]:
    metadata = _inputs(run, INSTANCE)["metadata"]
    return metadata, gzip.decompress(base64.b64decode(metadata["user_data"])).decode()


@pytest.mark.netns
def test_user_data_is_gzipped_cloud_config_within_the_metadata_limit(prod, tmp_path):
    metadata, text = _user_data(prod)
    size = oracle.metadata_size(metadata)
    print(f"ams: metadata {size} of {oracle.METADATA_LIMIT} bytes; cloud-config {len(text.encode())} bytes")
    assert size < oracle.METADATA_LIMIT // 2
    assert text.startswith("#cloud-config\n")
    cfg = stack.load(PROD_STACK).parse()
    assert metadata["ssh_authorized_keys"].splitlines()[1:] == list(cfg.ssh.public_keys)
    require_tool("cloud-init")
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    res = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ubuntu_user_data_retires_the_image_firewall_before_nftables_and_takes_ubuntu_updates(prod):
    _, text = _user_data(prod)
    doc = yaml.safe_load(text)
    runcmd = [" ".join(c) for c in doc["runcmd"]]
    nft = runcmd.index("systemctl enable --now nftables.service")
    takeover = [i for i, c in enumerate(runcmd) if "netfilter-persistent" in c or "rules.v4" in c]
    assert len(takeover) == 2 and max(takeover) < nft
    files = {f["path"]: f for f in doc["write_files"]}
    upgrades = files[bootstrap.UNATTENDED_PATH]["content"]
    assert '"origin=Ubuntu,archive=${distro_codename}-security,label=Ubuntu";' in upgrades
    assert "Debian" not in upgrades
    assert set(doc["packages"]) >= {"wireguard-tools", "nftables", "unattended-upgrades"}  # Ubuntu 24.04 names too


def test_a_large_stack_still_fits_the_metadata_limit():
    services = copy.deepcopy(stack.load(PROD_STACK).raw()["services"])
    services += [
        {
            "name": f"s{i}",
            "mode": "passthrough",
            "hostnames": [f"s{i}.example.com"],
            "target": f"192.168.1.10:{10000 + i}",
        }
        for i in range(100)
    ]
    run = offline.run_program(PROD_STACK, config_overrides={"services": services})
    metadata, text = _user_data(run)
    print(f"100 services: metadata {oracle.metadata_size(metadata)} bytes, cloud-config {len(text.encode())} bytes")
    assert oracle.metadata_size(metadata) < oracle.METADATA_LIMIT


def test_too_much_metadata_is_refused_naming_the_edge():
    with pytest.raises(bootstrap.UserDataTooLarge, match=r"edge 'ams'.*over Oracle Cloud's 32000-byte limit"):
        oracle.PROVIDER._metadata(stack.load(PROD_STACK).parse().edges[3], "x" * 10, ["ssh-ed25519 " + "A" * 40_000])


def _frankfurt_edges() -> list[dict]:
    edges = copy.deepcopy(stack.load(PROD_STACK).raw()["edges"])
    edges[3]["location"] = "eu-frankfurt-1"  # three availability domains
    return edges


def _a1_only_in(monkeypatch, domains: set[str]) -> None:
    answer = oracle.PROVIDER.mock_call

    def mock_call(token, args):
        if token == "oci:Core/getShapes:getShapes":
            return {"shapes": [{"name": oracle.SHAPE}] if args["availabilityDomain"] in domains else []}
        return answer(token, args)

    monkeypatch.setattr(oracle.PROVIDER, "mock_call", mock_call)


def test_without_availability_domain_the_first_that_offers_a1_is_taken(monkeypatch):
    _a1_only_in(monkeypatch, {"Mock:REGION-AD-2", "Mock:REGION-AD-3"})
    run = offline.run_program(PROD_STACK, config_overrides={"edges": _frankfurt_edges()})
    assert _inputs(run, INSTANCE)["availabilityDomain"] == "Mock:REGION-AD-2"
    edges = _frankfurt_edges()
    edges[3]["availabilityDomain"] = 3
    run = offline.run_program(PROD_STACK, config_overrides={"edges": edges})
    assert _inputs(run, INSTANCE)["availabilityDomain"] == "Mock:REGION-AD-3"


def test_a_region_whose_domains_offer_no_a1_is_refused_naming_other_regions(monkeypatch):
    _a1_only_in(monkeypatch, set())
    with pytest.raises(
        Exception, match=r"edge 'ams': no availability domain of eu-frankfurt-1 offers VM\.Standard"
    ) as info:
        offline.run_program(PROD_STACK, config_overrides={"edges": _frankfurt_edges()})
    assert "another region with A1 (eu-amsterdam-1, uk-london-1" in str(info.value)
