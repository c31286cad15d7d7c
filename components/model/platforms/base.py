"""What every platform an edge can run on is, as facts.

A platform is one module in this package with one ``Platform`` subclass: its catalog
entries, its limits, its images and their traits, and the edge fields only it reads.
The config parser and the renderers read these without Pulumi; the cloud work of the
same provider (its machine, firewall and DNS records, its answers under the offline
mock engine) builds on them in ``components/providers/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.model.catalog import MIN_RAM_GB, Location, ServerType
from components.model.firewall import FirewallRule
from components.model.fleet import EdgeSpec

Fail = Callable[[str, str], None]
"""How a platform reports a config problem: (key below ``cgnat-edge:``, problem and fix)."""

DEBIAN_SECURITY_ORIGINS = (
    "origin=Debian,codename=${distro_codename},label=Debian-Security",
    "origin=Debian,codename=${distro_codename}-security,label=Debian-Security",
)


@dataclass(frozen=True)
class ImageTraits:
    """What the bootstrap does differently on an image; the defaults are Debian 12's.

    Renderers read these instead of asking which provider or distribution an edge runs."""

    security_origins: tuple[str, ...] = DEBIAN_SECURITY_ORIGINS
    """unattended-upgrades ``Origins-Pattern`` entries of the image's security archive."""
    firewall_takeover: tuple[str, ...] = ()
    """Shell commands run before the edge's nftables ruleset is loaded, so nothing the
    image loads at boot (its own iptables rules) can override that ruleset later."""
    boot_firewall: tuple[tuple[str, str], ...] = ()
    """(path, iptables-restore text) the image ships and loads at every boot; the lab
    loads them into an edge to reproduce the image."""


class Platform:
    """One cloud provider's catalog facts as class attributes, its rules as methods."""

    name: str
    label: str
    currency: str
    ipv4_monthly: float
    """Cost of the address that survives a server replacement."""
    default_server_type: str
    default_image: str
    images: tuple[str, ...]
    """Images the bootstrap is written for (Debian 12); anything else is refused."""
    locations: tuple[Location, ...]
    server_types: tuple[ServerType, ...]
    user_data_limit: int
    """Largest user data the provider accepts, in bytes."""
    firewall_rule_limit: int
    """Rules one firewall may hold (inbound plus any fixed outbound rules)."""
    fixed_firewall_rules: int = 0
    """Rules the provider module adds besides ``firewall_rules`` (e.g. outbound)."""
    manages_dns: bool = False
    """Whether ``dnsProvider`` may name this provider."""
    edge_fields: tuple[str, ...] = ()
    """Edge fields only this provider reads (``parse_edge``), beside the common ones."""
    locations_note: str = ""
    """What the catalog's locations have in common, for the unknown-location error."""
    sdk_extra: str | None = None
    """The optional dependency group (``pyproject.toml``) that installs this provider's
    Pulumi SDK, when the SDK is too large to install for every stack; None: a default
    dependency, always there."""
    sdk_module: str = ""
    """The SDK's Python module, what a stack naming this provider must be able to import."""
    private_prefix: str = ""
    """The subnet the provider puts an edge's own private address in, when the program
    chooses it: a tunnel, LAN or device prefix over it would take the edge's own routes."""
    metadata_addresses: tuple[str, ...] = ("169.254.169.254",)
    """Where the provider's metadata service answers the instance, IPv4 and IPv6.  It
    hands out the user data to whoever asks from the machine, for the machine's life."""
    metadata_shared: tuple[str, ...] = ()
    """Other services the provider runs on a metadata address ("udp 53"), which every
    user of the edge may use (the system resolver and time daemon do not run as root)."""

    # -- catalog ----------------------------------------------------------------

    def location(self, code: str) -> Location | None:
        return next((loc for loc in self.locations if loc.code == code), None)

    def server_type(self, name: str) -> ServerType | None:
        return next((t for t in self.server_types if t.name == name), None)

    def types_in(self, code: str) -> list[ServerType]:
        """Types offered in ``code`` that are big enough for an edge, cheapest first,
        arm64 before x86-64 at the same price."""
        usable = [t for t in self.server_types if code in t.locations and t.ram_gb >= MIN_RAM_GB]
        return sorted(usable, key=lambda t: (t.monthly_price, t.arch != "arm64", t.name))

    def monthly_cost(self, server_type: str) -> float:
        """Server plus the address that outlives it."""
        stype = self.server_type(server_type)
        assert stype is not None, server_type
        return round(stype.monthly_price + self.ipv4_monthly, 2)

    def edge_cost(self, edge: EdgeSpec) -> tuple[float, str | None]:
        """What one edge costs a month, and a note when the list price is not the whole
        story (a free allowance, say)."""
        return self.monthly_cost(edge.server_type.name), None

    def firewall_rule_count(self, rules: Sequence[FirewallRule]) -> int:
        """Rules ``rules`` take in one of this provider's firewalls."""
        return len(rules) + self.fixed_firewall_rules

    def image_traits(self, image: str) -> ImageTraits:
        return ImageTraits()

    # -- config -------------------------------------------------------------------

    def parse_edge(self, item: Mapping[str, Any], fail: Fail) -> Any:
        """This provider's own edge fields (``edge_fields``) as ``EdgeSpec.options``."""
        return None

    def check_fleet(self, edges: Sequence[EdgeSpec], fail: Fail) -> None:
        """Rules over all of this provider's edges (e.g. a tenancy-wide allowance)."""
        return None
