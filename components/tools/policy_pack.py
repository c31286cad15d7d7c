"""The policy check as a CrossGuard policy pack: ``RULES`` of ``components/tools/policy.py``
as stack validation policies, fed what the engine knows during a preview instead of an
offline render.  ``policy/__main__.py`` serves them; the tests call the same objects.

Two things the engine's view lacks, supplied here so the rules see what the command sees:
the stack's config (the declared ports), read from the stack file the resources' URNs
name, as the command reads it; and which values are secrets: pulumi-policy hands
policies secret values already unwrapped, which would make every secret key look like a
leak, so ``mask_secrets`` puts the render's ``[secret]`` marker in their place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pulumi_policy
import pulumi_policy.policy
from pulumi_policy import EnforcementLevel, PolicyPack, ReportViolation, StackValidationArgs, StackValidationPolicy

from components.resources import pulumi_internals
from components.tools import offline, policy

PACK = "cgnat-edge"
STACK_TYPE = "pulumi:pulumi:Stack"


class NoStackFileError(Exception):
    """The preview's stack has no stack file beside the project; the message says where it looked."""


def _plain(value: Any) -> Any:
    """The pack's read-only proxies as plain data, numbers as the render has them (the
    wire makes every number a double: a port 22 arrives as 22.0).  A value unknown in a
    preview raises pulumi-policy's own error, which it reports as "can't run during preview"."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return offline.as_cli_reads(value)


def _masked(value: Any) -> Any:
    if pulumi_internals.is_secret(value):
        return policy.SECRET_MARKER
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def mask_secrets() -> None:
    """Have pulumi-policy read every secret as the marker instead of its value."""
    unwrap = pulumi_policy.policy.deserialize_properties
    if getattr(unwrap, "masks_secrets", False):
        return

    def deserialize(props: dict[str, Any], proxy_secrets: bool = False) -> dict[str, Any]:
        return unwrap(_masked(props), proxy_secrets)

    deserialize.masks_secrets = True  # type: ignore[attr-defined]
    pulumi_policy.policy.deserialize_properties = deserialize


def stack_data(resources: Sequence[Any], project_dir: Path) -> policy.StackData:
    """The rules' input from the engine's resources (``PolicyResource``)."""
    root = next((r for r in resources if r.resource_type == STACK_TYPE), None)
    if root is None:
        raise NoStackFileError("the preview has no root stack resource; run the pack with `pulumi preview`")
    stack_name, project = root.urn.removeprefix("urn:pulumi:").split("::")[:2]
    stack_file = project_dir / f"Pulumi.{stack_name}.yaml"
    if not stack_file.is_file():
        raise NoStackFileError(
            f"{stack_file} does not exist; the pack checks stacks of the {project} project in {project_dir}"
        )
    cfg = policy.load_config(stack_file, project_dir / "Pulumi.yaml")
    rows = [
        {
            "type": r.resource_type,
            "name": r.name,
            "urn": r.urn,
            "parent": r.parent.urn if r.parent is not None else "",
            "inputs": _plain(r.props),
        }
        for r in resources
        if r is not root
    ]
    outputs = _plain(root.props)
    secret = {name for name, value in outputs.items() if value == policy.SECRET_MARKER}
    return policy.StackData(cfg, rows, outputs, secret)


def _policy(rule: policy.Rule, project_dir: Path) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report: ReportViolation) -> None:
        for violation in rule.check(stack_data(args.resources, project_dir)):
            report(f"{violation.subject}: {violation.message}", None)

    return StackValidationPolicy(
        name=rule.name, description=rule.description, validate=validate, enforcement_level=EnforcementLevel.MANDATORY
    )


def policies(project_dir: Path) -> list[pulumi_policy.Policy]:
    return [_policy(rule, project_dir) for rule in policy.RULES]


def serve(project_dir: Path) -> None:
    """What ``pulumi preview --policy-pack policy/`` starts."""
    mask_secrets()
    PolicyPack(PACK, policies(project_dir), EnforcementLevel.MANDATORY)
