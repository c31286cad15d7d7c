"""The stack configuration, parsed and validated in one place.

Everything the program builds is derived from the ``FleetConfig`` returned here.  The
parser sees plain values (what ``pulumi config`` stores), collects every problem it
finds and raises one ``ConfigError`` naming each key and its fix, so a bad stack file
fails before a single resource is registered.  Components receive the typed objects,
never ``pulumi.Config``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import difflib
import functools
import hashlib
import ipaddress
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from components import providers
from components.model import catalog, geoip, protection, road_warriors
from components.model.ports import HEALTH_AGENT_PORT
from components.model.protection import ForwardAuth, GeoPolicy, ProtectionSpec
from components.providers.base import Provider, firewall_rules

NAMESPACE = "cgnat-edge"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HOME_ROLES = ("router", "host")
ACME_CHALLENGES = ("http", "tls")


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class Mode(StrEnum):
    """How a service crosses the edge."""

    PASSTHROUGH = "passthrough"
    """TLS ends at home; Traefik routes by SNI on the shared port 443."""
    HTTP = "http"
    """TLS ends on the edge (ACME); Traefik routes by Host on the shared ports."""
    TCP = "tcp"
    """A public TCP port of its own, forwarded as it is."""
    UDP = "udp"
    """A public UDP port of its own, forwarded as it is."""
    FORWARD = "forward"
    """A public tcp or udp port (or range) the edge's kernel DNATs to home, keeping the
    visitor's source address; Traefik never sees it (components/renderers/forwarding.py)."""

    @property
    def by_traefik(self) -> bool:
        return self is not Mode.FORWARD

    @property
    def by_hostname(self) -> bool:
        """Routed by name on the shared ports 443/80, rather than by a port of its own."""
        return self in (Mode.PASSTHROUGH, Mode.HTTP)

    @property
    def protocol(self) -> Protocol:
        return Protocol.UDP if self is Mode.UDP else Protocol.TCP


CGNAT_RANGE = ipaddress.IPv4Network("100.64.0.0/10")
RESERVED_TCP_PORTS = {
    80: "HTTP (redirect and ACME)",
    443: "HTTPS (passthrough and http services)",
    HEALTH_AGENT_PORT: "the edges' health agent (DNS health checks)",
}

_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,22}[a-z0-9])?$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_WG_KEY_RE = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
)
MIN_RSA_BITS = 1024
"""sshd refuses shorter RSA keys (RequiredRSASize, OpenSSH 9.1 and later)."""

# Addresses that mean something else on every host: routed into a tunnel or used as a
# target they would point an edge at itself (127.0.0.1:22 is the edge's own sshd,
# published past sshAllowedCidrs) or at nothing.
_SPECIAL_RANGES = tuple(
    (ipaddress.ip_network(net), what)
    for net, what in (
        ("0.0.0.0/8", "'this network' (unspecified), never a host"),
        ("127.0.0.0/8", "loopback: on an edge it is the edge itself, its own sshd included"),
        ("169.254.0.0/16", "link-local: it never leaves the wire it is on"),
        ("224.0.0.0/4", "multicast, not a host"),
        ("240.0.0.0/4", "reserved address space, not a host"),
        ("::/128", "the unspecified address, never a host"),
        ("::1/128", "loopback: on an edge it is the edge itself, its own sshd included"),
        ("::ffff:0:0/96", "IPv4-mapped IPv6, which names IPv4 hosts"),
        ("fe80::/10", "link-local: it never leaves the wire it is on"),
        ("ff00::/8", "multicast, not a host"),
    )
)
_HTPASSWD_RE = re.compile(r"^[^:\s]+:\$(2[aby]|apr1|5|6)\$\S+$")


class ConfigError(Exception):
    """Raised with every problem found; each line names the key and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"cgnat-edge: the stack configuration has {len(problems)} problem(s); nothing was created:\n{lines}"
        )


# ---------------------------------------------------------------------------
# Typed configuration
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeSpec:
    name: str
    provider: str
    location: catalog.Location
    server_type: catalog.ServerType
    image: str
    index: int
    """Position in the tunnel prefix; fixes this edge's tunnel addresses."""
    options: Any = None
    """The provider's own edge fields as its ``parse_edge`` returned them."""

    @property
    def arch(self) -> str:
        return self.server_type.arch


@dataclass(frozen=True)
class Target:
    host: IPAddress
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.host.version == 6 else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RateLimit:
    average: int
    burst: int


@dataclass(frozen=True)
class Middlewares:
    rate_limit: RateLimit | None = None
    ip_allow_list: tuple[IPNetwork, ...] = ()
    ip_deny_list: tuple[IPNetwork, ...] = ()
    basic_auth: tuple[str, ...] = ()
    security_headers: bool = False


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    mode: Mode
    target: Target
    hostnames: tuple[str, ...] = ()
    port: int = 443
    """Public port on every edge."""
    proxy_protocol: bool = False
    http_target: Target | None = None
    """passthrough: where port-80 ACME HTTP-01 challenges for these hostnames go."""
    middlewares: Middlewares = field(default_factory=Middlewares)
    health_path: str | None = None
    port_end: int = 0
    """forward: the last public port of a range (0: the one port ``port``)."""
    forward_protocol: Protocol | None = None
    """forward: the one protocol the range carries."""
    geo: GeoPolicy | None = None
    """The service's own countries; None: the fleet default (``FleetConfig.protection.geo``)."""
    forward_auth: ForwardAuth | None = None

    @property
    def protocol(self) -> str:
        return self.forward_protocol or self.mode.protocol

    @property
    def ports(self) -> range:
        """Every public port of the service (one, or a forward range)."""
        return range(self.port, max(self.port, self.port_end) + 1)


@dataclass(frozen=True)
class TunnelSpec:
    ipv4_prefix: ipaddress.IPv4Network
    ipv6_prefix: ipaddress.IPv6Network | None
    listen_port: int
    mtu: int
    keepalive: int


@dataclass(frozen=True)
class HomeSpec:
    public_key: str | None
    lan_prefixes: tuple[IPNetwork, ...]
    role: str


@dataclass(frozen=True)
class SshSpec:
    public_keys: tuple[str, ...]
    allowed_cidrs: tuple[IPNetwork, ...]
    user: str
    host_key_rotation: int = 0


DNS_MODES = ("records", "edges")
"""records: the edges' addresses as plain records (a rendering, or created at dnsProvider);
edges: the edges are the authoritative, health-checking nameservers of ``dnsEdgeZone``."""


@dataclass(frozen=True)
class DnsSpec:
    provider: str
    zone: str
    ttl: int
    mode: str = "records"
    edge_zone: str = ""
    """mode edges: the zone the edges serve (delegated to them), e.g. edge.example.org."""
    geoip_database: str = ""
    """mode edges: absolute path of a City MMDB on this machine (copied to each edge); empty = none."""

    @property
    def edge_served(self) -> bool:
        return self.mode == "edges"


