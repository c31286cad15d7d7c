"""An edge once it exists: its spec plus what the provider gave it.

One type for everything that needs "an edge and its public addresses" (home configs,
DNS renderings, managed DNS records).  While deploying, addresses are Pulumi Outputs;
inside an ``apply`` and in the pure renderers they are strings, hence the parameter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from components.model.fleet import EdgeSpec

A = TypeVar("A")


@dataclass(frozen=True)
class DeployedEdge(Generic[A]):
    spec: EdgeSpec
    ipv4: A
    """The address that survives a server replacement (Primary IP, reserved IP)."""
    ipv6: A | None = None
    """None: the edge has no IPv6 address (known when the program runs)."""
    public_key: str | None = None
    """The edge's WireGuard public key; needed by the home configs only."""
    source_ipv4: A | None = None
    """The address the edge's own connections leave from when it is not ``ipv4`` (a
    Droplet's own address behind its reserved IP): what the other edges must accept
    the health checks from, never what a record or a router names."""

    @property
    def name(self) -> str:
        return self.spec.name

    def address(self, rtype: str) -> A | None:
        """The value of an ``A`` or ``AAAA`` record for this edge."""
        return self.ipv4 if rtype == "A" else self.ipv6
