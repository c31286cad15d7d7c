"""Network namespaces for the lab and the tests: real daemons, guaranteed cleanup.

A ``Node`` is a network namespace plus a private mount namespace in which
``/run/wireguard``, ``/etc/wireguard``, ``/usr/local/sbin`` and ``/var/lib/cgnat-edge``
are empty tmpfs mounts, so each edge has its own hook scripts and saved state where a
real edge keeps them.  The private mounts matter: wireguard-go's control sockets live in ``/run/wireguard/<ifname>.sock``
on a filesystem every network namespace shares, so two nodes that both run ``wg0``
(two edges) would otherwise take each other's socket, and tests would write keys into
the machine's real ``/etc/wireguard``.

Every command runs through ``nsenter`` into a long-lived holder process of the node.
``Lab.close()`` ends every process that lives in a lab namespace (all started by the
lab, found with ``ip netns pids``), then deletes the namespaces; it runs from a
fixture finalizer, so it also runs when a test fails.  Namespaces left by a test run
that was killed outright carry the dead run's pid in their name and are swept by the
next ``Lab``.

Use only documentation prefixes (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
2001:db8::/32), ULA and 100.64.0.0/10 inside the lab.

    with Lab() as lab:
        a, b = lab.node("a"), lab.node("b")
        lab.link(a, "eth0", ["192.0.2.1/24"], b, "eth0", ["192.0.2.2/24"])
        b.spawn("socat", "TCP-LISTEN:80,fork", "SYSTEM:echo hi")
        wait_for(lambda: a.run("socat", "-", "TCP:192.0.2.2:80", check=False).stdout == "hi\\n")
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

PREFIX = "cge"
PRIVATE_DIRS = ("/run/wireguard", "/etc/wireguard", "/usr/local/sbin", "/var/lib/cgnat-edge")
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)x[0-9a-f]+-")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


class CommandError(AssertionError):
    """A command inside a node failed; the message carries its output."""


def _host(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode:
        raise CommandError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.1, message: str = "condition"
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail with ``message``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value {last!r})")


class Node:
    """One namespace; ``run`` for short commands, ``spawn`` for daemons."""

    def __init__(self, lab: Lab, name: str, netns: str):
        self.lab = lab
        self.name = name
        self.netns = netns
        _host("ip", "netns", "add", netns)
        mounts = " && ".join(f"mount -t tmpfs -o mode=0700 tmpfs {d}" for d in PRIVATE_DIRS)
        for d in PRIVATE_DIRS:
            os.makedirs(d, mode=0o700, exist_ok=True)
        self.holder = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"{mounts} && echo ready && exec sleep infinity",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stdout, stderr = self.holder.stdout, self.holder.stderr
        assert stdout is not None and stderr is not None  # both are pipes (above)
        line = stdout.readline()
        if line.strip() != "ready":
            raise CommandError(
                f"namespace {netns} did not start: {stderr.read() if self.holder.poll() is not None else line}"
            )
        self.run("ip", "link", "set", "lo", "up")

    def _argv(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--", *argv]

    def run(
        self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 30, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(self._argv(argv), input=input, capture_output=True, text=True, timeout=timeout, env=env)
        if check and done.returncode:
            raise CommandError(f"[{self.name}] {' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def sh(self, script: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run("sh", "-c", script, **kwargs)

    def spawn(self, *argv: str, env: dict | None = None, log: Path | None = None, **popen) -> subprocess.Popen:
        """Start a daemon in this node; it is ended by ``Lab.close``.  Output goes to
        ``log`` (appended) or nowhere, unless ``popen`` asks otherwise (``stdout=PIPE``
        for a process whose answer the caller reads, ``stdin=PIPE`` for one it talks to)."""
        # The child keeps its own copy of the log's descriptor; ours closes once it started.
        with open(log, "ab") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
            streams = {
                "stdin": subprocess.DEVNULL,
                "stdout": out,
                "stderr": subprocess.STDOUT if log else subprocess.DEVNULL,
            }
            proc = subprocess.Popen(
                self._argv(argv),
                env=env,
                start_new_session=True,
                **{**streams, **popen},
            )
        self.lab._procs.append(proc)
        return proc

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` in this process, on a thread that has joined the node's network
        namespace: the sockets it makes live in the node, so a test can listen or ask
        there itself, without a helper process."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                with open(f"/run/netns/{self.netns}") as handle:
                    if _libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, os.strerror(err))
                box["value"] = fn()
            except BaseException as exc:  # raised again in the caller's thread
                box["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def write(self, path: str, content: str, mode: int = 0o600) -> None:
        """Write a file as seen inside the node (its private dirs included)."""
        q = shlex.quote(path)
        self.run("sh", "-c", f"umask 077 && cat > {q} && chmod {mode:o} {q}", input=content)

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def forward(self) -> None:
        self.sysctl("net.ipv4.ip_forward", 1)
        self.sysctl("net.ipv6.conf.all.forwarding", 1)

    def addresses(self, ifname: str, addrs: Iterable[str]) -> None:
        for a in addrs:
            self.run("ip", "addr", "add", a, "dev", ifname, *(["nodad"] if ":" in a else []))
        self.run("ip", "link", "set", ifname, "up")

    def route(self, *spec: str) -> None:
        self.run("ip", "route", "add", *spec)

    def pids(self) -> list[int]:
        out = _host("ip", "netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]

    def bind(self, path: str, content: str, mode: int = 0o644) -> None:
        """Show ``content`` at ``path`` (an existing file) to this node only: a file of
        the lab bind-mounted in the node's private mount namespace, so a node can have
        its own /etc/resolv.conf or /etc/group while the machine's stay untouched."""
        src = self.lab.workdir / "binds" / self.name / path.strip("/").replace("/", "_")
        src.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        src.write_text(content)
        src.chmod(mode)
        self.run("mount", "--bind", str(src), path)

    def overlay(self, path: str) -> Path:
        """Make ``path`` (a directory of the machine) writable for this node only: an
        overlay whose upper layer lives in the lab's folder, so a node can be given an
        edge's /etc or /var/lib at their real paths while the machine's stay untouched.
        Returns the upper layer (what the node changed)."""
        base = self.lab.workdir / "overlays" / self.name / path.strip("/").replace("/", "_")
        upper, work = base / "upper", base / "work"
        upper.mkdir(parents=True)
        work.mkdir()
        self.run("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={path},upperdir={upper},workdir={work}", path)
        return upper

    def end_processes(self) -> None:
        """End every process in the node but the namespace holder, as a crash or a
        power cut would; the namespace, its links and addresses stay."""
        _end([p for p in self.pids() if p != self.holder.pid])


