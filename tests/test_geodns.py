"""The GeoDNS policy and its renderings, checked by the tools that consume them:
named-checkzone and dnspython for the zone fragment, botocore's Route 53 service
model for the change batch.  PowerDNS is exercised in test_powerdns.py."""

from __future__ import annotations

import copy
import ipaddress
import json
import subprocess
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest

from components import config as config_module
from components.model.deployed import DeployedEdge
from components.renderers import edge_dns, geodns
from tests.support import IN_CI, require_tool

ADDRESSES = {
    "fsn": ("203.0.113.10", "2001:db8:1::10"),
    "ams": ("198.51.100.20", None),
    "nyc": ("198.51.100.30", "2001:db8:3::30"),
    "nyc3": ("198.51.100.31", "2001:db8:3::31"),
    "sgp": ("203.0.113.40", "2001:db8:4::40"),
}


def endpoints_for(cfg) -> list[DeployedEdge]:
    return [DeployedEdge(e, *ADDRESSES[e.name]) for e in cfg.edges]


def fleet(raw_config, edges, **overrides):
    raw = copy.deepcopy(raw_config)
    raw["edges"] = [{"index": i + 1, **e} for i, e in enumerate(edges)]
    raw.update(overrides)
    return config_module.parse(raw, stack="dev")


def find(records, hostname, rtype, scope, code):
    matches = [
        r for r in records if (r["hostname"], r["type"], r["scope"], r["code"]) == (hostname, rtype, scope, code)
    ]
    assert len(matches) == 1, (hostname, rtype, scope, code, matches)
    return matches[0]


@pytest.fixture
def example(fleet_config):
    return fleet_config, geodns.policy(fleet_config, endpoints_for(fleet_config))


@pytest.fixture
def transatlantic(raw_config):
    cfg = fleet(
        raw_config,
        [
            {"name": "fsn", "provider": "hetzner", "location": "fsn1"},
            {"name": "nyc", "provider": "digitalocean", "location": "nyc1"},
        ],
    )
    return cfg, geodns.policy(cfg, endpoints_for(cfg))


# -- policy -------------------------------------------------------------------


def test_distance_is_great_circle():
    # Berlin - New York is 6,385 km along the great circle.
    assert geodns.distance_km((52.52, 13.40), (40.71, -74.01)) == pytest.approx(6385, rel=0.01)
    assert geodns.distance_km((0.0, 179.5), (0.0, -179.5)) == pytest.approx(111.2, rel=0.01)


def test_european_visitor_gets_germany_and_north_american_the_us(transatlantic):
    cfg, records = transatlantic
    for host, _ in geodns.hostnames(cfg):
        assert find(records, host, "A", "continent", "EU")["values"] == ["203.0.113.10"]
        assert find(records, host, "A", "continent", "NA")["values"] == ["198.51.100.30"]
        assert find(records, host, "A", "country", "DE")["edges"] == ["fsn"]
        assert find(records, host, "A", "country", "US")["edges"] == ["nyc"]
        assert find(records, host, "AAAA", "continent", "EU")["values"] == ["2001:db8:1::10"]
        assert find(records, host, "AAAA", "continent", "NA")["values"] == ["2001:db8:3::30"]
        assert find(records, host, "A", "default", "*")["edges"] == ["fsn", "nyc"]
    # Asia is nearer to Falkenstein than to New York; South America to New York.
    assert find(records, "cloud.example.org", "A", "continent", "AS")["edges"] == ["fsn"]
    assert find(records, "cloud.example.org", "A", "continent", "SA")["edges"] == ["nyc"]


def test_one_edge_answers_every_region(raw_config):
    cfg = fleet(raw_config, [{"name": "sgp", "provider": "digitalocean", "location": "sgp1"}], ha=False)
    records = geodns.policy(cfg, endpoints_for(cfg))
    scopes = {(r["scope"], r["code"]) for r in records}
    assert scopes == {("default", "*"), ("country", "SG")} | {
        ("continent", c) for c in ("AF", "AN", "AS", "EU", "NA", "OC", "SA")
    }
    assert {tuple(r["edges"]) for r in records} == {("sgp",)}
    assert {tuple(r["values"]) for r in records} == {("203.0.113.40",), ("2001:db8:4::40",)}


