"""Pushes under faults: the SSH connection cut mid-push, the edge restarted mid-change,
two pushes at once.  Afterwards the edge must be verified on the old or the new
configuration, never between, and the push that reported success must be the one
running.

* ``push:cut``         the SSH client is killed while the apply is held mid-change;
  the client connects again and waits for the verdict by push id.
* ``push:reset``       the edge restarts while the apply is held mid-change (the
  apply's process group gets SIGKILL first); the boot-time recovery runs as at boot.
* ``push:concurrent``  push A is held mid-change, push B starts, then A goes on.

"Held mid-change" is the push script's pause hook (``PUSH_DIR/pause``, which only
these rows write): the apply stops after its first file is swapped in.  Each row takes
a ``PushTarget`` (an edge over SSH and a way to restart it), so the VM rehearsal runs
the same rows against a VM edge; ``lab_target`` makes one of a lab edge.
"""

from __future__ import annotations

import hashlib
import select
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.lab.edge_lab import EdgeLab
from components.lab.netns import wait_for
from components.lab.rendered import Rendered, render_stack
from components.lab.report import Check
from components.model import edge_contract
from components.model.keys import generate_host_key
from components.renderers import bootstrap, bundle
from components.tools import offline

TIMEOUT_S = 120.0
"""How long a row waits for a push's verdict or the edge's answer in the namespace lab."""


@dataclass
class PushTarget:
    """An edge as the rows use it: commands over SSH (as the login user; root work goes
    through ``bootstrap.as_root``), an SSH client process, and a restart."""

    name: str
    user: str
    ssh: Callable[[str, str | None], subprocess.CompletedProcess]
    """(command, stdin) -> the finished SSH client."""
    spawn: Callable[[str], subprocess.Popen]
    """command -> a running SSH client with stdin and stdout (stderr merged) pipes."""
    restart: Callable[[], None]
    """The machine resets and boots again (the boot-time units run); returns once it
    answers SSH."""
    timeout: float = TIMEOUT_S
    """How long a row waits for a push's verdict or the edge's answer: an emulated
    machine needs longer than a namespace."""

    def root(self, script: str) -> subprocess.CompletedProcess:
        return self.ssh(bootstrap.as_root(self.user, script), None)


@dataclass
class Client:
    """One push's SSH client and what it reported."""

    proc: subprocess.Popen
    push_id: str
    lines: list[str]
    timeout: float
    rc: int | None = None
    done_at: float | None = None

    @property
    def output(self) -> str:
        return "".join(self.lines)


def start_push(target: PushTarget, pushed: str, command: str | None = None) -> Client:
    """The ``<edge>-config`` step's command with ``pushed`` on stdin; returns once the
    edge has the whole bundle and named the push."""
    proc = target.spawn(command or bootstrap.config_command(target.user, 60))
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(pushed)
    proc.stdin.close()
    proc.stdin = None  # sent: communicate() has nothing more to write
    lines: list[str] = []
    deadline = time.monotonic() + target.timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if not ready:
            continue
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = bootstrap.PUSH_ID.search(line)
        if found:
            return Client(proc, found.group(1), lines, target.timeout)
    proc.kill()
    raise RuntimeError(f"the push on {target.name} named no push id: {''.join(lines)[-500:]}")


def finish(client: Client) -> Client:
    """The client's verdict: its exit status, once it has ended."""
    assert client.proc.stdout is not None
    rest, _ = client.proc.communicate(timeout=client.timeout)
    client.lines.append(rest or "")
    client.rc, client.done_at = client.proc.returncode, time.monotonic()
    return client


def wait_again(target: PushTarget, push_id: str) -> tuple[int, str]:
    """What a client whose connection dropped does: connect again, wait for the verdict."""
    done = target.ssh(bootstrap.push_wait_command(target.user, push_id), None)
    return done.returncode, done.stdout + done.stderr


