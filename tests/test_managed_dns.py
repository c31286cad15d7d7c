"""ManagedDns under Pulumi's mocks: which records it would create at Hetzner or
DigitalOcean, under which names, with which values and TTL."""

from __future__ import annotations

import copy

import pulumi
import pytest

from components import config as config_module
from components import providers
from components.model.deployed import DeployedEdge
from components.model.fleet import EdgeSpec
from components.resources.managed_dns import ManagedDns, ManagedDnsArgs, relative_name

ADDRESSES = {
    "fsn": ("203.0.113.10", "2001:db8:1::10"),
    "ams": ("198.51.100.20", None),
    "nyc": ("198.51.100.30", "2001:db8:3::30"),
}
EDGE_SPECS = {
    name: EdgeSpec(
        name,
        provider,
        providers.get(provider).location(location),
        providers.get(provider).server_type(stype),
        "debian-12",
        i + 1,
    )
    for i, (name, provider, location, stype) in enumerate(
        [
            ("fsn", "hetzner", "fsn1", "cax11"),
            ("ams", "digitalocean", "ams3", "s-1vcpu-1gb"),
            ("nyc", "digitalocean", "nyc3", "s-1vcpu-1gb"),
        ]
    )
}
HOSTS = ["blog.example.org", "cloud.example.org", "edge.example.org", "photos.example.org"]


class Mocks(pulumi.runtime.Mocks):
    def __init__(self):
        self.created: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.created.append(args)
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


def cfg_with(raw_config, **overrides):
    """The example stack with plain records (its own mode, edges, has its test below)."""
    raw = copy.deepcopy(raw_config)
    raw["dnsMode"] = "records"
    raw.update(overrides)
    return config_module.parse(raw, stack="dev")


def endpoints(names):
    # Addresses arrive as Outputs, as they do from the server resources.
    return [
        DeployedEdge(
            EDGE_SPECS[n],
            pulumi.Output.from_input(ADDRESSES[n][0]),
            pulumi.Output.from_input(ADDRESSES[n][1]) if ADDRESSES[n][1] else None,
        )
        for n in names
    ]


def deploy(cfg, names):
    """Run the component under fresh mocks; return (mock records, records output, urns)."""
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, project="cgnat-edge", stack="dev", preview=False)
    seen: dict = {}

    @pulumi.runtime.test
    def run():
        dns = ManagedDns("dns", ManagedDnsArgs(cfg, endpoints(names)))
        return pulumi.Output.all(dns.records, dns.urn, *[r.urn for r in dns.record_resources]).apply(
            lambda v: seen.update(records=v[0], urn=v[1], child_urns=v[2:])
        )

    run()
    components = [a for a in mocks.created if a.typ == "cgnat-edge:index:ManagedDns"]
    assert [a.name for a in components] == ["dns"]
    return [a for a in mocks.created if a not in components], seen


def by_type(created, typ):
    return {a.name: a.inputs for a in created if a.typ == typ}


def test_hetzner_rrsets(raw_config):
    cfg = cfg_with(raw_config, dnsProvider="hetzner", dnsTtl=120)
    created, seen = deploy(cfg, ["fsn", "ams"])
    rrsets = by_type(created, "hcloud:index/zoneRrset:ZoneRrset")
    assert len(created) == len(rrsets) == 8  # nothing else, in particular no Zone
    assert sorted(rrsets) == sorted(f"dns-{h}-{t}" for h in HOSTS for t in ("a", "aaaa"))
    cloud_a = rrsets["dns-cloud.example.org-a"]
    assert cloud_a["zone"] == "example.org"
    assert cloud_a["name"] == "cloud"
    assert cloud_a["type"] == "A"
    assert cloud_a["ttl"] == 120
    assert [r["value"] for r in cloud_a["records"]] == ["203.0.113.10", "198.51.100.20"]
    assert [r["comment"] for r in cloud_a["records"]] == ["cgnat-edge fsn", "cgnat-edge ams"]
    assert [r["value"] for r in rrsets["dns-edge.example.org-aaaa"]["records"]] == ["2001:db8:1::10"]
    assert {i["ttl"] for i in rrsets.values()} == {120}
    assert seen["urn"].endswith("$cgnat-edge:index:ManagedDns::dns")
    assert len(seen["child_urns"]) == 8
    assert all("cgnat-edge:index:ManagedDns$hcloud:index/zoneRrset:ZoneRrset::" in u for u in seen["child_urns"])


