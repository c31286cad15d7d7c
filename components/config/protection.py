"""Protection as the stack configures it: the fleet's and each service's countries,
CrowdSec, and sign-in (``forwardAuth``).

Every service on the shared ports 80/443 must agree on its countries: they are
enforced in nftables, which sees addresses and ports, never hostnames.  Sign-in needs
the request, which only ``http`` services show the edge.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import re
import urllib.parse
from typing import Any

from components.config.keys import SECRET_SET
from components.config.parser import Parser
from components.model.countries import COUNTRIES
from components.model.fleet import HomeSpec, Mode, ServiceSpec, effective_geo
from components.model.protection import (
    DEFAULT_AUTH_HEADERS,
    EDGE_LOOPBACK,
    RIR_SOURCES,
    CrowdSec,
    ForwardAuth,
    GeoPolicy,
    ProtectionSpec,
)

MAX_GEO_SOURCE_LEN = 2048
"""Longer URLs are refused by many servers and proxies; no registry's comes close."""


NOT_ISO = {
    "UK": "the United Kingdom's ISO code is GB",
    "EL": "Greece's ISO code is GR",
    "XK": "Kosovo has no ISO code, and the registries list its networks under a neighbouring country's",
}
"""Codes in common use that the registries' files never carry."""


_HEADER_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
PATH_CHAR = r"(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})"
"""One character of a URL path or query as RFC 3986 writes it (a percent-escape counts as one)."""
_AUTH_URL_RE = re.compile(
    rf"(?P<scheme>https?)://(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[0-9.]+))(?::(?P<port>[0-9]{{1,5}}))?"
    rf"(?P<rest>(?:/{PATH_CHAR}*)*(?:\?(?:{PATH_CHAR}|[/?])*)?)"
)
"""A forwardAuth address: scheme, an IP literal, a port, a path and query, nothing else
(no user or password, no space or line break: the address is written into Traefik's file)."""


def _countries(p: Parser, key: str, raw: Any) -> tuple[str, ...]:
    codes: list[str] = []
    for j, code in enumerate(p.items(key, raw, "ISO 3166 country codes")):
        if code is False:
            p.fail(
                f"{key}[{j}]",
                "is false, which YAML makes of an unquoted NO; write Norway as 'NO', in quotes",
            )
            continue
        if not isinstance(code, str):
            what = "is empty" if code is None else f"{code!r} is not a country code"
            p.fail(f"{key}[{j}]", f"{what}; write two letters such as DE, FR or US")
            continue
        text = code.strip().upper()
        if text in COUNTRIES:
            if text not in codes:
                codes.append(text)
            continue
        names = {name.upper(): c for c, name in COUNTRIES.items()}
        close = names.get(text) or next(iter(difflib.get_close_matches(text, list(names), n=1)), None)
        hint = f" (did you mean {close if close in COUNTRIES else names[close]}?)" if close else ""
        if text in NOT_ISO:
            hint = f" ({NOT_ISO[text]})"
        p.fail(
            f"{key}[{j}]",
            f"{code!r} is not an ISO 3166-1 alpha-2 country code{hint}; use two letters such as DE, FR or US "
            "(the registries' EU and AP are regions, not countries)",
        )
    return tuple(sorted(codes))


def _policy(p: Parser, key: str, allow_raw: Any, deny_raw: Any, allow_key: str, deny_key: str) -> GeoPolicy:
    allow = _countries(p, allow_key, allow_raw)
    deny = _countries(p, deny_key, deny_raw)
    if allow and deny:
        p.fail(
            key,
            f"{allow_key.rsplit('.', 1)[-1]} and {deny_key.rsplit('.', 1)[-1]} together are ambiguous (is a country "
            "on neither list let in?); use one of them",
        )
        return GeoPolicy()
    return GeoPolicy(allow, deny)


