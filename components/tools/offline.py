"""Run the real program (``__main__.py``) under Pulumi's mock engine.

This is the same code path ``pulumi up`` takes — config parsing, components, outputs —
with the clouds replaced by deterministic answers from documentation address ranges.
The offline render and the test suite both use it, so what a user inspects before
paying for a VPS is exactly what the tests check.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dill
import pulumi

from components import program as program_module
from components import providers
from components.config import stack
from components.config.keys import NAMESPACE
from components.resources import pulumi_internals

SECRET = "[secret]"
DYNAMIC_PREFIX = "pulumi-python:dynamic"


@dataclass
class Registration:
    urn: str
    id: str
    type: str
    name: str
    parent: str
    custom: bool
    inputs: dict
    outputs: dict
    ignore_changes: list[str]
    additional_secret_outputs: list[str]
    dependencies: list[str]
    protect: bool = False
    delete_before_replace: bool = False
    aliases: list[str] = field(default_factory=list)
    """The old names a resource answers to (``pulumi.Alias``), as the engine gets them."""


@dataclass
class Run:
    project: str
    stack: str
    resources: list[Registration]
    outputs: dict
    """Stack outputs with secrets still wrapped (see ``is_secret``)."""
    logs: list[tuple[str, str]] = field(default_factory=list)

    def by_type(self, type_: str) -> list[Registration]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str) -> Registration:
        matches = [r for r in self.resources if r.type == type_ and r.name == name]
        assert len(matches) == 1, f"{len(matches)} resources {type_} {name}"
        return matches[0]

    def output(self, name: str) -> Any:
        return reveal(self.outputs[name])

    def secret_outputs(self) -> list[str]:
        return sorted(k for k, v in self.outputs.items() if is_secret(v))


def is_secret(value: Any) -> bool:
    return pulumi_internals.is_secret(value)


def reveal(value: Any) -> Any:
    """Unwrap every secret marker, for artifacts the user asked to see."""
    if is_secret(value):
        return reveal(value["value"])
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def masked(value: Any) -> Any:
    """Replace every secret with a marker, for artifacts safe to print or commit."""
    if is_secret(value):
        return SECRET
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items() if k != "__provider"}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def as_cli_reads(value: Any) -> Any:
    """A value off the engine's wire as the Pulumi CLI reads it.  The wire is a protobuf
    ``Struct``: every number a double (a port the program wrote as 443 arrives as 443.0)
    and mappings in no fixed order.  The CLI prints such a number as ``443`` and sorts
    keys (Go's JSON encoding); the recordings of the mock engine are read the same way,
    so a render shows what ``pulumi stack output --json`` would, in the same order every run."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: as_cli_reads(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [as_cli_reads(v) for v in value]
    return value


def _digest(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:4], "big")


class CloudMocks(pulumi.runtime.Mocks):
    """Answers the providers would give, derived from the resource name so that two
    runs agree.  Addresses come from the documentation ranges: nothing here can point
    at a real host."""

    def __init__(self, state: Mapping[str, dict] | None = None):
        self.state = dict(state or {})

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        inputs = reveal(args.inputs)
        n = _digest(args.typ, args.name)
        rid = str(n % 90_000_000 + 10_000_000)
        outputs = dict(inputs)
        t = args.typ
        if t.startswith(DYNAMIC_PREFIX):
            provider = dill.loads(base64.b64decode(inputs["__provider"]))
            news = {k: v for k, v in inputs.items() if k != "__provider"}
            previous = self.state.get(args.name)
            if previous is not None:
                # What the engine does with the checkpoint: keep, update in place, or replace.
                diff = provider.diff(previous["id"], previous["outputs"], news)
                if not diff.changes:
                    return previous["id"], previous["outputs"]
                if not diff.replaces:
                    updated = provider.update(previous["id"], previous["outputs"], news)
                    return previous["id"], {**previous["outputs"], **(updated.outs or {})}
            result = provider.create(news)
            outputs.update(result.outs or {})
            rid = result.id
        elif (provider := providers.for_resource_type(t)) is not None:
            rid, extra = provider.mock_resource(t, n, rid, inputs)
            outputs.update(extra)
        elif t == "command:remote:Command":
            outputs.update(stdout="", stderr="")
        return rid, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        provider = providers.for_resource_type(args.token)
        return (provider.mock_call(args.token, reveal(args.args)) if provider else {}), []


class RecordingMonitor(pulumi_internals.MockMonitor):
    """The stock mock monitor, plus what it drops: parents, options and outputs."""

    def __init__(self, mocks: CloudMocks):
        super().__init__(mocks)
        self.registrations: list[Registration] = []
        self.stack_outputs: dict = {}
        self.logs: list[tuple[str, str]] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registrations.append(
                Registration(
                    urn=response.urn,
                    id=response.id,
                    type=request.type,
                    name=request.name,
                    parent=request.parent,
                    custom=request.custom,
                    inputs=as_cli_reads(pulumi_internals.from_wire(request.object)),
                    outputs=as_cli_reads(pulumi_internals.from_wire(response.object)) if request.custom else {},
                    ignore_changes=list(request.ignoreChanges),
                    protect=bool(request.protect),
                    delete_before_replace=bool(request.deleteBeforeReplace),
                    additional_secret_outputs=list(request.additionalSecretOutputs),
                    dependencies=list(request.dependencies),
                    aliases=[str(a) for a in request.aliases],
                )
            )
        return response

    def RegisterResourceOutputs(self, request):
        if "::pulumi:pulumi:Stack::" in request.urn:
            self.stack_outputs = as_cli_reads(pulumi_internals.from_wire(request.outputs))
        return super().RegisterResourceOutputs(request)


class _LogCapture:
    def __init__(self, sink: list):
        self.sink = sink

    def debug(self, msg):
        pass

    def info(self, msg):
        self.sink.append(("info", msg))

    def warning(self, msg):
        self.sink.append(("warning", msg))

    def error(self, msg):
        self.sink.append(("error", msg))


def run_program(
    stack_file: Path | str,
    *,
    program: Callable[[], None] = program_module.main,
    state: Mapping[str, dict] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    project_file: Path | None = None,
    secrets: Mapping[str, str] | None = None,
) -> Run:
    """Run ``program`` once for the stack described by ``stack_file``.

    ``state`` maps dynamic-resource names to earlier (id, outputs), standing in for
    the engine's checkpoint so a second run sees the keys the first one created.
    ``secrets`` (key -> plain text) are set as ``pulumi config set --secret`` does."""
    loaded = stack.load(stack_file, project_file, config_overrides)
    project, stack_name = loaded.project, loaded.name

    mocks = CloudMocks(state)
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.reset_options()
    pulumi.runtime.set_mocks(
        mocks,
        project=project,
        stack=stack_name,
        preview=False,
        monitor=monitor,
        logger=_LogCapture(monitor.logs),  # type: ignore[arg-type]
    )
    secret_values = {k if ":" in k else f"{NAMESPACE}:{k}": v for k, v in (secrets or {}).items()}
    pulumi.runtime.set_all_config({**loaded.values, **secret_values}, sorted({*loaded.secret_keys, *secret_values}))
    pulumi_internals.run_in_new_stack(program)
    return Run(project, stack_name, monitor.registrations, monitor.stack_outputs, monitor.logs)


def key_state(run: Run) -> dict[str, dict]:
    """The dynamic-resource part of a run's state, to feed into the next run."""
    return {
        r.name: {"id": r.id, "outputs": reveal(r.outputs)} for r in run.resources if r.type.startswith(DYNAMIC_PREFIX)
    }
