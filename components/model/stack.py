"""Stack files read the way the Pulumi CLI hands them to the program.

One loader for every tool that works without the CLI (render, policy, lab, tests):
project defaults from ``Pulumi.yaml`` overlaid by ``Pulumi.<stack>.yaml``, structured
values as JSON strings, encrypted values as visible placeholders (they cannot be read
offline).  What ``parse`` then sees is what ``pulumi up`` would give it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.model.config import NAMESPACE, FleetConfig, parse

SECRET_KEY = f"{NAMESPACE}:sshPrivateKey"


class StackFileError(Exception):
    """The stack or project file cannot be read; the message says where and what to do."""


def stack_name(stack_file: Path) -> str:
    """``Pulumi.dev.yaml`` -> ``dev``, as the Pulumi CLI names stacks."""
    return Path(stack_file).name.removeprefix("Pulumi.").removesuffix(".yaml")


def find(stack: str, project_dir: Path | str = ".") -> Path:
    """The file of stack ``stack`` in ``project_dir``, or an error naming the folder
    searched and the stacks that exist there."""
    folder = Path(project_dir).resolve()
    path = folder / f"Pulumi.{stack}.yaml"
    if path.is_file():
        return path
    existing = sorted(stack_name(p) for p in folder.glob("Pulumi.*.yaml"))
    found = f"stacks there: {', '.join(existing)}" if existing else "no Pulumi.<stack>.yaml there at all"
    raise StackFileError(
        f"no stack file Pulumi.{stack}.yaml in {folder} ({found}); pass --stack NAME, "
        f"--stack-file PATH, or --project-dir for the folder that holds Pulumi.yaml"
    )


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise StackFileError(f"{path} does not exist; {what}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        tabs = " (YAML does not allow tabs for indentation; indent with spaces)" if "\t" in path.read_text() else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StackFileError(f"{path} is not valid YAML{where}: {problem}{tabs}; fix the file and run again") from None


@dataclass(frozen=True)
class StackFile:
    path: Path
    project_file: Path
    project: str
    name: str
    settings: dict[str, Any]
    """Every config key (``namespace:key``) with its YAML value; encrypted ones are ``""``."""
    secret_keys: tuple[str, ...]

    @property
    def values(self) -> dict[str, str]:
        """The config as the CLI passes it to a program: structured values as JSON."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.settings.items()}

    def raw(self) -> dict[str, Any]:
        """This project's keys, namespace stripped, as ``config.parse`` takes them
        (the secret SSH key is never part of the typed config)."""
        prefix = NAMESPACE + ":"
        return {k[len(prefix) :]: v for k, v in self.settings.items() if k.startswith(prefix) and k != SECRET_KEY}

    def parse(self) -> FleetConfig:
        return parse(self.raw(), project=self.project, stack=self.name)


def load(
    stack_file: Path | str,
    project_file: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> StackFile:
    """Read a stack file.  ``project_file`` defaults to the ``Pulumi.yaml`` beside it;
    ``overrides`` (key with or without namespace -> value; None removes the key, so
    the project default applies) stand in for ``pulumi config set``."""
    stack_file = Path(stack_file)
    project_path = Path(project_file) if project_file else stack_file.parent / "Pulumi.yaml"
    project = _read_yaml(
        project_path, "run from the project folder (the one holding Pulumi.yaml) or pass --project-dir"
    )
    if not isinstance(project, dict) or not project.get("name"):
        raise StackFileError(f"{project_path} has no project name; is it a Pulumi project file?")
    stack = _read_yaml(stack_file, "pass --stack NAME for an existing Pulumi.NAME.yaml, or --stack-file PATH") or {}
    if not isinstance(stack, dict) or not isinstance(stack.get("config") or {}, dict):
        raise StackFileError(f"{stack_file} must be a mapping with a config: section, as `pulumi config set` writes it")

    values: dict[str, Any] = {}
    for key, decl in (project.get("config") or {}).items():
        if isinstance(decl, dict) and "default" in decl:
            values[f"{NAMESPACE}:{key}"] = decl["default"]
    values.update(stack.get("config") or {})
    for key, value in (overrides or {}).items():
        full = key if ":" in key else f"{NAMESPACE}:{key}"
        if value is None:
            values.pop(full, None)
        else:
            values[full] = value

    secret_keys = tuple(k for k, v in values.items() if isinstance(v, dict) and set(v) == {"secure"})
    settings = {str(k): "" if k in secret_keys else v for k, v in values.items()}
    return StackFile(stack_file, project_path, str(project["name"]), stack_name(stack_file), settings, secret_keys)
