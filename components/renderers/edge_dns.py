"""Edge-served DNS (``dnsMode: edges``): every edge is an authoritative nameserver of a
zone delegated to the fleet, and answers with the edges through which a visitor really
gets home.

Why PowerDNS Authoritative with LUA records (Debian's pdns-server + pdns-backend-bind):
its ``ifurlup`` runs health checks inside the server, with ``selector='all'`` (every
healthy address) and ``backupSelector='all'`` (every address when none is healthy), so a
zone file states the whole policy; it reads plain zone files (no database), and the
project already renders and tests PowerDNS LUA records.  gdnsd's DYNA/multifo would do
too, but its monitors see only a TCP port or an HTTP status of the address itself.

Zone ownership: the edges own ``dnsEdgeZone`` (default ``edge.<domain>``), delegated
from its parent with one NS name per edge (``ns-<edge>.<zone>``, glue in the parent).
A hostname outside that zone becomes a CNAME into it (``cloud.example.org CNAME
cloud.edge.example.org``), so the user's zone keeps its mail and other names; the apex
cannot be a CNAME, so the config parser refuses it unless the edges own the whole
domain (``dnsEdgeZone`` = the domain, delegated at the registrar).

Health that sees the whole path: each edge runs a small agent
(``cloud-init/cgnat-edge-health.py``) that checks, every second, each service through
that edge: TLS (SNI, optional ``healthPath``) to its own Traefik, so through Traefik,
the tunnel and home, for passthrough/http services; a TCP connect to the target
through the tunnel for tcp services; for udp services a TCP SYN to home's tunnel
address (any answer, a reset from home's filter or kernel, proves the tunnel carries
packets both ways; resets are not rate-limited like ICMP errors) and a datagram to the
target (an ICMP port unreachable means the service is down; silence is all a generic
UDP probe can get).  Every edge's
PowerDNS asks every edge's agent (``ifurlup``), so all nameservers answer alike; the
agent answers only the fleet's addresses (nftables).  Each edge lists itself first.

With a GeoIP City database (``dnsGeoipDatabase``) the order becomes nearest first: the
geoip backend locates the client (its EDNS Client Subnet when the resolver sends one,
else the resolver itself) and the LUA sorts the edges by great-circle distance from
there to each edge's catalog location, then keeps the healthy ones (``ifurlup`` keeps
the order).  The catalog's coordinates, not a lookup of the edges' own addresses (which
``pickclosest`` does), so the order does not depend on how well the database places
cloud ranges.  A client the database cannot place (``latlon()`` says 0 0) gets the
edge's own order, self first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from components.model import edge_contract
from components.model.deployed import DeployedEdge
from components.model.fleet import EdgeSpec, FleetConfig, Mode, ServiceSpec
from components.renderers import geodns, templates, tunnel

HEALTH_PORT = geodns.HEALTH_PORT
PDNS_TCP_PER_CLIENT = 5
"""PowerDNS's connections over TCP per client address, of 50 in all: one client holding
connections open used to take all 50 and with them every TCP answer.  Resolvers ask
over TCP only after a truncated answer, one query per connection."""
PDNS_CONF_PATH = "/etc/powerdns/pdns.conf"
NAMED_CONF_PATH = "/etc/powerdns/cgnat-edge/named.conf"
AGENT_UNIT_PATH = f"{edge_contract.SYSTEMD_DIR}/{edge_contract.HEALTH_UNIT}"
PACKAGES = ("pdns-server", "pdns-backend-bind", "python3")
GEOIP_PACKAGES = ("pdns-backend-geoip",)
GEOIP_PATH = "/var/lib/cgnat-edge/geoip.mmdb"
GEOIP_ZONES_PATH = "/etc/powerdns/cgnat-edge/geoip-zones.yaml"
"""Where the copy step puts ``dnsGeoipDatabase`` on each edge (not part of the bundle)."""

AGENT_INTERVAL_S = 1
"""The agent re-checks each service every second (plus the check itself)."""
AGENT_TIMEOUT_S = 4
"""Longer than Traefik's dial timeout to home (``traefik.DIAL_TIMEOUT``), so a dead
tunnel shows as Traefik closing the connection, not as the agent giving up first."""
CHECK_INTERVAL_S = 1
"""PowerDNS asks every agent every second (``lua-health-checks-interval``): an answer
costs the agent a dictionary lookup, so the fleet's n*n*names requests a second are cheap."""
CHECK_TIMEOUT_S = 2
MINIMUM_FAILURES = 2
"""Two failed fetches in a row before an edge leaves the answers: one lost packet does
not flap it.  Worst case fault -> exclusion: agent 1 + 4 s, PowerDNS 2 x 1 s + 2 s:
9 s, under the 15 s goal (LUA answers bypass the packet cache)."""
CACHE_TTL_S = 2
"""PowerDNS's packet cache (which LUA answers bypass; it serves the NS, SOA and glue
answers): short, so nothing static lingers after a push."""
PORTS_CHECK = geodns.PORTS_CHECK


