"""``services``: what each exposed service is, where it goes at home, and on which
public ports or hostnames."""

from __future__ import annotations

import collections
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from components.config import middlewares, protection
from components.config.home import SPECIAL_RANGES
from components.config.keys import fix_key
from components.config.parser import Parser, whole_number
from components.model.fleet import HomeSpec, Middlewares, Mode, Protocol, ServiceSpec, Target, TunnelSpec
from components.model.ports import HEALTH_AGENT_PORT

RESERVED_TCP_PORTS = {
    80: "HTTP (redirect and ACME)",
    443: "HTTPS (passthrough and http services)",
    HEALTH_AGENT_PORT: "the edges' health agent (DNS health checks)",
}


def parse(
    p: Parser, items: list[Any] | None, domain: str | None, tunnel: TunnelSpec, home: HomeSpec
) -> list[ServiceSpec]:
    services: list[ServiceSpec] = []
    names: set[str] = set()
    hostnames: dict[str, str] = {}
    ports: dict[tuple[str, int], str] = {}
    reserved = {("tcp", port): what for port, what in RESERVED_TCP_PORTS.items()}
    reserved[("udp", tunnel.listen_port)] = f"WireGuard ({fix_key('wireguardPort')})"
    reserved[("tcp", 22)] = "SSH"
    allowed_fields = {
        Mode.PASSTHROUGH: {"name", "mode", "hostnames", "target", "proxyProtocol", "httpTarget", "healthPath"},
        Mode.HTTP: {"name", "mode", "hostnames", "target", "middlewares", "healthPath"},
        Mode.TCP: {"name", "mode", "port", "target", "proxyProtocol"},
        Mode.UDP: {"name", "mode", "port", "target"},
        Mode.FORWARD: {"name", "mode", "protocol", "port", "target"},
    }
    for fields in allowed_fields.values():  # forwardAuth outside http is refused with its reason
        fields |= {"allowCountries", "denyCountries", "forwardAuth"}
    for i, item in enumerate(items or []):
        key = f"services[{i}]"
        if not isinstance(item, dict):
            p.fail(
                key,
                "must be a mapping with name, mode and target; write it like {name: app, mode: tcp, port: 8443, target: 192.168.1.10:8443}",
            )
            continue
        name = p.unique_name(key, item, names, "service")
        if name is None:
            continue
        mode_text = str(Mode.PASSTHROUGH if item.get("mode") is None else item["mode"])
        if mode_text not in Mode.__members__.values():
            p.fail(
                f"{key}.mode",
                f"{mode_text!r} is not a mode; use passthrough (TLS ends at home), http (TLS ends on the edge), tcp, udp "
                "or forward (kernel DNAT keeping the visitor's address)",
            )
            continue
        mode = Mode(mode_text)
        for k in sorted(set(item) - allowed_fields[mode]):
            p.fail(
                f"{key}.{k}", f"is not a field of a {mode} service; allowed: {', '.join(sorted(allowed_fields[mode]))}"
            )
        target = p.target(f"{key}.target", item.get("target"))
        if target is not None:
            _check_reachable(p, f"{key}.target", target, tunnel, home)
        http_target = None
        if item.get("httpTarget"):
            http_target = p.target(f"{key}.httpTarget", item["httpTarget"])
            if http_target is not None:
                _check_reachable(p, f"{key}.httpTarget", http_target, tunnel, home)
        spec_hosts: list[str] = []
        port, port_end, proto = 443, 0, str(mode.protocol)
        if mode.by_hostname:
            spec_hosts = _hostnames(p, key, item, mode, domain, name, hostnames)
        else:
            public = _public_ports(p, key, item, mode, target, name, collections.ChainMap(ports, reserved))
            if public is None:
                continue
            proto, port, port_end = public
            ports.update({(proto, q): f"service {name!r}" for q in range(port, max(port, port_end) + 1)})
        proxy = p.flag(
            key,
            item,
            "proxyProtocol",
            mode is Mode.PASSTHROUGH,
            "true sends the visitor's address to home in a PROXY header",
        )
        health = _health_path(p, f"{key}.healthPath", item.get("healthPath"))
        chain = (
            middlewares.parse(p, f"{key}.middlewares", item.get("middlewares") or {})
            if mode is Mode.HTTP
            else Middlewares()
        )
        geo, forward_auth = protection.parse_service(p, key, item, mode, home)
        if target is None:
            continue
        services.append(
            ServiceSpec(
                name,
                mode,
                target,
                tuple(spec_hosts),
                port,
                proxy and mode.by_traefik,
                http_target,
                chain,
                health,
                port_end,
                Protocol(proto) if mode is Mode.FORWARD else None,
                geo=geo,
                forward_auth=forward_auth,
            )
        )
    return services