def test_edges_in_one_metro_share_a_continent(raw_config):
    cfg = fleet(
        raw_config,
        [
            {"name": "fsn", "provider": "hetzner", "location": "fsn1"},
            {"name": "nyc", "provider": "digitalocean", "location": "nyc1"},
            {"name": "nyc3", "provider": "digitalocean", "location": "nyc3"},
        ],
    )
    records = geodns.policy(cfg, endpoints_for(cfg))
    assert find(records, "blog.example.org", "A", "continent", "NA")["edges"] == ["nyc", "nyc3"]
    assert find(records, "blog.example.org", "A", "country", "US")["values"] == ["198.51.100.30", "198.51.100.31"]
    assert find(records, "blog.example.org", "A", "continent", "EU")["edges"] == ["fsn"]


def test_aaaa_only_over_edges_with_ipv6(example):
    cfg, records = example
    # The example's ams edge has no IPv6: its visitors' AAAA queries go to fsn.
    assert find(records, "cloud.example.org", "AAAA", "default", "*")["edges"] == ["fsn"]
    assert not [r for r in records if r["type"] == "AAAA" and r["scope"] == "country" and r["code"] == "NL"]
    assert find(records, "cloud.example.org", "A", "country", "NL")["edges"] == ["ams"]
    v4_only = [DeployedEdge(e.spec, e.ipv4, None) for e in endpoints_for(cfg)]
    assert {r["type"] for r in geodns.policy(cfg, v4_only)} == {"A"}


def test_names_and_health_checks(example):
    cfg, records = example
    assert [h for h, _ in geodns.hostnames(cfg)] == [
        "blog.example.org",
        "cloud.example.org",
        "edge.example.org",
        "photos.example.org",
    ]
    assert "example.org" not in {r["hostname"] for r in records}
    cloud = find(records, "cloud.example.org", "A", "default", "*")
    assert cloud["ttl"] == cfg.dns.ttl == 60
    assert cloud["service"] == "cloud"
    # Every check asks the edge's health agent, which probes the service through that
    # edge's Traefik, tunnel and home: a dead tunnel fails it, the edge's ports do not.
    assert cloud["health_checks"] == [
        {
            "key": "fsn-v4-health-cloud",
            "edge": "fsn",
            "address": "203.0.113.10",
            "protocol": "http",
            "port": 8053,
            "path": "/health/cloud",
            "check": "cloud",
            "url": "http://203.0.113.10:8053/health/cloud",
        },
        {
            "key": "ams-v4-health-cloud",
            "edge": "ams",
            "address": "198.51.100.20",
            "protocol": "http",
            "port": 8053,
            "path": "/health/cloud",
            "check": "cloud",
            "url": "http://198.51.100.20:8053/health/cloud",
        },
    ]
    blog = find(records, "blog.example.org", "AAAA", "continent", "EU")
    assert [(c["key"], c["url"]) for c in blog["health_checks"]] == [
        ("fsn-v6-health-blog", "http://[2001:db8:1::10]:8053/health/blog")
    ]
    # edge.<domain> is for the tcp/udp services: the agent's ``ports`` check covers them all.
    edge = find(records, "edge.example.org", "A", "default", "*")
    assert edge["service"] is None
    assert [c["path"] for c in edge["health_checks"]] == ["/health/ports", "/health/ports"]


def test_the_checks_are_the_agents_checks(example):
    """Every path a rendering asks is a check the agent on that edge serves."""
    cfg, records = example
    for record in records:
        for check in record["health_checks"]:
            edge = next(e for e in cfg.edges if e.name == check["edge"])
            assert check["check"] in edge_dns.agent_config(cfg, edge)["checks"]
            assert check["port"] == edge_dns.agent_config(cfg, edge)["port"]


def test_udp_only_names_are_checked_through_the_tunnel(raw_config):
    cfg = fleet(
        raw_config,
        raw_config["edges"],
        services=[{"name": "game", "mode": "udp", "port": 2456, "target": "192.168.1.30:2456"}],
    )
    records = geodns.policy(cfg, endpoints_for(cfg))
    assert {r["hostname"] for r in records} == {"edge.example.org"}
    assert {c["path"] for r in records for c in r["health_checks"]} == {"/health/ports"}
    assert (
        "ifurlup('http://cgnat-edge-health:8053/health/ports', {'203.0.113.10', '198.51.100.20'}"
        in geodns.powerdns_lua(records, cfg)
    )
    assert set(geodns.route53_health_checks(records)) == {
        "fsn-v4-health-ports",
        "fsn-v6-health-ports",
        "ams-v4-health-ports",
    }
    assert [s["kind"] for s in edge_dns.agent_config(cfg, cfg.edges[0])["checks"]["ports"]] == ["udp"]