def running(target: PushTarget, configs: dict[str, str]) -> str | None:
    """Which of ``configs`` (label -> bundle) the edge's files are, byte for byte; None
    for a mix or something else."""
    files = {
        label: {f.path: hashlib.sha256(f.content.encode()).hexdigest() for f in bundle.decode(b)}
        for label, b in configs.items()
    }
    paths = sorted({p for digests in files.values() for p in digests})
    listed = target.root("sha256sum -- " + " ".join(paths) + " 2>/dev/null; true").stdout
    on_edge = {line.split(None, 1)[1].strip(): line.split(None, 1)[0] for line in listed.splitlines() if line.strip()}
    for label, digests in files.items():
        if all(on_edge.get(p) == d for p, d in digests.items()) and not set(on_edge) - set(digests):
            return label
    return None


def verified(target: PushTarget) -> tuple[bool, str]:
    done = target.root(f"python3 {edge_contract.VERIFY}")
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "DIFFERS" in line]
    return done.returncode == 0, "; ".join(lines)[:300]


def hold_next(target: PushTarget, point: str = "swapping") -> None:
    """The next apply stops at ``point`` (after its first file is swapped in)."""
    pause = f"{edge_contract.PUSH_DIR}/pause"
    target.root(f"mkdir -p -m 0700 {edge_contract.PUSH_DIR} && echo {point} > {pause}")


def wait_held(target: PushTarget, push_id: str) -> None:
    paused = f"{edge_contract.PUSH_DIR}/{push_id}/paused"
    wait_for(
        lambda: target.root(f"test -e {paused}").returncode == 0,
        timeout=target.timeout,
        message=f"push {push_id} held",
    )


def release(target: PushTarget, push_id: str) -> None:
    target.root(f"rm -f {edge_contract.PUSH_DIR}/{push_id}/paused")


def _later_push_agrees(target: PushTarget, pushed: str) -> tuple[bool, str]:
    """The configuration the edge runs, pushed again: accepted, nothing to change."""
    again = finish(start_push(target, pushed))
    return again.rc == 0 and "already up to date" in again.output, again.output[-300:]


def _verdict(rc: int) -> str:
    return "success" if rc == 0 else "failure"


# -- the rows ------------------------------------------------------------------------


def cut(target: PushTarget, old: str, new: str) -> Check:
    """The SSH client dies mid-change: the apply goes on, the client's second connection
    gets the verdict, and the edge runs what that verdict says."""
    hold_next(target)
    client = start_push(target, new)
    wait_held(target, client.push_id)
    client.proc.send_signal(signal.SIGKILL)
    client.proc.wait()
    release(target, client.push_id)
    rc, output = wait_again(target, client.push_id)
    on = running(target, {"old": old, "new": new})
    ok_verify, differs = verified(target)
    expected = "new" if rc == 0 else "old"
    agrees, later = _later_push_agrees(target, new if on == "new" else old)
    ok = ok_verify and on == expected and agrees
    return Check(
        "push:cut",
        ok,
        on or "mixed",
        "",
        f"SSH client killed mid-change; reconnected: {_verdict(rc)}; edge runs the {on or 'MIXED'} files, "
        f"verify {'passes' if ok_verify else 'FAILS ' + differs}; a later push "
        + ("agrees (nothing to change)" if agrees else f"DISAGREES: {later}")
        + ("" if rc == 0 else f"; {output.strip().splitlines()[-1:]}"),
    )


def reset(target: PushTarget, old: str, new: str) -> Check:
    """The edge restarts mid-change: at boot the recovery puts the old files back and
    verifies; the push's verdict says so."""
    hold_next(target)
    client = start_push(target, new)
    wait_held(target, client.push_id)
    target.restart()
    client.proc.kill()
    client.proc.wait()
    rc, output = wait_again(target, client.push_id)
    on = running(target, {"old": old, "new": new})
    ok_verify, differs = verified(target)
    expected = "new" if rc == 0 else "old"
    agrees, later = _later_push_agrees(target, new if on == "new" else old)
    recovered = "restarted during the push" in output
    ok = ok_verify and on == expected and agrees and recovered
    return Check(
        "push:reset",
        ok,
        on or "mixed",
        "",
        f"edge restarted mid-change; the push's verdict: {_verdict(rc)}"
        + (" (the boot-time recovery put the files back)" if recovered else " (NO recovery reported)")
        + f"; edge runs the {on or 'MIXED'} files, verify {'passes' if ok_verify else 'FAILS ' + differs}; "
        + ("a later push agrees" if agrees else f"a later push DISAGREES: {later}"),
    )


