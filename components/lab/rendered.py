"""The render the lab boots: one offline run of the program, its files on disk, and
what the lab reads out of it (each edge's cloud-config, push bundle and pinned host key)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.config import stack
from components.config.keys import SECRET_SET
from components.model import edge_contract
from components.model.fleet import FleetConfig
from components.model.keys import generate_host_key
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


def render_stack(
    stack_file: Path,
    out: Path,
    *,
    project_file: Path | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    state: Mapping[str, dict] | None = None,
    operator_key: tuple[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
) -> Rendered:
    """Render the stack offline for the lab.

    The home key is always generated (``homePublicKey`` is dropped): the lab plays
    home, so it needs the private key, which a stack that names only the public key
    never has.  The lab's operator key (``operator_key``, made here when not given) is
    added to ``sshPublicKeys``, so the lab can log in as pulumi does.  Everything else
    is the stack as written, with ``secrets`` (key -> plain text) set as ``pulumi
    config set --secret`` sets them."""
    operator_key = operator_key or generate_host_key()
    overrides = {"homePublicKey": None, **(config_overrides or {})}
    keys = overrides.get("sshPublicKeys", stack.load(stack_file, project_file, overrides).raw().get("sshPublicKeys"))
    keys = json.loads(keys) if isinstance(keys, str) else list(keys or [])
    if operator_key[1] not in keys:
        keys.append(operator_key[1])
    overrides["sshPublicKeys"] = keys
    run = offline.run_program(
        stack_file, project_file=project_file, config_overrides=overrides, state=state, secrets=secrets
    )
    render.write(run, out, show_secrets=False)
    # The typed config sees a secret only as set, as the running program does.
    typed = {**overrides, **dict.fromkeys(secrets or {}, SECRET_SET)}
    return Rendered(run, stack.load(stack_file, project_file, typed).parse(), out, operator_key)
