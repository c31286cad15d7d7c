"""Oracle Cloud's facts: Always Free Ampere A1 (arm64) instances.

Oracle's Always Free allowance covers 3,000 OCPU-hours and 18,000 GB-hours of
VM.Standard.A1.Flex a month per tenancy (4 OCPU and 24 GB running all month), 200 GB
of block volume, in the tenancy's home region only.  The catalog sizes stay inside it
and the fleet check keeps the sum of the stack's Oracle edges inside it, so the cost
output's 0 is true (unless an edge sets ``alwaysFree: false``).

Oracle has no Debian platform image.  Edges run Canonical's Ubuntu 24.04 aarch64
platform image, whose own iptables rules (``/etc/iptables/rules.v4``: everything but
SSH rejected, reloaded at every boot by netfilter-persistent) would sit beside the
edge's nftables ruleset and reject what it accepts; ``image_traits`` tells the
bootstrap to retire them before the ruleset is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.model.catalog import Location, ServerType
from components.model.firewall import FirewallRule
from components.model.fleet import EdgeSpec
from components.model.platforms.base import Fail, ImageTraits, Platform

SHAPE = "VM.Standard.A1.Flex"
FREE_OCPUS = 4
FREE_MEMORY_GB = 24
FREE_BLOCK_GB = 200
BOOT_VOLUME_GB = 50
"""Oracle's minimum boot volume; four edges fill the 200 GB the allowance includes."""
IMAGE = "ubuntu-24.04"
_OCID = re.compile(r"ocid1\.(compartment|tenancy)\.oc[0-9]+\.[a-z0-9-]*\.[a-z0-9]{1,200}")
"""Used with ``fullmatch``, so a pasted line break cannot ride along into the provider calls."""

RULES_V4 = """\
# Oracle Cloud's Canonical Ubuntu platform image: /etc/iptables/rules.v4, loaded at
# every boot by netfilter-persistent (reproduced for the lab).
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:InstanceServices - [0:0]
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p icmp -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p udp -m udp --sport 123 -j ACCEPT
-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT
-A INPUT -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -j REJECT --reject-with icmp-host-prohibited
-A OUTPUT -d 169.254.0.0/16 -j InstanceServices
-A InstanceServices -d 169.254.0.2/32 -p tcp -m owner --uid-owner 0 -m tcp --dport 3260 -j ACCEPT
-A InstanceServices -d 169.254.2.0/24 -p tcp -m owner --uid-owner 0 -m tcp --dport 3260 -j ACCEPT
-A InstanceServices -d 169.254.4.0/24 -p tcp -m owner --uid-owner 0 -m tcp --dport 3260 -j ACCEPT
-A InstanceServices -d 169.254.5.0/24 -p tcp -m owner --uid-owner 0 -m tcp --dport 3260 -j ACCEPT
-A InstanceServices -d 169.254.0.2/32 -p tcp -m tcp --dport 80 -j ACCEPT
-A InstanceServices -d 169.254.169.254/32 -p udp -m udp --dport 53 -j ACCEPT
-A InstanceServices -d 169.254.169.254/32 -p tcp -m tcp --dport 53 -j ACCEPT
-A InstanceServices -d 169.254.0.3/32 -p tcp -m owner --uid-owner 0 -m tcp --dport 80 -j ACCEPT
-A InstanceServices -d 169.254.0.4/32 -p tcp -m tcp --dport 80 -j ACCEPT
-A InstanceServices -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j ACCEPT
-A InstanceServices -d 169.254.169.254/32 -p udp -m udp --dport 67 -j ACCEPT
-A InstanceServices -d 169.254.169.254/32 -p udp -m udp --dport 69 -j ACCEPT
-A InstanceServices -d 169.254.169.254/32 -p udp -m udp --dport 123 -j ACCEPT
-A InstanceServices -d 169.254.0.0/16 -p tcp -m tcp -j REJECT --reject-with tcp-reset
-A InstanceServices -d 169.254.0.0/16 -p udp -m udp -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""

UBUNTU = ImageTraits(
    security_origins=(
        "origin=Ubuntu,archive=${distro_codename}-security,label=Ubuntu",
        "origin=UbuntuESMApps,archive=${distro_codename}-apps-security",
        "origin=UbuntuESM,archive=${distro_codename}-infra-security",
    ),
    # netfilter-persistent would reload the image's rules at every boot, in no fixed
    # order with nftables.service; with the service disabled and the files moved
    # aside, the ruleset nftables.service loads (``flush ruleset`` first, which also
    # drops the iptables-nft tables of this first boot) is the only one.
    firewall_takeover=(
        "systemctl disable --now netfilter-persistent.service 2>/dev/null || true",
        "for f in /etc/iptables/rules.v4 /etc/iptables/rules.v6; do "
        'if [ -e "$f" ]; then mv "$f" "$f.replaced-by-cgnat-edge"; fi; done',
    ),
    boot_firewall=(("/etc/iptables/rules.v4", RULES_V4),),
)


@dataclass(frozen=True)
class OracleEdge:
    """The Oracle-only fields of an edge (``EdgeSpec.options``)."""

    compartment: str
    availability_domain: int | None
    """1-based; None: the first of the region's domains that offers the A1 shape."""
    always_free: bool


