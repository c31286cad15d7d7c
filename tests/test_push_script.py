"""The push script's own bookkeeping, run on its own: the verdict a second connection
waits for, and a push refused while another holds the edge.  (Pushes under faults on a
running edge: tests/test_pushes_lab.py.)"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from components.model import edge_contract
from components.renderers import bootstrap, templates


def _script(tmp_path: Path, lock_wait_s: int = 600) -> Path:
    """push.sh with its push folder (and lock) under ``tmp_path``."""
    text = templates.text("push.sh")
    assert f"pushes={edge_contract.PUSH_DIR}\n" in text and "lock_wait_s=600\n" in text
    text = text.replace(f"pushes={edge_contract.PUSH_DIR}\n", f"pushes={tmp_path}\n")
    path = tmp_path / "push.sh"
    path.write_text(text.replace("lock_wait_s=600\n", f"lock_wait_s={lock_wait_s}\n"))
    return path


def test_a_second_connection_gets_the_log_and_the_verdict(tmp_path):
    script = _script(tmp_path)
    push = tmp_path / "20261207T101010-0a1b2c3d"
    push.mkdir()
    (push / "log").write_text("cgnat-edge push: updated /etc/nftables.conf\n")

    def verdict(rc: str) -> None:
        time.sleep(1)
        (push / "result").write_text(rc)

    waiting = subprocess.Popen(["bash", str(script), "wait", push.name], stdout=subprocess.PIPE, text=True)
    verdict("3\n")
    out, _ = waiting.communicate(timeout=10)
    assert waiting.returncode == 3
    assert out == "cgnat-edge push: updated /etc/nftables.conf\n"
    missing = subprocess.run(["bash", str(script), "wait", "20260101T000000-ffffffff"], capture_output=True, text=True)
    assert missing.returncode == 1 and "no push 20260101T000000-ffffffff on this edge" in missing.stderr


def test_a_push_that_cannot_get_the_lock_is_refused_and_changes_nothing(tmp_path):
    script = _script(tmp_path, lock_wait_s=1)
    push = tmp_path / "20261207T101010-0a1b2c3d"
    push.mkdir()
    (push / "bundle").write_text("not read: the lock comes first\n")
    (push / "before").mkdir()
    (tmp_path / "holder").write_text("20261207T100000-00000000\n")
    holder = subprocess.Popen(["flock", str(tmp_path / "lock"), "sleep", "30"])
    try:
        time.sleep(0.3)
        done = subprocess.run(["bash", str(script), "apply", str(push)], capture_output=True, text=True, timeout=30)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1
    assert "waits for push 20261207T100000-00000000 to finish (up to 1s)" in done.stdout
    assert "REFUSED: push 20261207T100000-00000000 has held the edge for over 1s; nothing was changed" in done.stderr
    assert (push / "result").read_text() == "1\n"
    assert not (push / "bundle").exists() and not (push / "before").exists() and not (push / "journal").exists()


def test_the_wait_command_takes_only_a_push_id():
    command = bootstrap.push_wait_command("admin", "20261207T101010-0a1b2c3d")
    assert command.startswith("sudo -n bash -c ") and command.endswith(" _ wait 20261207T101010-0a1b2c3d")
    with pytest.raises(ValueError, match="not a push id"):
        bootstrap.push_wait_command("admin", "x; rm -rf /")
    line = "cgnat-edge push: push id 20261207T101010-0a1b2c3d\n"
    assert (found := bootstrap.PUSH_ID.search(line)) and found.group(1) == "20261207T101010-0a1b2c3d"