_HEALTH_PATH_RE = re.compile(rf"(/{protection.PATH_CHAR}*)+(\?(?:{protection.PATH_CHAR}|[/?])*)?")
"""An origin-form request target (RFC 9112): a path of RFC 3986 characters and
percent-escapes, then an optional query.  The health agent writes it into its request
line as it is, so a space, a line break or a ``#`` cannot pass."""
MAX_HEALTH_PATH = 1024
"""Well under the 8 kB request line web servers accept; a health check needs a short path."""


def _health_path(p: Parser, key: str, value: Any) -> str | None:
    if value is None:
        return None
    fix = "write the path (and query) a browser sends for the status page, e.g. /status.php or /health?full=1"
    if not isinstance(value, str) or not _HEALTH_PATH_RE.fullmatch(value):
        what = f"is a {type(value).__name__}," if not isinstance(value, str) else f"{value[:80]!r} is"
        p.fail(
            key,
            f"{what} not a URL path starting with / (letters, digits, - . _ ~ ! $ & ' ( ) * + , ; = : @ and "
            f"%XX escapes; no spaces, line breaks or #fragment); {fix}",
        )
        return None
    if value.startswith("//"):
        p.fail(key, f"{value[:80]!r} starts with //, which a client reads as a host name; {fix}")
        return None
    if any(segment in (".", "..") for segment in value.partition("?")[0].split("/")):
        p.fail(
            key,
            f"{value[:80]!r} has a . or .. segment, which servers resolve away (or refuse) before the app sees it; "
            "write the path it resolves to",
        )
        return None
    if len(value) > MAX_HEALTH_PATH:
        p.fail(key, f"has {len(value)} characters, over {MAX_HEALTH_PATH}; {fix}")
        return None
    return value


def _hostnames(
    p: Parser, key: str, item: dict, mode: Mode, domain: str | None, name: str, taken: dict[str, str]
) -> list[str]:
    """The service's hostnames, each claimed in ``taken`` so no two services share one."""
    raw_hosts = item.get("hostnames")
    if isinstance(raw_hosts, str):
        raw_hosts = [raw_hosts]
    if not raw_hosts:
        p.fail(
            f"{key}.hostnames",
            f"is required for a {mode} service; list the names visitors use, e.g. [app.{domain or 'example.org'}]",
        )
    hosts: list[str] = []
    for j, h in enumerate(p.items(f"{key}.hostnames", raw_hosts, "hostnames")):
        host = p.hostname(f"{key}.hostnames[{j}]", h, domain)
        if host is None:
            continue
        if host in taken:
            p.fail(
                f"{key}.hostnames[{j}]",
                f"{host} is already served by service {taken[host]!r}; a hostname can belong to one service",
            )
            continue
        taken[host] = name
        hosts.append(host)
    return hosts


def _public_ports(
    p: Parser, key: str, item: dict, mode: Mode, target: Target | None, name: str, used: Mapping[tuple[str, int], str]
) -> tuple[str, int, int] | None:
    """Protocol, first and last public port of a port-bound service, refused when any
    of them is reserved or already another service's."""
    if item.get("port") is None:
        p.fail(
            f"{key}.port",
            f"is required for a {mode} service; give the public port on the edges, e.g. port: 2222",
        )
        return None
    if mode is Mode.FORWARD:
        span = _forward_span(p, key, item, target)
        if span is None:
            return None
        proto, (port, port_end) = span
    else:
        if isinstance(item.get("port"), str) and "-" in item["port"]:
            p.fail(
                f"{key}.port",
                f"{item['port']!r} is a port range, which only a forward service carries; give one port, or make "
                "the service mode: forward with protocol: tcp or udp",
            )
            return None
        public_port = p.port(f"{key}.port", item.get("port"))
        if public_port is None:
            return None
        proto, port, port_end = str(mode.protocol), public_port, 0
    taken = next(
        ((q, o) for q in range(port, max(port, port_end) + 1) if (o := used.get((proto, q)))),
        None,
    )
    if taken:
        p.fail(f"{key}.port", f"{proto} port {taken[0]} is already used by {taken[1]}; pick another public port")
        return None
    return proto, port, port_end