def test_policy_is_deterministic_and_json(example):
    cfg, records = example
    again = geodns.policy(cfg, list(reversed(endpoints_for(cfg))))
    assert again == records
    assert json.loads(json.dumps(records)) == records
    keys = [(r["hostname"], r["type"], r["scope"], r["code"]) for r in records]
    assert len(keys) == len(set(keys))
    # 4 names x (A: 1 default + 7 continents + DE + NL; AAAA: 1 + 7 + DE)
    assert len(records) == 4 * (10 + 9)


def test_adding_an_edge_keeps_the_others_where_they_were(raw_config, transatlantic):
    _, before = transatlantic
    cfg = fleet(
        raw_config,
        [
            {"name": "fsn", "provider": "hetzner", "location": "fsn1"},
            {"name": "nyc", "provider": "digitalocean", "location": "nyc1"},
            {"name": "sgp", "provider": "digitalocean", "location": "sgp1"},
        ],
    )
    after = geodns.policy(cfg, endpoints_for(cfg))
    for code in ("EU", "NA", "SA"):
        assert (
            find(after, "blog.example.org", "A", "continent", code)["edges"]
            == find(before, "blog.example.org", "A", "continent", code)["edges"]
        )
    assert find(after, "blog.example.org", "A", "continent", "AS")["edges"] == ["sgp"]
    assert find(after, "blog.example.org", "A", "continent", "OC")["edges"] == ["sgp"]


def test_bad_addresses_are_refused(fleet_config):
    edge = fleet_config.edges[0]
    with pytest.raises(ValueError, match="not an IPv4"):
        geodns.policy(fleet_config, [DeployedEdge(edge, "2001:db8::1")])
    with pytest.raises(ValueError, match="not an IPv6"):
        geodns.policy(fleet_config, [DeployedEdge(edge, "192.0.2.1", "192.0.2.2")])


# -- BIND zone fragment ---------------------------------------------------------

SOA_NS = """$TTL 3600
@   IN SOA ns1.{zone}. hostmaster.{zone}. 2024010101 3600 600 604800 60
@   IN NS  ns1.{zone}.
ns1 IN A   192.0.2.53
"""


def wrapped_zone(cfg, fragment: str) -> str:
    return f"$ORIGIN {cfg.dns.zone}.\n" + SOA_NS.format(zone=cfg.dns.zone) + fragment


