"""One edge in the lab: built as its cloud-config would build it, booted, crashed and
pushed to, in a network namespace.

Each edge runs wireguard-go, the nftables ruleset, the real Traefik binary and the
machine's sshd, with the files taken out of the edge's rendered cloud-config (never
hand-written copies), at their real paths in the edge's own /etc and /var/lib
(overlays of the machine's) with the modes and owners cloud-init would give them.
Every push (``Edge.push``) runs the program's real push script over SSH from the
operator, as ``pulumi up`` does.

What the lab changes on the edge, and why (everything else is byte for byte):

* ACME cannot succeed in a closed lab: a lab certificate for the ``http`` hostnames
  is added to the dynamic folder, standing in for Let's Encrypt's.
* ``systemctl`` asks a stand-in for systemd in the lab process, which starts, signals
  and stops the same processes systemd would (``Edge._systemctl``), with what the
  units' ``StateDirectory=`` and ``LoadCredential=`` ask for, as root; ``cloud-init
  status`` answers done.
* ``--protection`` adds its mirror's certificate to the edge's trust store
  (components/lab/protection.py), as a local CA would be added.
* sshd runs without PAM and without a pid file (they would reach the machine's logind
  and /run); the operator's key is added to ``sshPublicKeys`` by ``render_stack``.
* CrowdSec (a stack with ``crowdsec`` on): the boot leaves its two units enabled, as
  the first boot's setup does, but the stand-in runs their daemons only on an edge
  with ``crowdsec_daemons`` set (``--pushes``, components/lab/day2.py), from the
  machine's Debian packages with the lab's log folder (components/lab/crowdsec_units.py);
  elsewhere a unit counts as running while it is enabled.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socketserver
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from components.lab import crowdsec_units
from components.lab.errors import LabError
from components.lab.netns import Lab, Node, wait_for
from components.model import edge_contract
from components.model.fleet import FleetConfig
from components.model.protection import CrowdSec
from components.renderers import bootstrap, edge_dns

TRAEFIK_BINARY = Path(sys.executable).parent / "traefik"
SPAWNED_UNITS = (
    "pdns.service",
    "cgnat-edge-health.service",
    "cgnat-edge-alerts.service",
    edge_contract.NODE_EXPORTER_UNIT,
)
"""Units the stand-in runs as processes, like Traefik's slots: the DNS units of dnsMode
edges, the alert daemon of a stack with an alert channel, the metrics exporter."""
CROWDSEC = (edge_contract.CROWDSEC_UNIT, edge_contract.BOUNCER_UNIT)
EXEC_UNITS = {
    edge_contract.HEALTH_UNIT: edge_dns.AGENT_UNIT_PATH,
    edge_contract.ALERTS_UNIT: f"{edge_contract.SYSTEMD_DIR}/{edge_contract.ALERTS_UNIT}",
}
"""Units started from their own unit file's ExecStart (the file the push wrote)."""


