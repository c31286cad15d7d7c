"""Pushes under faults in the Edge lab (components/lab/pushes.py): a cut SSH
connection, an edge restarted mid-change and two pushes at once each leave the edge
verified on the old or the new configuration, and the push that reported success is
the one running.  Without the lock, two pushes at once end on neither."""

from __future__ import annotations

import pytest

from components.lab import pushes
from components.renderers import bootstrap
from tests.support import LAB_STACK, PROJECT

pytestmark = [pytest.mark.netns, pytest.mark.lab]


@pytest.fixture(scope="module")
def configs(el, tmp_path_factory):
    """(target, the bundle the first edge booted with, two others with a key more each)."""
    name = sorted(el.edges)[0]
    a, b = pushes.keyed(el, tmp_path_factory.mktemp("keyed"), LAB_STACK, PROJECT, 2)
    return pushes.lab_target(el, name), el.rendered.bundle(name), a.bundle(name), b.bundle(name)


@pytest.fixture
def from_old(configs):
    """Each test starts on the configuration the edge booted with."""
    target, old, _, _ = configs
    yield
    back = pushes.finish(pushes.start_push(target, old))
    assert back.rc == 0, back.output


def test_a_cut_connection_leaves_the_push_running_to_its_verdict(configs, from_old):
    target, old, new, _ = configs
    row = pushes.cut(target, old, new)
    assert row.ok, row
    assert row.value == "new" and "reconnected: success" in row.detail


def test_an_edge_restarted_mid_change_boots_back_onto_the_old_files(configs, from_old):
    target, old, new, _ = configs
    row = pushes.reset(target, old, new)
    assert row.ok, row
    assert row.value == "old" and "the boot-time recovery put the files back" in row.detail


def test_a_second_push_waits_and_the_last_to_succeed_runs(configs, from_old):
    target, old, a, b = configs
    row = pushes.concurrent(target, old, a, b)
    assert row.ok, row
    assert row.value == "B" and "A success, B success" in row.detail


def test_without_the_lock_two_pushes_end_on_neither(configs, from_old):
    """The row can fail: with the lock taken out of the script, B applies while A is
    held mid-change, A then rolls back to what it saw before B, and B, which reported
    success, is not what runs."""
    target, old, a, b = configs
    command = bootstrap.config_command(target.user, 60)
    assert command.count("take_lock() {") == 1
    unlocked = command.replace("take_lock() {", "take_lock() {\n  return 0")
    row = pushes.concurrent(target, old, a, b, unlocked)
    assert not row.ok, row
    assert row.value != "B", row