def _forward_span(p: Parser, key: str, item: dict, target: Target | None) -> tuple[str, tuple[int, int]] | None:
    """Protocol and public port span of a forward service: ``port: 27015`` or
    ``port: 27015-27030``.  A range keeps its ports (the target names the first one), so
    each public port reaches the same port at home."""
    proto = item.get("protocol")
    if proto not in ("tcp", "udp"):
        p.fail(
            f"{key}.protocol",
            ("is required" if proto is None else f"{proto!r} is not a protocol a forward service carries")
            + "; write protocol: tcp or protocol: udp (declare two services for both)",
        )
        return None
    raw = item.get("port")
    match = _FORWARD_PORTS_RE.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if match is None and whole_number(raw) is None:
        p.fail(
            f"{key}.port",
            f"{raw!r} is not a port or a port range; write one port (27015) or the first and last port joined by "
            "a hyphen (27015-27030)",
        )
        return None
    text = str(raw).strip()
    low = p.port(f"{key}.port", match.group(1) if match else raw)
    high = p.port(f"{key}.port", match.group(2)) if match and match.group(2) else low
    if low is None or high is None:
        return None
    if high < low:
        p.fail(f"{key}.port", f"range {text} runs backwards; write the low port first, e.g. {high}-{low}")
        return None
    if high - low + 1 > MAX_FORWARD_RANGE:
        p.fail(
            f"{key}.port",
            f"range {text} holds {high - low + 1} ports, more than {MAX_FORWARD_RANGE}; forward only the ports the "
            "application uses",
        )
        return None
    if target is not None and target.host.version != 4:
        p.fail(
            f"{key}.target",
            f"{target.host} is IPv6; forward services DNAT IPv4 visitors to an IPv4 target at home, use the host's "
            "IPv4 address",
        )
        return None
    if target is not None and high != low and target.port != low:
        p.fail(
            f"{key}.target",
            f"{target} names port {target.port} but the range {low}-{high} keeps its ports; write the target as "
            f"{target.host}:{low}",
        )
        return None
    return proto, (low, 0 if high == low else high)


_FORWARD_PORTS_RE = re.compile(r"([0-9]+)(?:\s*-\s*([0-9]+))?")
MAX_FORWARD_RANGE = 1024
"""The widest forward range: wider ones open more than any one application needs."""


def _check_reachable(p: Parser, key: str, target: Target, tunnel: TunnelSpec, home: HomeSpec) -> None:
    host = target.host
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped:
        p.fail(key, f"{host} is an IPv4-mapped IPv6 address; write {host.ipv4_mapped}:{target.port}")
        return
    special = next((what for net, what in SPECIAL_RANGES if host in net), None)
    if special:
        p.fail(key, f"{host} is {special}; use the address of the host at home, e.g. 192.168.1.10:{target.port}")
        return
    if host.version == 6 and tunnel.ipv6_prefix is None:
        p.fail(
            key,
            f"{host} is IPv6 but {fix_key('tunnelIpv6')} is false, so the tunnels carry no IPv6; use the host's IPv4 "
            f"address or set {fix_key('tunnelIpv6')} to true",
        )
        return
    if any(host in lan for lan in home.lan_prefixes):
        return  # a LAN prefix overlapping the tunnel prefix is reported once, as such
    tunnel_net = tunnel.ipv4_prefix if host.version == 4 else tunnel.ipv6_prefix
    if tunnel_net is not None and host in tunnel_net:
        p.fail(
            key,
            f"{host} is inside the tunnel prefix {tunnel_net}; each edge reaches home at its own tunnel address, "
            "so use the host's LAN address",
        )
        return
    if any(problem.startswith(fix_key("homeLanPrefixes")) for problem in p.problems):
        return  # every target would repeat that problem
    p.fail(
        key,
        f"{target.host} is not in any of {fix_key('homeLanPrefixes')} ({', '.join(map(str, home.lan_prefixes)) or 'none set'}); add the home LAN prefix that holds it so the edges route it through the tunnel",
    )
