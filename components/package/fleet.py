"""``EdgeFleet`` for the component package: the stack's keys in as typed inputs, the
same fleet out as the program builds from a stack file.

The inputs go through the program's parser and preflight, so a bad input fails with the
same message, naming the key, before the first resource is registered; then the
program's own component does the rest, under the same type token, so a consumer's
resources have the same types and names as the program's.  No ``from __future__ import
annotations`` here or in the inputs' modules: the host reads the annotations as types."""

import typing
from collections.abc import Mapping
from typing import Any, cast

import pulumi

from components import preflight
from components.config import ConfigError, parse
from components.config.alerts import secret_url_problems
from components.config.keys import SECRET_SET
from components.model.alerts import SECRET_KEYS as ALERT_SECRETS
from components.package import shapes
from components.package.args import EdgeFleetArgs
from components.resources import fleet

SECRETS = ("sshPrivateKey", "crowdsecEnrollKey", *ALERT_SECRETS)
"""Inputs passed on as Pulumi secrets, never parsed as plain values."""


class FleetInputError(ConfigError, pulumi.RunError):
    """Raised before any resource; the engine shows the problems without a traceback."""


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _as_keys(value: Any, shape: Any) -> Any:
    """A value as the host hands it over (Python field names, every number a double on
    the wire) back in a stack file's spelling, so the parser reads it as it reads one."""
    if typing.get_origin(shape) is list:
        shape = typing.get_args(shape)[0]
    if isinstance(value, list):
        return [_as_keys(v, shape) for v in value]
    if isinstance(value, Mapping) and typing.is_typeddict(shape):
        fields = typing.get_type_hints(shape)
        return {camel(k): _as_keys(v, fields.get(k)) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def raw_config(args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` as ``components.config.parse`` takes a stack file's values."""
    raw = {}
    for name, value in args.items():
        key = camel(name)
        if key in SECRETS:
            if key != "sshPrivateKey" and value not in (None, ""):
                raw[key] = SECRET_SET
            continue
        raw[key] = _as_keys(value, shapes.ITEMS.get(key))
    return raw


def raw_secrets(args: Mapping[str, Any]) -> dict[str, Any]:
    """The alert channels' secret inputs by key."""
    return {camel(name): value for name, value in args.items() if camel(name) in ALERT_SECRETS}


def _secret(value: Any) -> pulumi.Output[str] | None:
    """A secret input as a secret, even when given as plain text; empty is not given."""
    return None if value is None or value == "" else pulumi.Output.secret(value)


class EdgeFleet(fleet.EdgeFleet):
    """VPS edges at one or more providers, wired by WireGuard to a home behind CGNAT, with
    Traefik, nftables, DNS and protection on every edge; one input per stack key."""

    # The program's outputs, declared again as types the host can read (the parent
    # class's annotations are strings to it).
    edges: pulumi.Output[dict[str, Any]]
    """Per edge: provider, location, addresses, WireGuard key and endpoint, SSH login and pinned host key."""
    home_configs: pulumi.Output[dict[str, Any]]
    """Secret: the home router's WireGuard configs (structured, wg-quick per edge, OpenWrt, RouterOS) and road-warrior devices' files."""
    dns: pulumi.Output[dict[str, Any]]
    """The edge records in every rendering, and with dnsMode edges the delegation the parent zone needs."""
    monthly_cost: dict[str, Any]
    """List prices per currency and per edge."""

    def __init__(self, name: str, args: EdgeFleetArgs, opts: pulumi.ResourceOptions | None = None):
        given = {k: v for k, v in cast(Mapping[str, Any], args).items() if v is not None}
        # A secret arrives as its text here (the component's inputs are resolved).
        url_problems = secret_url_problems({k: v for k, v in raw_secrets(given).items() if isinstance(v, str)})
        try:
            cfg = parse(raw_config(given), project=pulumi.get_project(), stack=pulumi.get_stack())
        except ConfigError as exc:
            raise FleetInputError(exc.problems + url_problems) from None
        if url_problems:
            raise FleetInputError(url_problems)
        problems = preflight.problems(cfg)
        if problems:
            raise FleetInputError(problems)
        for warning in cfg.warnings:
            pulumi.log.warn(warning)
        super().__init__(
            name,
            fleet.EdgeFleetArgs(
                cfg,
                ssh_private_key=_secret(given.get("ssh_private_key")),
                crowdsec_enroll_key=_secret(given.get("crowdsec_enroll_key"))
                if cfg.protection.crowdsec_enroll
                else None,
                alert_secrets={
                    key: secret for key, value in raw_secrets(given).items() if (secret := _secret(value)) is not None
                }
                if cfg.alerts
                else {},
            ),
            opts,
        )
