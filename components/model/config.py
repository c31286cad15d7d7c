"""The stack configuration, parsed and validated in one place.

Everything the program builds is derived from the ``FleetConfig`` returned here.  The
parser sees plain values (what ``pulumi config`` stores), collects every problem it
finds and raises one ``ConfigError`` naming each key and its fix, so a bad stack file
fails before a single resource is registered.  Components receive the typed objects,
never ``pulumi.Config``.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.model import catalog

NAMESPACE = "cgnat-edge"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MODES = ("passthrough", "http", "tcp", "udp")
DNS_PROVIDERS = ("none", "hetzner", "digitalocean")
HOME_ROLES = ("router", "host")
ACME_CHALLENGES = ("http", "tls")

CGNAT_RANGE = ipaddress.ip_network("100.64.0.0/10")
RESERVED_TCP_PORTS = {80: "HTTP (redirect and ACME)", 443: "HTTPS (passthrough and http services)"}

_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,22}[a-z0-9])?$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_WG_KEY_RE = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")
_SSH_KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( .*)?$"
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
    mode: str
    target: Target
    hostnames: tuple[str, ...] = ()
    port: int = 443
    """Public port on every edge."""
    proxy_protocol: bool = False
    http_target: Target | None = None
    """passthrough: where port-80 ACME HTTP-01 challenges for these hostnames go."""
    middlewares: Middlewares = field(default_factory=Middlewares)
    health_path: str | None = None

    @property
    def protocol(self) -> str:
        return "udp" if self.mode == "udp" else "tcp"


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


@dataclass(frozen=True)
class DnsSpec:
    provider: str
    zone: str
    ttl: int


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

    @property
    def providers(self) -> list[str]:
        return sorted({e.provider for e in self.edges})

    def public_ports(self, protocol: str) -> list[int]:
        """Every port the edges open to the world for ``protocol``, besides SSH."""
        ports: set[int] = set()
        if protocol == "udp":
            ports.add(self.tunnel.listen_port)
        else:
            if any(s.mode in ("passthrough", "http") for s in self.services):
                ports.update((80, 443))
        ports.update(s.port for s in self.services if s.protocol == protocol and s.mode in ("tcp", "udp"))
        return sorted(ports)


# ---------------------------------------------------------------------------
# Declared keys: name -> (kind, default, description).  Pulumi.yaml declares the
# scalar ones with the same defaults (a test keeps the two in step).
# ---------------------------------------------------------------------------

REQUIRED = object()

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
    "dnsProvider": ("string", "none", "none, hetzner or digitalocean: create the DNS records there."),
    "dnsZone": ("string", "", "Zone for managed records; empty = the domain."),
    "dnsTtl": ("integer", 60, "TTL of the edge records, short so a dead edge drops out fast."),
    "acmeEmail": ("string", "", "Contact e-mail for Let's Encrypt; required when an http service exists."),
    "acmeChallenge": ("string", "tls", "tls (TLS-ALPN-01) or http (HTTP-01) for certificates of http services."),
    "acmeCaServer": (
        "string",
        "https://acme-v02.api.letsencrypt.org/directory",
        "ACME directory; use the staging one to test.",
    ),
}


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

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{_fix_key(key)}: {message}")

    def get(self, key: str) -> Any:
        kind, default, _ = KEYS[key]
        value = self.raw.get(key)
        if value is None or value == "":
            if default is REQUIRED:
                self.fail(
                    key,
                    f"is required. Set it with `pulumi config set {'--path ' if kind == 'object-array' else ''}{_fix_key(key)} ...` or in Pulumi.<stack>.yaml ({KEYS[key][2]})",
                )
                return None
            return default
        return self.coerce(key, kind, value, default)

    def coerce(self, key: str, kind: str, value: Any, default: Any) -> Any:
        if kind == "integer":
            try:
                if isinstance(value, bool):
                    raise ValueError
                return int(value)
            except (TypeError, ValueError):
                self.fail(key, f"must be a whole number, got {value!r}")
                return default
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "false"):
                return str(value).lower() == "true"
            self.fail(key, f"must be true or false, got {value!r}")
            return default
        if kind in ("array", "object-array"):
            if not isinstance(value, list):
                self.fail(
                    key, f"must be a list, got {type(value).__name__}; write it as a YAML list under {_fix_key(key)}"
                )
                return default if default is not REQUIRED else None
            return value
        if kind in ("string", "secret"):
            if not isinstance(value, str):
                self.fail(key, f"must be a string, got {type(value).__name__}")
                return default
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
            hint = ""
            try:
                hint = f"; did you mean {ipaddress.ip_network(str(text), strict=False)}?"
            except ValueError:
                pass
            self.fail(key, f"{text!r} is not a valid CIDR prefix ({exc}){hint}")
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
        text = str(value or "")
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
        if len(name) > 253 or len(labels) < 2 or not all(_LABEL_RE.match(l) for l in labels) or labels[-1].isdigit():
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


def parse(raw: Mapping[str, Any], *, project: str = NAMESPACE, stack: str = "dev") -> FleetConfig:
    """Validate ``raw`` (key without namespace -> value) into a ``FleetConfig``."""
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

    edges = _parse_edges(p, p.get("edges"))
    tunnel = _parse_tunnel(p, project, stack, len(edges))
    home = _parse_home(p)
    _check_tunnel_outside_lan(p, tunnel, home)
    ssh = _parse_ssh(p)
    acme = AcmeSpec(email=p.get("acmeEmail") or None, challenge=p.get("acmeChallenge"), ca_server=p.get("acmeCaServer"))
    if acme.challenge not in ACME_CHALLENGES:
        p.fail("acmeChallenge", f"{acme.challenge!r} is not supported; use one of {', '.join(ACME_CHALLENGES)}")
    services = _parse_services(p, p.get("services"), domain, tunnel, home)

    if any(s.mode == "http" for s in services) and not acme.email:
        p.fail(
            "acmeEmail",
            "is required because an http service terminates TLS on the edges; set an address Let's Encrypt may write to",
        )
    if acme.email and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", acme.email):
        p.fail("acmeEmail", f"{acme.email!r} is not an e-mail address")

    dns_provider = p.get("dnsProvider")
    if dns_provider not in DNS_PROVIDERS:
        p.fail("dnsProvider", f"{dns_provider!r} is not supported; use one of {', '.join(DNS_PROVIDERS)}")
    zone = p.get("dnsZone") or domain or ""
    if p.get("dnsZone") and domain:
        zone = p.hostname("dnsZone", zone, None) or zone
        if not (domain == zone or domain.endswith("." + zone)):
            p.fail("dnsZone", f"{zone} does not contain the domain {domain}; use the zone {domain} is delegated in")
    ttl = p.get("dnsTtl")
    if not 30 <= ttl <= 86400:
        p.fail(
            "dnsTtl", f"{ttl} is out of range; use 30 to 86400 seconds (short, e.g. 60, so a dead edge drops out fast)"
        )

    ha = p.get("ha")

    if p.problems:
        raise ConfigError(p.problems)
    assert domain is not None
    return FleetConfig(
        project=project,
        stack=stack,
        domain=domain,
        edges=tuple(edges),
        services=tuple(services),
        tunnel=tunnel,
        home=home,
        ssh=ssh,
        dns=DnsSpec(dns_provider, zone, ttl),
        acme=acme,
        ha=ha,
    )


def _parse_edges(p: _Parser, items: list[Any] | None) -> list[EdgeSpec]:
    if items is None:
        return []
    if not items:
        p.fail("edges", "is empty; declare at least one edge, e.g. {name: fsn, provider: hetzner, location: fsn1}")
    edges: list[EdgeSpec] = []
    seen_names: set[str] = set()
    seen_indexes: dict[int, str] = {}
    for i, item in enumerate(items):
        key = f"edges[{i}]"
        if not isinstance(item, dict):
            p.fail(key, "must be a mapping with name, provider and location")
            continue
        unknown = set(item) - {"name", "provider", "location", "serverType", "image", "index"}
        for k in sorted(unknown):
            p.fail(f"{key}.{k}", "is not a known edge field; use name, provider, location, serverType, image, index")
        name = p.unique_name(key, item, seen_names, "edge")
        if name is None:
            continue
        provider = str(item.get("provider", ""))
        if provider not in catalog.PROVIDERS:
            p.fail(
                f"{key}.provider",
                f"{provider!r} is not a supported provider; use one of {', '.join(catalog.PROVIDERS)}",
            )
            continue
        info = catalog.PROVIDERS[provider]
        code = str(item.get("location", ""))
        location = catalog.LOCATIONS.get((provider, code))
        if location is None:
            p.fail(
                f"{key}.location",
                f"{code!r} is not a {info.label} location; use one of {', '.join(catalog.locations_of(provider))}",
            )
            continue
        type_name = str(item.get("serverType") or info.default_server_type)
        stype = catalog.SERVER_TYPES.get((provider, type_name))
        if stype is None:
            p.fail(
                f"{key}.serverType",
                f"{type_name!r} is not a known {info.label} server type; use one of {', '.join(catalog.server_types_of(provider))}",
            )
            continue
        if code not in stype.locations:
            arm = catalog.arm64_types_in(provider, code)
            offered = [
                t for t in catalog.server_types_of(provider) if code in catalog.SERVER_TYPES[(provider, t)].locations
            ]
            fix = (
                f"use {', '.join(arm)}"
                if arm
                else f"{info.label} has no arm64 type there; set serverType to one offered there ({', '.join(offered)}) "
                f"or move the edge to {', '.join(sorted(stype.locations))}"
            )
            p.fail(f"{key}.serverType", f"{type_name} ({stype.arch}) is not offered in {code}; {fix}")
            continue
        if stype.ram_gb < catalog.MIN_RAM_GB:
            p.fail(
                f"{key}.serverType",
                f"{type_name} has {stype.ram_gb:g} GB RAM, too little for Traefik and unattended upgrades; use at least {catalog.MIN_RAM_GB:g} GB, e.g. {info.default_server_type}",
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
        seen_indexes[index] = name
        edges.append(EdgeSpec(name, provider, location, stype, str(item.get("image") or info.default_image), index))
    return edges


def _derived_ula(project: str, stack: str) -> ipaddress.IPv6Network:
    """RFC 4193 asks for a pseudo-random global ID; hashing project and stack keeps it
    random-looking and stable, so re-running the program never re-addresses."""
    digest = hashlib.sha256(f"{project}/{stack}".encode()).digest()
    return ipaddress.IPv6Network((b"\xfd" + digest[:5] + b"\x00\x00" + bytes(8), 64))


def _parse_tunnel(p: _Parser, project: str, stack: str, edge_count: int) -> TunnelSpec:
    v4 = p.network("tunnelIpv4Prefix", p.get("tunnelIpv4Prefix")) or ipaddress.ip_network(KEYS["tunnelIpv4Prefix"][1])
    if v4.version != 4:
        p.fail("tunnelIpv4Prefix", f"{v4} is not IPv4; use a private IPv4 prefix such as 10.254.0.0/24")
        v4 = ipaddress.ip_network(KEYS["tunnelIpv4Prefix"][1])
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
                net.version != 6 or not net.subnet_of(ipaddress.ip_network("fc00::/7")) or net.prefixlen > 64
            ):
                p.fail("tunnelIpv6Prefix", f"{net} must be an IPv6 ULA prefix (fd00::/8) of /64 or shorter")
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
    if edge_count and edge_count > 2 ** (30 - v4.prefixlen) - 1:
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
    lans: list[IPNetwork] = []
    for i, text in enumerate(p.get("homeLanPrefixes") or []):
        net = p.network(f"homeLanPrefixes[{i}]", text)
        if net is not None:
            lans.append(net)
    role = p.get("homeRole")
    if role not in HOME_ROLES:
        p.fail(
            "homeRole",
            f"{role!r} is not supported; use router (the WireGuard peer is the LAN's gateway) or host (a box inside the LAN)",
        )
    return HomeSpec(key, tuple(lans), role)


def _check_tunnel_outside_lan(p: _Parser, tunnel: TunnelSpec, home: HomeSpec) -> None:
    """A tunnel prefix inside a home LAN prefix makes the edges route tunnel traffic into
    the LAN and the home route LAN traffic into a tunnel; neither side can tell them apart."""
    for i, lan in enumerate(home.lan_prefixes):
        tunnel_net = tunnel.ipv4_prefix if lan.version == 4 else tunnel.ipv6_prefix
        if tunnel_net is None or not tunnel_net.overlaps(lan):
            continue
        if lan.version == 4:
            free = next((c for c in _SPARE_TUNNEL_PREFIXES if not any(c.overlaps(l) for l in home.lan_prefixes)), None)
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
    if p.raw.get("sshPublicKeys") is not None and not keys:
        p.fail("sshPublicKeys", "is empty; give at least one public key (the contents of ~/.ssh/id_ed25519.pub)")
    for i, k in enumerate(keys):
        if not isinstance(k, str) or not _SSH_KEY_RE.match(k.strip()):
            p.fail(
                f"sshPublicKeys[{i}]",
                "is not an OpenSSH public key; paste one line such as the contents of ~/.ssh/id_ed25519.pub",
            )
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
        p.fail("sshUser", f"{user!r} is not a user name")
    rotation = p.get("sshHostKeyRotation")
    if rotation < 0:
        p.fail("sshHostKeyRotation", f"{rotation} must be 0 or more; raise it by one to rotate the host keys")
    return SshSpec(tuple(k.strip() for k in keys if isinstance(k, str)), tuple(cidrs), user, max(rotation, 0))


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
        "passthrough": {"name", "mode", "hostnames", "target", "proxyProtocol", "httpTarget", "healthPath"},
        "http": {"name", "mode", "hostnames", "target", "middlewares", "healthPath"},
        "tcp": {"name", "mode", "port", "target", "proxyProtocol"},
        "udp": {"name", "mode", "port", "target"},
    }
    for i, item in enumerate(items or []):
        key = f"services[{i}]"
        if not isinstance(item, dict):
            p.fail(key, "must be a mapping with name, mode and target")
            continue
        name = p.unique_name(key, item, names, "service")
        if name is None:
            continue
        mode = str(item.get("mode", "passthrough"))
        if mode not in MODES:
            p.fail(
                f"{key}.mode",
                f"{mode!r} is not a mode; use passthrough (TLS ends at home), http (TLS ends on the edge), tcp or udp",
            )
            continue
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
        port = 443
        if mode in ("passthrough", "http"):
            raw_hosts = item.get("hostnames")
            if isinstance(raw_hosts, str):
                raw_hosts = [raw_hosts]
            if not raw_hosts:
                p.fail(
                    f"{key}.hostnames",
                    f"is required for a {mode} service; list the names visitors use, e.g. [app.{domain or 'example.org'}]",
                )
            for j, h in enumerate(raw_hosts or []):
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
            port = p.port(f"{key}.port", item.get("port"))
            if port is None:
                continue
            owner = reserved.get((mode, port)) or ports.get((mode, port))
            if owner:
                p.fail(f"{key}.port", f"{mode} port {port} is already used by {owner}; pick another public port")
                continue
            ports[(mode, port)] = f"service {name!r}"
        proxy = item.get("proxyProtocol", mode == "passthrough")
        if not isinstance(proxy, bool):
            p.fail(f"{key}.proxyProtocol", "must be true or false")
            proxy = False
        health = item.get("healthPath")
        if health is not None and not (isinstance(health, str) and health.startswith("/")):
            p.fail(f"{key}.healthPath", f"{health!r} must be a URL path starting with /")
            health = None
        middlewares = (
            _parse_middlewares(p, f"{key}.middlewares", item.get("middlewares") or {})
            if mode == "http"
            else Middlewares()
        )
        if target is None:
            continue
        services.append(
            ServiceSpec(name, mode, target, tuple(spec_hosts), port, bool(proxy), http_target, middlewares, health)
        )
    return services


def _check_reachable(p: _Parser, key: str, target: Target, tunnel: TunnelSpec, home: HomeSpec) -> None:
    if any(target.host in lan for lan in home.lan_prefixes):
        return
    p.fail(
        key,
        f"{target.host} is not in any of {_fix_key('homeLanPrefixes')} ({', '.join(map(str, home.lan_prefixes)) or 'none set'}); add the home LAN prefix that holds it so the edges route it through the tunnel",
    )


def _parse_middlewares(p: _Parser, key: str, raw: Any) -> Middlewares:
    if not isinstance(raw, dict):
        p.fail(key, "must be a mapping (rateLimit, ipAllowList, ipDenyList, basicAuth, securityHeaders)")
        return Middlewares()
    for k in sorted(set(raw) - {"rateLimit", "ipAllowList", "ipDenyList", "basicAuth", "securityHeaders"}):
        p.fail(
            f"{key}.{k}", "is not a middleware; use rateLimit, ipAllowList, ipDenyList, basicAuth or securityHeaders"
        )
    rate = None
    if raw.get("rateLimit") is not None:
        rl = raw["rateLimit"]
        avg, burst = (rl.get("average"), rl.get("burst", rl.get("average"))) if isinstance(rl, dict) else (None, None)
        if not (isinstance(avg, int) and isinstance(burst, int) and avg > 0 and burst > 0):
            p.fail(
                f"{key}.rateLimit",
                "needs positive whole numbers: {average: 50, burst: 100} (requests per second per client)",
            )
        else:
            rate = RateLimit(avg, burst)
    allow = tuple(
        n for j, t in enumerate(raw.get("ipAllowList") or []) if (n := p.network(f"{key}.ipAllowList[{j}]", t))
    )
    deny = tuple(n for j, t in enumerate(raw.get("ipDenyList") or []) if (n := p.network(f"{key}.ipDenyList[{j}]", t)))
    if allow and deny:
        p.fail(key, "ipAllowList and ipDenyList together are ambiguous; use one of them")
    users = raw.get("basicAuth") or []
    for j, u in enumerate(users):
        if not isinstance(u, str) or not _HTPASSWD_RE.match(u):
            p.fail(
                f"{key}.basicAuth[{j}]",
                "must be an htpasswd line user:hash with a bcrypt, apr1 or sha-crypt hash (make one with `htpasswd -nB user`)",
            )
    headers = raw.get("securityHeaders", False)
    if not isinstance(headers, bool):
        p.fail(f"{key}.securityHeaders", "must be true or false")
        headers = False
    return Middlewares(rate, allow, deny, tuple(u for u in users if isinstance(u, str)), headers)
