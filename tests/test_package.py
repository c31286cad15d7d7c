"""The component package: the schema the host serves over gRPC is the key table, typed
and documented; ``EdgeFleet`` built through the provider's Construct path registers what
the program registers; the committed generated files are current."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pulumi
import pytest
import yaml
from pulumi.provider.experimental.component import ComponentProvider
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from components import cli
from components.config import ConfigError, parse
from components.config.keys import KEYS, NAMESPACE, REQUIRED
from components.model import platforms
from components.package import fleet, shapes
from components.tools import offline, package_schema
from tests.support import DEV_STACK, PROD_STACK, ROOT, plugin_channel, run_program, stack_raw

TOKEN = f"{package_schema.PACKAGE}:index:EdgeFleet"


@contextmanager
def host() -> Iterator[provider_pb2_grpc.ResourceProviderStub]:
    with plugin_channel(ROOT / "provider") as channel:
        yield provider_pb2_grpc.ResourceProviderStub(channel)


@pytest.fixture(scope="module")
def served() -> dict:
    with host() as stub:
        response = stub.GetSchema(provider_pb2.GetSchemaRequest(version=0), timeout=60)
    return yaml.safe_load(response.schema)  # JSON is YAML


def _untyped(props: dict, where: str) -> list[str]:
    return [f"{where}.{name}" for name, p in props.items() if not (p.get("type") or p.get("$ref"))]


def _undocumented(props: dict, where: str) -> list[str]:
    return [f"{where}.{name}" for name, p in props.items() if not str(p.get("description", "")).strip()]


def test_the_served_schema_has_one_input_per_key(served):
    component = served["resources"][TOKEN]
    inputs = component["inputProperties"]
    hint = f"; regenerate with `{package_schema.REGENERATE}`"
    assert set(inputs) - set(KEYS) == set(), "inputs that are no stack key" + hint
    assert set(KEYS) - set(inputs) == set(), "stack keys the package does not take" + hint
    assert sorted(component["requiredInputs"]) == sorted(k for k, v in KEYS.items() if v[1] is REQUIRED)
    for key, (_, _, doc) in KEYS.items():
        assert inputs[key]["description"] == doc, key


def test_every_input_and_field_is_typed_and_documented(served):
    component = served["resources"][TOKEN]
    problems = _untyped(component["inputProperties"], "EdgeFleet") + _undocumented(
        component["inputProperties"], "EdgeFleet"
    )
    for name, shape in served["types"].items():
        problems += _untyped(shape["properties"], name) + _undocumented(shape["properties"], name)
    problems += _untyped(component["properties"], "EdgeFleet output") + _undocumented(
        component["properties"], "EdgeFleet output"
    )
    assert problems == []
    assert component["description"].startswith("VPS edges")
    # Structured keys are typed lists of their shapes, not free-form objects.
    for key, shape in shapes.ITEMS.items():
        assert (
            component["inputProperties"][key]["items"]["$ref"]
            == f"#/types/{package_schema.PACKAGE}:index:{shape.__name__}"
        )
    # Secrets may be outputs of other resources (and stay secret); everything else is
    # plain, so the component can parse it before it creates anything.
    plain = {k for k, p in component["inputProperties"].items() if p.get("plain")}
    assert set(KEYS) - plain == {k for k, v in KEYS.items() if v[0] == "secret"}


def test_the_committed_files_are_current():
    stale = package_schema.stale()
    assert stale == [], f"{', '.join(str(p.relative_to(ROOT)) for p in stale)} stale; run `{package_schema.REGENERATE}`"


def test_the_committed_schema_is_what_the_host_serves(served):
    assert yaml.safe_load(package_schema.SCHEMA_FILE.read_text()) == served


def _rejected_fields(item: dict, key: str) -> set[str]:
    """The fields the parser names as allowed when it refuses an unknown one."""
    raw = stack_raw(DEV_STACK) | {key: [item]}
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    line = next(p for p in caught.value.problems if ".bogusField" in p)
    allowed = re.split(r"; (?:use|allowed:) ", line)[-1]
    return {f.strip() for f in allowed.replace(" or ", ", ").split(",")}


def _shape_fields(shape: type) -> set[str]:
    return {fleet.camel(name) for name in shape.__annotations__}


def test_the_item_shapes_have_the_fields_the_parser_takes():
    modes = ("passthrough", "http", "tcp", "udp", "forward")
    service_fields = set().union(
        *(_rejected_fields({"name": "x", "mode": m, "bogusField": 1}, "services") for m in modes)
    )
    assert _shape_fields(shapes.Service) == service_fields
    edge_fields = set().union(
        *(_rejected_fields({"name": "x", "provider": p, "bogusField": 1}, "edges") for p in platforms.REGISTRY)
    )
    assert _shape_fields(shapes.Edge) == edge_fields
    assert _shape_fields(shapes.RoadWarrior) == _rejected_fields({"name": "x", "bogusField": 1}, "roadWarriors")


# -- Construct ------------------------------------------------------------------------------


def _as_on_the_wire(value: Any) -> Any:
    """Numbers arrive as doubles; the host maps them back to the schema's types."""
    if isinstance(value, bool) or not isinstance(value, int | dict | list):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {k: _as_on_the_wire(v) for k, v in value.items()}
    return [_as_on_the_wire(v) for v in value]


def stack_inputs(stack_file) -> dict:
    """The stack file's values as a Pulumi YAML or TypeScript program would pass them."""
    config = yaml.safe_load(stack_file.read_text())["config"]
    prefix = f"{NAMESPACE}:"
    return {k.removeprefix(prefix): _as_on_the_wire(v) for k, v in config.items() if k.startswith(prefix)}


