"""The README's quick start, run as written, in a fresh copy of the repository.

The commands come from the README's text (its ``uv sync`` commands and its render
command, with each example stack's name in place of ``dev``), so the README and this test
cannot drift apart.  The copy holds the repository's tracked files as the next commit
would (``git stash create``: committed, plus uncommitted changes to tracked files), and
nothing else: a file left untracked is missing here as it is from a clone.  Every
example stack (``Pulumi.*.yaml`` at the top) must render.  A stack with an Oracle edge
must first be refused, after the plain ``uv sync --locked``, with the message naming
the extra; after the README's ``--extra oracle`` it renders too."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from components.config import stack
from components.model import platforms
from tests.support import IN_CI, NOT_SOURCE, ROOT, require_tool

# It installs from the package index (through uv's cache): part of the full suite.
pytestmark = [pytest.mark.netns, pytest.mark.lab]

SYNC_TIMEOUT = 900
"""Seconds for one ``uv sync``: seconds with a warm uv cache, minutes on a cold one."""
RENDER_TIMEOUT = 300


def quick_start() -> tuple[list[str], str]:
    """(the ``uv sync`` commands, the render command) of the README's quick start."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    spans = re.findall(r"`([^`]+)`", section)
    syncs = [span.split(" && ")[-1] for span in spans if "uv sync" in span]
    renders = [span for span in spans if span.startswith("uv run cgnat-edge render ")]
    assert syncs and len(renders) == 1, f"the quick start's commands moved: {spans}"
    return syncs, renders[0]


def render_command(render: str, name: str) -> list[str]:
    """The README's render of stack ``dev``, for stack ``name``."""
    words = render.split()
    assert "--stack" in words and words[words.index("--stack") + 1] == "dev", render
    return [word.replace("dev", name) if word in ("dev", "build/dev") else word for word in words]


def _clean_copy(destination: Path) -> None:
    """The tracked files as the next commit would hold them.  CI's Debian container has no
    git when it checks the repository out, so its checkout is the files alone, and nothing
    in it is untracked: there the checkout less what it grows (``NOT_SOURCE``) is the copy."""
    if not (ROOT / ".git").exists():
        if not IN_CI:
            pytest.skip(f"{ROOT} is no git checkout: which of its files are tracked is unknown")
        shutil.copytree(ROOT, destination, ignore=NOT_SOURCE, dirs_exist_ok=True)
        return
    require_tool("git")

    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True, timeout=120).stdout

    commit = git("stash", "create").decode().strip() or "HEAD"
    with tarfile.open(fileobj=io.BytesIO(git("archive", "--format=tar", commit))) as archive:
        archive.extractall(destination, filter="data")


def _env() -> dict[str, str]:
    """The caller's environment (proxies, HOME, uv's cache) without what points Python or
    uv at the checkout's own environment."""
    dropped = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "UV_PROJECT_ENVIRONMENT")
    return {k: v for k, v in os.environ.items() if k not in dropped}


def _run(command: list[str] | str, cwd: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    args = command.split() if isinstance(command, str) else command
    started = time.monotonic()
    done = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False)
    print(f"{' '.join(args)}: exit {done.returncode} in {time.monotonic() - started:.1f} s")
    return done


def _needs_extra(path: Path) -> str | None:
    """The optional extra the stack's edges need, if any."""
    providers = {str(e.get("provider")) for e in stack.load(path).raw().get("edges", []) if isinstance(e, dict)}
    return next((p.sdk_extra for name, p in platforms.REGISTRY.items() if name in providers and p.sdk_extra), None)


def _assert_rendered(done: subprocess.CompletedProcess[str], folder: Path, path: Path) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert f"files into {folder.relative_to(path.parent)}/" in done.stdout and files, done.stdout
    edges = [e["name"] for e in stack.load(path).raw()["edges"]]
    for edge in edges:
        assert (folder / "nodes" / edge / "user-data.yaml").read_text().startswith("#cloud-config\n")
    assert (folder / "resources.json").stat().st_size > 0 and (folder / "dns" / "records.json").is_file()
    assert len(list((folder / "home").glob("*.conf"))) == len(edges), sorted((folder / "home").iterdir())


def test_the_readme_quick_start_renders_every_example_stack(tmp_path):
    require_tool("uv")
    syncs, render = quick_start()
    plain = [s for s in syncs if "--extra" not in s]
    assert plain == ["uv sync --locked"], syncs
    clone = tmp_path / "cgnat-edge"
    clone.mkdir()
    _clean_copy(clone)
    stacks = sorted(clone.glob("Pulumi.*.yaml"))
    assert {stack.stack_name(p) for p in stacks} >= {"dev", "prod"}

    started = time.monotonic()
    done = _run(plain[0], clone, SYNC_TIMEOUT)
    assert done.returncode == 0, done.stderr
    later: dict[str, list[Path]] = {}
    for path in stacks:
        name, extra = stack.stack_name(path), _needs_extra(path)
        done = _run(render_command(render, name), clone, RENDER_TIMEOUT)
        if extra is None:
            _assert_rendered(done, clone / "build" / name, path)
            continue
        # Refused before anything is made, naming the edge and the fix the README gives.
        assert done.returncode == 2, done.stdout + done.stderr
        assert re.search(r"cgnat-edge:edges\[\d+\]\.provider: edge '[a-z0-9-]+' is on ", done.stderr), done.stderr
        assert f"`uv sync --extra {extra}`" in done.stderr and "Traceback" not in done.stderr
        assert not (clone / "build" / name).exists()
        later.setdefault(extra, []).append(path)
    for extra, paths in later.items():
        [sync] = [s for s in syncs if f"--extra {extra}" in s]
        done = _run(sync, clone, SYNC_TIMEOUT)
        assert done.returncode == 0, done.stderr
        for path in paths:
            name = stack.stack_name(path)
            _assert_rendered(_run(render_command(render, name), clone, RENDER_TIMEOUT), clone / "build" / name, path)
    print(f"quick start: {len(stacks)} stacks in {time.monotonic() - started:.0f} s")
