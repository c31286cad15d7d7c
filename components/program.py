"""The Pulumi program: the stack's config in, the fleet and its outputs out.

``__main__.py`` calls ``main``; the offline render and the tests call it under
Pulumi's mocks, so an installed ``cgnat-edge`` runs the same program without the
project folder.  This is the one place that reads ``pulumi.Config``."""

from __future__ import annotations

from typing import Any

import pulumi

from components import preflight
from components.config import ConfigError, alerts, parse
from components.config.keys import KEYS, NAMESPACE, SECRET_SET, is_secret_key
from components.model.alerts import SECRET_KEYS as ALERT_SECRETS
from components.model.fleet import FleetConfig
from components.resources import pulumi_internals
from components.resources.fleet import EdgeFleet, EdgeFleetArgs


class StackConfigError(ConfigError, pulumi.RunError):
    """A ``RunError``, so the CLI prints the problems without a Python traceback."""


def read_config() -> FleetConfig:
    """This project's keys from the running program, parsed.

    Keys in the namespace that the program does not know are passed on too, so a typo
    such as ``cgnat-edge:edge`` is reported instead of silently ignored.  What the text
    alone cannot show (a missing provider SDK, oversized user-data) is checked here too,
    before the first resource (``components/preflight.py``)."""
    prefix = NAMESPACE + ":"
    known = {f"{prefix}{key}" for key in KEYS}
    present = pulumi_internals.config_keys()
    raw: dict[str, Any] = {}
    secret_values: dict[str, str] = {}
    for full_key in sorted(present | known):
        if not full_key.startswith(prefix) or full_key == f"{prefix}sshPrivateKey":
            continue
        value = pulumi.runtime.get_config(full_key)
        key = full_key[len(prefix) :]
        if value is not None and is_secret_key(key) and pulumi.runtime.is_config_secret(full_key):
            raw[key] = SECRET_SET if value else ""  # the value itself stays an Output (below)
            secret_values[key] = value
        elif value is not None:
            raw[key] = value
    # Their form can only be checked here, where the program reads their text.
    url_problems = alerts.secret_url_problems(secret_values)
    try:
        cfg = parse(raw, project=pulumi.get_project(), stack=pulumi.get_stack())
    except ConfigError as exc:
        raise StackConfigError(exc.problems + url_problems) from None
    if url_problems:
        raise StackConfigError(url_problems)
    problems = preflight.problems(cfg)
    if problems:
        raise StackConfigError(problems)
    return cfg


def ssh_private_key() -> pulumi.Output[str] | None:
    """The one secret key, read apart from ``FleetConfig`` so it stays a Pulumi secret
    (an Output) and never becomes a plain value in the typed config."""
    return pulumi.Config(NAMESPACE).get_secret("sshPrivateKey")


def crowdsec_enroll_key() -> pulumi.Output[str] | None:
    return pulumi.Config(NAMESPACE).get_secret("crowdsecEnrollKey")


def alert_secrets(cfg: FleetConfig) -> dict[str, pulumi.Output[str]]:
    """The channels' secrets by key, as Pulumi secrets: they reach the edges in the push."""
    if cfg.alerts is None:
        return {}
    config = pulumi.Config(NAMESPACE)
    return {key: value for key in ALERT_SECRETS if (value := config.get_secret(key)) is not None}


def main() -> None:
    cfg = read_config()
    for warning in cfg.warnings:
        pulumi.log.warn(warning)
    fleet = EdgeFleet(
        "fleet",
        EdgeFleetArgs(
            cfg,
            ssh_private_key=ssh_private_key(),
            crowdsec_enroll_key=crowdsec_enroll_key() if cfg.protection.crowdsec_enroll else None,
            alert_secrets=alert_secrets(cfg),
        ),
    )

    pulumi.export("edges", fleet.edges)
    pulumi.export("monthlyCost", fleet.monthly_cost)
    pulumi.export("homeConfigs", fleet.home_configs)
    pulumi.export("dns", fleet.dns)
