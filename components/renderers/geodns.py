"""Which edge answers for which visitor, and how to tell a DNS host about it.

The edges are interchangeable (each forwards every service to home), so the only
question DNS has to answer is *which* edge a visitor should use: the nearest one that
is up.  This module turns the location catalog into that policy, once, as plain
records (``policy``), and renders the same records for the DNS hosts people actually
use, so the policy can never drift between renderings:

* ``bind_fragment`` - plain round robin over every edge, for any DNS host.  No geo,
  no health checks: the fallback that works everywhere.
* ``powerdns_lua`` - PowerDNS LUA records: ``pickclosest`` over the edges whose
  health check passes, for people who run their own authoritative server.  PowerDNS
  does its own geography (GeoIP of the resolver against GeoIP of each edge address),
  so this rendering uses only the default records; the nearest healthy edge wins.
* ``route53_change_batch`` (+ ``route53_health_checks``) - Route 53 geolocation
  record sets.

Health checks are end to end: each asks the edge's health agent
(``cloud-init/cgnat-edge-health.py``, on every edge in every DNS mode), which probes the
service through that edge's Traefik, its tunnel and home, so an edge whose tunnel is
dead leaves the answers even while its own ports still accept connections.

Geo assignment, kept simple enough to explain in one breath: a visitor from a country
that hosts edges gets those edges; a visitor from elsewhere gets the edge nearest
(great circle) to a representative point of their continent; a visitor nobody can
place gets every edge.  Nothing here talks to a network or to Pulumi: the inputs are
the parsed config and the edges' public addresses, the outputs JSON-able values.

Names: every hostname of a passthrough or http service gets records.  tcp and udp
services have no hostname of their own (they are reached by port, and every edge
opens every port), so they are reachable on any of those names; for them - and so
that a fleet with only port services has a name at all - ``edge.<domain>`` gets
records too.  The domain itself gets records only when a service lists it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from components.model.deployed import DeployedEdge
from components.model.fleet import FleetConfig, ServiceSpec
from components.model.ports import HEALTH_AGENT_PORT

PORT_SERVICES_LABEL = "edge"
"""``<label>.<domain>`` is the name for tcp/udp services (see the module docstring)."""

CONTINENT_POINTS: dict[str, tuple[float, float]] = {
    # Rough centres of where each continent's people live (latitude, longitude);
    # visitors are people, so an empty interior should not pull the choice.
    "AF": (2.0, 20.0),  # central Africa, between Lagos and Nairobi
    "AN": (-90.0, 0.0),  # the pole: every edge is judged by latitude alone
    "AS": (25.0, 95.0),  # between India and China
    "EU": (50.0, 10.0),  # central Germany
    "NA": (38.0, -95.0),  # Kansas, near the US population centre
    "OC": (-30.0, 145.0),  # south-east Australia
    "SA": (-15.0, -55.0),  # central Brazil
}

TIE_KM = 50.0
"""Edges this close to the nearest one count as equally near (same metro area, such
as nyc1 and nyc3), so a continent gets all of them rather than an arbitrary one."""

EARTH_RADIUS_KM = 6371.0

# ---------------------------------------------------------------------------
# Policy
# ---------------------------------------------------------------------------


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle (haversine) distance between two (latitude, longitude) points."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def nearest(point: tuple[float, float], endpoints: Iterable[DeployedEdge[str]]) -> list[DeployedEdge[str]]:
    """The endpoint(s) nearest to ``point``; ties within ``TIE_KM`` all count."""
    ranked = sorted(
        ((distance_km(point, (e.spec.location.latitude, e.spec.location.longitude)), e) for e in endpoints),
        key=lambda pair: pair[0],
    )
    if not ranked:
        return []
    best = ranked[0][0]
    return [e for d, e in ranked if d <= best + TIE_KM]


def hostnames(cfg: FleetConfig) -> list[tuple[str, ServiceSpec | None]]:
    """Every name that gets edge records, with the service whose health it reflects.

    ``None`` marks ``edge.<domain>``, the name for tcp/udp services (unless a
    passthrough/http service already owns that name, in which case that one wins)."""
    names: dict[str, ServiceSpec | None] = {}
    for service in cfg.services:
        if service.mode.by_hostname:
            for host in service.hostnames:
                names[host] = service
    if any(not s.mode.by_hostname for s in cfg.services):
        names.setdefault(f"{PORT_SERVICES_LABEL}.{cfg.domain}", None)
    return sorted(names.items(), key=lambda item: item[0])


def _safe_path(path: str) -> str:
    """Percent-encode quotes and backslashes so the URL can sit inside Lua and zone
    file strings without escaping rules of two languages stacked on each other."""
    return urllib.parse.quote(path, safe="/:?&=%-._~!$()*+,;@")


HEALTH_PORT = HEALTH_AGENT_PORT
PORTS_CHECK = "ports"
"""The agent's check for the tcp/udp services together (the ``edge.<domain>`` name)."""
HEALTH_URL_HOST = "cgnat-edge-health"
"""The host part of the LUA check URL: PowerDNS connects to each listed address, not to
this name, which only becomes the Host header (the agent ignores it)."""