@dataclass(frozen=True)
class AcmeSpec:
    email: str | None
    challenge: str
    ca_server: str


@dataclass(frozen=True)
class FleetConfig:
    project: str
    stack: str
    domain: str
    edges: tuple[EdgeSpec, ...]
    services: tuple[ServiceSpec, ...]
    tunnel: TunnelSpec
    home: HomeSpec
    ssh: SshSpec
    dns: DnsSpec
    acme: AcmeSpec
    ha: bool
    warnings: tuple[str, ...] = ()
    """Choices the parser made that the user did not write (shown by ``pulumi preview``)."""
    protection: ProtectionSpec = field(default_factory=ProtectionSpec)
    road_warriors: road_warriors.RoadWarriorsSpec | None = None

    @property
    def providers(self) -> list[str]:
        return sorted({e.provider for e in self.edges})

    def public_ports(self, protocol: str) -> list[int]:
        """Every port the edges open to the world for ``protocol``, besides SSH."""
        ports: set[int] = set()
        if protocol == "udp":
            ports.add(self.tunnel.listen_port)
        else:
            if any(s.mode.by_hostname for s in self.services):
                ports.update((80, 443))
        ports.update(p for s in self.services if s.protocol == protocol and not s.mode.by_hostname for p in s.ports)
        if self.dns.edge_served:
            ports.add(53)  # the edges are the zone's nameservers (the agent's 8053 is fleet-only)
        return sorted(ports)


# ---------------------------------------------------------------------------
# Declared keys: name -> (kind, default, description).  Pulumi.yaml declares the
# scalar ones with the same defaults (a test keeps the two in step).
# ---------------------------------------------------------------------------

REQUIRED = object()
_DNS_NAMES = ["none", *(name for name, provider in providers.REGISTRY.items() if provider.manages_dns)]
_DNS_CHOICES = f"{', '.join(_DNS_NAMES[:-1])} or {_DNS_NAMES[-1]}"

KEYS: dict[str, tuple[str, Any, str]] = {
    "domain": ("string", REQUIRED, "DNS domain the exposed hostnames live under."),
    "edges": ("object-array", REQUIRED, "Edge VPSes: name, provider, location, optional serverType, image, index."),
    "services": ("object-array", [], "Exposed services: name, mode, hostnames or port, target, options."),
    "ha": ("boolean", True, "Require edges on at least two providers."),
    "homePublicKey": ("string", "", "WireGuard public key of the home peer; empty = generate it as a Pulumi secret."),
    "homeLanPrefixes": ("array", [], "Home LAN prefixes that services may target."),
    "homeRole": (
        "string",
        "router",
        "router: the home peer is the LAN's gateway; host: a LAN box, masquerade into the LAN.",
    ),
    "tunnelIpv4Prefix": ("string", "10.254.0.0/24", "IPv4 prefix for the tunnels; split into one /30 per edge."),
    "tunnelIpv6": ("boolean", True, "Also address the tunnels with IPv6 ULA."),
    "tunnelIpv6Prefix": ("string", "", "IPv6 ULA /64 for the tunnels; empty = derived from project and stack."),
    "wireguardPort": ("integer", 51820, "UDP port the edges listen on for WireGuard."),
    "tunnelMtu": ("integer", 1380, "MTU of the tunnel interfaces; safe over PPPoE and DS-Lite."),
    "keepaliveSeconds": ("integer", 25, "PersistentKeepalive from home, keeps the CGNAT mapping open."),
    "sshPublicKeys": ("array", REQUIRED, "SSH public keys allowed to log in to the edges."),
    "sshAllowedCidrs": ("array", ["0.0.0.0/0", "::/0"], "Source prefixes allowed to reach SSH on the edges."),
    "sshHostKeyRotation": (
        "integer",
        0,
        "Bump to give every edge a new SSH host key; the push that installs it trusts the old one.",
    ),
    "sshUser": ("string", "root", "User pulumi-command logs in as to push config and check readiness."),
    "sshPrivateKey": ("secret", "", "Private key for that login (secret); empty = use the local ssh-agent."),
    "dnsProvider": ("string", "none", f"{_DNS_CHOICES}: create the DNS records there."),
    "dnsZone": ("string", "", "Zone for managed records; empty = the domain."),
    "dnsTtl": ("integer", 60, "TTL of the edge records, short so a dead edge drops out fast."),
    "dnsMode": (
        "string",
        "records",
        "records: plain records for the edges; edges: the edges serve health-checked DNS for dnsEdgeZone.",
    ),
    "dnsEdgeZone": (
        "string",
        "",
        "dnsMode edges: the zone delegated to the edges; empty = edge.<domain>. The domain itself hands all of it over.",
    ),
    "dnsGeoipDatabase": (
        "string",
        "",
        "dnsMode edges: a City MMDB (DB-IP City Lite, GeoLite2 City); answers nearest edge first (EDNS Client Subnet). "
        "Relative to the stack file's folder.",
    ),
    "roadWarriors": (
        "object-array",
        [],
        "Devices that reach the home LAN through any edge: name, optional publicKey, allowedPrefixes, internet.",
    ),
    "roadWarriorPool": ("string", road_warriors.DEFAULT_POOL, "IPv4 prefix the road warriors' addresses come from."),
    "roadWarriorDns": ("string", "", "DNS server the road-warrior configs push; empty = none."),
    "acmeEmail": ("string", "", "Contact e-mail for Let's Encrypt; required when an http service exists."),
    "acmeChallenge": ("string", "tls", "tls (TLS-ALPN-01) or http (HTTP-01) for certificates of http services."),
    "acmeCaServer": (
        "string",
        "https://acme-v02.api.letsencrypt.org/directory",
        "ACME directory; use the staging one to test.",
    ),
    "allowCountries": ("array", [], "Fleet default: only visitors from these ISO 3166 countries reach the services."),
    "denyCountries": ("array", [], "Fleet default: visitors from these ISO 3166 countries are dropped."),
    "geoSources": (
        "array",
        list(protection.RIR_SOURCES),
        "Country prefix lists: RIR delegated-extended statistics files, each with an .md5 beside it.",
    ),
    "crowdsec": ("string", "off", "off, offline (bans from the edge's own logs) or online (plus the community list)."),
    "crowdsecEnrollKey": (
        "secret",
        "",
        "CrowdSec console enrolment key (secret; needs crowdsec online): each edge enrols once, by name.",
    ),
}

SECRET_SET = "<secret>"
"""What the typed config holds for a secret key that is set: that it is set, never its
value, which the program reads on its own as a Pulumi secret."""