class Lab:
    """A set of nodes that is torn down as a whole."""

    def __init__(self):
        self.run_id = f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
        self.nodes: list[Node] = []
        self._procs: list[subprocess.Popen] = []
        self._workdir: Path | None = None
        sweep_stale()

    @property
    def workdir(self) -> Path:
        """A private (0700) folder for the lab's files; removed by ``close``."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.run_id}-"))
        return self._workdir

    def node(self, name: str) -> Node:
        node = Node(self, name, f"{self.run_id}-{name}")
        self.nodes.append(node)
        return node

    def link(self, a: Node, a_if: str, a_addrs: Sequence[str], b: Node, b_if: str, b_addrs: Sequence[str]) -> None:
        """A veth pair from ``a`` to ``b``, created straight inside both namespaces."""
        _host("ip", "link", "add", a_if, "netns", a.netns, "type", "veth", "peer", "name", b_if, "netns", b.netns)
        a.addresses(a_if, a_addrs)
        b.addresses(b_if, b_addrs)

    def close(self) -> None:
        for node in self.nodes:
            _end(node.pids())
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for node in self.nodes:
            if node.holder.poll() is None:
                node.holder.kill()
            node.holder.wait()
            _host("ip", "netns", "del", node.netns, check=False)
        self.nodes.clear()
        self._procs.clear()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _end(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _pid_alive(p) and not _is_zombie(p)]
            time.sleep(0.05)
        if not pids:
            return


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        # Gone between the liveness check and the read: as good as reaped.
        return True


def sweep_stale() -> None:
    """Remove lab namespaces whose test run no longer exists."""
    out = _host("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        netns = line.split()[0] if line.strip() else ""
        m = _NAME_RE.match(netns)
        if m and not _pid_alive(int(m.group(1))):
            pids = [int(p) for p in _host("ip", "netns", "pids", netns, check=False).stdout.split()]
            _end(pids)
            _host("ip", "netns", "del", netns, check=False)
