"""What a provider module supplies, and what every provider shares.

A provider is one module in this package with one ``Provider`` subclass: its catalog
entries, its machine, its SSH key upload, its firewall, its DNS records, the answers
its resources give under the offline mock engine, and the facts the policy check
reads.  Nothing outside this package names a provider, so a new one is one module
and one line in the registry (``components/providers/__init__.py``).

The catalog part is plain data, read by the config parser without Pulumi; the cloud
SDK of a provider is imported only inside the methods that create resources, so a
stack that does not use a provider never loads its SDK.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.model.catalog import MIN_RAM_GB, Location, ServerType
from components.model.fleet import EdgeSpec, FleetConfig
from components.model.ports import HEALTH_AGENT_PORT

if TYPE_CHECKING:
    import pulumi


@dataclass
class Machine:
    """What every provider hands back to ``EdgeNode``."""

    server: pulumi.CustomResource
    server_id: pulumi.Output[str]
    ipv4: pulumi.Output[str]
    """Address that survives a replacement of the server (Primary IP / reserved IP)."""
    ipv6: pulumi.Output[str]
    reachable_after: list[pulumi.Resource]
    """What must exist before SSH to ``ipv4`` can work (e.g. the IP's assignment)."""


@dataclass(frozen=True)
class FirewallRule:
    protocol: str  # tcp, udp, icmp
    ports: tuple[int, int] | None
    """Inclusive port range; None for ICMP."""
    sources: tuple[str, ...]
    description: str

    @property
    def port(self) -> str | None:
        """The range as both providers' APIs write it: ``443`` or ``27015-27030``."""
        if self.ports is None:
            return None
        low, high = self.ports
        return str(low) if low == high else f"{low}-{high}"


@dataclass(frozen=True)
class InboundRule:
    """An inbound rule as the policy check reads it back from a firewall resource."""

    protocol: str
    port: Any
    sources: list[Any]


ANYWHERE = ("0.0.0.0/0", "::/0")

Fail = Callable[[str, str], None]
"""How a provider reports a config problem: (key below ``cgnat-edge:``, problem and fix)."""

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


USER_DATA_IGNORED = ["userData", "sshKeys"]
"""Both force a new server at either provider.  Fresh nodes get the current cloud-init;
running nodes get changes pushed over SSH (see ``EdgeNode``), so editing a service or
adding an SSH key never rebuilds a VPS or moves its address."""


def _ranges(ports: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive ports merged: a game's 27015-27030 is one firewall rule, not 16."""
    merged: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if merged and merged[-1][1] == port - 1:
            merged[-1] = (merged[-1][0], port)
        else:
            merged.append((port, port))
    return merged


def firewall_rules(cfg: FleetConfig) -> list[FirewallRule]:
    """The provider firewall mirrors the host's nftables rules: same ports, same sources."""
    rules = [FirewallRule("tcp", (22, 22), tuple(str(c) for c in cfg.ssh.allowed_cidrs), "SSH")]
    for protocol in ("tcp", "udp"):
        for span in _ranges(cfg.public_ports(protocol)):
            rules.append(FirewallRule(protocol, span, ANYWHERE, _describe(cfg, protocol, span)))
    # The edges' health agents: in dnsMode edges only the other edges pass (nftables on
    # the edge holds the fleet's addresses, which the provider firewall cannot know up
    # front); in dnsMode records every checker, rate-limited per source by nftables.
    rules.append(
        FirewallRule("tcp", (HEALTH_AGENT_PORT, HEALTH_AGENT_PORT), ANYWHERE, "health agent (DNS health checks)")
    )
    rules.append(FirewallRule("icmp", None, ANYWHERE, "ICMP (path MTU discovery, ping)"))
    return rules


def _describe(cfg: FleetConfig, protocol: str, span: tuple[int, int]) -> str:
    low, high = span
    if protocol == "udp" and low == high == cfg.tunnel.listen_port:
        return "WireGuard"
    if protocol == "tcp" and low == high and low in (80, 443):
        return "HTTP" if low == 80 else "HTTPS"
    names = [s.name for s in cfg.services if s.protocol == protocol and low <= s.port <= high]
    if protocol == "udp" and low <= cfg.tunnel.listen_port <= high:
        names.insert(0, "WireGuard")
    return f"service {', '.join(names)}"


def labels(cfg: FleetConfig, edge_name: str | None = None) -> dict[str, str]:
    """The one label scheme of everything the stack creates (providers that take
    tags instead of labels write them as ``key:value``)."""
    out = {"app": "cgnat-edge", "stack": cfg.stack}
    if edge_name:
        out["edge"] = edge_name
    return out


def stack_key_name(cfg: FleetConfig) -> str:
    """Unique per project and stack, as both providers want key names."""
    return f"{cfg.project}-{cfg.stack}"


def server_name(cfg: FleetConfig, edge_name: str) -> str:
    """Provider-side name: deterministic, so the console shows what the stack owns."""
    return f"cgnat-edge-{cfg.stack}-{edge_name}"


class Provider(ABC):
    """One cloud provider: catalog facts as class attributes, cloud work as methods."""

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
    resource_prefix: str
    """The type-token prefix of this provider's resources (``hcloud:``)."""
    server_resource_type: str
    firewall_resource_type: str
    edge_fields: tuple[str, ...] = ()
    """Edge fields only this provider reads (``parse_edge``), beside the common ones."""
    locations_note: str = ""
    """What the catalog's locations have in common, for the unknown-location error."""

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

    # -- cloud resources ------------------------------------------------------------

    @abstractmethod
    def ssh_keys(
        self, cfg: FleetConfig, public_key: pulumi.Output[str], parent: pulumi.Resource
    ) -> list[pulumi.Output[str]]:
        """Register the stack's own key (``StackSshKey``) once; what servers refer to it by."""

    @abstractmethod
    def create_machine(
        self,
        cfg: FleetConfig,
        edge: EdgeSpec,
        user_data: pulumi.Input[str],
        ssh_key_ids: list[pulumi.Output[str]],
        parent: pulumi.Resource,
    ) -> Machine:
        """The server, its persistent addresses and its firewall, children of ``parent``.

        The addresses are created with ``protect=True``: DNS and the home router point at
        them, so ``pulumi destroy`` or dropping an edge stops there until they are
        unprotected on purpose (see docs/operations.md, "Deleting for real")."""

    def dns_records(
        self,
        resource_name: str,
        cfg: FleetConfig,
        relative_name: str,
        rtype: str,
        family: list[tuple[str, pulumi.Input[str]]],
        opts: pulumi.ResourceOptions,
    ) -> list[pulumi.CustomResource]:
        """Records of one name and type in ``cfg.dns.zone``, one value per edge."""
        raise NotImplementedError(f"{self.label} does not host DNS zones")

    # -- offline mock engine and policy ---------------------------------------------

    @abstractmethod
    def mock_resource(self, typ: str, n: int, rid: str, inputs: Mapping[str, Any]) -> tuple[str, dict]:
        """(id, extra outputs) the provider would answer, derived from ``n`` (a hash of
        type and name) and from documentation address ranges only."""

    def user_data(self, inputs: Mapping[str, Any]) -> str:
        """The cloud-config a server resource (its rendered inputs) boots with."""
        return str(get(inputs, "userData", "user_data") or "")

    def mock_call(self, token: str, args: Mapping[str, Any]) -> dict:
        """What a data source (invoke) of this provider answers under the mock engine."""
        return {}

    @abstractmethod
    def inbound_rules(self, inputs: Mapping[str, Any]) -> Iterator[InboundRule]:
        """The inbound rules of one of this provider's firewall resources."""

    @abstractmethod
    def unfirewalled(self, server: Mapping[str, Any], resources: list[dict]) -> str | None:
        """Why ``server`` (a rendered resource) has no firewall, or None if it has one."""


def get(inputs: Mapping[str, Any], *names: str) -> Any:
    """Mocks hand inputs over in the wire's camelCase, providers' SDKs in snake_case."""
    for name in names:
        if name in inputs and inputs[name] is not None:
            return inputs[name]
    return None