def is_secret_key(key: str) -> bool:
    """Keys the typed config takes only as set or not (``SECRET_SET``)."""
    return key in KEYS and KEYS[key][0] == "secret"


def _fix_key(key: str) -> str:
    return f"{NAMESPACE}:{key}"


def _parse_json_if_needed(value: Any) -> Any:
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            try:
                return json.loads(stripped)
            except ValueError:
                return value
    return value


class _Parser:
    def __init__(self, raw: Mapping[str, Any]):
        self.raw = {k: _parse_json_if_needed(v) for k, v in raw.items()}
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def fail(self, key: str, message: str) -> None:
        problem = f"{_fix_key(key)}: {message}"
        if problem not in self.problems:  # a key read twice reports its problem once
            self.problems.append(problem)

    def has_problem(self, key: str) -> bool:
        return any(p.startswith(f"{_fix_key(key)}:") for p in self.problems)

    def items(self, key: str, value: Any, what: str) -> list[Any]:
        """A list inside a structured value (hostnames, ipAllowList ...); anything else
        is reported once instead of being iterated character by character."""
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(
                key, f"must be a list of {what}, got {type(value).__name__}; write it as [a, b] or one item per line"
            )
            return []
        return value

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{_fix_key(key)}: {message}")

    def get(self, key: str) -> Any:
        kind, default, _ = KEYS[key]
        value = self.raw.get(key)
        if value is None or value == "":
            if default is REQUIRED:
                self.fail(
                    key,
                    f"is required; set it with `pulumi config set {'--path ' if kind == 'object-array' else ''}{_fix_key(key)} ...` or in Pulumi.<stack>.yaml ({KEYS[key][2]})",
                )
                return None
            return default
        return self.coerce(key, kind, value, default)

    def coerce(self, key: str, kind: str, value: Any, default: Any) -> Any:
        """``value`` as ``kind``; on a problem the default (None for a required key)."""
        fallback = None if default is REQUIRED else default
        if kind == "integer":
            try:
                if isinstance(value, (bool, float)):
                    raise ValueError  # the CLI hands 1380.5 over as a string int() refuses too
                return int(value)
            except (TypeError, ValueError):
                self.fail(key, f"must be a whole number, got {value!r}; write digits only, e.g. {default}")
                return fallback
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "false"):
                return str(value).lower() == "true"
            self.fail(key, f"must be true or false, got {value!r}; write true or false ({KEYS[key][2]})")
            return fallback
        if kind in ("array", "object-array"):
            if not isinstance(value, list):
                self.fail(
                    key, f"must be a list, got {type(value).__name__}; write it as a YAML list under {_fix_key(key)}"
                )
                return fallback
            return value
        if kind in ("string", "secret"):
            if not isinstance(value, str):
                self.fail(key, f"must be a string, got {type(value).__name__}; write one value, in quotes if need be")
                return fallback
            return value.strip()
        raise AssertionError(kind)

    # -- small value parsers --------------------------------------------------

    def unique_name(self, key: str, item: dict, seen: set[str], what: str) -> str | None:
        name = str(item.get("name", ""))
        if not _NAME_RE.match(name):
            self.fail(
                f"{key}.name",
                f"{name!r} is not a valid {what} name; use 1-24 lowercase letters, digits or hyphens, starting with a letter",
            )
            return None
        if name in seen:
            self.fail(f"{key}.name", f"{what} name {name!r} is used twice; every {what} needs its own name")
            return None
        seen.add(name)
        return name

    def network(self, key: str, text: Any) -> IPNetwork | None:
        try:
            return ipaddress.ip_network(str(text), strict=True)
        except ValueError as exc:
            fix = "; write it as address/length, e.g. 192.168.1.0/24"
            with contextlib.suppress(ValueError):
                fix = f" ({exc}); did you mean {ipaddress.ip_network(str(text), strict=False)}?"
            self.fail(key, f"{text!r} is not a valid CIDR prefix{fix}")
            return None

    def port(self, key: str, value: Any) -> int | None:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, str))
            or not str(value).isdigit()
            or not 1 <= int(value) <= 65535
        ):
            self.fail(key, f"{value!r} is not a port; use a number from 1 to 65535")
            return None
        return int(value)

    def target(self, key: str, value: Any) -> Target | None:
        if value is None or value == "":
            self.fail(key, "is required; give the address:port at home it forwards to, like 192.168.1.10:443")
            return None
        text = str(value)
        match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([0-9.]+):(\d+)", text)
        if not match:
            self.fail(
                key, f"{value!r} is not an address:port at home; write it like 192.168.1.10:443 or [fd00::10]:443"
            )
            return None
        host_text, port_text = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        try:
            host = ipaddress.ip_address(host_text)
        except ValueError:
            self.fail(key, f"{host_text!r} is not an IP address; targets are addresses reachable through the tunnel")
            return None
        port = self.port(key, port_text)
        return Target(host, port) if port else None

    def hostname(self, key: str, value: Any, domain: str | None) -> str | None:
        name = str(value).strip().rstrip(".").lower()
        labels = name.split(".")
        if (
            len(name) > 253
            or len(labels) < 2
            or not all(_LABEL_RE.match(label) for label in labels)
            or labels[-1].isdigit()
        ):
            self.fail(
                key,
                f"{value!r} is not a hostname; use a fully qualified name like app.example.org (letters, digits, hyphens)",
            )
            return None
        if domain and not (name == domain or name.endswith("." + domain)):
            self.fail(
                key, f"{name} is outside the domain {domain}; use a name under {domain} or change {_fix_key('domain')}"
            )
            return None
        return name