def nameserver(cfg: FleetConfig, edge: EdgeSpec) -> str:
    return f"ns-{edge.name}.{cfg.dns.edge_zone}"


def served_name(cfg: FleetConfig, hostname: str) -> str:
    """Where ``hostname`` lives in the edges' zone: itself when inside it, else the
    CNAME target ``<hostname relative to the domain>.<edge zone>``."""
    zone = cfg.dns.edge_zone
    if hostname == zone or hostname.endswith("." + zone):
        return hostname
    relative = hostname[: -len(cfg.domain) - 1]
    return f"{relative}.{zone}"


check_id = geodns.check_id
TUNNEL_CHECK = "_tunnel"
"""The agent's check of the tunnel alone, for the alert daemons; no service name starts
with ``_``, so none can take it."""


def tunnel_check(cfg: FleetConfig) -> str:
    return geodns.named_check(cfg, TUNNEL_CHECK)


def names(cfg: FleetConfig) -> list[tuple[str, str, str]]:
    """(hostname, name in the edge zone, agent check) for every name the edges answer."""
    return [(host, served_name(cfg, host), check_id(cfg, service)) for host, service in geodns.hostnames(cfg)]


# ---------------------------------------------------------------------------
# The health agent
# ---------------------------------------------------------------------------


def _service_checks(cfg: FleetConfig, edge: EdgeSpec, service: ServiceSpec) -> list[dict[str, Any]]:
    home = str(tunnel.addresses(cfg.tunnel, edge).home_v4.ip)
    if service.mode is Mode.PASSTHROUGH:
        return [{"kind": "tls", "host": service.hostnames[0], "path": service.health_path}]
    if service.mode is Mode.HTTP:
        return [{"kind": "tls", "host": service.hostnames[0], "path": service.health_path or "/"}]
    target = {"host": str(service.target.host), "port": service.target.port}
    if service.protocol == "tcp":  # tcp, and forward services over tcp
        return [{"kind": "tcp", **target}]
    return [{"kind": "udp", **target, "home": home}]


def agent_config(cfg: FleetConfig, edge: EdgeSpec) -> dict[str, Any]:
    """What the agent on ``edge`` checks, by check id (``check_id``).  ``public`` in
    dnsMode records, where anyone may ask: the agent then answers up or down alone."""
    by_name = {s.name: _service_checks(cfg, edge, s) for s in cfg.services}
    checks = {check_id(cfg, s): by_name[s.name] for s in cfg.services}
    ports = [c for s in cfg.services if not s.mode.by_hostname for c in by_name[s.name]]
    if ports:
        checks[check_id(cfg, None)] = ports
    if cfg.alerts:
        home = str(tunnel.addresses(cfg.tunnel, edge).home_v4.ip)
        checks[tunnel_check(cfg)] = [{"kind": "tunnel", "home": home}]
    return {
        "edge": edge.name,
        "public": not cfg.dns.edge_served,
        "port": HEALTH_PORT,
        "interval": AGENT_INTERVAL_S,
        "timeout": AGENT_TIMEOUT_S,
        "https": "127.0.0.1:443",
        "checks": dict(sorted(checks.items())),
    }


# ---------------------------------------------------------------------------
# PowerDNS
# ---------------------------------------------------------------------------


def packages(cfg: FleetConfig) -> tuple[str, ...]:
    return PACKAGES + (GEOIP_PACKAGES if cfg.dns.geoip_database else ())


def _geoip_lines(cfg: FleetConfig) -> list[str]:
    """The geoip backend, loaded only for its lookups (``latlon()``): no zones of its
    own (an empty zones file); the client's EDNS Client Subnet is what it locates."""
    if not cfg.dns.geoip_database:
        return []
    return [
        "launch+=geoip",
        f"geoip-database-files=mmdb:{GEOIP_PATH}",
        f"geoip-zones-file={GEOIP_ZONES_PATH}",
        "edns-subnet-processing=yes",
    ]