@pytest.mark.netns
def test_bind_fragment_loads_in_named_checkzone(example, tmp_path: Path):
    require_tool("named-checkzone")
    cfg, records = example
    zone_file = tmp_path / "zone"
    zone_file.write_text(wrapped_zone(cfg, geodns.bind_fragment(records, cfg)))
    result = subprocess.run(
        ["named-checkzone", "-i", "local", "-k", "fail", "-m", "fail", "-n", "fail", cfg.dns.zone, str(zone_file)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "OK"
    # It must also refuse a broken one, or the check above proves nothing.
    zone_file.write_text(wrapped_zone(cfg, "cloud.example.org. 60 IN A 203.0.113.300\n"))
    assert subprocess.run(["named-checkzone", cfg.dns.zone, str(zone_file)], capture_output=True).returncode != 0


def test_bind_fragment_parses_with_dnspython(example):
    cfg, records = example
    zone = dns.zone.from_text(
        wrapped_zone(cfg, geodns.bind_fragment(records, cfg)), origin=cfg.dns.zone, relativize=False
    )
    cloud_a = zone.find_rdataset("cloud.example.org.", dns.rdatatype.A)
    assert cloud_a.ttl == 60
    assert sorted(r.address for r in cloud_a) == ["198.51.100.20", "203.0.113.10"]
    assert [r.address for r in zone.find_rdataset("photos.example.org.", dns.rdatatype.AAAA)] == ["2001:db8:1::10"]
    assert sorted(r.address for r in zone.find_rdataset("edge.example.org.", dns.rdatatype.A)) == [
        "198.51.100.20",
        "203.0.113.10",
    ]
    names = {str(n) for n in zone.nodes}
    assert names == {
        "example.org.",
        "ns1.example.org.",
        "blog.example.org.",
        "cloud.example.org.",
        "edge.example.org.",
        "photos.example.org.",
    }


# -- PowerDNS rendering (loaded for real in test_powerdns.py) -------------------


def test_powerdns_lines(example):
    cfg, records = example
    text = geodns.powerdns_lua(records, cfg)
    lines = [line for line in text.splitlines() if not line.startswith(";")]
    assert len(lines) == 8  # 4 names x A/AAAA
    options = "{selector='pickclosest', backupSelector='all', timeout=2, minimumFailures=2}"
    assert (
        "cloud.example.org.     60 IN LUA A    \"ifurlup('http://cgnat-edge-health:8053/health/cloud', "
        f"{{'203.0.113.10', '198.51.100.20'}}, {options})\"" in lines
    )
    assert any(
        line.startswith("blog.example.org.")
        and "LUA AAAA \"ifurlup('http://cgnat-edge-health:8053/health/blog', {'2001:db8:1::10'}" in line
        for line in lines
    )
    assert any(
        line.startswith("edge.example.org.")
        and "ifurlup('http://cgnat-edge-health:8053/health/ports', {'203.0.113.10', '198.51.100.20'}" in line
        for line in lines
    )
    assert "ifportup" not in text  # an edge's own port says nothing about its tunnel


def test_health_path_stays_with_the_agent(raw_config):
    """``healthPath`` is fetched by the agent through the tunnel; the zone file never
    carries it, so no path can break out of the LUA strings."""
    raw = copy.deepcopy(raw_config)
    raw["services"][0]["healthPath"] = "/it's(ok)!$&*+,;=:@%22"
    cfg = config_module.parse(raw, stack="dev")
    records = geodns.policy(cfg, endpoints_for(cfg))
    text = geodns.powerdns_lua(records, cfg)
    assert "it's" not in text and "%27" not in text
    for line in text.splitlines():
        if not line.startswith(";"):
            assert line.count('"') == 2, line
    agent = edge_dns.agent_config(cfg, cfg.edges[0])
    assert agent["checks"]["cloud"][0]["path"] == "/it's(ok)!$&*+,;=:@%22"


def test_long_lua_content_is_split_into_strings(raw_config):
    cfg = fleet(
        raw_config, [{"name": f"e{i}", "provider": "digitalocean", "location": "fra1"} for i in range(8)], ha=False
    )
    eps = [
        DeployedEdge(e, f"198.51.100.{i + 1}", f"2001:db8:aaaa:bbbb:cccc:dddd:eeee:{i + 1:x}")
        for i, e in enumerate(cfg.edges)
    ]
    text = geodns.powerdns_lua(geodns.policy(cfg, eps), cfg)
    aaaa = next(line for line in text.splitlines() if line.startswith("blog.") and "LUA AAAA" in line)
    strings = aaaa.split("LUA AAAA ", 1)[1]
    parts = json.loads("[" + strings.replace('" "', '", "') + "]")
    assert len(parts) == 2 and all(len(p) <= 255 for p in parts)
    # PowerDNS joins the strings with whitespace, so the split falls between tokens.
    record = next(
        r
        for r in geodns.policy(cfg, eps)
        if r["hostname"] == "blog.example.org" and r["type"] == "AAAA" and r["scope"] == "default"
    )
    assert " ".join(parts) == geodns.lua_snippet(record)
    assert parts[0].endswith("',") and parts[1].startswith("'2001:db8:aaaa")


# -- Route 53 -------------------------------------------------------------------


@pytest.fixture(scope="module")
def route53():
    try:
        import botocore.session
    except ImportError:
        message = "botocore is missing (a test dependency: pip install -e .[test])"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return botocore.session.get_session().get_service_model("route53")


def validate(model, operation: str, params: dict) -> None:
    """botocore's own validator (types, required members, minimum lengths), plus the
    enums and maximum lengths it leaves to the server, so a wrong continent code fails
    here and not at AWS."""
    from botocore.validate import validate_parameters

    shape = model.operation_model(operation).input_shape
    validate_parameters(params, shape)

    def enums(value, shape, path):
        if shape.type_name == "structure":
            for name, member in shape.members.items():
                if name in value:
                    enums(value[name], member, f"{path}.{name}")
        elif shape.type_name == "list":
            for i, item in enumerate(value):
                enums(item, shape.member, f"{path}[{i}]")
        elif shape.type_name == "string":
            if getattr(shape, "enum", None):
                assert value in shape.enum, f"{path}: {value!r} not in {shape.enum}"
            if "max" in shape.metadata:
                assert len(value) <= shape.metadata["max"], f"{path}: {value!r} longer than {shape.metadata['max']}"

    enums(params, shape, operation)


def test_route53_change_batch_matches_the_api(example, route53):
    cfg, records = example
    batch = geodns.route53_change_batch(records, cfg)
    validate(route53, "ChangeResourceRecordSets", {"HostedZoneId": "Z0000000EXAMPLE", "ChangeBatch": batch})
    json.dumps(batch)
    sets = [c["ResourceRecordSet"] for c in batch["Changes"]]
    assert len(sets) == len(records)
    ids = [(s["Name"], s["Type"], s["SetIdentifier"]) for s in sets]
    assert len(ids) == len(set(ids))
    defaults = [s for s in sets if s["GeoLocation"] == {"CountryCode": "*"}]
    assert len(defaults) == 8  # one per name and type
    eu = next(
        s
        for s in sets
        if s["Name"] == "cloud.example.org." and s["Type"] == "A" and s["GeoLocation"] == {"ContinentCode": "EU"}
    )
    assert eu == {
        "Name": "cloud.example.org.",
        "Type": "A",
        "SetIdentifier": "continent-EU",
        "GeoLocation": {"ContinentCode": "EU"},
        "TTL": 60,
        "ResourceRecords": [{"Value": "203.0.113.10"}],
    }
    assert not any("HealthCheckId" in s for s in sets)


def test_route53_validation_can_fail(example, route53):
    from botocore.exceptions import ParamValidationError

    cfg, records = example
    batch = geodns.route53_change_batch(records, cfg)
    broken = copy.deepcopy(batch)
    del broken["Changes"][0]["ResourceRecordSet"]["Name"]
    with pytest.raises(ParamValidationError):
        validate(route53, "ChangeResourceRecordSets", {"HostedZoneId": "Z1", "ChangeBatch": broken})
    wrong = copy.deepcopy(batch)
    wrong["Changes"][1]["ResourceRecordSet"]["GeoLocation"] = {"ContinentCode": "EUROPE"}
    with pytest.raises(AssertionError, match="longer than 2"):
        validate(route53, "ChangeResourceRecordSets", {"HostedZoneId": "Z1", "ChangeBatch": wrong})
    wrong["Changes"][1]["ResourceRecordSet"].update(GeoLocation={"ContinentCode": "EU"}, Type="LUA")
    with pytest.raises(AssertionError, match="not in"):
        validate(route53, "ChangeResourceRecordSets", {"HostedZoneId": "Z1", "ChangeBatch": wrong})


def test_route53_health_checks_match_the_api_and_attach(example, route53):
    cfg, records = example
    checks = geodns.route53_health_checks(records)
    for params in checks.values():
        validate(route53, "CreateHealthCheck", params)
    assert checks["fsn-v4-health-cloud"]["HealthCheckConfig"] == {
        "Type": "HTTP",
        "IPAddress": "203.0.113.10",
        "Port": 8053,
        "ResourcePath": "/health/cloud",
        "RequestInterval": 10,
        "FailureThreshold": 1,
    }
    assert checks["fsn-v6-health-ports"]["HealthCheckConfig"]["IPAddress"] == "2001:db8:1::10"
    assert len({c["CallerReference"] for c in checks.values()}) == len(checks)
    assert geodns.route53_health_checks(records) == checks  # idempotent references
    # Attach made-up ids as a user would after creating the checks.
    ids = {key: f"00000000-0000-0000-0000-{i:012d}" for i, key in enumerate(checks)}
    batch = geodns.route53_change_batch(records, cfg, ids)
    validate(route53, "ChangeResourceRecordSets", {"HostedZoneId": "Z1", "ChangeBatch": batch})
    sets = [c["ResourceRecordSet"] for c in batch["Changes"]]
    with_check = [s for s in sets if "HealthCheckId" in s]
    assert with_check and all(len(s["ResourceRecords"]) == 1 and s["SetIdentifier"] != "default" for s in with_check)
    eu = next(
        s
        for s in sets
        if s["Name"] == "cloud.example.org." and s["Type"] == "A" and s["SetIdentifier"] == "continent-EU"
    )
    assert eu["HealthCheckId"] == ids["fsn-v4-health-cloud"]
    assert all("HealthCheckId" not in s for s in sets if s["SetIdentifier"] == "default")


def test_outputs_bundle(example):
    cfg, records = example
    out = geodns.outputs(cfg, endpoints_for(cfg))
    assert set(out) == {"records", "bind", "powerdnsLua", "route53ChangeBatch", "route53HealthChecks"}
    assert out["records"] == records
    json.dumps(out)
    for r in records:
        for v in r["values"]:
            ipaddress.ip_address(v)