def _geo_source(p: Parser, i: int, raw: Any) -> str | None:
    """A country-list URL every edge fetches as root and trusts to drop or admit whole
    countries: HTTPS only (over plain http anyone on the path could serve any list with a
    matching .md5), nothing a server never sees (a fragment) or every edge would hold (a
    password), nothing a shell or log line could misread."""
    key, example = f"geoSources[{i}]", RIR_SOURCES[1]
    if not isinstance(raw, str):
        p.fail(key, f"{raw!r} is not a URL; list https:// URLs of RIR statistics files such as {example}")
        return None
    if len(raw) > MAX_GEO_SOURCE_LEN:
        p.fail(key, f"is {len(raw)} characters long; use a URL of at most {MAX_GEO_SOURCE_LEN} characters")
        return None
    if not raw.isascii() or any(ch.isspace() or not ch.isprintable() for ch in raw):
        p.fail(
            key,
            f"{raw!r} contains whitespace, a control or a non-ASCII character; remove it or percent-encode it "
            "(a space in a path is %20)",
        )
        return None
    try:
        parts = urllib.parse.urlsplit(raw)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        p.fail(key, f"{raw!r} is not a URL ({exc}); use one such as {example}")
        return None
    if "@" in parts.netloc:
        shown = urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
        p.fail(
            key,
            f"{shown!r} carries a user name or password, which every edge would hold; the registries' files are "
            "public: use the URL without user:pass@",
        )
        return None
    if parts.scheme == "http":
        fix = urllib.parse.urlunsplit(parts._replace(scheme="https"))
        p.fail(
            key,
            f"{raw!r} is plain http, where anyone on the path can serve any list with a matching .md5; use {fix} "
            "(the registries all serve HTTPS)",
        )
        return None
    if parts.scheme != "https":
        p.fail(key, f"{raw!r} is not an https:// URL; use https://..., e.g. {example}")
        return None
    if not parts.hostname:
        p.fail(key, f"{raw!r} names no host; use https://host/path, e.g. {example}")
        return None
    if "#" in raw:
        p.fail(key, f"{raw!r} has a fragment (#...), which is never sent to the server; remove it")
        return None
    return raw


def parse_fleet(p: Parser) -> ProtectionSpec:
    geo = _policy(
        p, "allowCountries", p.get("allowCountries"), p.get("denyCountries"), "allowCountries", "denyCountries"
    )
    listed = p.get("geoSources") or []
    sources = [url for i, raw in enumerate(listed) if (url := _geo_source(p, i, raw))]
    if not listed and not p.has_problem("geoSources"):
        p.fail("geoSources", f"is empty; leave it out to use the five registries' files ({RIR_SOURCES[0]} ...)")
    mode = p.get("crowdsec")
    if mode not in tuple(CrowdSec):
        p.fail(
            "crowdsec",
            f"{mode!r} is not supported; use off, offline (bans from this edge's own logs and cscli) or online "
            "(also CrowdSec's community blocklist)",
        )
        mode = CrowdSec.OFF
    mode = CrowdSec(mode)
    enroll = p.get("crowdsecEnrollKey")
    if enroll and enroll != SECRET_SET:
        p.fail(
            "crowdsecEnrollKey",
            "is stored in plain text; remove it and set it with "
            "`pulumi config set --secret cgnat-edge:crowdsecEnrollKey <key from app.crowdsec.net>`",
        )
    elif enroll and mode != CrowdSec.ONLINE:
        p.fail(
            "crowdsecEnrollKey",
            f"needs CrowdSec's Central API, which crowdsec {mode} leaves out; set cgnat-edge:crowdsec to online, "
            "or remove the key",
        )
    return ProtectionSpec(geo, tuple(sources), mode, crowdsec_enroll=bool(enroll) and mode == CrowdSec.ONLINE)


def parse_service(
    p: Parser, key: str, item: dict, mode: Mode, home: HomeSpec
) -> tuple[GeoPolicy | None, ForwardAuth | None]:
    """The service's own countries (None: the fleet default applies) and sign-in."""
    geo = None
    if item.get("allowCountries") is not None or item.get("denyCountries") is not None:  # null: left out
        geo = _policy(
            p,
            key,
            item.get("allowCountries"),
            item.get("denyCountries"),
            f"{key}.allowCountries",
            f"{key}.denyCountries",
        )
    raw = item.get("forwardAuth")
    if raw is None:
        return geo, None
    if mode is not Mode.HTTP:
        why = (
            "the edge passes the TLS stream to home unopened, so it never sees a request, a cookie or a redirect "
            "to check"
            if mode is Mode.PASSTHROUGH
            else f"a {mode} service is a raw port with no HTTP requests to check"
        )
        p.fail(
            f"{key}.forwardAuth",
            f"cannot work on a {mode} service: {why}; put the sign-in at home in front of the app (e.g. Authelia or "
            "Pocket ID behind home's own reverse proxy), or make the service mode: http so TLS ends on the edge",
        )
        return geo, None
    return geo, _forward_auth(p, f"{key}.forwardAuth", raw, home)


