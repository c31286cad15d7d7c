"""The edge's file templates (the project's top-level ``cloud-init/`` folder).

A wheel carries them as package data under ``components/renderers/cloud-init`` (see
``pyproject.toml``), so an installed ``cgnat-edge`` renders without a checkout; in a
checkout they are read where they are edited."""

from __future__ import annotations

from pathlib import Path

import jinja2

_HERE = Path(__file__).resolve().parent
_PACKAGED = _HERE / "cloud-init"
_CHECKOUT = _HERE.parents[1] / "cloud-init"

DIRECTORY = _PACKAGED if _PACKAGED.is_dir() else _CHECKOUT

_jinja = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(DIRECTORY)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)


def text(name: str) -> str:
    """A template file as it is, for files that are not Jinja templates."""
    return (DIRECTORY / name).read_text()


def render(name: str, **values: object) -> str:
    return _jinja.get_template(name).render(**values)