@dataclass(frozen=True)
class _Region:
    location: Location
    domains: int
    """Availability domains of the region (1 or 3)."""


def _region(code: str, city: str, country: str, continent: str, lat: float, lon: float, domains: int = 1) -> _Region:
    return _Region(Location("oracle", code, city, country, continent, lat, lon), domains)


# Commercial regions that sell Ampere A1 (Oracle's "Regions and Availability Domains"
# and the A1 availability table, read on catalog.PRICES_READ).
_REGIONS = (
    _region("eu-frankfurt-1", "Frankfurt", "DE", "EU", 50.11, 8.68, 3),
    _region("eu-amsterdam-1", "Amsterdam", "NL", "EU", 52.37, 4.90),
    _region("uk-london-1", "London", "GB", "EU", 51.51, -0.13, 3),
    _region("eu-paris-1", "Paris", "FR", "EU", 48.86, 2.35),
    _region("eu-stockholm-1", "Stockholm", "SE", "EU", 59.33, 18.07),
    _region("eu-milan-1", "Milan", "IT", "EU", 45.46, 9.19),
    _region("eu-zurich-1", "Zurich", "CH", "EU", 47.38, 8.54),
    _region("us-ashburn-1", "Ashburn", "US", "NA", 39.04, -77.49, 3),
    _region("us-phoenix-1", "Phoenix", "US", "NA", 33.45, -112.07, 3),
    _region("us-sanjose-1", "San Jose", "US", "NA", 37.34, -121.89),
    _region("ca-toronto-1", "Toronto", "CA", "NA", 43.65, -79.38),
    _region("sa-saopaulo-1", "Sao Paulo", "BR", "SA", -23.55, -46.63),
    _region("ap-tokyo-1", "Tokyo", "JP", "AS", 35.68, 139.69),
    _region("ap-singapore-1", "Singapore", "SG", "AS", 1.35, 103.82),
    _region("ap-mumbai-1", "Mumbai", "IN", "AS", 19.08, 72.88),
    _region("ap-sydney-1", "Sydney", "AU", "OC", -33.87, 151.21),
)
DOMAINS = {r.location.code: r.domains for r in _REGIONS}
_ALL = frozenset(DOMAINS)


A1_OCPU_HOUR = 0.01
A1_GB_HOUR = 0.0015
"""A1.Flex pay-as-you-go list prices (USD) beyond the Always Free allowance."""
HOURS_A_MONTH = 730


def _a1(ocpus: int, memory_gb: int) -> ServerType:
    # One A1 OCPU is one Ampere core; inside the allowance the list price is 0.
    return ServerType(
        "oracle", f"A1.Flex-{ocpus}-{memory_gb}", "arm64", ocpus, memory_gb, BOOT_VOLUME_GB, 0.0, "USD", _ALL
    )


