"""Stack files read the way the Pulumi CLI hands them to the program.

One loader for every tool that works without the CLI (render, policy, lab, tests):
project defaults from ``Pulumi.yaml`` overlaid by ``Pulumi.<stack>.yaml``, structured
values as JSON strings, encrypted values as visible placeholders (they cannot be read
offline).  What ``parse`` then sees is what ``pulumi up`` would give it."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from components.config import parse
from components.config.keys import NAMESPACE, SECRET_SET, is_secret_key
from components.config.parser import decode
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


class _StackLoader(yaml.SafeLoader):
    """YAML as the Pulumi CLI reads a stack file (go-yaml v2, YAML 1.1).

    Where PyYAML and the CLI differ, this follows the CLI: two equal keys refuse the file
    (PyYAML keeps the last, so a second ``cgnat-edge:services:`` would silently replace
    the first); ``y``/``n`` are booleans like ``yes``/``no``; a date stays the text it
    was written as; ``!!binary`` is the text it decodes to."""

    bool_values: ClassVar[dict[str, bool]] = {**yaml.SafeLoader.bool_values, "y": True, "n": False}

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

    def construct_yaml_timestamp(self, node):
        return self.construct_scalar(node)

    def construct_yaml_binary(self, node):
        return super().construct_yaml_binary(node).decode("utf-8", "replace")


_StackLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))
_StackLoader.add_constructor("tag:yaml.org,2002:timestamp", _StackLoader.construct_yaml_timestamp)
_StackLoader.add_constructor("tag:yaml.org,2002:binary", _StackLoader.construct_yaml_binary)

_NULL = "tag:yaml.org,2002:null"


def _go_text(value: Any) -> str:
    """A mapping key as go-yaml's ``fmt.Sprintf("%v")`` turns it into a JSON key."""
    if value is None:
        return "<nil>"
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _go_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {_go_text(k): _go_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_keys(v) for v in value]
    return value


def _as_pulumi_text(loader: _StackLoader, node: yaml.Node, value: Any) -> Any:
    """One ``config:`` value (``value`` as read from ``node``) as the CLI hands it to the
    program: a scalar as the very text written (``off`` stays ``off``, ``0755`` stays
    ``0755``, ``~`` is empty), a structured value as JSON of its YAML 1.1 reading; a
    secret ``{secure: ...}`` as its mapping."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _NULL:
            return ""
        return value if node.tag == "tag:yaml.org,2002:binary" else node.value
    value = _go_keys(value)
    if isinstance(value, dict) and set(value) == {"secure"}:
        return value
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, "a number Pulumi cannot pass (.inf or .nan); write a finite number", node.start_mark
        ) from None


def _read_yaml(path: Path, what: str, as_stack: bool = False) -> Any:
    """The file's data; for a stack (``as_stack``), its ``config:`` values are the text
    the CLI would pass (``_as_pulumi_text``) and everything else as read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StackFileError(f"{path} does not exist; {what}") from None
    except UnicodeDecodeError as exc:
        raise StackFileError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 and run again") from None
    except OSError as exc:
        raise StackFileError(f"{path} cannot be read ({exc.strerror}); {what}") from None
    loader = _StackLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        if as_stack and node is not None and isinstance(data, dict) and isinstance(data.get("config"), dict):
            config_node = next(v for k, v in node.value if loader.construct_object(k) == "config")
            config = data["config"]
            for key_node, value_node in config_node.value:  # merge keys already flattened in
                key = loader.construct_object(key_node)
                config[key] = _as_pulumi_text(loader, value_node, config[key])
        return data
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
    finally:
        loader.dispose()


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
    settings: dict[str, str]
    """Every config key (``namespace:key``) as the text the CLI passes; encrypted ones are ``""``."""
    secret_keys: tuple[str, ...]

    @property
    def values(self) -> dict[str, str]:
        """The config as the CLI passes it to a program: structured values as JSON."""
        return dict(self.settings)

    def text(self) -> dict[str, str]:
        """This project's keys, namespace stripped, as ``config.parse`` takes them from
        the running program (the secret SSH key is never part of the typed config)."""
        prefix = NAMESPACE + ":"
        return {
            k[len(prefix) :]: SECRET_SET if k in self.secret_keys and is_secret_key(k[len(prefix) :]) else v
            for k, v in self.settings.items()
            if k.startswith(prefix) and k != SECRET_KEY
        }

    def raw(self) -> dict[str, Any]:
        """``text()`` read as the parser reads it: lists and mappings, for code that
        changes a stack's values before handing them back as overrides."""
        return {k: decode(v) for k, v in self.text().items()}

    def parse(self) -> FleetConfig:
        return parse(self.text(), project=self.project, stack=self.name, base_dir=self.path.parent)


def _as_text(value: Any) -> str:
    """A Python value as ``pulumi config set`` would store it: text as it is, anything
    else as JSON (``true``, ``1380``, ``["a"]``)."""
    return value if isinstance(value, str) else json.dumps(value)


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
    stack = (
        _read_yaml(
            stack_file, "pass --stack NAME for an existing Pulumi.NAME.yaml, or --stack-file PATH", as_stack=True
        )
        or {}
    )
    if not isinstance(stack, dict) or not isinstance(stack.get("config") or {}, dict):
        raise StackFileError(f"{stack_file} must be a mapping with a config: section, as `pulumi config set` writes it")
    _check_keys(stack_file, stack.get("config") or {}, stack)

    values: dict[str, Any] = {}
    for key, decl in (project.get("config") or {}).items():
        if isinstance(decl, dict) and "default" in decl:
            values[f"{NAMESPACE}:{key}"] = _as_text(decl["default"])
    values.update(stack.get("config") or {})
    for key, value in (overrides or {}).items():
        full = key if ":" in key else f"{NAMESPACE}:{key}"
        if value is None:
            values.pop(full, None)
        else:
            values[full] = _as_text(value)

    secret_keys = tuple(k for k, v in values.items() if isinstance(v, dict) and set(v) == {"secure"})
    settings = {str(k): "" if k in secret_keys else v for k, v in values.items()}
    return StackFile(stack_file, project_path, str(project["name"]), stack_name(stack_file), settings, secret_keys)