def geoip_zones() -> str:
    return "# Generated by cgnat-edge: the geoip backend serves no zones, it only locates clients.\ndomains: []\n"


PDNS_WEBSERVER = ("127.0.0.1", 8081)
"""PowerDNS's web server, for its counters alone (api=no)."""


def pdns_conf(cfg: FleetConfig) -> str:
    """The whole pdns.conf: no include-dir, so the package's bind.conf drop-in (and
    anything else in pdns.d) cannot add a second backend or re-enable something."""
    lines = [
        "# Generated by cgnat-edge (dnsMode edges); changes here are overwritten on the next push.",
        "launch=bind",
        f"bind-config={NAMED_CONF_PATH}",
        *_geoip_lines(cfg),
        "local-address=0.0.0.0, ::",
        "local-port=53",
        # Authoritative only: PowerDNS Authoritative has no recursion; no transfers,
        # no API, no version string, no phoning home.  The web server only on loopback,
        # for its counters (/metrics), which the edge's metrics script reads.
        "disable-axfr=yes",
        "allow-axfr-ips=",
        "api=no",
        "webserver=yes",
        f"webserver-address={PDNS_WEBSERVER[0]}",
        f"webserver-port={PDNS_WEBSERVER[1]}",
        f"webserver-allow-from={PDNS_WEBSERVER[0]}/32",
        "webserver-loglevel=none",
        "version-string=anonymous",
        "security-poll-suffix=",
        # One Lua state for every query: a new state per LUA answer (the default, "yes")
        # held one edge to ~1,000 qps; shared, ~15,000 (scripts/bench_dns.py).  LUA
        # answers never enter the packet cache, so this is what bounds the rate.
        "enable-lua-records=shared",
        # Keep the order the zone gives (this edge first); resolvers may still reorder.
        "no-shuffle=yes",
        f"lua-health-checks-interval={CHECK_INTERVAL_S}",
        # A check nobody asked for in an hour stops (a removed name).
        "lua-health-checks-expire-delay=3600",
        f"cache-ttl={CACHE_TTL_S}",
        "negquery-cache-ttl=60",
        "query-cache-ttl=20",
        # The caches' defaults (a million entries each) reserve ~35 MB up front; the
        # zone has a handful of names, so 10,000 entries are plenty.
        "max-packet-cache-entries=10000",
        "max-cache-entries=10000",
        # One thread of each: the shared Lua state serialises LUA answers anyway, and a
        # second distributor only added memory (scripts/bench_dns.py).
        "receiver-threads=1",
        "distributor-threads=1",
        # TCP: one thread per connection, so bounded overall, per client, and in time.
        # A resolver falls back to TCP only for a truncated answer and sends one query
        # per connection; an idle connection closes after 5 s (tcp-idle-timeout's
        # default), and none lasts longer than 10 s, however slowly it trickles.
        "max-tcp-connections=50",
        f"max-tcp-connections-per-client={PDNS_TCP_PER_CLIENT}",
        "max-tcp-connection-duration=10",
        "max-tcp-transactions-per-conn=100",
        "",
    ]
    return "\n".join(lines)


def named_conf(cfg: FleetConfig) -> str:
    return (
        "# Generated by cgnat-edge (dnsMode edges).\n"
        f'zone "{cfg.dns.edge_zone}" {{ type master; file "{edge_contract.PDNS_ZONE}"; }};\n'
    )


def _quoted(values: Sequence[str]) -> str:
    return "{" + ", ".join(f"'{v}'" for v in values) + "}"


def lua_snippet(check: str, addresses: Sequence[str] | str) -> str:
    """Every edge whose agent reports ``check`` healthy, in the order given (self
    first); every edge when none does (the checker is then more likely cut off than
    every edge dead).  ``addresses`` may be a Lua expression (a table built before)."""
    options = (
        f"{{selector='all', backupSelector='all', timeout={CHECK_TIMEOUT_S}, "
        f"interval={CHECK_INTERVAL_S}, minimumFailures={MINIMUM_FAILURES}}}"
    )
    url = f"http://cgnat-edge-health:{HEALTH_PORT}/health/{check}"
    table = addresses if isinstance(addresses, str) else _quoted(addresses)
    return f"ifurlup('{url}', {table}, {options})"


