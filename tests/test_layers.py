"""The package's layers: every project import points down or sideways, never up, and
none hides inside a function.

model < config < renderers < pulumi (providers, resources, preflight, program) < tools < lab < cli.  A
renderer that reached into the config parser, or a spec that needed a provider, would
tie the pure layers to the ones that read files or talk to clouds; an import inside a
function is how such a tie usually hides, so none is allowed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "components"

LAYERS = (
    ("model", ("components.model",)),
    ("config", ("components.config",)),
    ("renderers", ("components.renderers",)),
    (
        "pulumi",
        (
            "components.providers",
            "components.resources",
            "components.preflight",
            "components.program",
            "components.package",
        ),
    ),
    ("tools", ("components.tools",)),
    ("lab", ("components.lab",)),
    ("cli", ("components.cli",)),
)
"""Lowest first; a module belongs to the layer of its longest matching prefix."""

ACYCLIC = {"model", "config", "renderers"}
"""Layers whose modules must not import each other in a circle."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> tuple[int, str] | None:
    best: tuple[int, int, str] | None = None
    for rank, (name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank, name)
    return (best[1], best[2]) if best else None


def _targets(node: ast.Import | ast.ImportFrom, importer: str) -> Iterator[str]:
    """The project modules an import statement loads (a name it takes from a package
    counts as the submodule when there is one)."""
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names if a.name.split(".")[0] == "components")
        return
    base = node.module or ""
    if node.level:
        # A relative import counts from the importer's package: a package's __init__ is
        # its own package, a module's is its parent.
        parts = importer.split(".")
        package = parts if MODULES[importer].name == "__init__.py" else parts[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    if base.split(".")[0] != "components":
        return
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        yield sub if sub in MODULES else base


def _imports(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line, imported module, enclosing function or None) of every project import."""
    importer = _module_name(path)

    def walk(node: ast.AST, function: str | None) -> Iterator[tuple[int, str, str | None]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in _targets(child, importer):
                    yield child.lineno, target, function
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            yield from walk(child, "<lambda>" if isinstance(child, ast.Lambda) else inner)

    yield from walk(ast.parse(path.read_text(), str(path)), None)


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def test_imports_point_down_or_sideways():
    order = " < ".join(name for name, _ in LAYERS)
    problems = []
    for module in MODULES:
        own = _layer(module)
        for line, target, _ in _imports(MODULES[module]):
            theirs = _layer(target)
            if own and theirs and theirs[0] > own[0]:
                problems.append(
                    f"{_where(module, line)}: {own[1]} module imports {target} of the higher layer {theirs[1]}; "
                    f"imports may point only down or sideways ({order})"
                )
    assert problems == [], "\n".join(problems)


def test_no_import_cycle_inside_the_pure_layers():
    edges: dict[str, dict[str, int]] = {}
    for module in MODULES:
        own = _layer(module)
        if own is None or own[1] not in ACYCLIC:
            continue
        for line, target, _ in _imports(MODULES[module]):
            if target != module and _layer(target) == own:
                edges.setdefault(module, {}).setdefault(target, line)
    problems = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for target, line in edges.get(module, {}).items():
            if target in path:
                circle = " -> ".join([*path[path.index(target) :], target])
                problems.append(
                    f"{_where(module, line)}: imports {target}, closing the circle {circle}; "
                    "modules of one pure layer (model, config, renderers) must not import each other in a circle"
                )
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    for module in sorted(edges):
        if module not in done:
            visit(module, [module])
    assert problems == [], "\n".join(problems)


def test_no_project_import_inside_a_function():
    problems = [
        f"{_where(module, line)}: imports {target} inside {function}(); project imports belong at the top "
        "of the module, where the layers can see them"
        for module, path in MODULES.items()
        for line, target, function in _imports(path)
        if function is not None
    ]
    assert problems == [], "\n".join(problems)


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "components" and _layer(m) is None] == []
