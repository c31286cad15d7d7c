"""ruff (lint and format) and mypy on the project, with the settings in pyproject.toml,
and shellcheck on every shell script that runs on an edge: clean, or the findings are the
failure message. No cache is written into the checkout; mypy's is kept in the user's
cache folder, because a cold run checks the dependencies' own types too (over a minute),
a warm one only what changed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.renderers import bootstrap, contract, templates
from tests.support import ROOT

PYPROJECT = ROOT / "pyproject.toml"
MYPY_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "cgnat-edge-tests"
    / f"mypy-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
)
"""One per checkout, so two checkouts never overwrite each other's entries."""


def _run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


CHECKS = {
    "ruff check": ["ruff", "check", "--no-cache", "--output-format", "concise"],
    "ruff format": ["ruff", "format", "--check", "--diff", "--no-cache"],
    "mypy": ["mypy", "--cache-dir", str(MYPY_CACHE)],
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_project_is_clean(name):
    result = _run(CHECKS[name])
    assert result.returncode == 0, f"`{name}` found problems:\n{result.stdout}{result.stderr}"


def test_the_checks_catch_a_finding(tmp_path):
    """The checks above mean something only if these tools, with this config, do report findings."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f(a: list[int], b: list[int]) -> int:\n    l = list(zip(a,b))\n    return l\n")
    lint = _run(["ruff", "check", "--no-cache", "--config", str(PYPROJECT), "--output-format", "concise", str(bad)])
    assert lint.returncode == 1 and "E741" in lint.stdout and "B905" in lint.stdout, lint.stdout + lint.stderr
    fmt = _run(["ruff", "format", "--check", "--no-cache", "--config", str(PYPROJECT), str(bad)])
    assert fmt.returncode == 1 and "bad.py" in fmt.stdout, fmt.stdout + fmt.stderr
    types = _run(["mypy", "--config-file", str(PYPROJECT), "--cache-dir", str(MYPY_CACHE), str(bad)], tmp_path)
    assert types.returncode == 1 and 'Incompatible return value type (got "list[tuple[int, int]]"' in types.stdout, (
        types.stdout + types.stderr
    )


def _edge_shell_scripts() -> dict[str, str]:
    """Every shell script an edge runs, as it runs there: the templates as they are, and
    what the renderers make of the others (readiness is rendered, the contract generated)."""
    scripts = {path.name: path.read_text() for path in sorted(templates.DIRECTORY.glob("*.sh"))}
    scripts["readiness.sh"] = bootstrap.readiness_script()
    scripts["contract.sh"] = contract.shell()
    return scripts


def _shellcheck() -> str:
    found = shutil.which("shellcheck")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed (.ci/run installs it)")
        pytest.skip("shellcheck is not installed: apt-get install shellcheck")
    return found


@pytest.mark.netns
@pytest.mark.parametrize("name", list(_edge_shell_scripts()))
def test_edge_shell_script_is_clean(name, tmp_path):
    """Scripts that source the contract (push.sh) are checked with the generated one."""
    shellcheck = _shellcheck()
    for script_name, text in _edge_shell_scripts().items():
        (tmp_path / script_name).write_text(text)
    result = subprocess.run(
        [shellcheck, "--external-sources", "--source-path", str(tmp_path), name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"shellcheck {name} found problems:\n{result.stdout}{result.stderr}"


@pytest.mark.netns
def test_shellcheck_catches_a_finding(tmp_path):
    shellcheck = _shellcheck()
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\nrm -rf $1/*\n")
    result = subprocess.run([shellcheck, str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "SC2086" in result.stdout, result.stdout + result.stderr
