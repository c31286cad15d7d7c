"""The stack's keys: every ``cgnat-edge:`` key the program reads, its kind, default
and what it is for.

Pulumi.yaml declares the scalar ones with the same defaults (a test keeps the two in
step); the parser reads nothing that is not listed here.
"""

from __future__ import annotations

from typing import Any

from components.model import alerts, platforms
from components.model.fleet import NO_DNS_PROVIDER
from components.model.protection import RIR_SOURCES
from components.model.road_warriors import DEFAULT_POOL, DEFAULT_PORT

NAMESPACE = "cgnat-edge"

REQUIRED = object()
DNS_PROVIDERS = (NO_DNS_PROVIDER, *(name for name, platform in platforms.REGISTRY.items() if platform.manages_dns))
"""What ``dnsProvider`` may name."""
_DNS_CHOICES = f"{', '.join(DNS_PROVIDERS[:-1])} or {DNS_PROVIDERS[-1]}"

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
        "Bump to give every edge a new SSH host key; the step that installs it pins the edge's install key.",
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
        "Devices that reach the home LAN through any edge: name, optional publicKey, allowedPrefixes (the LAN "
        "parts, or [lan] for all of it), internet.",
    ),
    "roadWarriorPool": (
        "string",
        DEFAULT_POOL,
        "IPv4 prefix the road warriors' addresses come from; its last host is home's.",
    ),
    "roadWarriorPort": (
        "integer",
        DEFAULT_PORT,
        "UDP port the edges forward to home for the road warriors' WireGuard sessions, which end at home.",
    ),
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
        list(RIR_SOURCES),
        "Country prefix lists: https:// URLs of RIR delegated-extended statistics files, each with an .md5 beside it.",
    ),
    "crowdsec": ("string", "off", "off, offline (bans from the edge's own logs) or online (plus the community list)."),
    "crowdsecEnrollKey": (
        "secret",
        "",
        "CrowdSec console enrolment key (secret; needs crowdsec online): each edge enrols once, by name.",
    ),
    "alertNtfyUrl": (
        "secret",
        "",
        "Alerts to this ntfy topic, https://host/topic (secret: whoever has it reads them).",
    ),
    "alertWebhookUrl": (
        "secret",
        "",
        "Alerts POSTed as JSON to this https URL: Gotify, Discord, Slack, Home Assistant (secret: it is the token).",
    ),
    "alertSmtpServer": ("string", "", "Alerts mailed through this SMTP relay, host or host:port (587 if left out)."),
    "alertSmtpSecurity": ("string", "starttls", "starttls (submission, port 587) or tls (implicit TLS, port 465)."),
    "alertSmtpFrom": ("string", "", "Sender address of the alert mails."),
    "alertSmtpTo": ("array", [], "Where alert mails go: one or more addresses."),
    "alertSmtpUser": ("string", "", "Login at the relay; empty = the relay takes mail without one."),
    "alertSmtpPassword": ("secret", "", "Password for alertSmtpUser (secret)."),
    "alertAfterSeconds": (
        "integer",
        alerts.DEFAULT_AFTER_S,
        "How long a tunnel, edge or service is down before it is an alert; a router's nightly reconnect is shorter.",
    ),
    "alertReminderHours": (
        "integer",
        alerts.DEFAULT_REMINDER_H,
        "An incident that lasts is announced again this often; 0 = only when it starts and ends.",
    ),
    "alertCertDays": (
        "integer",
        alerts.DEFAULT_CERT_DAYS,
        "Alert when the certificate an edge serves for an http hostname has fewer days left than this.",
    ),
}

SECRET_SET = "<secret>"
"""What the typed config holds for a secret key that is set: that it is set, never its
value, which the program reads on its own as a Pulumi secret."""


def is_secret_key(key: str) -> bool:
    """Keys the typed config takes only as set or not (``SECRET_SET``)."""
    return key in KEYS and KEYS[key][0] == "secret"


def fix_key(key: str) -> str:
    """``key`` as the user writes it in a stack file or ``pulumi config set``."""
    return f"{NAMESPACE}:{key}"