def _forward_auth(p: Parser, key: str, raw: Any, home: HomeSpec) -> ForwardAuth | None:
    if isinstance(raw, str):
        raw = {"address": raw}
    if not isinstance(raw, dict):
        p.fail(key, "must be a mapping; write it like {address: http://192.168.1.5:9091/api/authz/forward-auth}")
        return None
    for k in sorted(set(raw) - {"address", "authResponseHeaders"}):
        p.fail(f"{key}.{k}", "is not a forwardAuth field; use address and authResponseHeaders")
    address = raw.get("address")
    if address is None:
        p.fail(f"{key}.address", "is required; write it like http://192.168.1.5:9091/api/authz/forward-auth")
        return None
    match = _AUTH_URL_RE.fullmatch(address) if isinstance(address, str) else None
    host, port = None, 0
    if match:
        with contextlib.suppress(ValueError):
            host = ipaddress.ip_address(match["v6"] or match["v4"])
        port = int(match["port"] or (443 if match["scheme"] == "https" else 80))
    if isinstance(address, str) and "@" in address.partition("://")[2].partition("/")[0]:
        p.fail(
            f"{key}.address",
            "has a user or password in it (the part before @), which would be written into every edge's Traefik "
            "file (not shown here); give the address without it and let the identity provider authenticate "
            "Traefik by its address",
        )
        return None
    if host is None or not 1 <= port <= 65535 or (match and match["v6"] and host.version != 6):
        p.fail(
            f"{key}.address",
            f"{address!r} is not an http(s) URL with an IP address, a port from 1 to 65535 and a path of URL "
            "characters (no user or password, spaces or line breaks); write it like "
            "http://192.168.1.5:9091/api/authz/forward-auth (at home) or http://127.0.0.1:9091/... (on the edge)",
        )
        return None
    assert isinstance(address, str)
    if host not in EDGE_LOOPBACK and not any(host in lan for lan in home.lan_prefixes):
        p.fail(
            f"{key}.address",
            f"{host} is neither inside cgnat-edge:homeLanPrefixes ({', '.join(map(str, home.lan_prefixes)) or 'none'}) "
            "nor the edge itself (127.0.0.1); the edges reach only home's LAN, through the tunnel: use the identity "
            "provider's LAN address, or add its prefix to cgnat-edge:homeLanPrefixes",
        )
        return None
    headers = []
    for j, h in enumerate(p.items(f"{key}.authResponseHeaders", raw.get("authResponseHeaders"), "header names")):
        if not isinstance(h, str) or not _HEADER_RE.fullmatch(h):
            p.fail(f"{key}.authResponseHeaders[{j}]", f"{h!r} is not a header name; write it like Remote-User")
            continue
        headers.append(h)
    return ForwardAuth(address, host, port, tuple(headers) or DEFAULT_AUTH_HEADERS)


def check_shared_ports(p: Parser, services: list[ServiceSpec], fleet: ProtectionSpec) -> None:
    """Ports 80/443 carry every passthrough and http service; nftables, where the
    countries are enforced, cannot tell them apart, so they must agree."""
    shared = [(i, s) for i, s in enumerate(services) if s.mode.by_hostname]
    policies = {effective_geo(s, fleet) for _, s in shared}
    if len(policies) > 1:
        names = ", ".join(
            f"{s.name} ({'allow ' + ','.join(g.allow) if g.allow else 'deny ' + ','.join(g.deny) if g.deny else 'all'})"
            for _, s in shared
            for g in [effective_geo(s, fleet)]
        )
        p.fail(
            "services",
            f"passthrough and http services share ports 443 and 80, where nftables sees no hostname, but their "
            f"countries differ: {names}; give them the same allowCountries/denyCountries (or set the fleet's "
            "cgnat-edge:allowCountries/denyCountries), or move one to a tcp service on a port of its own",
        )