def parse(
    raw: Mapping[str, Any], *, project: str = NAMESPACE, stack: str = "dev", base_dir: Path | None = None
) -> FleetConfig:
    """Validate ``raw`` (key without namespace -> value) into a ``FleetConfig``.
    ``base_dir``: where relative paths (``dnsGeoipDatabase``) start; the stack file's
    folder (default: the working directory, where Pulumi runs the program)."""
    p = _Parser(raw)

    for key in raw:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            p.fail(
                key,
                "is not a known key"
                + (f"; did you mean {_fix_key(close[0])}?" if close else f"; known keys are {', '.join(KEYS)}"),
            )

    domain = p.hostname("domain", p.get("domain"), None) if p.get("domain") else None

    edge_items = p.get("edges")
    edges = _parse_edges(p, edge_items)
    ha = p.get("ha")
    _check_ha(p, ha, edges, edge_items)
    tunnel = _parse_tunnel(p, project, stack, len(edges))
    _check_indexes_fit(p, edges, edge_items, tunnel)
    home = _parse_home(p)
    _check_tunnel_outside_lan(p, tunnel, home)
    ssh = _parse_ssh(p)
    acme = AcmeSpec(email=p.get("acmeEmail") or None, challenge=p.get("acmeChallenge"), ca_server=p.get("acmeCaServer"))
    if acme.challenge not in ACME_CHALLENGES:
        p.fail("acmeChallenge", f"{acme.challenge!r} is not supported; use one of {', '.join(ACME_CHALLENGES)}")
    _check_acme_directory(p, acme.ca_server)
    services = _parse_services(p, p.get("services"), domain, tunnel, home)
    protect = protection.parse_fleet(p)
    protection.check_shared_ports(p, services, protect)
    warriors = road_warriors.parse(
        p, p.get("roadWarriors"), p.get("roadWarriorPool"), p.get("roadWarriorDns"), home.lan_prefixes, tunnel
    )
    if home.role == "host" and any(s.mode is Mode.FORWARD for s in services):
        p.warn(
            "homeRole",
            "is host: forwarded connections to other LAN hosts are masqueraded by the WireGuard box, so only a "
            "target on the box itself sees the visitor's address",
        )

    if any(s.mode is Mode.HTTP for s in services) and not acme.email:
        p.fail(
            "acmeEmail",
            "is required because an http service terminates TLS on the edges; set an address Let's Encrypt may write to",
        )
    if acme.email and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", acme.email):
        p.fail(
            "acmeEmail",
            f"{acme.email!r} is not an e-mail address; give one Let's Encrypt can write to, e.g. admin@example.org",
        )

    dns_provider = p.get("dnsProvider")
    if dns_provider not in dns_providers():
        p.fail("dnsProvider", f"{dns_provider!r} is not supported; use one of {', '.join(dns_providers())}")
    zone = p.get("dnsZone") or domain or ""
    if p.get("dnsZone") and domain:
        zone = p.hostname("dnsZone", zone, None) or ""
        if zone and not (domain == zone or domain.endswith("." + zone)):
            p.fail("dnsZone", f"{zone} does not contain the domain {domain}; use the zone {domain} is delegated in")
    ttl = p.get("dnsTtl")
    if not 30 <= ttl <= 86400:
        p.fail(
            "dnsTtl", f"{ttl} is out of range; use 30 to 86400 seconds (short, e.g. 60, so a dead edge drops out fast)"
        )

    mode, edge_zone = _parse_dns_mode(p, domain, zone, dns_provider, services)
    geoip_database = geoip.parse(p, mode, base_dir or Path.cwd())

    if p.problems:
        raise ConfigError(p.problems)
    assert domain is not None
    cfg = FleetConfig(
        project=project,
        stack=stack,
        domain=domain,
        edges=tuple(edges),
        services=tuple(services),
        tunnel=tunnel,
        home=home,
        ssh=ssh,
        dns=DnsSpec(dns_provider, zone, ttl, mode, edge_zone, geoip_database),
        acme=acme,
        ha=ha,
        warnings=tuple(p.warnings),
        protection=protect,
        road_warriors=warriors,
    )
    _check_fleet(p, cfg)
    if p.problems:
        raise ConfigError(p.problems)
    return cfg


def _parse_edges(p: _Parser, items: list[Any] | None) -> list[EdgeSpec]:
    if items is None:
        return []
    if not items:
        p.fail("edges", f"is empty; declare at least one edge, e.g. {_example_edge()}")
    edges: list[EdgeSpec] = []
    seen_names: set[str] = set()
    seen_indexes: dict[int, str] = {}
    for i, item in enumerate(items):
        key = f"edges[{i}]"
        if not isinstance(item, dict):
            p.fail(
                key,
                f"must be a mapping with name, provider and location; write it like {_example_edge()}",
            )
            continue
        own = getattr(providers.REGISTRY.get(str(item.get("provider", ""))), "edge_fields", ())
        known = ("name", "provider", "location", "serverType", "image", "index", *own)
        for k in sorted(set(item) - set(known)):
            p.fail(f"{key}.{k}", f"is not a known edge field; use {', '.join(known)}")
        name = p.unique_name(key, item, seen_names, "edge")
        if name is None:
            continue
        provider_name = str(item.get("provider", ""))
        provider = providers.REGISTRY.get(provider_name)
        if provider is None:
            p.fail(
                f"{key}.provider",
                f"{provider_name!r} is not a supported provider; use one of {', '.join(providers.REGISTRY)}",
            )
            continue
        code = str(item.get("location", ""))
        location = provider.location(code)
        if location is None:
            p.fail(
                f"{key}.location",
                f"{code!r} is not a {provider.label} location{provider.locations_note}; use one of {', '.join(loc.code for loc in provider.locations)}",
            )
            continue
        stype = _server_type(p, key, item, provider, code)
        if stype is None:
            continue
        image = str(item.get("image") or provider.default_image)
        if image not in provider.images:
            p.fail(
                f"{key}.image",
                f"{image!r} is not an image the edge bootstrap supports on {provider.label}; "
                f"use {' or '.join(provider.images)} (or leave image out)",
            )
            continue
        if "index" not in item and len(items) > 1:
            p.fail(
                f"{key}.index",
                f"is required when the fleet has more than one edge: it fixes the edge's tunnel addresses, so "
                f"removing another edge never moves them; set index: {i + 1} (its place in the list today)",
            )
            continue
        index = item.get("index", i + 1)
        if isinstance(index, bool) or not isinstance(index, int) or index < 1:
            p.fail(f"{key}.index", f"{index!r} must be a whole number from 1; it fixes the edge's tunnel addresses")
            continue
        if index in seen_indexes:
            p.fail(
                f"{key}.index",
                f"index {index} is already used by edge {seen_indexes[index]!r}; give each edge its own index",
            )
            continue
        failed = len(p.problems)
        options = provider.parse_edge(item, functools.partial(_fail_field, p, key))
        if len(p.problems) > failed:
            continue
        seen_indexes[index] = name
        edges.append(EdgeSpec(name, provider.name, location, stype, image, index, options))
    return edges


def _fail_field(p: _Parser, key: str, field: str, message: str) -> None:
    p.fail(f"{key}.{field}", message)


def _example_edge() -> str:
    provider = next(iter(providers.REGISTRY.values()))
    location = provider.locations[0].code
    return f"{{name: {location[:3]}, provider: {provider.name}, location: {location}}}"


