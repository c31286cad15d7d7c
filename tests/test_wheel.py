"""The package as a user gets it: build the sdist and the wheel, install the wheel into a
clean virtualenv (dependencies at the versions in uv.lock, from PyPI) and render the
example stack with the installed ``cgnat-edge`` in a folder that holds only the stack
files. A checkout reads the templates from the top-level ``cloud-init/``; an installed
package has only what ``pyproject.toml`` puts in the wheel, so this is the test that
catches a template left out of it."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from components import cli
from tests.support import DEV_STACK, NOT_SOURCE, ROOT, require_tool

# It builds and installs from the package index: part of the full suite, not the fast lane.
pytestmark = pytest.mark.netns

STACK_FILES = ("Pulumi.yaml", "Pulumi.dev.yaml")


def _run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def _clean_env(venv: Path) -> dict[str, str]:
    """The caller's environment (proxies, HOME) without anything that points Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    return env


def _same(a: Path, b: Path) -> bool:
    """Equal bytes; JSON files equal as data (the order of keys in the DNS files the render
    writes follows the process's hash seed)."""
    if a.suffix == ".json":
        return json.loads(a.read_text()) == json.loads(b.read_text())
    return filecmp.cmp(a, b, shallow=False)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtualenv with the freshly built wheel installed, and nothing from the checkout."""
    require_tool("uv")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    # No --wheel: uv builds the sdist, then the wheel from the unpacked sdist, so a file
    # missing from either one is missing from the wheel.
    _run(["uv", "build", "--out-dir", tmp / "dist"], cwd=source)
    [wheel] = (tmp / "dist").glob("cgnat_edge-*.whl")
    constraints = tmp / "constraints.txt"
    constraints.write_text(
        _run(
            ["uv", "export", "--locked", "--no-emit-project", "--no-hashes", "--format", "requirements-txt"],
            cwd=ROOT,
        )
    )
    venv = tmp / "venv"
    # uv rather than venv and pip: the same install from the same wheel, in seconds, from uv's cache.
    _run(["uv", "venv", "-q", "--python", sys.executable, venv], cwd=tmp, env=_clean_env(venv))
    _run(["uv", "pip", "install", "-q", "--python", venv / "bin" / "python", "-c", constraints, wheel], cwd=tmp)
    return venv


@pytest.fixture(scope="module")
def wheel_render(installed, tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("project")
    for name in STACK_FILES:
        shutil.copy(ROOT / name, project / name)
    out = project / "out"
    stdout = _run(
        [installed / "bin" / "cgnat-edge", "render", "--stack", "dev", "--out", out],
        cwd=project,
        env=_clean_env(installed),
    )
    assert f"into {out}/" in stdout
    return out


def test_installed_package_reads_its_templates_from_the_wheel(installed, tmp_path):
    site = _run(
        [
            installed / "bin" / "python",
            "-c",
            "import components.renderers.templates as t; print(t.DIRECTORY); "
            "print(sorted(p.name for p in t.DIRECTORY.iterdir() if p.name != '__pycache__'))",
        ],
        cwd=tmp_path,
        env=_clean_env(installed),
    ).splitlines()
    directory = Path(site[0])
    assert directory.is_relative_to(installed.resolve()) and directory.parts[-3:] == (
        "components",
        "renderers",
        "cloud-init",
    )
    assert site[1] == repr(sorted(p.name for p in (ROOT / "cloud-init").iterdir() if p.name != "__pycache__"))


def test_installed_command_renders_what_the_checkout_renders(wheel_render, tmp_path):
    # The checkout's render, twice: files that differ between two checkout renders carry
    # the throwaway keys of a render; every other file must match the wheel's (JSON as data).
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        assert cli.main(["render", "--stack-file", str(DEV_STACK), "--out", str(out)]) == 0
    files = _tree(first)
    assert _tree(wheel_render) == files
    stable = sorted(f for f in files if _same(first / f, second / f))
    assert len(stable) >= len(files) * 2 // 3, f"too few files are key-independent: {stable}"
    differ = [f for f in stable if not _same(first / f, wheel_render / f)]
    assert not differ, f"the installed command renders these differently: {differ}"

    assert (wheel_render / "resources.txt").read_text() == (first / "resources.txt").read_text()
    nodes = sorted(p.name for p in (wheel_render / "nodes").iterdir())
    assert nodes == sorted(p.name for p in (first / "nodes").iterdir()) and len(nodes) >= 2
    for node in nodes:
        user_data = (wheel_render / "nodes" / node / "user-data.yaml").read_text()
        assert user_data.startswith("#cloud-config\n")
        doc = yaml.safe_load(user_data)
        a, b = (yaml.safe_load((r / "nodes" / node / "user-data.yaml").read_text()) for r in (first, second))
        assert list(doc) == list(a)
        # Keys aside (ssh_keys, and the files that hold keys), the cloud-config is the checkout's.
        assert {k: v for k, v in doc.items() if a[k] == b[k]} == {k: v for k, v in a.items() if a[k] == b[k]}
        assert [{k: v for k, v in e.items() if k != "content"} for e in doc["write_files"]] == [
            {k: v for k, v in e.items() if k != "content"} for e in a["write_files"]
        ]
        assert "/etc/traefik/traefik.yaml" in {e["path"] for e in doc["write_files"]}
        assert "runcmd" in doc and "packages" in doc


def test_wheel_holds_the_templates_as_package_data(installed):
    [wheel] = installed.parent.joinpath("dist").glob("cgnat_edge-*.whl")
    with zipfile.ZipFile(wheel) as z:
        packaged = {
            n.removeprefix("components/renderers/cloud-init/"): z.read(n)
            for n in z.namelist()
            if n.startswith("components/renderers/cloud-init/")
        }
    assert packaged == {p.name: p.read_bytes() for p in (ROOT / "cloud-init").iterdir() if p.is_file()}
