"""The first boot rehearsed with the real cloud-init (components/lab/rehearse.py).

The dev and prod stacks boot in a debootstrapped Debian 12 root (cached under
$CGNAT_EDGE_CACHE or /var/cache/cgnat-edge); the checks read what cloud-init left on
disk.  The small tests at the end show that the checks fail on a wrong file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from components import cli
from components.config import stack
from components.lab import rehearse
from tests.support import DEV_STACK, PROD_STACK, require_root, require_tool

EXPECTED_FAIL_CLOSED = {
    f"boot:fail-closed:{case}:{check}"
    for case in ("download-fails", "wrong-checksum")
    for check in ("no-traefik", "nftables-enabled", "readiness-fails")
}


def _require_rehearsal() -> None:
    require_root()
    require_tool(*rehearse.TOOLS)


def _rows(report: Path) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(report.read_text())["checks"]}


@pytest.mark.netns
@pytest.mark.lab
def test_rehearse_dev_cli(tmp_path, capsys):
    """``cgnat-edge rehearse --stack dev --report FILE``: every row ok, each edge checked."""
    _require_rehearsal()
    report = tmp_path / "rehearse.json"
    code = cli.main(["rehearse", "--stack-file", str(DEV_STACK), "--report", str(report)])
    rows = _rows(report)
    assert code == 0, [r for r in rows.values() if not r["ok"]]
    assert "FAIL" not in capsys.readouterr().out
    release = rehearse.release()
    for edge in ("fsn", "ams"):
        for stage, _ in rehearse.STAGES:
            assert rows[f"boot:{edge}:stage:{stage}"]["value"] == 0
        assert rows[f"boot:{edge}:traefik-checksum"]["value"] == release.sha256[:16]
        assert rows[f"boot:{edge}:host-key"]["value"] == 2
        assert rows[f"boot:{edge}:unit:traefik@a.service"]["value"] == "enabled"
        assert rows[f"boot:{edge}:file:/etc/nftables.conf"]["ok"]
        assert rows[f"boot:{edge}:nft-check"]["ok"] and rows[f"boot:{edge}:sshd-check"]["ok"]
    assert set(rows) >= EXPECTED_FAIL_CLOSED
    refused = rows["boot:fail-closed:wrong-checksum:no-traefik"]["detail"]
    assert "refusing" in refused and release.sha256 in refused
    assert "404" in rows["boot:fail-closed:download-fails:no-traefik"]["detail"]


@pytest.mark.netns
@pytest.mark.lab
def test_rehearse_prod(tmp_path):
    _require_rehearsal()
    ok, checks = rehearse.run(PROD_STACK, fail_closed=False, log=lambda _m: None)
    assert ok, [c for c in checks if not c.ok]
    edges = {c.name.split(":")[1] for c in checks if c.name.endswith(":traefik-checksum")}
    raw_edges = stack.load(PROD_STACK).raw()["edges"]
    assert edges == {e["name"] for e in raw_edges}
    assert not any("fail-closed" in c.name for c in checks)
    rows = {c.name: c for c in checks}
    oracle = [e["name"] for e in raw_edges if e["provider"] == "oracle"]
    assert oracle, "the prod stack has an Oracle edge (Ubuntu image with a boot firewall)"
    for edge in edges:
        firewall = {n: c for n, c in rows.items() if n.startswith(f"boot:{edge}:platform-firewall:")}
        if edge not in oracle:
            assert not firewall and "not rehearsed" not in rows[f"boot:{edge}:time"].detail
            continue
        assert firewall[f"boot:{edge}:platform-firewall:image"].value == "enabled"
        assert firewall[f"boot:{edge}:platform-firewall:loader"].value == "disabled"
        moved = firewall[f"boot:{edge}:platform-firewall:/etc/iptables/rules.v4"]
        assert moved.value == 1 and "rules.v4.replaced-by-cgnat-edge" in moved.detail
        assert "not rehearsed" in rows[f"boot:{edge}:time"].detail


# ---------------------------------------------------------------------------
# The checks themselves, on a hand-made root (no root privileges needed)
# ---------------------------------------------------------------------------


def _fake_boot(tmp_path: Path, mode: int, content: str) -> rehearse.Boot:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(f"root:x:{os.getuid()}:{os.getgid()}::/root:/bin/sh\n")
    (root / "etc/group").write_text(f"root:x:{os.getgid()}:\n")
    target = root / "etc/example.conf"
    target.write_text(content)
    target.chmod(mode)
    entry = {"path": "/etc/example.conf", "content": "declared\n", "permissions": "0640", "owner": "root:root"}
    return rehearse.Boot("e1", root, {"write_files": [entry], "runcmd": []}, 0.0, "")


def test_file_check_passes_only_on_declared_content_and_mode(tmp_path):
    good = rehearse.file_checks(_fake_boot(tmp_path / "a", 0o640, "declared\n"))
    assert [(c.name, c.ok) for c in good] == [("boot:e1:file:/etc/example.conf", True)]
    bad = rehearse.file_checks(_fake_boot(tmp_path / "b", 0o644, "drifted\n"))[0]
    assert not bad.ok
    assert "content differs" in bad.detail and "mode 0644, want 0640" in bad.detail


def test_a_failed_module_fails_unless_named_impossible(tmp_path, monkeypatch):
    b = _fake_boot(tmp_path, 0o640, "declared\n")
    (b.root / "var/lib/cloud/data").mkdir(parents=True)
    (b.root / "var/log").mkdir(parents=True)
    (b.root / "var/log/cloud-init.log").write_text(
        "2026 - util.py[WARNING]: Running module ntp (<module 'cloudinit.config.cc_ntp'>) failed\n"
    )
    stages = {stage: {"finished": 1.0, "errors": []} for stage, _ in rehearse.STAGES}
    stages["modules-config"]["errors"] = ["('ntp', RuntimeError('no clock'))"]
    (b.root / "var/lib/cloud/data/status.json").write_text(json.dumps({"v1": stages}))
    rows = {c.name: c for c in rehearse.stage_checks(b)}
    assert not rows["boot:e1:modules"].ok and "ntp" in rows["boot:e1:modules"].detail
    assert not rows["boot:e1:stage:modules-config"].ok

    monkeypatch.setitem(rehearse.IMPOSSIBLE_IN_CHROOT, "ntp", "a chroot has no clock of its own")
    rows = {c.name: c for c in rehearse.stage_checks(b)}
    assert rows["boot:e1:modules"].ok and "no clock of its own" in rows["boot:e1:modules"].detail
    assert rows["boot:e1:stage:modules-config"].ok


def test_platform_firewall_rows_need_the_takeover(tmp_path):
    """The rows pass only when the image's rules were in place before cloud-init and
    are moved aside after it; a Debian image has none."""
    from components.model.platforms.oracle import UBUNTU

    b = _fake_boot(tmp_path, 0o640, "declared\n")
    assert rehearse.platform_firewall_checks(b) == []
    path, text = UBUNTU.boot_firewall[0]
    rules = b.path(path)
    rules.parent.mkdir(parents=True)
    rules.write_text(text)
    before = f"image-firewall: loader enabled\nimage-firewall: test 0 {path}\n"
    b = rehearse.Boot("e1", b.root, b.user_data, 0.0, before, UBUNTU)
    rows = {c.name: c for c in rehearse.platform_firewall_checks(b)}
    assert rows["boot:e1:platform-firewall:image"].ok
    assert not rows[f"boot:e1:platform-firewall:{path}"].ok
    assert "still there" in rows[f"boot:e1:platform-firewall:{path}"].detail

    rules.rename(rules.with_name("rules.v4.replaced-by-cgnat-edge"))
    rows = {c.name: c for c in rehearse.platform_firewall_checks(b)}
    assert rows[f"boot:e1:platform-firewall:{path}"].ok
    b.output = f"image-firewall: loader disabled\nimage-firewall: test 2 {path}\n"
    row = rehearse.platform_firewall_checks(b)[0]
    assert not row.ok and "disabled" in row.detail and "exit 2" in row.detail


def test_not_rehearsed_names_what_debian_cannot_show():
    assert rehearse.not_rehearsed("debian-12") == ""
    gap = rehearse.not_rehearsed("ubuntu-24.04")
    assert "ssh.socket" in gap and "cloud-init version" in gap and "Debian 12 root" in gap
