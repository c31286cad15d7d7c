"""Oracle Cloud's resources: an instance in its own network behind a reserved public
IPv4 and a security list, one OCI provider per edge for its region."""

from __future__ import annotations

import base64
import gzip
import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from components.config.keys import fix_key
from components.model.firewall import ANYWHERE, FirewallRule, firewall_rules
from components.model.fleet import EdgeSpec, FleetConfig
from components.model.platforms import oracle as platform
from components.model.platforms.oracle import BOOT_VOLUME_GB, DOMAINS, SHAPE, OracleEdge
from components.providers.base import (
    InboundRule,
    Machine,
    Provider,
    get,
    labels,
    server_name,
)
from components.renderers.bootstrap import UserDataTooLarge

if TYPE_CHECKING:
    import pulumi

METADATA_LIMIT = 32_000
"""Bytes of instance metadata (the base64 user data and the SSH keys together)."""
VCN_CIDR = "10.0.0.0/16"
SUBNET_CIDR = platform.Oracle.private_prefix
IPV6_HOST = 0xED6E
"""Host part of the edge's IPv6 address in its subnet's /64: chosen, not assigned, so a
replaced instance comes back on the same address (Oracle keeps no IPv6 for a VNIC)."""
_PROTOCOLS = {"tcp": "6", "udp": "17", "icmp": "1", "icmpv6": "58"}
_NAMES = {number: name for name, number in _PROTOCOLS.items()} | {"58": "icmp"}


def _field(result: Any, name: str) -> Any:
    """A field of a data-source result, which arrives typed or as a plain mapping."""
    return result.get(name) if isinstance(result, Mapping) else getattr(result, name, None)


def first_offering(edge: EdgeSpec, names: Sequence[str], offers: Sequence[Sequence[Any]]) -> str:
    """The first availability domain whose shape list has A1, or a clear error."""
    for name, shapes in zip(names, offers, strict=False):
        if any(_field(s, "name") == SHAPE for s in shapes or []):
            return name
    others = ", ".join(code for code in DOMAINS if code != edge.location.code)
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


class Oracle(platform.Oracle, Provider):
    resource_prefix = "oci:"
    server_resource_type = "oci:Core/instance:Instance"
    firewall_resource_type = "oci:Core/securityList:SecurityList"

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
            # The legacy endpoints (/opc/v1, /openstack) answer any plain GET; with them
            # off, the metadata service (user data included) wants IMDSv2's header.
            instance_options=oci.core.InstanceInstanceOptionsArgs(are_legacy_imds_endpoints_disabled=True),
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
            for i in range(DOMAINS[edge.location.code])
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

    def check_user_data(self, edge: EdgeSpec, user_data: str, ssh_keys: Sequence[str]) -> None:
        self._metadata(edge, user_data, ssh_keys)

    def _metadata(self, edge: EdgeSpec, user_data: str, keys: Sequence[str]) -> dict[str, str]:
        metadata = user_data_metadata(user_data, keys)
        size = metadata_size(metadata)
        if size > METADATA_LIMIT:
            raise UserDataTooLarge(
                f"{fix_key('services')}: the instance metadata of edge {edge.name!r} (gzipped user-data and SSH keys) "
                f"would be {size} bytes, over Oracle Cloud's {METADATA_LIMIT}-byte limit by {size - METADATA_LIMIT} "
                f"bytes; declare fewer services or fewer {fix_key('sshPublicKeys')}"
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


PROVIDER: Oracle = Oracle()
