"""The render the lab boots: one offline run of the program, its files on disk, and
what the lab reads out of it (each edge's cloud-config, push bundle and pinned host key)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.config import stack
from components.config.keys import SECRET_SET
from components.lab.edge import TRAEFIK_BINARY
from components.model import edge_contract
from components.model.fleet import FleetConfig
from components.model.keys import generate_host_key
from components.renderers import traefik
from components.tools import offline, render


@dataclass
class Rendered:
    """One offline run of the program and its files on disk."""

    run: offline.Run
    cfg: FleetConfig
    out: Path
    operator_key: tuple[str, str]
    """The lab operator's SSH key pair (private, public), listed in sshPublicKeys."""

    @property
    def edges(self) -> dict[str, dict]:
        return self.run.output("edges")

    @property
    def home(self) -> dict:
        return json.loads((self.out / "home" / "home.json").read_text())

    def cloud_config(self, edge: str) -> dict:
        text = (self.out / "nodes" / edge / "user-data.yaml").read_text()
        return yaml.safe_load(text.split("\n", 1)[1])

    def write_files(self, edge: str) -> list[dict]:
        """The edge's cloud-config ``write_files``, contents decoded, and its bootstrap host
        key where cloud-init's ``ssh_keys`` puts it."""
        doc = self.cloud_config(edge)
        files = [{**entry, "content": render.file_content(entry)} for entry in doc["write_files"]]
        keys = doc.get("ssh_keys") or {}
        if keys:
            files += [
                {"path": edge_contract.HOST_KEY, "content": keys["ed25519_private"], "permissions": "0600"},
                {"path": f"{edge_contract.HOST_KEY}.pub", "content": keys["ed25519_public"], "permissions": "0644"},
            ]
        return files

    def bundle(self, edge: str) -> str:
        """The stdin the program's SSH step feeds to the push script on ``edge``."""
        return offline.reveal(self.run.one("command:remote:Command", f"{edge}-config").inputs["stdin"])

    def host_key(self, edge: str) -> str:
        """The public host key the program's SSH steps pin for ``edge``."""
        return offline.reveal(self.run.one("command:remote:Command", f"{edge}-config").inputs["connection"])["hostKey"]


@functools.cache
def lab_executable_sha256() -> str:
    return hashlib.sha256(TRAEFIK_BINARY.read_bytes()).hexdigest()


@contextlib.contextmanager
def pinned(version: str, sha256: str) -> Iterator[None]:
    """Render as if the program pinned Traefik ``version`` with the executable digest
    ``sha256``, for every architecture: the lab runs one executable, this machine's."""
    saved = traefik.VERSION, dict(traefik.BINARY_SHA256)
    traefik.VERSION = version
    traefik.BINARY_SHA256.update(dict.fromkeys(traefik.BINARY_SHA256, sha256))
    try:
        yield
    finally:
        traefik.VERSION = saved[0]
        traefik.BINARY_SHA256.clear()
        traefik.BINARY_SHA256.update(saved[1])


def render_stack(
    stack_file: Path,
    out: Path,
    *,
    project_file: Path | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    state: Mapping[str, dict] | None = None,
    operator_key: tuple[str, str] | None = None,
    release: tuple[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    as_released: bool = False,
) -> Rendered:
    """Render the stack offline for the lab.

    The home key is always generated (``homePublicKey`` is dropped): the lab plays
    home, so it needs the private key, which a stack that names only the public key
    never has.  The lab's operator key (``operator_key``, made here when not given) is
    added to ``sshPublicKeys``, so the lab can log in as pulumi does.  The pinned
    Traefik release is ``release`` (version, executable digest), by default the pinned
    version with the digest of the executable the lab runs (this machine's
    architecture, whatever the edge's), so a push finds its edge on the pinned release.
    Everything else is the stack as written, with ``secrets`` (key -> plain text) set
    as ``pulumi config set --secret`` sets them.  ``as_released`` keeps the program's own
    pins (for edges that run the release of their own architecture)."""
    operator_key = operator_key or generate_host_key()
    overrides = {"homePublicKey": None, **(config_overrides or {})}
    keys = overrides.get("sshPublicKeys", stack.load(stack_file, project_file, overrides).raw().get("sshPublicKeys"))
    keys = json.loads(keys) if isinstance(keys, str) else list(keys or [])
    if operator_key[1] not in keys:
        keys.append(operator_key[1])
    overrides["sshPublicKeys"] = keys
    pins = (
        contextlib.nullcontext()
        if as_released and not release
        else pinned(*(release or (traefik.VERSION, lab_executable_sha256())))
    )
    with pins:
        run = offline.run_program(
            stack_file, project_file=project_file, config_overrides=overrides, state=state, secrets=secrets
        )
    render.write(run, out, show_secrets=False)
    # The typed config sees a secret only as set, as the running program does.
    typed = {**overrides, **dict.fromkeys(secrets or {}, SECRET_SET)}
    return Rendered(run, stack.load(stack_file, project_file, typed).parse(), out, operator_key)