class RunningLab(Protocol):
    """What an edge uses of the lab it runs in (``EdgeLab``): its folder, the stand-in
    ACME certificate, the operator's SSH, and the servers it ends on close."""

    lab: Lab
    servers: list
    http_cert: tuple[Path, Path, str] | None

    @property
    def cfg(self) -> FleetConfig: ...

    def operator_ssh(
        self,
        edge: Edge,
        command: str,
        *,
        key: Path | None = None,
        host_key: str | None = None,
        input: str | None = None,
        timeout: float = 120,
        options: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess: ...


@dataclass
class PushResult:
    ok: bool
    output: str
    systemctl: list[str]


STAND_IN_CLIENT = """#!{python}
# The lab's systemctl: asks the lab's stand-in for systemd (components/lab/edge.py).
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect({sock!r})
s.sendall(json.dumps(sys.argv[1:]).encode() + b"\\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
r = json.loads(data)
sys.stdout.write(r["out"])
sys.stderr.write(r["err"])
sys.exit(r["rc"])
"""
CLOUD_INIT_STUB = (
    "#!/bin/sh\n# The lab's cloud-init: the edge was built by the lab, as cloud-init would.\necho 'status: done'\n"
)


class Edge:
    """One edge as its cloud-config would build it, in a namespace.

    The node gets its own /etc and /var/lib (overlays of the machine's), so every file
    sits at its real path and the push script runs unchanged, over SSH, as root; sshd
    is the machine's own with the rendered drop-in and host key.  systemd is the one
    thing a namespace cannot have: ``systemctl`` asks a stand-in in the lab process
    (``_systemctl``) that starts and signals the same processes systemd would."""

    takeover: tuple[str, ...] = ()
    """The image's ``firewall_takeover`` commands, run first at boot (runcmd order)."""

    def __init__(self, lab: RunningLab, name: str, node: Node, public_ip: str, files: list[dict]):
        self.lab, self.name, self.node, self.public_ip = lab, name, node, public_ip
        self.work = lab.lab.workdir / "edges" / name
        self.work.mkdir(parents=True, mode=0o700)
        self.systemctl_log = self.work / "systemctl.log"
        self.systemctl_log.write_text("")
        self.units: dict[str, subprocess.Popen] = {}
        self.enabled: set[str] = set()
        self.sshd: subprocess.Popen | None = None
        self.install_key = ""
        """The install key's public half, as the ``<edge>-boot`` step reported it."""
        self.crowdsec_daemons = False
        """The stand-in runs CrowdSec's daemons (else an enabled unit counts as running)."""
        self._lock = threading.Lock()
        node.overlay("/etc")
        node.overlay("/var/lib")
        # The edge contract too: on the machine's /usr/local/lib, every lab running at the
        # same time (another checkout's, with other paths) would share one.
        for private in ("/etc/wireguard", "/usr/local/bin", edge_contract.CONTRACT_DIR):
            node.run("mkdir", "-p", private)
            node.run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", private)
        node.run("ln", "-s", str(TRAEFIK_BINARY), edge_contract.TRAEFIK_BINARY)
        node.sh(
            "grep -q '^traefik:' /etc/group || echo 'traefik:x:64990:' >> /etc/group; "
            "grep -q '^traefik:' /etc/passwd || echo 'traefik:x:64990:64990::/var/lib/traefik:/usr/sbin/nologin' >> /etc/passwd"
        )
        self._serve_systemctl()
        self.node.write(
            "/usr/local/sbin/systemctl",
            STAND_IN_CLIENT.format(python=sys.executable, sock=str(self.work / "systemd.sock")),
            0o755,
        )
        self.node.write("/usr/local/sbin/cloud-init", CLOUD_INIT_STUB, 0o755)
        self._install(files)
        # The runcmd makes Traefik's dynamic folder; the first push fills it.
        self.node.run("mkdir", "-p", edge_contract.TRAEFIK_DYNAMIC_DIR)
        if lab.http_cert is not None:
            cert, key, _ = lab.http_cert
            standin = {"tls": {"certificates": [{"certFile": str(cert), "keyFile": str(key)}]}}
            self.node.write(
                f"{edge_contract.TRAEFIK_DYNAMIC_DIR}/lab-acme-standin.yaml", yaml.safe_dump(standin), 0o644
            )

    def read(self, path: str) -> str:
        return self.node.run("cat", path).stdout

    def root(self, script: str) -> subprocess.CompletedProcess:
        """``script`` on the edge as root (bash), not raising on failure."""
        return self.node.run("bash", "-c", script, check=False)

    def _install(self, files: list[dict]) -> None:
        """cloud-init's write_files, at the real paths inside the node."""
        for entry in files:
            path = entry["path"]
            self.node.run("mkdir", "-p", str(Path(path).parent))
            self.node.write(path, entry["content"], int(str(entry.get("permissions", "0644")), 8))
            self.node.run("chown", str(entry.get("owner", "root:root")), path)

    # -- the stand-in for systemd ----------------------------------------------------

    def _serve_systemctl(self) -> None:
        sock_path = self.work / "systemd.sock"
        edge = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                argv = json.loads(self.rfile.readline())
                with edge._lock:
                    rc, out, err = edge._systemctl(argv)
                self.wfile.write(json.dumps({"rc": rc, "out": out, "err": err}).encode())

        server = socketserver.ThreadingUnixStreamServer(str(sock_path), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.lab.servers.append(server)

    def _active(self, unit: str) -> bool:
        if unit.startswith("traefik") or unit in SPAWNED_UNITS or (self.crowdsec_daemons and unit in CROWDSEC):
            proc = self.units.get(unit)
            return proc is not None and proc.poll() is None
        if unit == "ssh.service":
            return self.sshd is not None and self.sshd.poll() is None
        if unit.startswith("wg-quick@"):
            return (
                self.node.run("ip", "link", "show", "dev", unit.split("@")[1].split(".")[0], check=False).returncode
                == 0
            )
        return unit in self.enabled

    def _start(self, unit: str) -> None:
        unit = unit if "." in unit else unit + ".service"
        if self._active(unit):
            return
        if unit.startswith("traefik"):  # a slot (traefik@a) or an older edge's single unit
            slot = unit.split("@")[1].split(".")[0] if "@" in unit else ""
            path = edge_contract.TRAEFIK_UNIT if slot else f"/etc/systemd/system/{unit}"
            text = self.read(path)
            exec_start = next(x.split("=", 1)[1] for x in text.splitlines() if x.startswith("ExecStart="))
            argv = shlex.split(exec_start.replace("%i", slot))
            self.node.run("mkdir", "-p", "-m", "0700", edge_contract.TRAEFIK_STATE_DIR)
            self.units[unit] = self.node.spawn(*argv, log=self.work / f"traefik-{slot or 'single'}.log")
        elif unit == edge_contract.PDNS_UNIT:
            # Debian's unit's ExecStart; its RuntimeDirectory (/run/pdns) is the
            # machine's, so the control socket goes to the edge's work folder.
            self.units[unit] = self.node.spawn(
                "pdns_server", "--guardian=no", "--daemon=no", "--disable-syslog", "--write-pid=no",
                f"--socket-dir={self.work}", log=self.work / "pdns.log",
            )  # fmt: skip
        elif unit == edge_contract.NODE_EXPORTER_UNIT:
            # Debian's unit: ExecStart=/usr/bin/prometheus-node-exporter $ARGS.
            args = next(
                line.split("=", 1)[1].strip('"')
                for line in self.read(edge_contract.NODE_EXPORTER_ARGS).splitlines()
                if line.startswith("ARGS=")
            )
            self.units[unit] = self.node.spawn(
                edge_contract.NODE_EXPORTER, *shlex.split(args), log=self.work / "node-exporter.log"
            )
        elif unit in EXEC_UNITS:
            self.units[unit] = self._spawn_unit(unit, self.read(EXEC_UNITS[unit]))
        elif unit in CROWDSEC and self.crowdsec_daemons:
            start = crowdsec_units.agent if unit == edge_contract.CROWDSEC_UNIT else crowdsec_units.bouncer
            self.units[unit] = start(self.node, self.work / "crowdsec")
        elif unit.startswith("wg-quick@"):
            iface = unit.split("@")[1].split(".")[0]
            self.node.run("wg-quick", "up", iface)
        elif unit == "ssh.service":
            self.node.run("mkdir", "-p", "/run/sshd")
            # The machine's sshd and /etc/ssh/sshd_config (with the edge's drop-in);
            # no pid file and no PAM, which would reach the machine's own /run and logind.
            self.sshd = self.node.spawn(
                "/usr/sbin/sshd", "-D", "-e", "-o", "PidFile=none", "-o", "UsePAM=no", log=self.work / "sshd.log"
            )

    def _spawn_unit(self, unit: str, text: str) -> subprocess.Popen:
        """The unit's ExecStart, with what systemd gives it first: ``StateDirectory=``
        made under /var/lib, each ``LoadCredential=`` copied (read-only) into a folder of
        its own named by ``$CREDENTIALS_DIRECTORY``.  The process runs as root (a
        namespace has no dynamic users)."""
        settings = [line.partition("=")[::2] for line in text.splitlines() if "=" in line and line[:1] != "#"]
        exec_start = next(value for key, value in settings if key == "ExecStart")
        env = None
        for key, value in settings:
            if key == "StateDirectory":
                self.node.run("mkdir", "-p", "-m", "0755", f"/var/lib/{value}")
            elif key == "LoadCredential":
                name, _, source = value.partition(":")
                credentials = self.work / "credentials" / unit
                credentials.mkdir(parents=True, exist_ok=True, mode=0o700)
                (credentials / name).unlink(missing_ok=True)
                (credentials / name).write_text(self.read(source))
                (credentials / name).chmod(0o400)
                env = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
        return self.node.spawn(
            *shlex.split(exec_start), env=env, log=self.work / f"{unit.removesuffix('.service')}.log"
        )

    def _systemctl(self, argv: list[str]) -> tuple[int, str, str]:
        with open(self.systemctl_log, "a") as f:
            f.write(" ".join(argv) + "\n")
        flags = {a for a in argv if a.startswith("-")}
        words = [a for a in argv if not a.startswith("-")]
        signal_name = next((a.split("=", 1)[1] for a in argv if a.startswith("--signal=")), "SIGTERM")
        if "-p" in argv:
            words.remove(argv[argv.index("-p") + 1])
        verb, units = (words[0], words[1:]) if words else ("", [])
        units = [u if "." in u else u + ".service" for u in units]
        if verb == "daemon-reload":
            return 0, "", ""
        if verb == "is-enabled":
            return (0 if all(u in self.enabled for u in units) else 1), "", ""
        if verb == "is-active":
            return (0 if all(self._active(u) for u in units) else 3), "", ""
        if verb == "show":
            proc = self.units.get(units[0])
            return 0, f"{proc.pid if proc is not None and proc.poll() is None else 0}\n", ""
        for unit in units:
            if not self._act(verb, unit, "--now" in flags, signal_name):
                return 1, "", f"lab systemctl: {verb} {unit} is not something the lab's systemd stand-in does\n"
        return 0, "", ""

    def _act(self, verb: str, unit: str, now: bool, signal_name: str) -> bool:
        """One unit's share of a ``systemctl`` verb; False for what the stand-in does not do."""
        if verb == "enable":
            self.enabled.add(unit)
            if now:
                self._start(unit)
        elif verb == "disable":
            self.enabled.discard(unit)
            if now:
                self._stop(unit)
        elif verb in ("start", "restart", "reload-or-restart") and not unit.startswith("ssh"):
            if verb == "restart":
                self._stop(unit)
            self._start(unit)
        elif verb in ("reload", "reload-or-restart") and unit == "ssh.service" and self.sshd is not None:
            self.sshd.send_signal(signal.SIGHUP)
        elif verb == "stop":
            self._stop(unit)
        elif verb == "kill":
            proc = self.units.get(unit)
            if proc is not None and proc.poll() is None:
                proc.send_signal(getattr(signal, signal_name))
        else:
            return False
        return True

    def _stop(self, unit: str) -> None:
        proc = self.units.get(unit)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)  # TimeoutStopSec
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- boot and crash ---------------------------------------------------------

    def boot(self) -> None:
        """What the edge's runcmd does after write_files: firewall, tunnel, Traefik, sshd."""
        for command in self.takeover:
            self.node.sh(command)
        self.node.run("nft", "-f", edge_contract.NFT_CONF)
        with self._lock:
            # The first boot has no wg0.conf (the first push brings it); a reboot has.
            self.enabled.add(f"wg-quick@{edge_contract.WG_INTERFACE}.service")
            if self.node.run("test", "-f", edge_contract.WG_CONF, check=False).returncode == 0:
                self._start("wg-quick@wg0.service")
            self.enabled |= {edge_contract.TRAEFIK_SLOTS[0], f"{edge_contract.WG_ENDPOINT_UNIT}.timer"}
            if self.lab.cfg.protection.crowdsec != CrowdSec.OFF:
                self.enabled |= set(CROWDSEC)  # what the first boot's setup leaves
            self._start(edge_contract.TRAEFIK_SLOTS[0])
            self.node.sh("rm -f /etc/ssh/ssh_host_rsa_key* /etc/ssh/ssh_host_ecdsa_key* /etc/ssh/ssh_host_dsa_key*")
            if self.node.run("test", "-f", edge_contract.INSTALL_KEY, check=False).returncode != 0:
                self.node.run("ssh-keygen", "-q", "-t", "ecdsa", "-b", "256", "-N", "", "-f", edge_contract.INSTALL_KEY)
            self._start("ssh.service")
            # A rebooted edge: systemd starts the enabled DNS units (dnsMode edges) too.
            for unit in SPAWNED_UNITS:
                if unit in self.enabled:
                    self._start(unit)
        # Then, after the units it is ordered after, the recovery of a push the
        # restart cut off (its systemctl calls come back to the stand-in: no lock held).
        if edge_contract.PUSH_RECOVER_UNIT in self.enabled:
            self.fire_timer(edge_contract.PUSH_RECOVER_UNIT.removesuffix(".service"))
        self.wait_serving()

    def wait_serving(self) -> None:
        ping = f"http://{edge_contract.TRAEFIK_PING}/ping"
        wait_for(
            lambda: (
                self.traefik is None
                or self.traefik.poll() is not None
                or self.node.run("curl", "-fsS", "--max-time", "1", ping, check=False).stdout == "OK"
            ),
            timeout=20,
            message=f"Traefik on edge {self.name}",
        )
        if self.traefik is None or self.traefik.poll() is not None:
            logs = "".join(p.read_text()[-3000:] for p in self.work.glob("traefik-*.log"))
            raise LabError(f"Traefik on edge {self.name} exited:\n{logs}")
        # Ping answers before the routers are loaded: wait for those too (none before
        # the first push, which brings them).
        exists = self.node.run("test", "-f", edge_contract.TRAEFIK_DYNAMIC, check=False).returncode == 0
        dynamic = yaml.safe_load(self.read(edge_contract.TRAEFIK_DYNAMIC)) if exists else {}

        def routers_loaded() -> bool:
            for proto in ("http", "tcp", "udp"):
                want = {f"{name}@file" for name in dynamic.get(proto, {}).get("routers", {})}
                url = f"http://{edge_contract.TRAEFIK_PING}/api/{proto}/routers"
                done = self.node.run("curl", "-fsS", "--max-time", "1", url, check=False)
                have = {r["name"] for r in json.loads(done.stdout or "[]")} if done.returncode == 0 else set()
                if not want <= have:
                    return False
            return True

        wait_for(routers_loaded, timeout=20, message=f"Traefik's routers on edge {self.name}")

    @property
    def traefik(self) -> subprocess.Popen | None:
        """The Traefik of the enabled slot."""
        slot = next((u for u in edge_contract.TRAEFIK_SLOTS if u in self.enabled), None)
        return self.units.get(slot) if slot else None

    def crash(self) -> None:
        """Power cut: every process ends, the kernel state of a booted node is gone."""
        self.node.end_processes()
        self.units.clear()
        self.sshd = None
        self.node.run("ip", "link", "del", "wg0", check=False)
        self.node.run("nft", "flush", "ruleset")

    def wireguard_pid(self) -> int | None:
        """The wireguard-go process serving wg0 (it daemonizes, so it is looked up)."""
        for pid in self.node.pids():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if cmd and cmd[0].endswith(b"wireguard-go") and b"wg0" in cmd:
                return pid
        return None

    def fire_timer(self, unit: str) -> None:
        """What systemd does when ``unit``'s timer fires: run the service's ExecStart."""
        text = self.read(f"/etc/systemd/system/{unit}.service")
        exec_start = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart="))
        self.node.run(*shlex.split(exec_start))

    # -- updates ----------------------------------------------------------------

    def ssh(
        self,
        command: str,
        *,
        key: Path | None = None,
        host_key: str | None = None,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        """``command`` on this edge over SSH from the operator, pinning ``host_key``
        (default: the rendered one), as pulumi-command connects."""
        return self.lab.operator_ssh(self, command, key=key, host_key=host_key, input=input, timeout=timeout)

    def push(self, bundle: str, *, host_key: str | None = None, readiness_timeout: int = 60) -> PushResult:
        """The program's ``<edge>-config`` step: the real push script and readiness
        script, over SSH, as root, with the bundle on stdin."""
        self.systemctl_log.write_text("")
        command = bootstrap.config_command(self.lab.cfg.ssh.user, readiness_timeout)
        done = self.ssh(command, input=bundle, host_key=host_key)
        calls = [c for c in self.systemctl_log.read_text().splitlines() if c]
        return PushResult(done.returncode == 0, done.stdout + done.stderr, calls)
