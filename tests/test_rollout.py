"""One edge at a time, proven on the whole program under Pulumi's mocks: each edge's
config step (push, verify, readiness) depends on the previous edge's, so a failed
edge stops the rollout and the edges after it keep serving the old configuration."""

from __future__ import annotations

import copy
import itertools

from components.tools import offline
from tests.support import DEV_STACK, stack_raw


def _three_edges() -> dict:
    raw = copy.deepcopy(stack_raw())
    third = {"name": "hel", "provider": "hetzner", "location": "hel1", "index": 3}
    return {"edges": raw["edges"] + [third]}


def test_each_config_step_waits_for_the_previous_edges():
    run = offline.run_program(DEV_STACK, config_overrides=_three_edges())
    steps = {
        r.name.removesuffix("-config"): r for r in run.by_type("command:remote:Command") if r.name.endswith("-config")
    }
    order = [e["name"] for e in _three_edges()["edges"]]
    assert list(steps) == order
    for previous, edge in itertools.pairwise(order):
        assert steps[previous].urn in steps[edge].dependencies, f"{edge} does not wait for {previous}"
    first = steps[order[0]]
    assert not any(s.urn in first.dependencies for s in steps.values()), "the first edge waits for nobody"
    boot = run.one("command:remote:Command", f"{order[1]}-boot")
    assert boot.urn in steps[order[1]].dependencies
    # Boots are not chained: new servers come up in parallel, only pushes are serial.
    assert not any(s.urn in boot.dependencies for s in steps.values())


def test_the_config_step_pushes_then_verifies_then_waits_for_readiness(dev_run):
    step = dev_run.one("command:remote:Command", "fsn-config")
    create = step.inputs["create"]
    assert "cgnat-edge push" in create and "cgnat-edge-verify" in create and "cgnat-edge readiness" in create
    assert create.index("cgnat-edge push") < create.index("cgnat-edge readiness")
    assert offline.is_secret(step.inputs["stdin"])


def test_a_rotated_host_key_is_installed_over_a_connection_pinning_the_install_key(dev_run):
    """sshHostKeyRotation rotates the key in place: the ``<edge>-host-key`` step pins the
    install key the edge reported at boot (valid whichever host key the edge has) and
    installs the new one; the config step and every later run pin the new key."""
    first = dev_run
    old = offline.reveal(first.one("command:remote:Command", "fsn-config").inputs["connection"])["hostKey"]
    rotated = offline.run_program(DEV_STACK, config_overrides={"sshHostKeyRotation": 1}, state=offline.key_state(first))
    step = rotated.one("command:remote:Command", "fsn-host-key")
    config = rotated.one("command:remote:Command", "fsn-config")
    new = offline.reveal(config.inputs["connection"])["hostKey"]
    before = first.one("command:remote:Command", "fsn-host-key")
    assert new != old and step.inputs["triggers"][0] == new != before.inputs["triggers"][0]
    # The same pin as before the rotation: the boot step's report (empty under the mocks).
    assert offline.reveal(step.inputs["connection"]) == offline.reveal(before.inputs["connection"])
    assert offline.is_secret(step.inputs["stdin"]) and "cgnat-edge host key" in step.inputs["create"]
    # The boot step is untouched by a rotation: it pins the bootstrap key, which no longer matches.
    boots = [run.one("command:remote:Command", "fsn-boot").inputs for run in (first, rotated)]
    assert offline.reveal(boots[0]) == offline.reveal(boots[1])
    assert step.urn in config.dependencies
    # The WireGuard keys did not change with it.
    wg = [r for r in rotated.resources if r.name.endswith("-wireguard-key")]
    assert {r.name: r.outputs["public_key"] for r in wg} == {
        r.name: r.outputs["public_key"] for r in first.resources if r.name.endswith("-wireguard-key")
    }