def _server_type(p: _Parser, key: str, item: dict, provider: Provider, code: str) -> catalog.ServerType | None:
    """The edge's server type.  Without ``serverType`` the provider's default is used,
    or, where that is not offered, the cheapest type offered there (with a warning)."""
    types_here = provider.types_in(code)
    if not item.get("serverType"):
        default = provider.server_type(provider.default_server_type)
        if default is not None and code in default.locations:
            return default
        if not types_here:
            p.fail(f"{key}.location", f"{provider.label} offers no server type big enough for an edge in {code}")
            return None
        chosen = types_here[0]
        p.warn(
            f"{key}.serverType",
            f"{provider.default_server_type} is not offered in {code}; using {chosen.name} ({chosen.arch}, "
            f"{chosen.monthly_price:.2f} {chosen.currency}/month), the cheapest type there. "
            f"Set serverType to choose another: {', '.join(t.name for t in types_here)}",
        )
        return chosen
    type_name = str(item["serverType"])
    stype = provider.server_type(type_name)
    if stype is None:
        p.fail(
            f"{key}.serverType",
            f"{type_name!r} is not a known {provider.label} server type; use one of {', '.join(t.name for t in provider.server_types)}",
        )
        return None
    if code not in stype.locations:
        arm = [t.name for t in types_here if t.arch == "arm64"]
        fix = (
            f"use {', '.join(arm)}"
            if arm
            else f"{provider.label} has no arm64 type there; set serverType to one offered there "
            f"({', '.join(t.name for t in types_here)}) or move the edge to {', '.join(sorted(stype.locations))}"
        )
        p.fail(f"{key}.serverType", f"{type_name} ({stype.arch}) is not offered in {code}; {fix}")
        return None
    if stype.ram_gb < catalog.MIN_RAM_GB:
        p.fail(
            f"{key}.serverType",
            f"{type_name} has {stype.ram_gb:g} GB RAM, too little for Traefik and unattended upgrades; "
            f"use at least {catalog.MIN_RAM_GB:g} GB, e.g. {provider.default_server_type}",
        )
        return None
    return stype


def _check_fleet(p: _Parser, cfg: FleetConfig) -> None:
    """Rules over the whole fleet, checked once every part parsed."""
    for name in cfg.providers:
        provider = providers.REGISTRY[name]
        rules = provider.firewall_rule_count(firewall_rules(cfg))
        if rules > provider.firewall_rule_limit:
            p.fail(
                "services",
                f"the declared tcp/udp ports need {rules} rules in each {provider.label} firewall, over its limit of "
                f"{provider.firewall_rule_limit}; give services consecutive ports (they merge into one range rule) "
                "or declare fewer port services",
            )
        provider.check_fleet([e for e in cfg.edges if e.provider == name], p.fail)
    if cfg.dns.provider != "none" and not providers.REGISTRY[cfg.dns.provider].manages_dns:
        p.fail("dnsProvider", f"{cfg.dns.provider} hosts no DNS zones; use one of {', '.join(dns_providers())}")


EDGE_DNS_PORTS = {53: "DNS (dnsMode edges)"}
"""Taken only in this mode; the health agent's port is taken in every mode (RESERVED_TCP_PORTS)."""


def _parse_dns_mode(
    p: _Parser, domain: str | None, zone: str, provider: str, services: list[ServiceSpec]
) -> tuple[str, str]:
    """``dnsMode`` and the zone the edges own.  The edges can own a zone only where its
    parent can hold their NS and glue records: inside the domain, and with a
    ``dnsProvider`` strictly inside the provider's zone (the program writes the
    delegation there; a zone cannot delegate itself)."""
    mode = p.get("dnsMode")
    if mode not in DNS_MODES:
        p.fail("dnsMode", f"{mode!r} is not a DNS mode; use records (plain records) or edges (the edges serve DNS)")
        return "records", ""
    if p.raw.get("dnsEdgeZone") not in (None, "") and mode != "edges":
        p.fail("dnsEdgeZone", f"is set but {_fix_key('dnsMode')} is {mode}; set dnsMode to edges or remove it")
    if mode != "edges" or not domain:
        return mode, ""
    text = p.get("dnsEdgeZone") or f"edge.{domain}"
    edge_zone = p.hostname("dnsEdgeZone", text, None)
    if edge_zone is None:
        return mode, ""
    if not (edge_zone == domain or edge_zone.endswith("." + domain)):
        p.fail(
            "dnsEdgeZone",
            f"{edge_zone} is outside the domain {domain}, so its delegation and the hostnames' CNAMEs cannot point "
            f"into it; use a name under {domain}, e.g. edge.{domain}",
        )
        return mode, ""
    if provider != "none" and edge_zone == zone:
        p.fail(
            "dnsEdgeZone",
            f"{edge_zone} is the {provider} zone itself, which cannot delegate itself to the edges; use a subzone "
            f"such as edge.{zone}, or set {_fix_key('dnsProvider')} none and delegate {zone} at the registrar",
        )
    if edge_zone != domain:
        for i, s in enumerate(services):
            if domain in s.hostnames:
                p.fail(
                    f"services[{i}].hostnames",
                    f"{domain} is the apex of the domain, which cannot be a CNAME into {edge_zone}; use a name "
                    f"such as www.{domain}, or set {_fix_key('dnsEdgeZone')} {domain} to hand the whole domain over",
                )
    for i, s in enumerate(services):
        taken = [port for port in s.ports if port in EDGE_DNS_PORTS] if not s.mode.by_hostname else []
        if taken:
            p.fail(
                f"services[{i}].port",
                f"{s.mode} port {taken[0]} is used by {EDGE_DNS_PORTS[taken[0]]}; pick another public port",
            )
    return mode, edge_zone


def dns_providers() -> list[str]:
    return list(_DNS_NAMES)


def _check_ha(p: _Parser, ha: bool, edges: list[EdgeSpec], items: list[Any] | None) -> None:
    """``ha`` promises that one provider's outage leaves an edge up; checked only when
    every edge parsed, so a typo in one edge is not also reported as an HA problem."""
    if not ha or not edges or len(edges) != len(items or []):
        return
    used = sorted({e.provider for e in edges})
    if len(used) > 1:
        return
    others = [name for name in providers.REGISTRY if name not in used]
    p.fail(
        "ha",
        f"is true but every edge is on {used[0]}, so one provider outage takes the whole fleet down; "
        f"add an edge on {' or '.join(others)} to {_fix_key('edges')}, or set {_fix_key('ha')} to false",
    )


def _check_indexes_fit(p: _Parser, edges: list[EdgeSpec], items: list[Any] | None, tunnel: TunnelSpec) -> None:
    """An index past the tunnel prefix has no /30 to take; caught here it is a config
    error, later it would stop ``pulumi up`` halfway, after resources were created."""
    if p.has_problem("tunnelIpv4Prefix"):
        return
    room = 2 ** (30 - tunnel.ipv4_prefix.prefixlen) - 1
    position: dict[Any, int] = {}
    for i, item in enumerate(items or []):
        if isinstance(item, dict):
            position.setdefault(item.get("name"), i)
    for edge in edges:
        if edge.index > room:
            p.fail(
                f"edges[{position[edge.name]}].index",
                f"{edge.index} does not fit in {_fix_key('tunnelIpv4Prefix')} {tunnel.ipv4_prefix}, which has room "
                f"for indexes 1 to {room} (one /30 each); use a free index in that range or a shorter prefix",
            )


