"""The provider registry: one module per provider, and the catalog facts it supplies
reach the parser (defaults, images, firewall limits, high availability)."""

from __future__ import annotations

import copy
import re

import pytest

from components import config, providers
from components.model.firewall import firewall_rules
from components.model.fleet import FleetConfig
from components.tools import package_schema
from tests.support import ROOT


def parse(raw: dict) -> FleetConfig:
    return config.parse(raw, stack="dev")


def problems(raw: dict) -> list[str]:
    with pytest.raises(config.ConfigError) as info:
        parse(raw)
    return info.value.problems


def test_no_module_outside_the_registry_names_a_provider():
    """A new provider is one module in components/model/platforms/ and one in components/providers/:
    nothing else may know one by name."""
    names = [n for p in providers.REGISTRY.values() for n in (p.name, p.resource_prefix.rstrip(":"))]
    # written from the key table, whose texts name the registry's providers
    generated = {package_schema.ARGS_FILE}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b", re.I)
    offenders = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for path in sorted((ROOT / "components").rglob("*.py"))
        if not {"platforms", "providers"} & set(path.relative_to(ROOT).parts) and path not in generated
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_every_provider_supplies_consistent_catalog_entries():
    for provider in providers.REGISTRY.values():
        assert provider.server_type(provider.default_server_type) is not None
        assert provider.default_image in provider.images
        codes = {loc.code for loc in provider.locations}
        for stype in provider.server_types:
            assert stype.provider == provider.name and stype.locations <= codes, stype
        for loc in provider.locations:
            assert loc.provider == provider.name and provider.types_in(loc.code), loc


def test_default_type_not_offered_falls_back_to_the_cheapest_there_with_a_warning(raw_config):
    raw = copy.deepcopy(raw_config)
    hetzner = next(e for e in raw["edges"] if e["provider"] == "hetzner")
    hetzner.pop("serverType", None)
    hetzner["location"] = "ash"
    cfg = parse(raw)
    edge = next(e for e in cfg.edges if e.provider == "hetzner")
    assert edge.server_type.name == "cpx11"  # the cheapest type Hetzner offers in Ashburn
    assert len(cfg.warnings) == 1
    assert "cax11 is not offered in ash; using cpx11 (x86_64, 5.49 EUR/month)" in cfg.warnings[0]


def test_an_explicit_type_not_offered_there_is_refused(raw_config):
    raw = copy.deepcopy(raw_config)
    hetzner = next(e for e in raw["edges"] if e["provider"] == "hetzner")
    hetzner.update(location="ash", serverType="cax11")
    (problem,) = problems(raw)
    assert problem.startswith("cgnat-edge:edges[0].serverType: cax11 (arm64) is not offered in ash;")
    assert "no arm64 type there; set serverType to one offered there (cpx11, cpx21)" in problem


def test_an_image_the_bootstrap_does_not_support_is_refused(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["edges"][0]["image"] = "windows-11"
    assert problems(raw) == [
        "cgnat-edge:edges[0].image: 'windows-11' is not an image the edge bootstrap supports on Hetzner Cloud; "
        "use debian-12 (or leave image out)"
    ]


def test_high_availability_on_one_provider_is_refused_before_anything_is_created(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["edges"] = [e for e in raw["edges"] if e["provider"] == "hetzner"]
    assert problems(raw) == [
        "cgnat-edge:ha: is true but every edge is on hetzner, so one provider outage takes the whole fleet down; "
        "add an edge on digitalocean or oracle to cgnat-edge:edges, or set cgnat-edge:ha to false"
    ]
    raw["ha"] = False
    assert [e.provider for e in parse(raw).edges] == ["hetzner"]


def _port_services(ports: list[int]) -> list[dict]:
    return [{"name": f"p{port}", "mode": "tcp", "port": port, "target": f"192.168.1.10:{port}"} for port in ports]


def test_consecutive_ports_merge_into_one_firewall_rule(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["services"] = raw["services"] + _port_services(list(range(30000, 30800)))
    cfg = parse(raw)
    spans = [r.port for r in firewall_rules(cfg) if r.protocol == "tcp"]
    assert "30000-30799" in spans
    assert len(firewall_rules(cfg)) < providers.get("hetzner").firewall_rule_limit


def test_more_firewall_rules_than_a_provider_allows_are_refused_with_the_limit(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["services"] = raw["services"] + _port_services(list(range(30000, 31600, 2)))  # 800 separate ports
    found = problems(raw)
    assert len(found) == 2  # one per provider in the fleet, each with its own limit
    # 811 = SSH + 80 + 443 + the example's 3 port services + these 800 + ICMP + DNS (tcp, udp) and the
    # health agent of dnsMode edges; DigitalOcean adds 3 outbound.
    assert found[0].startswith("cgnat-edge:services: the declared tcp/udp ports need 814 rules in each DigitalOcean")
    assert "need 811 rules in each Hetzner Cloud firewall, over its limit of 50; give services consecutive" in found[1]
