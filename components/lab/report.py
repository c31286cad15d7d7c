"""A row of the lab's and the rehearsal's reports, and the ``--report`` JSON.

The JSON is ``{"checks": [{"name", "ok", "value", "unit", "detail"}]}``: scripts and CI
read it, so its shape does not change."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Check:
    name: str
    ok: bool
    value: float | int | str | None = None
    unit: str = ""
    detail: str = ""


def write_report(path: Path, checks: list[Check]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"checks": [asdict(c) for c in checks]}, indent=2) + "\n")