def check_id(cfg: FleetConfig, service: ServiceSpec | None) -> str:
    """The agent's check for a name.  dnsMode edges: the service's name, or ``ports`` for
    ``edge.<domain>`` (only the fleet may ask).  dnsMode records: an opaque id derived
    from it, because the agent is open to the internet there and its URLs sit in
    third-party configurations; opaque, not secret (no service name, no address in
    the URL or the answer, which is only up or down)."""
    return named_check(cfg, service.name if service is not None else PORTS_CHECK)


def named_check(cfg: FleetConfig, name: str) -> str:
    """The agent's check ``name`` as its URL carries it (see ``check_id``)."""
    if cfg.dns.edge_served:
        return name
    return hashlib.sha256(f"cgnat-edge-health\n{cfg.project}\n{cfg.stack}\n{name}".encode()).hexdigest()[:24]


def _health_check(
    hostname: str, service: ServiceSpec | None, cfg: FleetConfig, endpoint: DeployedEdge[str], rtype: str
) -> dict[str, Any]:
    """The end-to-end check of ``hostname`` through ``endpoint``: the edge's health agent,
    which probes the service through that edge's Traefik, tunnel and home, so a dead
    tunnel fails it while the edge's own ports still answer."""
    address = endpoint.address(rtype)
    assert address, f"{endpoint.name} has no {rtype} address"  # policy() lists only edges that do
    check = check_id(cfg, service)
    path = f"/health/{check}"
    host = f"[{address}]" if ":" in address else address
    key = f"{endpoint.name}-{'v4' if rtype == 'A' else 'v6'}-health-{check}"
    return {
        "key": key,
        "edge": endpoint.name,
        "address": address,
        "protocol": "http",
        "port": HEALTH_PORT,
        "path": path,
        "check": check,
        "url": f"http://{host}:{HEALTH_PORT}{_safe_path(path)}",
    }


def _record(
    hostname: str,
    service: ServiceSpec | None,
    rtype: str,
    scope: str,
    code: str,
    chosen: list[DeployedEdge[str]],
    cfg: FleetConfig,
) -> dict[str, Any]:
    chosen = sorted(chosen, key=lambda e: (e.spec.index, e.name))
    return {
        "hostname": hostname,
        "type": rtype,
        "scope": scope,
        "code": code,
        "ttl": cfg.dns.ttl,
        "service": service.name if service else None,
        "edges": [e.name for e in chosen],
        "values": [e.address(rtype) for e in chosen],
        "health_checks": [_health_check(hostname, service, cfg, e, rtype) for e in chosen],
    }