def concurrent(target: PushTarget, old: str, a: str, b: str, command: str | None = None) -> Check:
    """Push A is held mid-change while push B starts; then A goes on.  Each ends in
    success or a clear refusal, and the edge runs the push that last reported success."""
    hold_next(target)
    first = start_push(target, a, command)
    wait_held(target, first.push_id)
    second = start_push(target, b, command)
    done = [threading.Thread(target=finish, args=(c,)) for c in (first, second)]
    done[1].start()
    waits = f"grep -qs 'waits for push' {edge_contract.PUSH_DIR}/{second.push_id}/log"
    wait_for(
        lambda: not done[1].is_alive() or target.root(waits).returncode == 0,
        timeout=target.timeout,
        message="the second push waiting or done",
    )
    release(target, first.push_id)
    done[0].start()
    for t in done:
        t.join(target.timeout * 2)
    on = running(target, {"old": old, "A": a, "B": b})
    ok_verify, differs = verified(target)
    succeeded = sorted((c for c in (first, second) if c.rc == 0), key=lambda c: c.done_at or 0)
    last = {first.push_id: "A", second.push_id: "B"}[succeeded[-1].push_id] if succeeded else "old"
    clear = all(c.rc == 0 or any(w in c.output for w in ("REFUSED", "FAILED")) for c in (first, second))
    ok = ok_verify and on == last and clear
    return Check(
        "push:concurrent",
        ok,
        on or "mixed",
        "",
        f"A held mid-change while B started: A {_verdict(first.rc or 0) if first.rc is not None else 'hung'}, "
        f"B {_verdict(second.rc or 0) if second.rc is not None else 'hung'}; the last success was {last}, "
        f"the edge runs {on or 'a MIX'}; verify {'passes' if ok_verify else 'FAILS ' + differs}",
    )


# -- in the lab ------------------------------------------------------------------------


def lab_target(el: EdgeLab, name: str) -> PushTarget:
    edge = el.edges[name]

    def ssh(command: str, stdin: str | None) -> subprocess.CompletedProcess:
        return edge.ssh(command, input=stdin, timeout=TIMEOUT_S * 2)

    def spawn(command: str) -> subprocess.Popen:
        argv, _known = el.operator_ssh_argv(edge, command)
        return el.operator.spawn(
            *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def restart() -> None:
        # SIGKILL for every unfinished apply's process group first, then the power cut.
        for pid in edge.node.sh(
            f"for d in {edge_contract.PUSH_DIR}/*/; do [ -e $d/result ] || cat $d/pid 2>/dev/null; done; true"
        ).stdout.split():
            edge.node.run("kill", "-KILL", "--", f"-{pid}", check=False)
        edge.crash()
        edge.boot()

    return PushTarget(name, el.cfg.ssh.user, ssh, spawn, restart)


def keyed(el: EdgeLab, work: Path, stack_file: Path, project_file: Path | None, n: int) -> list[Rendered]:
    """``n`` variants of the lab's stack, each with one more SSH key of its own (small
    changes that touch several files), rendered with the running lab's keys."""
    config = yaml.safe_load(stack_file.read_text())["config"]
    keys = [*config["cgnat-edge:sshPublicKeys"], el.rendered.operator_key[1]]
    return [
        render_stack(
            stack_file,
            work / f"keyed-{i}",
            project_file=project_file,
            config_overrides={"sshPublicKeys": [*keys, generate_host_key()[1]]},
            state=offline.key_state(el.rendered.run),
            operator_key=el.rendered.operator_key,
            as_released=el.as_released,
        )
        for i in range(n)
    ]


def run_pushes(el: EdgeLab, stack_file: Path, project_file: Path | None = None) -> list[Check]:
    """The three rows on the lab's first edge, from the configuration it booted with."""
    name = sorted(el.edges)[0]
    target = lab_target(el, name)
    old = el.rendered.bundle(name)
    with tempfile.TemporaryDirectory(prefix="cgnat-edge-pushes-") as tmp:
        a, b = (r.bundle(name) for r in keyed(el, Path(tmp), stack_file, project_file, 2))
    rows = [cut(target, old, a)]
    finish(start_push(target, old))
    rows.append(reset(target, old, a))
    finish(start_push(target, old))
    rows.append(concurrent(target, old, a, b))
    finish(start_push(target, old))
    return rows
