"""Shared fixtures: the example stack, parsed the way the program parses it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from components.model import config as config_module
from components.model import stack

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"


def stack_raw(stack_file: Path | str = ROOT / "Pulumi.dev.yaml") -> dict:
    """The stack's keys (project defaults included), namespace stripped, as the parser sees them."""
    return stack.load(stack_file).raw()


@pytest.fixture
def raw_config() -> dict:
    return stack_raw()


@pytest.fixture
def fleet_config(raw_config):
    return config_module.parse(raw_config, stack="dev")


def require_tool(*names: str) -> None:
    """Skip when a system tool is missing on a developer's machine; in CI, where
    .ci/run installs them all, a missing tool is a failure, never a silent skip."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        message = f"missing tools: {', '.join(missing)} (sudo .ci/run installs them)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def require_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs as root; this test needs network namespaces")
        pytest.skip("needs root for network namespaces")