def _normalised(endpoints: Iterable[DeployedEdge[str]]) -> list[DeployedEdge[str]]:
    result = []
    seen: set[str] = set()
    for e in endpoints:
        if e.name in seen:
            raise ValueError(f"edge {e.name!r} is listed twice")
        seen.add(e.name)
        v4 = ipaddress.ip_address(e.ipv4)
        if v4.version != 4:
            raise ValueError(f"edge {e.name}: ipv4 {e.ipv4!r} is not an IPv4 address")
        v6 = ipaddress.ip_address(e.ipv6) if e.ipv6 else None
        if v6 is not None and v6.version != 6:
            raise ValueError(f"edge {e.name}: ipv6 {e.ipv6!r} is not an IPv6 address")
        result.append(DeployedEdge(e.spec, str(v4), str(v6) if v6 else None))
    return sorted(result, key=lambda e: (e.spec.index, e.name))


def policy(cfg: FleetConfig, endpoints: Iterable[DeployedEdge[str]]) -> list[dict[str, Any]]:
    """The GeoDNS policy as records, one per (hostname, type, geo scope).

    Keys of each record:

    ``hostname``  fully qualified, no trailing dot.
    ``type``      ``A`` or ``AAAA`` (AAAA only over edges that have IPv6).
    ``scope``     ``default`` (everyone not matched otherwise: every edge),
                  ``continent`` (nearest edge(s) to ``CONTINENT_POINTS[code]``) or
                  ``country`` (the edges located in that country).
    ``code``      ``*`` for default, a continent code (AF AN AS EU NA OC SA) or an
                  ISO 3166-1 alpha-2 country code.
    ``ttl``       ``cfg.dns.ttl``, the same for every record.
    ``service``   the service whose health the checks probe; ``None`` for
                  ``edge.<domain>``.
    ``edges``, ``values``, ``health_checks``: parallel lists, one entry per edge
                  answering: its name, its address, and its check (``key``, ``edge``,
                  ``address``, ``protocol`` ``tcp``/``https``, ``port``, ``url`` or
                  ``None``) - ``None`` when nothing can be checked (udp-only names).

    Order: hostname, then A before AAAA, then default, continents, countries, each by
    code; edges by their index.  The order only changes when the fleet does.
    """
    eps = _normalised(endpoints)
    records: list[dict[str, Any]] = []
    for hostname, service in hostnames(cfg):
        for rtype in ("A", "AAAA"):
            family = [e for e in eps if e.address(rtype)]
            if not family:
                continue
            records.append(_record(hostname, service, rtype, "default", "*", family, cfg))
            for continent, point in sorted(CONTINENT_POINTS.items()):
                records.append(_record(hostname, service, rtype, "continent", continent, nearest(point, family), cfg))
            for country in sorted({e.spec.location.country for e in family}):
                records.append(
                    _record(
                        hostname,
                        service,
                        rtype,
                        "country",
                        country,
                        [e for e in family if e.spec.location.country == country],
                        cfg,
                    )
                )
    return records


def _default_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if r["scope"] == "default"]


def _fqdn(hostname: str) -> str:
    return hostname.rstrip(".") + "."


# ---------------------------------------------------------------------------
# BIND zone fragment: round robin, no geo
# ---------------------------------------------------------------------------


