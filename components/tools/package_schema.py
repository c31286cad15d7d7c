"""The component package's generated files: ``components/package/args.py`` (the
``EdgeFleet`` inputs, one per key of the key table) and ``schema.json`` (what the
component provider host infers from them).

The host reads input names from type annotations and their docs from the source text
of the class, so the inputs must exist as source; writing that source from the key
table keeps one place for names, kinds and docs.  Both files are committed so that a
reviewer sees the package's public interface change; ``cgnat-edge package-schema
--write`` regenerates them and a test fails while they are stale."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pulumi
from pulumi.provider.experimental.component import ComponentProvider

from components.config.keys import KEYS, REQUIRED
from components.package import shapes

ROOT = Path(__file__).resolve().parent.parent.parent
ARGS_FILE = ROOT / "components" / "package" / "args.py"
SCHEMA_FILE = ROOT / "schema.json"
PACKAGE = "cgnat-edge"
REGENERATE = "uv run cgnat-edge package-schema --write"

_KINDS = {"string": "str", "boolean": "bool", "integer": "int", "array": "list[str]", "secret": "pulumi.Input[str]"}


def python_name(key: str) -> str:
    """``tunnelIpv4Prefix`` -> ``tunnel_ipv4_prefix``, which the host turns back into the key."""
    return re.sub(r"([A-Z])", r"_\1", key).lower()


def _annotation(key: str, kind: str) -> str:
    if kind == "object-array":
        return f"list[shapes.{shapes.ITEMS[key].__name__}]"
    return _KINDS[kind]


def args_source() -> str:
    lines = [
        f'"""Generated from components/config/keys.py by `{REGENERATE}`; do not edit.',
        "",
        "The inputs of ``EdgeFleet``: one per stack key, with the key table's doc.  Every input",
        "but the secrets is plain: the component parses them all before it creates anything,",
        "as the program parses a stack file.  No ``from __future__ import annotations``: the",
        'host reads these annotations as types, not as strings."""',
        "",
        "from typing import Required, TypedDict",
        "",
        "import pulumi",
        "",
        "from components.package import shapes",
        "",
        "",
        "class EdgeFleetArgs(TypedDict, total=False):",
    ]
    for key, (kind, default, doc) in KEYS.items():
        annotation = _annotation(key, kind)
        if default is REQUIRED:
            annotation = f"Required[{annotation}]"
        lines += [f"    {python_name(key)}: {annotation}", f'    """{doc}"""']
    return "\n".join(lines) + "\n"


def schema() -> dict:
    """The schema the host serves (GetSchema), from the component as it is imported now."""
    return json.loads(ComponentProvider([_component()], PACKAGE).schema or "{}")


def _component() -> type[pulumi.ComponentResource]:
    """The component, imported only when asked for: its inputs are the args.py this
    module writes, which must not have to import cleanly for ``--write`` to repair it."""
    fleet = importlib.import_module("components.package.fleet")
    return fleet.EdgeFleet


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale() -> list[Path]:
    """The generated files that differ from what the key table and the component give now."""
    out = []
    if not ARGS_FILE.is_file() or ARGS_FILE.read_text() != args_source():
        out.append(ARGS_FILE)
    if not SCHEMA_FILE.is_file() or SCHEMA_FILE.read_text() != schema_text():
        out.append(SCHEMA_FILE)
    return out


def write() -> list[Path]:
    """args.py first, then the schema inferred from it: the component is imported again
    so the host sees the inputs just written."""
    written = []
    if not ARGS_FILE.is_file() or ARGS_FILE.read_text() != args_source():
        ARGS_FILE.write_text(args_source())
        for module in ("components.package.fleet", "components.package.args"):
            sys.modules.pop(module, None)
        written.append(ARGS_FILE)
    text = schema_text()
    if not SCHEMA_FILE.is_file() or SCHEMA_FILE.read_text() != text:
        SCHEMA_FILE.write_text(text)
        written.append(SCHEMA_FILE)
    return written
