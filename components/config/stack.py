"""Stack files read the way the Pulumi CLI hands them to the program.

One loader for every tool that works without the CLI (render, policy, lab, tests):
project defaults from ``Pulumi.yaml`` overlaid by ``Pulumi.<stack>.yaml``, structured
values as JSON strings, encrypted values as visible placeholders (they cannot be read
offline).  What ``parse`` then sees is what ``pulumi up`` would give it."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.config import parse
from components.config.keys import NAMESPACE, SECRET_SET, is_secret_key
from components.model.fleet import FleetConfig

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


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; the Pulumi CLI refuses the file.  Refusing
    here too means a second ``cgnat-edge:services:`` never silently replaces the first."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` may override keys; that is not a duplicate
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: construct_mapping reports it
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key} appears twice (first at line {first}); keep one of them", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StackFileError(f"{path} does not exist; {what}") from None
    except UnicodeDecodeError as exc:
        raise StackFileError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 and run again") from None
    except OSError as exc:
        raise StackFileError(f"{path} cannot be read ({exc.strerror}); {what}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        lines = text.splitlines()
        near = lines[mark.line] if mark and mark.line < len(lines) else text
        tabs = " (YAML does not allow tabs for indentation; indent with spaces)" if "\t" in near else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start and mark and start.line != mark.line:
            problem += f" ({context} at line {start.line + 1})"
        raise StackFileError(f"{path} is not valid YAML{where}: {problem}{tabs}; fix the file and run again") from None


def _check_keys(stack_file: Path, config: dict[Any, Any], top: dict[Any, Any]) -> None:
    """Keys the parser would never see: without a namespace, in a misspelt one, or
    outside ``config:``; the Pulumi CLI refuses the first, the others vanish silently."""
    for key in top:
        if isinstance(key, str) and key.startswith(NAMESPACE + ":"):
            raise StackFileError(
                f"{stack_file}: {key} is outside the config: section, so it would be ignored; indent it under config:"
            )
    for key in config:
        if not isinstance(key, str) or ":" not in key:
            raise StackFileError(
                f"{stack_file}: config key {key!r} has no namespace, which the Pulumi CLI refuses; "
                f"write it as {NAMESPACE}:{key}"
            )
        namespace, _, name = key.partition(":")
        if namespace != NAMESPACE and difflib.get_close_matches(namespace, [NAMESPACE], n=1, cutoff=0.8):
            raise StackFileError(
                f"{stack_file}: config key {key} is in namespace {namespace!r}, which this project does not read; "
                f"did you mean {NAMESPACE}:{name}?"
            )


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
        return {
            k[len(prefix) :]: SECRET_SET if k in self.secret_keys and is_secret_key(k[len(prefix) :]) else v
            for k, v in self.settings.items()
            if k.startswith(prefix) and k != SECRET_KEY
        }

    def parse(self) -> FleetConfig:
        return parse(self.raw(), project=self.project, stack=self.name, base_dir=self.path.parent)


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
    _check_keys(stack_file, stack.get("config") or {}, stack)

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