class Oracle(Platform):
    name = "oracle"
    label = "Oracle Cloud"
    currency = "USD"
    ipv4_monthly = 0.0  # Oracle charges nothing for a reserved public IP
    default_server_type = "A1.Flex-1-6"
    default_image = IMAGE
    images = (IMAGE,)
    locations = tuple(r.location for r in _REGIONS)
    locations_note = " with Ampere A1 (arm64) capacity"
    server_types = (
        _a1(1, 6),
        _a1(2, 12),
        _a1(3, 18),
        _a1(4, 24),
    )
    # The cloud-config as the bootstrap renders it, held to Hetzner's bound; what Oracle
    # limits is the metadata (gzipped, base64, with the SSH keys), checked by its provider.
    user_data_limit = 32 * 1024
    firewall_rule_limit = 200  # ingress rules per security list
    edge_fields = ("compartment", "availabilityDomain", "alwaysFree")
    # 150 MB installed, as much as every other dependency together.
    sdk_extra = "oracle"
    sdk_module = "pulumi_oci"
    private_prefix = "10.0.0.0/24"
    # The IPv6 address is the one Oracle's own SDK asks; the VCN resolver and the NTP
    # server share the IPv4 address with the metadata service (the image's own rules,
    # RULES_V4 above, open them to every user for that reason).
    metadata_addresses = ("169.254.169.254", "fd00:c1::a9fe:a9fe")
    metadata_shared = ("udp 53", "tcp 53", "udp 123")

    def firewall_rule_count(self, rules: Sequence[FirewallRule]) -> int:
        """A security-list rule has one source, and ICMP is two protocols (v4 and v6)."""
        return sum(len(r.sources) for r in rules)

    def image_traits(self, image: str) -> ImageTraits:
        return UBUNTU

    def edge_cost(self, edge: EdgeSpec) -> tuple[float, str | None]:
        """0 inside the allowance (the fleet check keeps the stack's free edges in it);
        outside it, A1's pay-as-you-go list price per OCPU-hour and GB-hour."""
        if edge.options is None or edge.options.always_free:
            return 0.0, "Always Free: inside the tenancy's Ampere A1 allowance (4 OCPU, 24 GB, 200 GB block volume)"
        t = edge.server_type
        amount = HOURS_A_MONTH * (t.vcpus * A1_OCPU_HOUR + t.ram_gb * A1_GB_HOUR)
        note = "alwaysFree: false: A1 pay-as-you-go list price; the boot volume stays inside 200 GB free"
        return round(amount, 2), note

    # -- config -------------------------------------------------------------------

    def parse_edge(self, item: Mapping[str, Any], fail: Fail) -> OracleEdge | None:
        compartment = item.get("compartment")
        if not compartment:
            fail(
                "compartment",
                "is required for an Oracle Cloud edge; set it to the OCID of the compartment its network and "
                "instance go in (ocid1.compartment.oc1..., or the tenancy OCID for the root compartment)",
            )
            return None
        if not isinstance(compartment, str) or not _OCID.fullmatch(compartment):
            text = compartment if isinstance(compartment, str) else ""
            shown = repr(text[:100] + "...") if len(text) > 100 else repr(compartment)
            extra = "; remove the spaces or line breaks around it" if text and text != text.strip() else ""
            fail(
                "compartment",
                f"{shown} is not a compartment or tenancy OCID{extra}; copy it from the console "
                "(Identity > Compartments), it looks like ocid1.compartment.oc1..aaaa...",
            )
            return None
        code = str(item.get("location", ""))
        domains = DOMAINS.get(code, 1)
        domain = item.get("availabilityDomain")
        if isinstance(domain, str) and domain.strip().isascii() and domain.strip().isdigit():
            domain = int(domain)  # quoted in the stack file: the same number
        if domain is not None and (
            isinstance(domain, bool) or not isinstance(domain, int) or not 1 <= domain <= domains
        ):
            fail(
                "availabilityDomain",
                f"{domain!r} is not an availability domain of {code}, which has "
                + ("only 1; leave availabilityDomain out" if domains == 1 else f"{domains}; use 1 to {domains}"),
            )
            return None
        always_free = True if item.get("alwaysFree") is None else item["alwaysFree"]
        if isinstance(always_free, str) and always_free.strip().lower() in ("true", "false"):
            always_free = always_free.strip().lower() == "true"  # quoted, the same word
        if not isinstance(always_free, bool):
            fail(
                "alwaysFree", f"{always_free!r} is not true or false; write true (stay in the free allowance) or false"
            )
            return None
        return OracleEdge(str(compartment), domain, always_free)

    def check_fleet(self, edges: Sequence[EdgeSpec], fail: Fail) -> None:
        """The Always Free allowance is per tenancy and home region: the stack's free
        Oracle edges must fit it together (other use of the tenancy comes on top)."""
        free = [e for e in edges if isinstance(e.options, OracleEdge) and e.options.always_free]
        if not free:
            return
        names = ", ".join(f"{e.name} ({e.server_type.name})" for e in free)
        ocpus = sum(e.server_type.vcpus for e in free)
        memory = sum(e.server_type.ram_gb for e in free)
        if ocpus > FREE_OCPUS or memory > FREE_MEMORY_GB:
            fail(
                "edges",
                f"the Always Free Oracle edges {names} need {ocpus} OCPU and {memory:g} GB together, over the "
                f"allowance of {FREE_OCPUS} OCPU and {FREE_MEMORY_GB} GB per tenancy; pick smaller serverTypes "
                "(A1.Flex-1-6 each fits four edges) or set alwaysFree: false on an edge to pay for it",
            )
        if len(free) * BOOT_VOLUME_GB > FREE_BLOCK_GB:
            fail(
                "edges",
                f"{len(free)} Always Free Oracle edges need {len(free) * BOOT_VOLUME_GB} GB of boot volumes, over the "
                f"{FREE_BLOCK_GB} GB allowance; keep at most {FREE_BLOCK_GB // BOOT_VOLUME_GB} free Oracle edges",
            )
        regions = sorted({e.location.code for e in free})
        if len(regions) > 1:
            fail(
                "edges",
                f"the Always Free Oracle edges {names} are in {', '.join(regions)}, but Always Free instances run "
                "only in the tenancy's home region; put them all in your home region, or set alwaysFree: false "
                "on the ones elsewhere",
            )


PLATFORM = Oracle()