def nearest_first_snippet(check: str, edges: Sequence[tuple[str, float, float]]) -> str:
    """``lua_snippet`` with the addresses sorted by distance from the client (haversine
    term, monotonic in the distance) before the health filter; ties and an unplaceable
    client keep the given order (this edge first)."""
    table = "{" + ", ".join(f"{{'{a}', {lat:.4f}, {lon:.4f}}}" for a, lat, lon in edges) + "}"
    return (
        f";local e = {table} "
        "local la, lo = string.match(latlon(), '^(%S+) (%S+)$') la = tonumber(la) lo = tonumber(lo) "
        "if la and lo and (la ~= 0 or lo ~= 0) then local r = math.pi / 180 "
        "for i, x in ipairs(e) do x[4] = math.sin((x[2] - la) * r / 2) ^ 2 + math.cos(la * r) * math.cos(x[2] * r) "
        "* math.sin((x[3] - lo) * r / 2) ^ 2 x[5] = i end "
        "table.sort(e, function(p, q) if p[4] ~= q[4] then return p[4] < q[4] end return p[5] < q[5] end) end "
        "local a = {} for _, x in ipairs(e) do a[#a + 1] = x[1] end "
        f"return {lua_snippet(check, 'a')}"
    )


def _zone_strings(text: str) -> str:
    """``text`` as zone-file strings of at most ``geodns.LUA_CHUNK`` bytes, split at
    spaces (PowerDNS joins a record's strings as they are, so each keeps its space)."""
    if '"' in text or "\\" in text:
        raise ValueError(f"unexpected quote or backslash in LUA content: {text!r}")
    chunks = [""]
    for word in text.split(" "):
        if chunks[-1] and len(chunks[-1]) + 1 + len(word) > geodns.LUA_CHUNK - 1:
            chunks[-1] += " "
            chunks.append(word)
        else:
            chunks[-1] += (" " if chunks[-1] else "") + word
    return " ".join(f'"{c}"' for c in chunks)


def _ordered(edge: EdgeSpec, fleet: Sequence[DeployedEdge[str]]) -> list[DeployedEdge[str]]:
    """The fleet, this edge first, then the others by index."""
    others = sorted((e for e in fleet if e.name != edge.name), key=lambda e: e.spec.index)
    return [e for e in fleet if e.name == edge.name] + others


def zone(cfg: FleetConfig, edge: EdgeSpec, fleet: Sequence[DeployedEdge[str]]) -> str:
    """The edge zone as ``edge`` serves it: the same records on every edge, each edge's
    LUA address lists starting with itself."""
    origin = cfg.dns.edge_zone
    ordered = _ordered(edge, fleet)
    by_index = sorted(fleet, key=lambda e: e.spec.index)
    body = [f"@ {cfg.dns.ttl} IN NS {nameserver(cfg, e.spec)}." for e in by_index]
    for e in by_index:
        ns = nameserver(cfg, e.spec)
        body.append(f"{ns}. {cfg.dns.ttl} IN A {e.ipv4}")
        if e.ipv6:
            body.append(f"{ns}. {cfg.dns.ttl} IN AAAA {e.ipv6}")
    for _host, name, check in names(cfg):
        for rtype in ("A", "AAAA"):
            located = [(a, e.spec.location.latitude, e.spec.location.longitude) for e in ordered if (a := e.address(rtype))]  # fmt: skip
            addresses = [a for a, _lat, _lon in located]
            if addresses:
                snippet = (
                    nearest_first_snippet(check, located) if cfg.dns.geoip_database else lua_snippet(check, addresses)
                )
                content = _zone_strings(snippet) if cfg.dns.geoip_database else geodns._zone_strings(snippet)
                body.append(f"{name}. {cfg.dns.ttl} IN LUA {rtype} {content}")
    serial = int(hashlib.sha256("\n".join(sorted(body)).encode()).hexdigest()[:7], 16)
    primary = nameserver(cfg, by_index[0].spec) if by_index else f"ns.{origin}"
    head = [
        f"; Generated by cgnat-edge for edge {edge.name} (dnsMode edges); overwritten on the next push.",
        f"$ORIGIN {origin}.",
        f"@ {cfg.dns.ttl} IN SOA {primary}. hostmaster.{origin}. {serial} 3600 600 604800 {cfg.dns.ttl}",
    ]
    return "\n".join(head + body) + "\n"


# ---------------------------------------------------------------------------
# Delegation: what the parent zone must hold
# ---------------------------------------------------------------------------


