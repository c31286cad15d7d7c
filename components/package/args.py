"""Generated from components/config/keys.py by `uv run cgnat-edge package-schema --write`; do not edit.

The inputs of ``EdgeFleet``: one per stack key, with the key table's doc.  Every input
but the secrets is plain: the component parses them all before it creates anything,
as the program parses a stack file.  No ``from __future__ import annotations``: the
host reads these annotations as types, not as strings."""

from typing import Required, TypedDict

import pulumi

from components.package import shapes


class EdgeFleetArgs(TypedDict, total=False):
    domain: Required[str]
    """DNS domain the exposed hostnames live under."""
    edges: Required[list[shapes.Edge]]
    """Edge VPSes: name, provider, location, optional serverType, image, index."""
    services: list[shapes.Service]
    """Exposed services: name, mode, hostnames or port, target, options."""
    ha: bool
    """Require edges on at least two providers."""
    home_public_key: str
    """WireGuard public key of the home peer; empty = generate it as a Pulumi secret."""
    home_lan_prefixes: list[str]
    """Home LAN prefixes that services may target."""
    home_role: str
    """router: the home peer is the LAN's gateway; host: a LAN box, masquerade into the LAN."""
    tunnel_ipv4_prefix: str
    """IPv4 prefix for the tunnels; split into one /30 per edge."""
    tunnel_ipv6: bool
    """Also address the tunnels with IPv6 ULA."""
    tunnel_ipv6_prefix: str
    """IPv6 ULA /64 for the tunnels; empty = derived from project and stack."""
    wireguard_port: int
    """UDP port the edges listen on for WireGuard."""
    tunnel_mtu: int
    """MTU of the tunnel interfaces; safe over PPPoE and DS-Lite."""
    keepalive_seconds: int
    """PersistentKeepalive from home, keeps the CGNAT mapping open."""
    ssh_public_keys: Required[list[str]]
    """SSH public keys allowed to log in to the edges."""
    ssh_allowed_cidrs: list[str]
    """Source prefixes allowed to reach SSH on the edges."""
    ssh_host_key_rotation: int
    """Bump to give every edge a new SSH host key; the step that installs it pins the edge's install key."""
    ssh_user: str
    """User pulumi-command logs in as to push config and check readiness."""
    ssh_private_key: pulumi.Input[str]
    """Private key for that login (secret); empty = use the local ssh-agent."""
    dns_provider: str
    """none, hetzner or digitalocean: create the DNS records there."""
    dns_zone: str
    """Zone for managed records; empty = the domain."""
    dns_ttl: int
    """TTL of the edge records, short so a dead edge drops out fast."""
    dns_mode: str
    """records: plain records for the edges; edges: the edges serve health-checked DNS for dnsEdgeZone."""
    dns_edge_zone: str
    """dnsMode edges: the zone delegated to the edges; empty = edge.<domain>. The domain itself hands all of it over."""
    dns_geoip_database: str
    """dnsMode edges: a City MMDB (DB-IP City Lite, GeoLite2 City); answers nearest edge first (EDNS Client Subnet). Relative to the stack file's folder."""
    road_warriors: list[shapes.RoadWarrior]
    """Devices that reach the home LAN through any edge: name, optional publicKey, allowedPrefixes (the LAN parts, or [lan] for all of it), internet."""
    road_warrior_pool: str
    """IPv4 prefix the road warriors' addresses come from; its last host is home's."""
    road_warrior_port: int
    """UDP port the edges forward to home for the road warriors' WireGuard sessions, which end at home."""
    road_warrior_dns: str
    """DNS server the road-warrior configs push; empty = none."""
    acme_email: str
    """Contact e-mail for Let's Encrypt; required when an http service exists."""
    acme_challenge: str
    """tls (TLS-ALPN-01) or http (HTTP-01) for certificates of http services."""
    acme_ca_server: str
    """ACME directory; use the staging one to test."""
    allow_countries: list[str]
    """Fleet default: only visitors from these ISO 3166 countries reach the services."""
    deny_countries: list[str]
    """Fleet default: visitors from these ISO 3166 countries are dropped."""
    geo_sources: list[str]
    """Country prefix lists: https:// URLs of RIR delegated-extended statistics files, each with an .md5 beside it."""
    crowdsec: str
    """off, offline (bans from the edge's own logs) or online (plus the community list)."""
    crowdsec_enroll_key: pulumi.Input[str]
    """CrowdSec console enrolment key (secret; needs crowdsec online): each edge enrols once, by name."""
    alert_ntfy_url: pulumi.Input[str]
    """Alerts to this ntfy topic, https://host/topic (secret: whoever has it reads them)."""
    alert_webhook_url: pulumi.Input[str]
    """Alerts POSTed as JSON to this https URL: Gotify, Discord, Slack, Home Assistant (secret: it is the token)."""
    alert_smtp_server: str
    """Alerts mailed through this SMTP relay, host or host:port (587 if left out)."""
    alert_smtp_security: str
    """starttls (submission, port 587) or tls (implicit TLS, port 465)."""
    alert_smtp_from: str
    """Sender address of the alert mails."""
    alert_smtp_to: list[str]
    """Where alert mails go: one or more addresses."""
    alert_smtp_user: str
    """Login at the relay; empty = the relay takes mail without one."""
    alert_smtp_password: pulumi.Input[str]
    """Password for alertSmtpUser (secret)."""
    alert_after_seconds: int
    """How long a tunnel, edge or service is down before it is an alert; a router's nightly reconnect is shorter."""
    alert_reminder_hours: int
    """An incident that lasts is announced again this often; 0 = only when it starts and ends."""
    alert_cert_days: int
    """Alert when the certificate an edge serves for an http hostname has fewer days left than this."""
