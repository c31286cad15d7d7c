"""Oracle Cloud: Always Free Ampere A1 (arm64) instances behind a reserved public IPv4
and a security list.

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

import base64
import gzip
import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.model.catalog import Location, ServerType
from components.model.fleet import EdgeSpec, FleetConfig
from components.providers.base import (
    ANYWHERE,
    Fail,
    FirewallRule,
    ImageTraits,
    InboundRule,
    Machine,
    Provider,
    firewall_rules,
    get,
    labels,
    server_name,
)

if TYPE_CHECKING:
    import pulumi

SHAPE = "VM.Standard.A1.Flex"
FREE_OCPUS = 4
FREE_MEMORY_GB = 24
FREE_BLOCK_GB = 200
BOOT_VOLUME_GB = 50
"""Oracle's minimum boot volume; four edges fill the 200 GB the allowance includes."""
METADATA_LIMIT = 32_000
"""Bytes of instance metadata (the base64 user data and the SSH keys together)."""
IMAGE = "ubuntu-24.04"
VCN_CIDR = "10.0.0.0/16"
SUBNET_CIDR = "10.0.0.0/24"
IPV6_HOST = 0xED6E
"""Host part of the edge's IPv6 address in its subnet's /64: chosen, not assigned, so a
replaced instance comes back on the same address (Oracle keeps no IPv6 for a VNIC)."""
_OCID = re.compile(r"^ocid1\.(compartment|tenancy)\.oc[0-9]+\.[a-z0-9-]*\.[a-z0-9]+$")
_PROTOCOLS = {"tcp": "6", "udp": "17", "icmp": "1", "icmpv6": "58"}
_NAMES = {number: name for name, number in _PROTOCOLS.items()} | {"58": "icmp"}

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
_DOMAINS = {r.location.code: r.domains for r in _REGIONS}
_ALL = frozenset(_DOMAINS)


A1_OCPU_HOUR = 0.01
A1_GB_HOUR = 0.0015
"""A1.Flex pay-as-you-go list prices (USD) beyond the Always Free allowance."""
HOURS_A_MONTH = 730


def _a1(ocpus: int, memory_gb: int) -> ServerType:
    # One A1 OCPU is one Ampere core; inside the allowance the list price is 0.
    return ServerType(
        "oracle", f"A1.Flex-{ocpus}-{memory_gb}", "arm64", ocpus, memory_gb, BOOT_VOLUME_GB, 0.0, "USD", _ALL
    )


def _field(result: Any, name: str) -> Any:
    """A field of a data-source result, which arrives typed or as a plain mapping."""
    return result.get(name) if isinstance(result, Mapping) else getattr(result, name, None)


def first_offering(edge: EdgeSpec, names: Sequence[str], offers: Sequence[Sequence[Any]]) -> str:
    """The first availability domain whose shape list has A1, or a clear error."""
    for name, shapes in zip(names, offers, strict=False):
        if any(_field(s, "name") == SHAPE for s in shapes or []):
            return name
    others = ", ".join(code for code in _DOMAINS if code != edge.location.code)
    raise ValueError(
        f"cgnat-edge: edge {edge.name!r}: no availability domain of {edge.location.code} offers {SHAPE} to this "
        f"tenancy; move the edge to another region with A1 ({others}); an Always Free edge must stay in the "
        "tenancy's home region"
    )


def user_data_metadata(user_data: str, ssh_keys: Sequence[str]) -> dict[str, str]:
    """The instance metadata: cloud-init reads gzip user data as it reads plain, and
    gzip keeps a large stack under the 32,000-byte metadata limit (the base64 that
    the API wants costs a third more)."""
    packed = base64.b64encode(gzip.compress(user_data.encode(), compresslevel=9, mtime=0)).decode()
    return {"ssh_authorized_keys": "\n".join(ssh_keys) + "\n", "user_data": packed}


def metadata_size(metadata: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())


def ipv6_address(subnet_cidr: str) -> str:
    return str(ipaddress.IPv6Network(subnet_cidr).network_address + IPV6_HOST)


def first_64(vcn_cidrs: Sequence[str]) -> str:
    """The subnet's /64: the first of the /56 Oracle allocates to the VCN."""
    return str(next(ipaddress.IPv6Network(vcn_cidrs[0]).subnets(new_prefix=64)))