def _check_acme_directory(p: _Parser, url: str) -> None:
    """ACME runs over HTTPS only (RFC 8555, section 6.1); an http:// directory would
    fail at the first certificate, long after the edges were built."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme != "https" or not host:
        p.fail(
            "acmeCaServer",
            f"{url!r} is not an https:// URL; ACME directories are served over https only, e.g. "
            f"{KEYS['acmeCaServer'][1]} or https://acme-staging-v02.api.letsencrypt.org/directory to test",
        )


def _derived_ula(project: str, stack: str) -> ipaddress.IPv6Network:
    """RFC 4193 asks for a pseudo-random global ID; hashing project and stack keeps it
    random-looking and stable, so re-running the program never re-addresses."""
    digest = hashlib.sha256(f"{project}/{stack}".encode()).digest()
    return ipaddress.IPv6Network((b"\xfd" + digest[:5] + b"\x00\x00" + bytes(8), 64))


def _parse_tunnel(p: _Parser, project: str, stack: str, edge_count: int) -> TunnelSpec:
    default_v4 = ipaddress.IPv4Network(KEYS["tunnelIpv4Prefix"][1])
    given = p.network("tunnelIpv4Prefix", p.get("tunnelIpv4Prefix")) or default_v4
    v4 = given if isinstance(given, ipaddress.IPv4Network) else default_v4
    if given.version != 4:
        p.fail("tunnelIpv4Prefix", f"{given} is not IPv4; use a private IPv4 prefix such as 10.254.0.0/24")
    elif v4.subnet_of(CGNAT_RANGE):
        p.fail(
            "tunnelIpv4Prefix",
            f"{v4} lies in 100.64.0.0/10, the range your ISP's CGNAT uses on your WAN side; use a private prefix such as 10.254.0.0/24",
        )
    elif not v4.is_private:
        p.fail("tunnelIpv4Prefix", f"{v4} is public address space; use a private prefix such as 10.254.0.0/24")
    elif v4.prefixlen > 28:
        p.fail(
            "tunnelIpv4Prefix", f"{v4} is too small; each edge takes a /30, use at most a /28 (a /24 holds 63 edges)"
        )

    v6: ipaddress.IPv6Network | None = None
    if p.get("tunnelIpv6"):
        text = p.get("tunnelIpv6Prefix")
        if text:
            net = p.network("tunnelIpv6Prefix", text)
            if net is not None and (
                not isinstance(net, ipaddress.IPv6Network)
                or not net.subnet_of(ipaddress.IPv6Network("fc00::/7"))
                or net.prefixlen > 64
            ):
                p.fail(
                    "tunnelIpv6Prefix",
                    f"{net} must be an IPv6 ULA prefix (fd00::/8) of /64 or shorter; use one such as fd12:3456:789a::/64, or leave it empty to derive one",
                )
            elif net is not None:
                v6 = ipaddress.IPv6Network((net.network_address, 64))
        else:
            v6 = _derived_ula(project, stack)

    port = p.port("wireguardPort", p.get("wireguardPort")) or 51820
    mtu = p.get("tunnelMtu")
    if not 1280 <= mtu <= 1420:
        p.fail(
            "tunnelMtu",
            f"{mtu} is out of range; use 1280 (IPv6 minimum) to 1420 (WireGuard over a clean 1500 path); 1380 suits PPPoE and DS-Lite",
        )
    keepalive = p.get("keepaliveSeconds")
    if not 10 <= keepalive <= 120:
        p.fail(
            "keepaliveSeconds",
            f"{keepalive} is out of range; use 10 to 120 seconds (25 keeps most CGNAT mappings open)",
        )
    if edge_count and edge_count > 2 ** (30 - v4.prefixlen) - 1 and not p.has_problem("tunnelIpv4Prefix"):
        p.fail(
            "tunnelIpv4Prefix",
            f"{v4} has room for {2 ** (30 - v4.prefixlen) - 1} edges, not {edge_count}; use a shorter prefix",
        )
    return TunnelSpec(v4, v6, port, mtu, keepalive)


def _parse_home(p: _Parser) -> HomeSpec:
    key = p.get("homePublicKey") or None
    if key and not _WG_KEY_RE.match(key):
        p.fail(
            "homePublicKey",
            "is not a WireGuard public key (44 base64 characters ending in '='); print it at home with `wg pubkey < private.key`",
        )
        key = None
    elif key and _is_low_order(base64.b64decode(key)):
        p.fail(
            "homePublicKey",
            "is a low-order point (all zeros or one of its kind), not a real key: every handshake with it would "
            "fail; print the home's key with `wg pubkey < private.key`, or leave it empty to have one generated",
        )
        key = None
    lans: list[IPNetwork] = []
    for i, text in enumerate(p.get("homeLanPrefixes") or []):
        net = p.network(f"homeLanPrefixes[{i}]", text)
        if net is None:
            continue
        if net.prefixlen == 0:
            p.fail(
                f"homeLanPrefixes[{i}]",
                f"{net} is every address: the edges would route all their traffic, SSH replies included, into the "
                "tunnel; list the prefix of your home LAN, e.g. 192.168.1.0/24",
            )
            continue
        special = next(((r, what) for r, what in _SPECIAL_RANGES if r.version == net.version and r.overlaps(net)), None)
        if special:
            p.fail(
                f"homeLanPrefixes[{i}]",
                f"{net} overlaps {special[0]}, {special[1]}; list the prefix of your home LAN, e.g. 192.168.1.0/24",
            )
            continue
        lans.append(net)
    role = p.get("homeRole")
    if role not in HOME_ROLES:
        p.fail(
            "homeRole",
            f"{role!r} is not supported; use router (the WireGuard peer is the LAN's gateway) or host (a box inside the LAN)",
        )
    return HomeSpec(key, tuple(lans), role)


def _is_low_order(public: bytes) -> bool:
    """X25519 with a low-order point yields the all-zero secret for every private key
    (the 0, 1 and order-8 points and their non-canonical forms); the exchange refuses
    exactly those, as WireGuard does."""
    probe = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"cgnat-edge low-order probe").digest())
    try:
        probe.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return True
    return False


def _check_tunnel_outside_lan(p: _Parser, tunnel: TunnelSpec, home: HomeSpec) -> None:
    """A tunnel prefix inside a home LAN prefix makes the edges route tunnel traffic into
    the LAN and the home route LAN traffic into a tunnel; neither side can tell them apart."""
    for i, lan in enumerate(home.lan_prefixes):
        tunnel_net = tunnel.ipv4_prefix if lan.version == 4 else tunnel.ipv6_prefix
        if tunnel_net is None or not tunnel_net.overlaps(lan):
            continue
        if lan.version == 4:
            free = next(
                (c for c in _SPARE_TUNNEL_PREFIXES if not any(c.overlaps(other) for other in home.lan_prefixes)), None
            )
            fix = f"set {_fix_key('tunnelIpv4Prefix')} to a prefix outside your LAN" + (
                f", e.g. `pulumi config set {_fix_key('tunnelIpv4Prefix')} {free}`" if free else ""
            )
            p.fail("tunnelIpv4Prefix", f"{tunnel_net} overlaps {_fix_key('homeLanPrefixes')}[{i}] {lan}; {fix}")
        else:
            p.fail(
                "tunnelIpv6Prefix",
                f"{tunnel_net} overlaps {_fix_key('homeLanPrefixes')}[{i}] {lan}; set {_fix_key('tunnelIpv6Prefix')} to a ULA /64 outside it, or set {_fix_key('tunnelIpv6')} false",
            )


_SPARE_TUNNEL_PREFIXES = tuple(
    ipaddress.ip_network(t) for t in ("10.254.0.0/24", "10.253.0.0/24", "172.31.254.0/24", "192.168.254.0/24")
)


def _parse_ssh(p: _Parser) -> SshSpec:
    keys = p.get("sshPublicKeys") or []
    if p.raw.get("sshPublicKeys") is not None and not keys and not p.has_problem("sshPublicKeys"):
        p.fail("sshPublicKeys", "is empty; give at least one public key (the contents of ~/.ssh/id_ed25519.pub)")
    seen: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        problem = _ssh_key_problem(k)
        if problem:
            p.fail(f"sshPublicKeys[{i}]", problem)
            continue
        blob = base64.b64decode(k.split()[1])
        if blob in seen:
            p.fail(
                f"sshPublicKeys[{i}]",
                f"is the same key as {_fix_key('sshPublicKeys')}[{seen[blob]}] (comments aside); the providers refuse "
                "to store one key twice, remove one of them",
            )
        seen.setdefault(blob, i)
    cidrs = []
    for i, text in enumerate(p.get("sshAllowedCidrs") or []):
        net = p.network(f"sshAllowedCidrs[{i}]", text)
        if net is not None:
            cidrs.append(net)
    if not cidrs:
        p.fail(
            "sshAllowedCidrs",
            "allows nobody; pulumi needs SSH to push config, list at least the prefix you run pulumi from",
        )
    user = p.get("sshUser")
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        p.fail(
            "sshUser",
            f"{user!r} is not a user name; use a login such as root or admin (lowercase letters, digits, _ and -)",
        )
    rotation = p.get("sshHostKeyRotation")
    if rotation < 0:
        p.fail("sshHostKeyRotation", f"{rotation} must be 0 or more; raise it by one to rotate the host keys")
    return SshSpec(tuple(k.strip() for k in keys if isinstance(k, str)), tuple(cidrs), user, max(rotation, 0))


def _ssh_string(data: bytes) -> tuple[bytes, bytes] | None:
    """The first length-prefixed string of an SSH wire blob and the rest (RFC 4251)."""
    if len(data) < 4:
        return None
    size = int.from_bytes(data[:4], "big")
    if len(data) < 4 + size:
        return None
    return data[4 : 4 + size], data[4 + size :]


def _ssh_key_problem(line: Any) -> str | None:
    """Why ``line`` is not a public key the edges' sshd accepts, or None.  Messages never
    echo the key data: a pasted private key must not end up in a log."""
    paste = "paste one line such as the contents of ~/.ssh/id_ed25519.pub"
    head = "is not an OpenSSH public key"
    if not isinstance(line, str):
        return f"{head} (got {type(line).__name__} {line!r}); {paste}"
    if "PRIVATE KEY" in line:
        return f"{head}: it is a PRIVATE key, which must never leave your machine; paste the public one (~/.ssh/id_ed25519.pub) instead"
    if "\n" in line.strip():
        return f"{head}: it holds several lines; list each key as its own item, one line each"
    parts = line.split(maxsplit=2)
    if len(parts) < 2:
        return f"{head} (type, base64 key data, optional comment); {paste}"
    kind, data = parts[0], parts[1]
    if kind == "ssh-dss":
        return "is a DSA key, which OpenSSH no longer accepts; make an ed25519 key with `ssh-keygen -t ed25519` and paste its .pub"
    if kind not in SSH_KEY_TYPES:
        # Named only when it cannot be key material: base64 has no hyphen, every key type has one.
        named = f"{kind!r} is not a key type" if re.fullmatch(r"[a-z0-9@.]*-[a-z0-9@.-]*", kind[:40]) else "no key type"
        return f"{head}: {named} (use {', '.join(SSH_KEY_TYPES)}); {paste}"
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return f"{head}: the key data after {kind} is not base64; {paste}, unchanged"
    first = _ssh_string(blob)
    if first is None or not first[0]:
        return f"{head}: the {kind} key data is cut short ({len(blob)} bytes); {paste}, the whole line"
    if first[0] != kind.encode():
        inner = first[0].decode("ascii", "replace")[:40]
        return f"{head}: the line says {kind} but the key data is a {inner!r} key; {paste}, unchanged"
    try:
        key = serialization.load_ssh_public_key(f"{kind} {data}".encode())
    except (ValueError, UnsupportedAlgorithm):
        return f"{head}: the {kind} key data is damaged; {paste}, unchanged"
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return (
            f"is an RSA key of {key.key_size} bits and sshd refuses RSA keys under {MIN_RSA_BITS}; "
            "make an ed25519 key with `ssh-keygen -t ed25519` and paste its .pub"
        )
    return None


def _parse_services(
    p: _Parser, items: list[Any] | None, domain: str | None, tunnel: TunnelSpec, home: HomeSpec
) -> list[ServiceSpec]:
    services: list[ServiceSpec] = []
    names: set[str] = set()
    hostnames: dict[str, str] = {}
    ports: dict[tuple[str, int], str] = {}
    reserved = {("tcp", port): what for port, what in RESERVED_TCP_PORTS.items()}
    reserved[("udp", tunnel.listen_port)] = f"WireGuard ({_fix_key('wireguardPort')})"
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
        mode_text = str(item.get("mode", Mode.PASSTHROUGH))
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
            raw_hosts = item.get("hostnames")
            if isinstance(raw_hosts, str):
                raw_hosts = [raw_hosts]
            if not raw_hosts:
                p.fail(
                    f"{key}.hostnames",
                    f"is required for a {mode} service; list the names visitors use, e.g. [app.{domain or 'example.org'}]",
                )
            for j, h in enumerate(p.items(f"{key}.hostnames", raw_hosts, "hostnames")):
                host = p.hostname(f"{key}.hostnames[{j}]", h, domain)
                if host is None:
                    continue
                if host in hostnames:
                    p.fail(
                        f"{key}.hostnames[{j}]",
                        f"{host} is already served by service {hostnames[host]!r}; a hostname can belong to one service",
                    )
                    continue
                hostnames[host] = name
                spec_hosts.append(host)
        else:
            if item.get("port") is None:
                p.fail(
                    f"{key}.port",
                    f"is required for a {mode} service; give the public port on the edges, e.g. port: 2222",
                )
                continue
            if mode is Mode.FORWARD:
                span = _forward_span(p, key, item, target)
                if span is None:
                    continue
                proto, (port, port_end) = span
            else:
                public_port = p.port(f"{key}.port", item.get("port"))
                if public_port is None:
                    continue
                proto, port, port_end = str(mode.protocol), public_port, 0
            taken = next(
                (
                    (q, o)
                    for q in range(port, max(port, port_end) + 1)
                    if (o := reserved.get((proto, q)) or ports.get((proto, q)))
                ),
                None,
            )
            if taken:
                p.fail(
                    f"{key}.port", f"{proto} port {taken[0]} is already used by {taken[1]}; pick another public port"
                )
                continue
            ports.update({(proto, q): f"service {name!r}" for q in range(port, max(port, port_end) + 1)})
        proxy = item.get("proxyProtocol", mode is Mode.PASSTHROUGH)
        if not isinstance(proxy, bool):
            p.fail(
                f"{key}.proxyProtocol",
                "must be true or false; true sends the visitor's address to home in a PROXY header",
            )
            proxy = False
        health = item.get("healthPath")
        if health is not None and not (isinstance(health, str) and health.startswith("/")):
            p.fail(f"{key}.healthPath", f"{health!r} must be a URL path starting with /; write it like /status.php")
            health = None
        middlewares = (
            _parse_middlewares(p, f"{key}.middlewares", item.get("middlewares") or {})
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
                bool(proxy) and mode.by_traefik,
                http_target,
                middlewares,
                health,
                port_end,
                Protocol(proto) if mode is Mode.FORWARD else None,
                geo=geo,
                forward_auth=forward_auth,
            )
        )
    return services


def _forward_span(p: _Parser, key: str, item: dict, target: Target | None) -> tuple[str, tuple[int, int]] | None:
    """Protocol and public port span of a forward service: ``port: 27015`` or
    ``port: 27015-27030``.  A range keeps its ports (the target names the first one), so
    each public port reaches the same port at home."""
    proto = str(item.get("protocol", ""))
    if proto not in ("tcp", "udp"):
        p.fail(
            f"{key}.protocol",
            f"{proto!r} is not a protocol a forward service carries; write protocol: tcp or protocol: udp "
            "(declare two services for both)",
        )
        return None
    text = str(item.get("port")).strip()
    low_text, dash, high_text = text.partition("-")
    low = p.port(f"{key}.port", low_text.strip())
    high = p.port(f"{key}.port", high_text.strip()) if dash else low
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


MAX_FORWARD_RANGE = 1024
"""The widest forward range: wider ones open more than any one application needs."""


def _check_reachable(p: _Parser, key: str, target: Target, tunnel: TunnelSpec, home: HomeSpec) -> None:
    host = target.host
    if isinstance(host, ipaddress.IPv6Address) and host.ipv4_mapped:
        p.fail(key, f"{host} is an IPv4-mapped IPv6 address; write {host.ipv4_mapped}:{target.port}")
        return
    special = next((what for net, what in _SPECIAL_RANGES if host in net), None)
    if special:
        p.fail(key, f"{host} is {special}; use the address of the host at home, e.g. 192.168.1.10:{target.port}")
        return
    if host.version == 6 and tunnel.ipv6_prefix is None:
        p.fail(
            key,
            f"{host} is IPv6 but {_fix_key('tunnelIpv6')} is false, so the tunnels carry no IPv6; use the host's IPv4 "
            f"address or set {_fix_key('tunnelIpv6')} to true",
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
    if any(problem.startswith(_fix_key("homeLanPrefixes")) for problem in p.problems):
        return  # every target would repeat that problem
    p.fail(
        key,
        f"{target.host} is not in any of {_fix_key('homeLanPrefixes')} ({', '.join(map(str, home.lan_prefixes)) or 'none set'}); add the home LAN prefix that holds it so the edges route it through the tunnel",
    )


def _parse_middlewares(p: _Parser, key: str, raw: Any) -> Middlewares:
    if not isinstance(raw, dict):
        p.fail(key, "must be a mapping; write it like {rateLimit: {average: 50, burst: 100}, securityHeaders: true}")
        return Middlewares()
    for k in sorted(set(raw) - {"rateLimit", "ipAllowList", "ipDenyList", "basicAuth", "securityHeaders"}):
        p.fail(
            f"{key}.{k}", "is not a middleware; use rateLimit, ipAllowList, ipDenyList, basicAuth or securityHeaders"
        )
    rate = None
    if raw.get("rateLimit") is not None:
        rl = raw["rateLimit"]
        avg, burst = (rl.get("average"), rl.get("burst", rl.get("average"))) if isinstance(rl, dict) else (None, None)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in (avg, burst)):
            p.fail(
                f"{key}.rateLimit",
                "needs positive whole numbers; write it like {average: 50, burst: 100} (requests per second per client)",
            )
        else:
            rate = RateLimit(int(avg), int(burst))  # type: ignore[arg-type]  # both checked to be int above
    allow, deny = (
        tuple(
            n
            for j, t in enumerate(p.items(f"{key}.{name}", raw.get(name), "CIDR prefixes"))
            if (n := p.network(f"{key}.{name}[{j}]", t))
        )
        for name in ("ipAllowList", "ipDenyList")
    )
    if allow and deny:
        p.fail(key, "ipAllowList and ipDenyList together are ambiguous; use one of them")
    users = p.items(f"{key}.basicAuth", raw.get("basicAuth"), "htpasswd lines")
    for j, u in enumerate(users):
        if not isinstance(u, str) or not _HTPASSWD_RE.match(u):
            p.fail(
                f"{key}.basicAuth[{j}]",
                "must be an htpasswd line user:hash with a bcrypt, apr1 or sha-crypt hash; make one with `htpasswd -nB user`",
            )
    headers = raw.get("securityHeaders", False)
    if not isinstance(headers, bool):
        p.fail(
            f"{key}.securityHeaders",
            "must be true or false; write true to send HSTS and related security headers, or leave it out",
        )
        headers = False
    return Middlewares(rate, allow, deny, tuple(u for u in users if isinstance(u, str)), headers)
