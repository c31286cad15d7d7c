"""What the tests share besides fixtures: the project root and its stack files, the
example stack as the parser sees it, the rule for missing tools and root (skip on a developer's machine,
fail in CI), and namespaces for network tests.

Namespaces, certificates and waiting have one implementation each, the lab's own
(``components.lab.netns``, ``components.lab.certs``, ``netns.wait_for``), so the lab
and the tests fail and clean up the same way."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from components import program
from components.config import stack
from components.lab.netns import Lab
from components.tools import offline

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "Pulumi.yaml"
DEV_STACK = ROOT / "Pulumi.dev.yaml"
"""The example: two edges on two providers, the edges serving DNS."""
PROD_STACK = ROOT / "Pulumi.prod.yaml"
"""Four edges on three providers, one of them Oracle's."""
LAB_STACK = ROOT / "tests" / "fixtures" / "Pulumi.lab.yaml"
"""Documentation addresses only: the one stack the lab can put on its wires whole."""
IN_CI = os.environ.get("CI") == "true"
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    "render",
    "home-configs",
)
"""What a checkout holds besides the sources (none of it goes into a build): a copy of
the checkout without these is what a fresh clone holds."""


def stack_raw(stack_file: Path | str = DEV_STACK) -> dict:
    """The stack's keys (project defaults included), namespace stripped, as the parser sees them."""
    return stack.load(stack_file).raw()


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


@contextlib.contextmanager
def namespaces(*tools: str) -> Iterator[Lab]:
    """A lab for a test's own nodes, once root and ``tools`` (besides what every node
    needs) are there; closed however the test ends: its processes ended, its
    namespaces deleted."""
    require_root()
    require_tool("ip", "nsenter", "unshare", *tools)
    with Lab() as lab:
        yield lab


def run_program(stack_file: Path, **kwargs) -> tuple[offline.Run, list[Exception]]:
    """The program as ``pulumi up`` runs it, under the mocks, and what it raised: a
    refusal is kept instead of ending the run, so the caller can count what was
    registered before it."""
    raised: list[Exception] = []

    def run() -> None:
        try:
            program.main()
        except Exception as exc:  # kept to count what was registered before it
            raised.append(exc)

    return offline.run_program(stack_file, program=run, project_file=PROJECT, **kwargs), raised


@contextlib.contextmanager
def plugin_channel(folder: Path) -> Iterator[grpc.Channel]:
    """A plugin folder (the component host, the policy pack) started as the Pulumi CLI
    starts it: its __main__.py with an engine address (never dialled by the calls the
    tests make); it prints the port it serves on."""
    proc = subprocess.Popen(
        [sys.executable, str(folder), "127.0.0.1:9"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().decode().strip()
        assert port.isdigit(), (
            f"{folder.name} printed {port!r}, stderr: {proc.stderr.read().decode() if proc.stderr else ''}"
        )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        proc.kill()
        proc.wait(timeout=10)