class Oracle(Provider):
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
    # limits is the metadata (gzipped, base64, with the SSH keys), checked in _metadata.
    user_data_limit = 32 * 1024
    firewall_rule_limit = 200  # ingress rules per security list
    resource_prefix = "oci:"
    server_resource_type = "oci:Core/instance:Instance"
    firewall_resource_type = "oci:Core/securityList:SecurityList"
    edge_fields = ("compartment", "availabilityDomain", "alwaysFree")

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
        if not _OCID.match(str(compartment)):
            fail(
                "compartment",
                f"{compartment!r} is not a compartment or tenancy OCID; copy it from the console "
                "(Identity > Compartments), it looks like ocid1.compartment.oc1..aaaa...",
            )
            return None
        code = str(item.get("location", ""))
        domains = _DOMAINS.get(code, 1)
        domain = item.get("availabilityDomain")
        if domain is not None and (
            isinstance(domain, bool) or not isinstance(domain, int) or not 1 <= domain <= domains
        ):
            fail(
                "availabilityDomain",
                f"{domain!r} is not an availability domain of {code}, which has "
                + ("only 1; leave availabilityDomain out" if domains == 1 else f"{domains}; use 1 to {domains}"),
            )
            return None
        always_free = item.get("alwaysFree", True)
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

    # -- cloud resources ------------------------------------------------------------

    def ssh_keys(
        self, cfg: FleetConfig, public_key: pulumi.Output[str], parent: pulumi.Resource
    ) -> list[pulumi.Output[str]]:
        """Oracle has no key objects: the keys go into each instance's metadata."""
        return [public_key]

    def create_machine(
        self,
        cfg: FleetConfig,
        edge: EdgeSpec,
        user_data: pulumi.Input[str],
        ssh_key_ids: list[pulumi.Output[str]],
        parent: pulumi.Resource,
    ) -> Machine:
        import pulumi
        import pulumi_oci as oci

        opts: OracleEdge = edge.options
        tags = labels(cfg, edge.name)
        display = server_name(cfg, edge.name)
        # One provider per edge, for its region; credentials come the OCI way
        # (~/.oci/config or the provider's environment variables), never from the stack.
        region = oci.Provider(f"{edge.name}-oci", region=edge.location.code, opts=pulumi.ResourceOptions(parent=parent))
        child = pulumi.ResourceOptions(parent=parent, provider=region)
        invoke = pulumi.InvokeOutputOptions(provider=region, parent=parent)

        vcn = oci.core.Vcn(
            f"{edge.name}-vcn",
            compartment_id=opts.compartment,
            cidr_blocks=[VCN_CIDR],
            is_ipv6enabled=True,
            display_name=display,
            freeform_tags=tags,
            opts=child,
        )
        gateway = oci.core.InternetGateway(
            f"{edge.name}-internet-gateway",
            compartment_id=opts.compartment,
            vcn_id=vcn.id,
            enabled=True,
            display_name=display,
            freeform_tags=tags,
            opts=child,
        )
        routes = oci.core.RouteTable(
            f"{edge.name}-routes",
            compartment_id=opts.compartment,
            vcn_id=vcn.id,
            route_rules=[
                oci.core.RouteTableRouteRuleArgs(
                    destination=destination, destination_type="CIDR_BLOCK", network_entity_id=gateway.id
                )
                for destination in ANYWHERE
            ],
            display_name=display,
            freeform_tags=tags,
            opts=child,
        )
        security = oci.core.SecurityList(
            f"{edge.name}-security-list",
            compartment_id=opts.compartment,
            vcn_id=vcn.id,
            ingress_security_rules=[
                self._ingress(oci, rule, source) for rule in firewall_rules(cfg) for source in rule.sources
            ],
            # Stateful rules: replies to outbound traffic (apt, ACME, the tunnel) pass.
            egress_security_rules=[
                oci.core.SecurityListEgressSecurityRuleArgs(destination=destination, protocol="all")
                for destination in ANYWHERE
            ],
            display_name=display,
            freeform_tags=tags,
            opts=child,
        )
        subnet_v6 = vcn.ipv6cidr_blocks.apply(first_64)
        subnet = oci.core.Subnet(
            f"{edge.name}-subnet",
            compartment_id=opts.compartment,
            vcn_id=vcn.id,
            cidr_block=SUBNET_CIDR,
            ipv6cidr_blocks=[subnet_v6],
            route_table_id=routes.id,
            security_list_ids=[security.id],
            prohibit_public_ip_on_vnic=False,
            display_name=display,
            freeform_tags=tags,
            opts=child,
        )
        availability_domain = self._availability_domain(oci, edge, invoke)
        image = oci.core.get_images_output(
            compartment_id=opts.compartment,
            operating_system="Canonical Ubuntu",
            operating_system_version="24.04",
            shape=SHAPE,
            sort_by="TIMECREATED",
            sort_order="DESC",
            opts=invoke,
        )
        keys = [*ssh_key_ids, *cfg.ssh.public_keys]
        metadata = pulumi.Output.all(user_data, *keys).apply(lambda args: self._metadata(edge, args[0], args[1:]))
        ipv6 = subnet_v6.apply(ipv6_address)
        instance = oci.core.Instance(
            f"{edge.name}-instance",
            compartment_id=opts.compartment,
            availability_domain=availability_domain,
            display_name=display,
            shape=SHAPE,
            shape_config=oci.core.InstanceShapeConfigArgs(
                ocpus=float(edge.server_type.vcpus), memory_in_gbs=float(edge.server_type.ram_gb)
            ),
            source_details=oci.core.InstanceSourceDetailsArgs(
                source_type="image", source_id=image.images[0].id, boot_volume_size_in_gbs=str(BOOT_VOLUME_GB)
            ),
            create_vnic_details=oci.core.InstanceCreateVnicDetailsArgs(
                subnet_id=subnet.id,
                # The reserved address below is the public one; an ephemeral one would
                # change with every replacement.
                assign_public_ip="false",
                assign_ipv6ip=True,
                ipv6address_ipv6subnet_cidr_pair_details=[
                    oci.core.InstanceCreateVnicDetailsIpv6addressIpv6subnetCidrPairDetailArgs(
                        ipv6subnet_cidr=subnet_v6, ipv6address=ipv6
                    )
                ],
                display_name=display,
            ),
            metadata=metadata,
            preserve_boot_volume=False,
            freeform_tags=tags,
            opts=pulumi.ResourceOptions(
                parent=parent,
                provider=region,
                # Metadata (user data, SSH keys) is pushed over SSH once the instance
                # runs; a newer Ubuntu image or another domain list must not rebuild it.
                ignore_changes=["metadata", "sourceDetails", "availabilityDomain"],
                # The Always Free allowance may not hold two instances at once.
                delete_before_replace=True,
            ),
        )
        attachments = oci.core.get_vnic_attachments_output(
            compartment_id=opts.compartment, instance_id=instance.id, opts=invoke
        )
        private_ips = oci.core.get_private_ips_output(vnic_id=attachments.vnic_attachments[0].vnic_id, opts=invoke)
        # A reserved public IP is its own object; a replaced instance takes it over by
        # an in-place update of private_ip_id, so DNS and the home router keep pointing.
        public_ip = oci.core.PublicIp(
            f"{edge.name}-reserved-ip",
            compartment_id=opts.compartment,
            lifetime="RESERVED",
            private_ip_id=private_ips.private_ips.apply(
                lambda ips: next(_field(ip, "id") for ip in ips if _field(ip, "is_primary"))
            ),
            display_name=f"{display}-ipv4",
            freeform_tags=tags,
            opts=pulumi.ResourceOptions(parent=parent, provider=region, protect=True),
        )
        return Machine(
            server=instance,
            server_id=instance.id,
            ipv4=public_ip.ip_address,
            ipv6=ipv6,
            reachable_after=[instance, public_ip],
        )

    def _availability_domain(self, oci: Any, edge: EdgeSpec, invoke: Any) -> pulumi.Output[str]:
        """The configured domain, or the first of the region's that offers the A1 shape
        to this tenancy (looked up on each run; the instance ignores later changes)."""
        import pulumi

        opts: OracleEdge = edge.options
        domains = oci.identity.get_availability_domains_output(compartment_id=opts.compartment, opts=invoke)
        names = domains.availability_domains.apply(lambda ads: [ad.name for ad in ads])
        if opts.availability_domain is not None:
            return names.apply(lambda n: n[opts.availability_domain - 1])
        offers = [
            oci.core.get_shapes_output(
                compartment_id=opts.compartment,
                availability_domain=names.apply(lambda n, i=i: n[i]),
                shape=SHAPE,
                opts=invoke,
            ).shapes
            for i in range(_DOMAINS[edge.location.code])
        ]
        return pulumi.Output.all(names, *offers).apply(lambda found: first_offering(edge, found[0], found[1:]))

    @staticmethod
    def _ingress(oci: Any, rule: FirewallRule, source: str) -> Any:
        v6 = ipaddress.ip_network(source, strict=False).version == 6
        protocol = "icmpv6" if rule.protocol == "icmp" and v6 else rule.protocol
        ports = None
        if rule.ports is not None:
            ports = {"min": rule.ports[0], "max": rule.ports[1]}
        return oci.core.SecurityListIngressSecurityRuleArgs(
            protocol=_PROTOCOLS[protocol],
            source=source,
            source_type="CIDR_BLOCK",
            stateless=False,
            description=rule.description,
            tcp_options=oci.core.SecurityListIngressSecurityRuleTcpOptionsArgs(**ports)
            if ports and rule.protocol == "tcp"
            else None,
            udp_options=oci.core.SecurityListIngressSecurityRuleUdpOptionsArgs(**ports)
            if ports and rule.protocol == "udp"
            else None,
        )

    def _metadata(self, edge: EdgeSpec, user_data: str, keys: Sequence[str]) -> dict[str, str]:
        from components.renderers.bootstrap import UserDataTooLarge

        metadata = user_data_metadata(user_data, keys)
        size = metadata_size(metadata)
        if size > METADATA_LIMIT:
            raise UserDataTooLarge(
                f"cgnat-edge: the instance metadata of edge {edge.name!r} (gzipped user data and SSH keys) is {size} "
                f"bytes, over Oracle Cloud's {METADATA_LIMIT}-byte limit. Declare fewer services or SSH keys."
            )
        return metadata

    # -- offline mock engine and policy ---------------------------------------------

    def mock_resource(self, typ: str, n: int, rid: str, inputs: Mapping[str, Any]) -> tuple[str, dict]:
        kind = typ.split(":")[-1].lower()
        ocid = f"ocid1.{kind}.oc1.mock.{rid}"
        if typ == "oci:Core/vcn:Vcn":
            return ocid, {"ipv6cidrBlocks": [f"2001:db8:{n % 0xFFFF:x}:{(n >> 16) % 0xFF:x}00::/56"]}
        if typ == "oci:Core/publicIp:PublicIp":
            return ocid, {"ipAddress": f"198.51.100.{122 + n % 8}", "lifetime": inputs.get("lifetime")}
        if typ == self.server_resource_type:
            return ocid, {"state": "RUNNING", "privateIp": "10.0.0.2"}
        return ocid, {}

    def user_data(self, inputs: Mapping[str, Any]) -> str:
        packed = (get(inputs, "metadata") or {}).get("user_data")
        return gzip.decompress(base64.b64decode(packed)).decode() if packed else ""

    def mock_call(self, token: str, args: Mapping[str, Any]) -> dict:
        if token == "oci:Identity/getAvailabilityDomains:getAvailabilityDomains":
            return {"availabilityDomains": [{"name": f"Mock:REGION-AD-{i}", "id": f"ad-{i}"} for i in (1, 2, 3)]}
        if token == "oci:Core/getShapes:getShapes":
            return {"shapes": [{"name": SHAPE}]}
        if token == "oci:Core/getImages:getImages":
            return {"images": [{"id": "ocid1.image.oc1.mock.ubuntu-24-04-aarch64", "displayName": "mock"}]}
        if token == "oci:Core/getVnicAttachments:getVnicAttachments":
            return {"vnicAttachments": [{"vnicId": f"ocid1.vnic.oc1.mock.{args.get('instanceId')}"}]}
        if token == "oci:Core/getPrivateIps:getPrivateIps":
            return {"privateIps": [{"id": f"ocid1.privateip.oc1.mock.{args.get('vnicId')}", "isPrimary": True}]}
        return {}

    def inbound_rules(self, inputs: Mapping[str, Any]) -> Iterator[InboundRule]:
        for rule in get(inputs, "ingressSecurityRules", "ingress_security_rules") or []:
            protocol = _NAMES.get(str(get(rule, "protocol")), str(get(rule, "protocol")))
            options = get(rule, "tcpOptions", "tcp_options") or get(rule, "udpOptions", "udp_options") or {}
            low, high = get(options, "min"), get(options, "max")
            port = None if low is None else (str(low) if low == high else f"{low}-{high}")
            yield InboundRule(protocol, port, [get(rule, "source")])

    def unfirewalled(self, server: Mapping[str, Any], resources: list[dict]) -> str | None:
        siblings = {r.get("type") for r in resources if r.get("parent") == server.get("parent")}
        if self.firewall_resource_type in siblings:
            return None
        return "has no Oracle Cloud security list; put it in a subnet whose security list is built from base.firewall_rules"


PROVIDER = Oracle()
