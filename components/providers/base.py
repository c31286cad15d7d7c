"""What a provider module supplies, and what every provider shares.

A provider is one module in this package with one ``Provider`` subclass, built on the
platform of the same name (``components/model/platforms/``, its catalog and rules):
its machine, its SSH key upload, its firewall, its DNS records, the answers its
resources give under the offline mock engine, and the facts the policy check reads.
Nothing outside this package and the platforms names a provider, so a new one is one
platform, one module here and one line in each registry.

The cloud SDK of a provider is imported only inside the methods that create
resources, so a stack that does not use a provider never loads its SDK.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from components.model.fleet import EdgeSpec, FleetConfig
from components.model.platforms.base import Platform

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
    source_ipv4: pulumi.Output[str] | None = None
    """The address the server's own connections leave from, when it is not ``ipv4``."""


@dataclass(frozen=True)
class InboundRule:
    """An inbound rule as the policy check reads it back from a firewall resource."""

    protocol: str
    port: Any
    sources: list[Any]


USER_DATA_IGNORED = ["userData", "sshKeys"]
"""Both force a new server at either provider.  Fresh nodes get the current cloud-init;
running nodes get changes pushed over SSH (see ``EdgeNode``), so editing a service or
adding an SSH key never rebuilds a VPS or moves its address."""


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


class Provider(Platform, ABC):
    """One cloud provider: its platform's facts, and the cloud work as methods."""

    resource_prefix: str
    """The type-token prefix of this provider's resources (``hcloud:``)."""
    server_resource_type: str
    firewall_resource_type: str

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

    def check_user_data(self, edge: EdgeSpec, user_data: str, ssh_keys: Sequence[str]) -> None:
        """Raises ``UserDataTooLarge`` when the provider would refuse ``user_data`` with
        ``ssh_keys`` (the stack's own key, then ``sshPublicKeys``) beside it.  The bootstrap
        already holds the cloud-config to the platform's ``user_data_limit``; a provider
        whose limit counts more than the cloud-config checks that here."""

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