def bind_fragment(records: Iterable[Mapping[str, Any]], cfg: FleetConfig) -> str:
    """Zone-file lines answering every visitor with every edge.

    Clients try the next address when one does not answer, so plain round robin
    already survives a dead edge, only slower; names are absolute, so the fragment
    can be pasted into the zone of ``cfg.dns.zone`` (or any parent) as is."""
    lines = [
        f"; cgnat-edge {cfg.project}/{cfg.stack}: round-robin records for the edges (zone {cfg.dns.zone}).",
        "; Every name answers with every edge; see the PowerDNS or Route 53 renderings for geo routing.",
    ]
    defaults = _default_records(records)
    width = max((len(_fqdn(r["hostname"])) for r in defaults), default=0)
    for record in defaults:
        for edge, value in zip(record["edges"], record["values"], strict=True):
            lines.append(
                f"{_fqdn(record['hostname']):<{width}} {record['ttl']:>5} IN {record['type']:<4} {value} ; {edge}"
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# PowerDNS LUA records
# ---------------------------------------------------------------------------

LUA_CHUNK = 255
"""A zone-file character string holds at most 255 bytes.  Longer LUA snippets are
split into several strings; PowerDNS joins them with whitespace (measured with 4.7),
so the split may only fall between Lua tokens - after the ", " between list items,
which never occurs inside the quoted addresses or the percent-encoded URL."""


def _lua_list(values: Iterable[str]) -> str:
    return "{" + ", ".join(f"'{v}'" for v in values) + "}"


LUA_CHECK_OPTIONS = "timeout=2, minimumFailures=2"
"""Two failed fetches in a row before an edge leaves the answer (one lost packet does
not flap it); 2 s is ample for an answer that is a lookup in the agent's table.  The
check interval is the server's ``lua-health-checks-interval`` (set it to 1 for the
15 s goal: agent 1 + 4 s, PowerDNS 2 x 1 s + 2 s = 9 s worst case)."""


def lua_snippet(record: Mapping[str, Any]) -> str:
    """The Lua expression of one default record: the closest edge whose health agent
    says the name works through it (edge, tunnel, home).

    ``ifurlup`` fetches the agent's URL from each listed address (the URL's host is
    only the Host header), so one URL serves every edge.  ``pickclosest`` ranks by the
    GeoIP location of the resolver (or of the EDNS client subnet) against that of each
    edge address, so PowerDNS needs the geoip backend with a city-level database for
    it to mean "closest"; without one every edge is equally close and the pick is
    random among the healthy ones.  When every check fails, the checker is more likely
    cut off than every edge down, so ``backupSelector='all'`` answers with all of them."""
    values = _lua_list(record["values"])
    check = record["health_checks"][0]
    url = f"http://{HEALTH_URL_HOST}:{HEALTH_PORT}{_safe_path(check['path'])}"
    options = f"{{selector='pickclosest', backupSelector='all', {LUA_CHECK_OPTIONS}}}"
    return f"ifurlup('{url}', {values}, {options})"


def _zone_strings(text: str) -> str:
    """``text`` as one or more zone-file strings of at most ``LUA_CHUNK`` bytes."""
    if '"' in text or "\\" in text:
        raise ValueError(f"unexpected quote or backslash in LUA content: {text!r}")
    pieces = text.split(", ")
    chunks = [pieces[0]]
    for piece in pieces[1:]:
        if len(chunks[-1]) + 2 + len(piece) < LUA_CHUNK:  # room left for a trailing comma
            chunks[-1] += ", " + piece
        else:
            chunks[-1] += ","
            chunks.append(piece)
    if any(len(c) > LUA_CHUNK for c in chunks):
        raise ValueError(f"LUA content has a token longer than {LUA_CHUNK} bytes (a very long health URL?): {text!r}")
    return " ".join(f'"{c}"' for c in chunks)


def powerdns_lua(records: Iterable[Mapping[str, Any]], cfg: FleetConfig) -> str:
    """Zone-file lines of PowerDNS LUA records, one per hostname and address family.

    The zone needs ``enable-lua-records=yes`` (or the ENABLE-LUA-RECORDS metadata);
    for ``pickclosest`` to mean anything, also the geoip backend (see ``lua_snippet``).
    Health checks run from the DNS server itself every few seconds."""
    lines = [
        f"; cgnat-edge {cfg.project}/{cfg.stack}: PowerDNS LUA records (zone {cfg.dns.zone}); needs enable-lua-records=yes",
        "; and, for pickclosest to pick by distance, the geoip backend with a city database.",
    ]
    defaults = _default_records(records)
    width = max((len(_fqdn(r["hostname"])) for r in defaults), default=0)
    for record in defaults:
        lines.append(
            f"{_fqdn(record['hostname']):<{width}} {record['ttl']:>5} IN LUA {record['type']:<4} {_zone_strings(lua_snippet(record))}"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Route 53 geolocation record sets
# ---------------------------------------------------------------------------


def _geolocation(scope: str, code: str) -> dict[str, str]:
    if scope == "continent":
        return {"ContinentCode": code}
    if scope == "country":
        return {"CountryCode": code}
    return {"CountryCode": "*"}


def route53_change_batch(
    records: Iterable[Mapping[str, Any]], cfg: FleetConfig, health_check_ids: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A ``ChangeBatch`` for ``aws route53 change-resource-record-sets``.

    Route 53 answers a visitor with the most specific matching set - country, then
    continent, then the ``*`` default - and skips a set whose health check fails, so
    a dead edge hands its visitors to the next broader set.  Health checks are
    separate resources this program cannot create; create them from
    ``route53_health_checks`` and pass ``{key: HealthCheckId}`` back in to have them
    attached.  A set holds one check, so only single-edge sets get one; the default
    set (every edge) never does."""
    ids = health_check_ids or {}
    changes = []
    for record in records:
        rrset: dict[str, Any] = {
            "Name": _fqdn(record["hostname"]),
            "Type": record["type"],
            "SetIdentifier": "default" if record["scope"] == "default" else f"{record['scope']}-{record['code']}",
            "GeoLocation": _geolocation(record["scope"], record["code"]),
            "TTL": record["ttl"],
            "ResourceRecords": [{"Value": v} for v in record["values"]],
        }
        checks = record["health_checks"]
        if record["scope"] != "default" and len(checks) == 1 and checks[0] and checks[0]["key"] in ids:
            rrset["HealthCheckId"] = ids[checks[0]["key"]]
        changes.append({"Action": "UPSERT", "ResourceRecordSet": rrset})
    return {"Comment": f"cgnat-edge {cfg.project}/{cfg.stack}: geolocation records for the edges", "Changes": changes}


ROUTE53_INTERVAL_S = 10
"""Route 53's fast interval, its minimum (30 s is the standard one)."""
ROUTE53_FAILURES = 1
"""One failed request per checker: Route 53 calls an endpoint unhealthy only when
fewer than 18 % of its ~15 checkers (several regions) see it healthy, so a packet one
checker loses does not flap it, and the worst case stays near the 15 s goal: agent
1 + 4 s, then one 10 s interval (plus Route 53's own propagation, which it does not
publish)."""


def route53_health_checks(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``CreateHealthCheck`` inputs, by health check key, for every check the records use.

    ``CallerReference`` is derived from the check, so re-running a creation is
    idempotent instead of producing duplicates."""
    result: dict[str, dict[str, Any]] = {}
    for record in records:
        for check in record["health_checks"]:
            if not check or check["key"] in result:
                continue
            config: dict[str, Any] = {
                "Type": "HTTP",
                "IPAddress": check["address"],
                "Port": check["port"],
                "ResourcePath": check["path"],
                "RequestInterval": ROUTE53_INTERVAL_S,
                "FailureThreshold": ROUTE53_FAILURES,
            }
            digest = hashlib.sha256(f"{check['key']}|{check['address']}".encode()).hexdigest()[:20]
            result[check["key"]] = {"CallerReference": f"cgnat-edge-{digest}", "HealthCheckConfig": config}
    return dict(sorted(result.items()))


# ---------------------------------------------------------------------------


def outputs(cfg: FleetConfig, endpoints: Iterable[DeployedEdge[str]]) -> dict[str, Any]:
    """Everything a stack exports about DNS: the records and each rendering."""
    records = policy(cfg, endpoints)
    return {
        "records": records,
        "bind": bind_fragment(records, cfg),
        "powerdnsLua": powerdns_lua(records, cfg),
        "route53ChangeBatch": route53_change_batch(records, cfg),
        "route53HealthChecks": route53_health_checks(records),
    }
