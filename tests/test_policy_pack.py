"""The policy pack (policy/): the command's rules, asked through pulumi-policy's own
analyzer service with resources as the engine sends them (secrets still wrapped), give
the same verdicts as ``cgnat-edge policy`` on the same run: the committed stacks pass,
and each rule fails on its own violation and only there."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime import proto, rpc
from pulumi.runtime.proto import analyzer_pb2_grpc
from pulumi_policy import EnforcementLevel
from pulumi_policy.policy import _PolicyAnalyzerServicer

from components import providers
from components.tools import offline, policy, policy_pack, render
from tests.support import DEV_STACK, PROD_STACK, ROOT, plugin_channel, run_program
from tests.test_policy import openssh_private_key, wg_keypair

HETZNER = providers.get("hetzner")
DO = providers.get("digitalocean")


def _struct(value: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def _state(r: offline.Registration) -> dict:
    """A resource's properties as the engine hands them to a pack: its outputs, secret
    where the input of the same name was (the engine keeps that; the mocks do not) and
    where the resource asked for it (additionalSecretOutputs)."""
    state = {**r.outputs, **r.inputs}
    return {
        k: {rpc._special_sig_key: rpc._special_secret_sig, "value": v} if k in r.additional_secret_outputs else v
        for k, v in state.items()
    }


def analyze(run: offline.Run) -> dict[str, list[str]]:
    """Policy name -> violation messages, from the pack's policies served by pulumi-policy."""
    policy_pack.mask_secrets()
    stack_urn = f"urn:pulumi:{run.stack}::{run.project}::pulumi:pulumi:Stack::{run.project}-{run.stack}"
    resources = [
        proto.AnalyzerResource(
            type=policy_pack.STACK_TYPE,
            urn=stack_urn,
            name=f"{run.project}-{run.stack}",
            properties=_struct(run.outputs),
        )
    ] + [
        proto.AnalyzerResource(
            type=r.type, urn=r.urn, name=r.name, parent=r.parent or stack_urn, properties=_struct(_state(r))
        )
        for r in run.resources
    ]
    servicer = _PolicyAnalyzerServicer(
        policy_pack.PACK, "0.1.0", policy_pack.policies(ROOT), EnforcementLevel.MANDATORY
    )
    response = servicer.AnalyzeStack(proto.AnalyzeStackRequest(resources=resources), None)
    found: dict[str, list[str]] = {}
    for d in response.diagnostics:
        assert d.enforcementLevel == proto.MANDATORY
        found.setdefault(d.policyName, []).append(d.message.removeprefix(d.description + "\n"))
    return found


def command(run: offline.Run) -> dict[str, list[str]]:
    """What ``cgnat-edge policy --stack`` decides on the same run."""
    cfg = policy.load_config(ROOT / f"Pulumi.{run.stack}.yaml", ROOT / "Pulumi.yaml")
    violations = policy.check(cfg, render.resource_table(run), offline.masked(run.outputs), set(run.secret_outputs()))
    found: dict[str, list[str]] = {}
    for v in violations:
        found.setdefault(v.rule, []).append(f"{v.subject}: {v.message}")
    return found


@pytest.fixture(scope="module")
def runs() -> dict[str, offline.Run]:
    out = {}
    for stack_file in (DEV_STACK, PROD_STACK):
        run, raised = run_program(stack_file)
        assert raised == []
        out[run.stack] = run
    return out


def test_the_pack_has_one_mandatory_policy_per_rule():
    made = policy_pack.policies(ROOT)
    assert [p.name for p in made] == [r.name for r in policy.RULES]
    assert {p.enforcement_level for p in made} == {EnforcementLevel.MANDATORY}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_committed_stacks_pass_the_pack_and_the_command(runs, stack):
    run = runs[stack]
    # secrets really are on the wire here: the pack must not take them for leaks
    assert run.secret_outputs() == ["homeConfigs"]
    assert analyze(run) == command(run) == {}


def _add_port(run: offline.Run) -> None:
    firewall = next(r for r in run.resources if r.type == HETZNER.firewall_resource_type)
    firewall.inputs["rules"].append({"direction": "in", "protocol": "tcp", "port": "8080", "sourceIps": ["0.0.0.0/0"]})
    firewall.outputs = firewall.inputs


def _drop_firewall(run: offline.Run) -> None:
    run.resources = [r for r in run.resources if r.type != DO.firewall_resource_type]


def _leak_output(run: offline.Run) -> None:
    private, _ = wg_keypair()
    run.outputs["leak"] = f"[Interface]\nPrivateKey = {private}\n"


def _leak_input(run: offline.Run) -> None:
    server = next(r for r in run.resources if r.type == HETZNER.server_resource_type)
    server.inputs["labels"] = {"sshPrivateKey": openssh_private_key()}
    server.outputs = server.inputs


VIOLATIONS: dict[str, Callable[[offline.Run], None]] = {
    "undeclared-port": _add_port,
    "unfirewalled-machine": _drop_firewall,
    "private-key-in-output": _leak_output,
    "private-key-in-input": _leak_input,
}


def test_every_rule_has_a_violation_here():
    assert set(VIOLATIONS) == {r.name for r in policy.RULES}


@pytest.mark.parametrize("rule", list(VIOLATIONS))
def test_each_rule_fails_on_its_violation_alone_with_the_commands_verdict(runs, rule):
    run = copy.deepcopy(runs["dev"])
    run.resources = [dataclasses.replace(r) for r in run.resources]
    VIOLATIONS[rule](run)
    from_pack = analyze(run)
    assert list(from_pack) == [rule]
    assert len(from_pack[rule]) == 1
    assert from_pack == command(run)


def test_a_stack_without_a_stack_file_is_named(runs):
    run = copy.deepcopy(runs["dev"])
    run.stack = "staging"
    with pytest.raises(policy_pack.NoStackFileError, match=r"Pulumi\.staging\.yaml does not exist"):
        policy_pack.stack_data(
            [
                type(
                    "R",
                    (),
                    {
                        "resource_type": policy_pack.STACK_TYPE,
                        "urn": "urn:pulumi:staging::cgnat-edge::pulumi:pulumi:Stack::x",
                        "props": {},
                    },
                )()
            ],
            ROOT,
        )


def test_the_pack_folder_serves_every_rule_over_grpc():
    """The pack as `pulumi preview --policy-pack policy/` starts it: it prints its port and
    names one mandatory policy per rule of the command."""
    with plugin_channel(ROOT / "policy") as channel:
        info = analyzer_pb2_grpc.AnalyzerStub(channel).GetAnalyzerInfo(empty_pb2.Empty(), timeout=60)
    assert info.name == policy_pack.PACK
    assert [(p.name, p.enforcementLevel) for p in info.policies] == [(r.name, proto.MANDATORY) for r in policy.RULES]
