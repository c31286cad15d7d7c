"""The documentation: README.md and docs/. The configuration reference is what
scripts/config_reference.py writes from the key table, Pulumi.yaml declares the same
keys, and every relative link and anchor resolves."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from components.config import keys as config_keys
from tests.support import ROOT

DOCS = ROOT / "docs"
README_MAX_LINES = 300
"""The README is the front door; the details live in docs/."""

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def _load_generator():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = _CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(files: list[Path]) -> list[str]:
    """Every relative link in ``files`` whose file or anchor does not exist."""
    problems = []
    for path in files:
        for target in _LINK.findall(_prose(path.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}: {target}"
            if not linked.exists():
                problems.append(f"{where}: no such file")
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                problems.append(f"{where}: no heading with anchor #{anchor}")
    return problems


# -- the configuration reference ----------------------------------------------------------


def test_configuration_reference_is_what_the_script_writes():
    generator = _load_generator()
    page = (DOCS / "configuration.md").read_text()
    assert generator.render(page) == page, "run: uv run python scripts/config_reference.py"


def test_configuration_reference_lists_every_key():
    generator = _load_generator()
    table = generator.table()
    for key, (kind, _, _) in config_keys.KEYS.items():
        [row] = [line for line in table.splitlines() if line.startswith(f"| `{key}` |")]
        assert row.split(" | ")[3] == ("yes" if kind == "secret" else "no"), row
    for key in ("roadWarriors", "roadWarriorPool", "roadWarriorDns", "dnsGeoipDatabase"):
        assert f"| `{key}` |" in table
    page = (DOCS / "configuration.md").read_text()
    # the structured keys have their fields written out below the table
    for heading in ("## Edges", "## Services", "## Road warriors"):
        assert f"\n{heading}\n" in page


def test_the_reference_check_fails_on_a_stale_page():
    generator = _load_generator()
    page = (DOCS / "configuration.md").read_text()
    stale = page.replace("| `tunnelMtu` | integer | `1380` |", "| `tunnelMtu` | integer | `1420` |")
    assert stale != page and generator.render(stale) == page


def test_pulumi_yaml_declares_exactly_the_scalar_keys():
    """tests/test_config.py checks each key of KEYS against its declaration; this is the
    other direction: Pulumi.yaml declares no key the program does not know."""
    declared = set(yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"])
    scalar = {key for key, (kind, _, _) in config_keys.KEYS.items() if kind != "object-array"}
    assert declared == scalar, f"only in Pulumi.yaml: {declared - scalar}; only in KEYS: {scalar - declared}"


def test_pulumi_yaml_names_the_structured_keys_and_where_they_are_documented():
    text = (ROOT / "Pulumi.yaml").read_text()
    for key, (kind, _, _) in config_keys.KEYS.items():
        if kind == "object-array":
            assert f"cgnat-edge:{key}" in text
    assert "docs/configuration.md" in text


# -- links ----------------------------------------------------------------------------------


def test_every_relative_link_and_anchor_resolves():
    assert broken_links(pages()) == []


def test_the_link_check_catches_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Some `code` here (really)\n\ntext\n")
    (tmp_path / "README.md").write_text(
        "# Title\n\n"
        "[ok](docs/a.md) [ok](docs/a.md#a-page) [ok](docs/a.md#some-code-here-really) [ok](#title)\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#nope) [bad local](#nothing) [web](https://example.org/x#y)\n"
        "`[not a link](nowhere.md)`\n\n```\n[not a link](nowhere.md)\n```\n"
    )
    problems = broken_links(pages(tmp_path))
    assert [p.split(": ", 1)[1] for p in problems] == [
        "docs/b.md: no such file",
        "docs/a.md#nope: no heading with anchor #nope",
        "#nothing: no heading with anchor #nothing",
    ]


# -- the README as a front door -------------------------------------------------------------


def test_readme_is_short_and_lists_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", readme))
    assert linked == {f"docs/{p.name}" for p in DOCS.glob("*.md")}


def test_readme_names_the_test_commands():
    readme = (ROOT / "README.md").read_text()
    assert "uv run --locked --extra test pytest -n auto --dist loadgroup\n" in readme
    assert 'uv run --extra test pytest -m "not netns" -n auto' in readme