def construct(stack_file, inputs: dict, state: dict | None = None) -> tuple[offline.Run, list[Exception]]:
    """The provider's Construct (input mapping, the component, its state) under the mocks,
    with the component's outputs exported as the program exports them.  ``state``: the
    keys an earlier run made (they are random), as the engine's checkpoint holds them."""
    raised: list[Exception] = []

    def program() -> None:
        provider = ComponentProvider([fleet.EdgeFleet], package_schema.PACKAGE)
        try:
            result = provider.construct("fleet", TOKEN, inputs, pulumi.ResourceOptions())
        except Exception as exc:
            raised.append(exc)
            return
        for name, value in result.state.items():
            pulumi.export(name, value)

    return offline.run_program(stack_file, program=program, state=state), raised


def _registered(run: offline.Run) -> list[tuple]:
    return sorted(
        (r.urn, r.type, r.name, r.parent, tuple(sorted(r.dependencies)), repr(offline.masked(r.inputs)))
        for r in run.resources
    )


@pytest.mark.parametrize("stack_file", [DEV_STACK, PROD_STACK], ids=["dev", "prod"])
def test_construct_registers_what_the_program_registers(stack_file):
    program_run, program_raised = run_program(stack_file)
    assert program_raised == []
    built, raised = construct(stack_file, stack_inputs(stack_file), offline.key_state(program_run))
    assert raised == []
    assert len(built.resources) > 10
    # Registration order follows the engine's answers, not the code; compare as sets.
    assert sorted((r.type, r.name) for r in built.resources) == sorted((r.type, r.name) for r in program_run.resources)
    assert _registered(built) == _registered(program_run)
    assert offline.masked(built.outputs) == offline.masked(program_run.outputs)
    assert built.secret_outputs() == program_run.secret_outputs() == ["homeConfigs"]


def test_a_bad_input_fails_like_the_stack_file_before_any_resource():
    inputs = stack_inputs(DEV_STACK)
    inputs["edges"][1]["provider"] = "linode"
    built, raised = construct(DEV_STACK, inputs)
    assert built.resources == []
    assert len(raised) == 1
    message = str(raised[0])
    assert "cgnat-edge:edges[1].provider: 'linode' is not a supported provider; use one of" in message
    assert "nothing was created" in message


# -- the examples ---------------------------------------------------------------------------


def _unknown_fields(value: Any, props: dict, types: dict, where: str) -> list[str]:
    """Fields the schema does not have (the host would drop them without a word)."""
    out = []
    for name, v in value.items():
        prop = props.get(name)
        if prop is None:
            out.append(f"{where}.{name}")
            continue
        ref = (prop.get("items") or prop).get("$ref", "")
        if ref.startswith("#/types/"):
            shape = types[ref.removeprefix("#/types/")]["properties"]
            for i, item in enumerate(v if isinstance(v, list) else [v]):
                out += _unknown_fields(item, shape, types, f"{where}.{name}[{i}]")
    return out


def test_the_yaml_example_deploys_the_dev_stacks_fleet():
    example = yaml.safe_load((ROOT / "examples" / "yaml" / "Pulumi.yaml").read_text())
    [(name, resource)] = example["resources"].items()
    assert resource["type"] == "cgnat-edge:EdgeFleet"
    assert example["packages"]["cgnat-edge"].endswith("/provider@<tag>")
    schema = yaml.safe_load(package_schema.SCHEMA_FILE.read_text())
    props = resource["properties"]
    assert _unknown_fields(props, schema["resources"][TOKEN]["inputProperties"], schema["types"], name) == []
    # The host maps the names, then the component parses: the dev stack's config, exactly.
    provider = ComponentProvider([fleet.EdgeFleet], package_schema.PACKAGE)
    mapped = provider.map_inputs(_as_on_the_wire(props), provider._component_defs["EdgeFleet"])
    assert parse(fleet.raw_config(mapped)) == parse(stack_raw(DEV_STACK))
    assert set(example["outputs"]) == set(schema["resources"][TOKEN]["properties"])


def test_a_new_key_makes_the_files_stale_and_the_command_says_how_to_fix_it(monkeypatch, capsys):
    monkeypatch.setitem(KEYS, "edgeColour", ("string", "", "A key no schema has yet."))
    assert package_schema.ARGS_FILE in package_schema.stale()
    assert cli.main(["package-schema"]) == 1
    assert f"components/package/args.py is stale; regenerate: {package_schema.REGENERATE}" in capsys.readouterr().err


def test_alert_secrets_reach_the_push_as_secrets_and_a_bad_url_registers_nothing():
    from components.model import edge_contract
    from components.renderers import bundle

    webhook = "https://hooks.example.org/hook/" + os.urandom(6).hex()
    built, raised = construct(DEV_STACK, {**stack_inputs(DEV_STACK), "alertWebhookUrl": webhook})
    assert raised == []
    step = built.one("command:remote:Command", "fsn-config")
    assert offline.is_secret(step.inputs["stdin"])
    files = {f.path: f for f in bundle.decode(offline.reveal(step.inputs["stdin"]))}
    assert json.loads(files[edge_contract.ALERT_CHANNELS].content) == {"webhook": webhook}
    assert webhook not in json.dumps([offline.masked(r.inputs) for r in built.resources])

    built, raised = construct(DEV_STACK, {**stack_inputs(DEV_STACK), "alertWebhookUrl": "http://hooks.example.org/x"})
    assert built.resources == []
    (error,) = raised
    assert "cgnat-edge:alertWebhookUrl: is not an https:// URL (it starts with http)" in str(error)
    assert "hooks.example.org" not in str(error)