def test_digitalocean_records(raw_config):
    cfg = cfg_with(raw_config, dnsProvider="digitalocean")
    created, seen = deploy(cfg, ["fsn", "ams"])
    records = by_type(created, "digitalocean:index/dnsRecord:DnsRecord")
    assert len(created) == len(records) == 4 * 3  # 4 names x (2 A + 1 AAAA)
    assert records["dns-photos.example.org-a-ams"] == {
        "domain": "example.org",
        "name": "photos",
        "type": "A",
        "value": "198.51.100.20",
        "ttl": 60,
    }
    assert records["dns-photos.example.org-aaaa-fsn"]["value"] == "2001:db8:1::10"
    assert "dns-photos.example.org-aaaa-ams" not in records
    assert all("cgnat-edge:index:ManagedDns$digitalocean:index/dnsRecord:DnsRecord::" in u for u in seen["child_urns"])
    assert seen["records"][0] == {
        "hostname": "blog.example.org",
        "name": "blog",
        "type": "A",
        "ttl": 60,
        "values": ["203.0.113.10", "198.51.100.20"],
    }
    assert [(r["hostname"], r["type"]) for r in seen["records"]] == [(h, t) for h in HOSTS for t in ("A", "AAAA")]


def test_adding_an_edge_keeps_resource_names(raw_config):
    cfg = cfg_with(raw_config, dnsProvider="digitalocean")
    before, _ = deploy(cfg, ["fsn", "ams"])
    three = raw_config["edges"] + [{"name": "nyc", "provider": "digitalocean", "location": "nyc1", "index": 3}]
    bigger = cfg_with(raw_config, dnsProvider="digitalocean", edges=three)
    after, _ = deploy(bigger, ["fsn", "ams", "nyc"])
    names_before, names_after = {a.name for a in before}, {a.name for a in after}
    assert names_before < names_after
    assert names_after - names_before == {f"dns-{h}-{t}-nyc" for h in HOSTS for t in ("a", "aaaa")}
    hetzner_before, _ = deploy(cfg_with(raw_config, dnsProvider="hetzner"), ["fsn", "ams"])
    hetzner_after, _ = deploy(cfg_with(raw_config, dnsProvider="hetzner", edges=three), ["fsn", "ams", "nyc"])
    assert {a.name for a in hetzner_before} == {a.name for a in hetzner_after}


def test_no_provider_creates_nothing(raw_config):
    created, seen = deploy(cfg_with(raw_config), ["fsn", "ams"])
    assert created == []
    assert seen["records"] == []


def test_zone_above_the_domain(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["domain"] = "home.example.org"
    raw["dnsZone"] = "example.org"
    raw["dnsProvider"] = "hetzner"
    raw["dnsMode"] = "records"
    for service in raw["services"]:
        if "hostnames" in service:
            service["hostnames"] = [h.replace(".example.org", ".home.example.org") for h in service["hostnames"]]
    created, _ = deploy(config_module.parse(raw, stack="dev"), ["fsn", "ams"])
    names = {a.inputs["name"] for a in created}
    assert names == {"blog.home", "cloud.home", "edge.home", "photos.home"}
    assert {a.inputs["zone"] for a in created} == {"example.org"}


def test_relative_name():
    assert relative_name("example.org", "example.org") == "@"
    assert relative_name("Cloud.Example.org.", "example.org.") == "cloud"
    assert relative_name("a.b.example.org", "example.org") == "a.b"
    with pytest.raises(ValueError):
        relative_name("example.net", "example.org")
    with pytest.raises(ValueError):
        relative_name("badexample.org", "example.org")


def test_edge_served_mode_creates_the_delegation(raw_config):
    """dnsMode edges: the provider's zone gets NS and glue for edge.example.org and a
    CNAME into it per hostname; no A records for the hostnames themselves."""
    created, _ = deploy(cfg_with(raw_config, dnsProvider="hetzner", dnsMode="edges"), ["fsn", "ams"])
    by_name = {(a.inputs["name"], a.inputs["type"]): [r["value"] for r in a.inputs["records"]] for a in created}
    assert by_name[("edge", "NS")] == ["ns-fsn.edge.example.org.", "ns-ams.edge.example.org."]
    assert by_name[("ns-fsn.edge", "A")] == ["203.0.113.10"]
    assert by_name[("ns-fsn.edge", "AAAA")] == ["2001:db8:1::10"]
    assert ("ns-ams.edge", "AAAA") not in by_name  # ams has no IPv6
    for host in ("cloud", "photos", "blog"):
        assert by_name[(host, "CNAME")] == [f"{host}.edge.example.org."]
    assert not any(t == "A" and not n.startswith("ns-") for n, t in by_name)
    assert ("edge", "A") not in by_name  # edge.example.org is the edge zone's apex, served by the edges