def delegation(cfg: FleetConfig, fleet: Sequence[DeployedEdge[str]]) -> list[dict[str, Any]]:
    """The parent's records: NS for the edge zone, glue for each nameserver, and a
    CNAME for every hostname outside the edge zone.  ``name`` is fully qualified."""
    zone_name = cfg.dns.edge_zone
    by_index = sorted(fleet, key=lambda e: e.spec.index)
    records: list[dict[str, Any]] = []
    records.append(
        {"name": zone_name, "type": "NS", "ttl": 3600, "values": [nameserver(cfg, e.spec) for e in by_index]}
    )
    for rtype in ("A", "AAAA"):
        for e in by_index:
            if address := e.address(rtype):
                records.append({"name": nameserver(cfg, e.spec), "type": rtype, "ttl": 3600, "values": [address]})
    for host, name, _check in names(cfg):
        if name != host:
            records.append({"name": host, "type": "CNAME", "ttl": 3600, "values": [name]})
    return records


def delegation_text(cfg: FleetConfig, fleet: Sequence[DeployedEdge[str]]) -> str:
    """The delegation as zone-file lines, to paste into the parent zone (or to give the
    registrar: the NS names and their glue addresses) when no ``dnsProvider`` does it."""
    where = "the registrar (nameservers + glue)" if cfg.dns.edge_zone == cfg.domain else f"the zone of {cfg.domain}"
    lines = [
        f"; cgnat-edge {cfg.project}/{cfg.stack}: delegate {cfg.dns.edge_zone} to the edges; set these at {where}."
    ]
    for r in delegation(cfg, fleet):
        dot = "" if r["type"] in ("A", "AAAA") else "."  # names absolute, addresses as they are
        lines += [f"{r['name']}. {r['ttl']} IN {r['type']} {value}{dot}" for value in r["values"]]
    return "\n".join(lines) + "\n"


def outputs(cfg: FleetConfig, fleet: Sequence[DeployedEdge[str]]) -> dict[str, Any]:
    return {
        "zone": cfg.dns.edge_zone,
        "nameservers": {e.name: nameserver(cfg, e.spec) for e in sorted(fleet, key=lambda e: e.spec.index)},
        "delegation": delegation(cfg, fleet),
        "delegationZoneFile": delegation_text(cfg, fleet),
        "dnssec": "off: see README (Edge-served DNS)",
    }


# ---------------------------------------------------------------------------
# Files on the edge
# ---------------------------------------------------------------------------


def node_files(cfg: FleetConfig, edge: EdgeSpec, fleet: Sequence[DeployedEdge[str]]) -> list[tuple[str, str, str]]:
    """(path, content, mode) of every edge-DNS file on ``edge``."""
    return [
        (PDNS_CONF_PATH, pdns_conf(cfg), "0644"),
        (NAMED_CONF_PATH, named_conf(cfg), "0644"),
        *([(GEOIP_ZONES_PATH, geoip_zones(), "0644")] if cfg.dns.geoip_database else []),
        (edge_contract.PDNS_ZONE, zone(cfg, edge, fleet), "0644"),
        (edge_contract.HEALTH_AGENT, templates.text("cgnat-edge-health.py"), "0755"),
        (edge_contract.HEALTH_CONF, json.dumps(agent_config(cfg, edge), indent=1) + "\n", "0644"),
        (AGENT_UNIT_PATH, templates.text(edge_contract.HEALTH_UNIT), "0644"),
    ]


AGENT_FILES = (edge_contract.HEALTH_AGENT, edge_contract.HEALTH_CONF, AGENT_UNIT_PATH)


def agent_files(cfg: FleetConfig, edge: EdgeSpec) -> list[tuple[str, str, str]]:
    """(path, content, mode) of the health agent alone: what dnsMode records needs."""
    return [
        (edge_contract.HEALTH_AGENT, templates.text("cgnat-edge-health.py"), "0755"),
        (edge_contract.HEALTH_CONF, json.dumps(agent_config(cfg, edge), indent=1) + "\n", "0644"),
        (AGENT_UNIT_PATH, templates.text(edge_contract.HEALTH_UNIT), "0644"),
    ]


def fleet_addresses(fleet: Sequence[DeployedEdge[str]]) -> tuple[list[str], list[str]]:
    """The fleet's IPv4 and IPv6 addresses: the only sources the agent answers."""
    v4 = sorted({a for e in fleet for a in (e.ipv4, e.source_ipv4) if a})
    v6 = sorted({e.ipv6 for e in fleet if e.ipv6})
    return v4, v6
