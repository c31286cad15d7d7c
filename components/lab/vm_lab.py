"""The lab with machines for edges (``cgnat-edge rehearse --vm``): every edge of a stack
boots its user-data as a QEMU machine of its own architecture (``vm``), on the lab's
internet in place of a namespace, and the lab's visitor, home, CGNAT and DNS are the
Edge lab's own (``topology``).

A guest's card is a tap device on a bridge whose other port is its link to the lab's
internet router, which answers ARP for every other address (proxy ARP), so the guest
sits in a /24 at its rendered public address as on a VPS.  The lab's internet holds
the two things a guest fetches from at first boot: the Debian archive through
``mirror_proxy`` and the Traefik release (``day2.ReleaseServer``, at the release
host's name); nothing routes further.

Then everything ``pulumi up`` and a user do, over real SSH: the boot and host-key
steps, the first push, home's tunnels, and the rows: the tunnel on the kernel's
WireGuard, every service, a reboot, a Traefik handover, pushes under faults (a cut
connection, a reset machine, two at once) and the day-2 changes.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import yaml

from components.config import stack
from components.lab import build, changes, day2, lab_dns, mirror_proxy, pushes, rehearse, smoke, topology, vm, vm_image
from components.lab.certs import self_signed
from components.lab.edge import Edge, PushResult
from components.lab.edge_lab import EdgeLab
from components.lab.errors import LabError
from components.lab.netns import Lab, Node, wait_for
from components.lab.rendered import Rendered, render_stack
from components.lab.report import Check, write_report
from components.lab.rollout import rollout
from components.model import edge_contract
from components.model.fleet import Mode, Protocol
from components.renderers import bootstrap, edge_dns, traefik

SSH_TIMEOUT_S = 1800
"""A push under TCG installs packages (CrowdSec), downloads and checks a Traefik release
and starts it on an emulated CPU: a Traefik handover alone took 705 s."""
DIAL_RETRY_S = 60
DIAL_ERRORS = ("Connection refused", "Connection timed out", "No route to host")
ANSWER_TIMEOUT_S = 900
"""How long a rebooted or reset machine may take until it answers again."""
VISITOR_TIMEOUT_S = 60
"""How long a visitor's request may wait during a handover before it counts as failed.
New connections are held back (their SYN dropped, resent by the client at 1, 3, 7, 15,
31 s) until the new Traefik has loaded its routers: about a second on a VPS, tens of
seconds on an emulated CPU. A browser waits longer than this."""


class VmEdge:
    """An edge that is a machine: what the lab's build and rows use of an ``Edge``
    (its name and address, SSH as the operator, the push, root commands), all over
    real SSH to the guest."""

    crowdsec_daemons = True
    """Read by the day-2 row: a machine runs its daemons for real."""

    def __init__(self, el: EdgeLab, name: str, public_ip: str, guest: vm.Guest):
        self.lab, self.name, self.public_ip, self.guest = el, name, public_ip, guest
        self.install_key = ""

    def ssh(
        self,
        command: str,
        *,
        key: Path | None = None,
        host_key: str | None = None,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        """Over SSH as the operator; a refused or unanswered dial is tried again for a
        minute, as pulumi-command dials (sshd restarts after the host-key step)."""
        deadline = time.monotonic() + DIAL_RETRY_S
        while True:
            done = self.lab.operator_ssh(
                cast(Edge, self), command, key=key, host_key=host_key, input=input, timeout=timeout
            )
            dial_failed = done.returncode == 255 and any(m in done.stderr for m in DIAL_ERRORS)
            if not dial_failed or time.monotonic() > deadline:
                return done
            time.sleep(2)

    def push(self, bundle: str, *, host_key: str | None = None, readiness_timeout: int = 300) -> PushResult:
        """The program's ``<edge>-config`` step."""
        command = bootstrap.config_command(self.lab.cfg.ssh.user, readiness_timeout)
        done = self.ssh(command, input=bundle, host_key=host_key, timeout=SSH_TIMEOUT_S)
        return PushResult(done.returncode == 0, done.stdout + done.stderr, [])

    def root(self, script: str) -> subprocess.CompletedProcess:
        return self.ssh(bootstrap.as_root(self.lab.cfg.ssh.user, script), timeout=SSH_TIMEOUT_S)

    def answers(self) -> bool:
        return self.ssh("true", timeout=15).returncode == 0

    def wait_answers(self) -> None:
        wait_for(self.answers, timeout=ANSWER_TIMEOUT_S, interval=2, message=f"edge {self.name}'s sshd")


def edges_of(el: EdgeLab) -> dict[str, VmEdge]:
    return cast(dict[str, VmEdge], el.edges)


# -- building ------------------------------------------------------------------------


def _internet_address(el: EdgeLab) -> str:
    inet = el.nodes["inet"]
    taken = {el.client_ip, el.dns_ip, el.cgnat_ip, el.operator_ip}
    taken |= {line.split()[0].split("/")[0] for line in inet.run("ip", "-4", "route").stdout.splitlines()}
    return topology.free_internet_addresses(taken, 1)[0]


def _plug(el: EdgeLab, i: int, name: str, ip: str) -> Node:
    """The namespace holding edge ``name``'s bridge: one port to the internet router
    (which routes ``ip`` there and answers ARP for everything else), one for the tap."""
    inet, gw = el.nodes["inet"], topology.gateway(ip)
    node = el.lab.node(f"vm-{name}")
    el.lab.link(inet, f"i-edge{i}", [f"{gw}/32"], node, "eth0", [])
    inet.route(f"{ip}/32", "dev", f"i-edge{i}")
    inet.sysctl(f"net.ipv4.conf.i-edge{i}.proxy_arp", 1)
    node.run("ip", "link", "add", "br0", "type", "bridge")
    node.run("ip", "link", "set", "eth0", "master", "br0")
    node.run("ip", "link", "set", "br0", "up")
    return node


def _lab_files(el: EdgeLab, proxy: str, release: day2.ReleaseServer) -> dict[str, str]:
    files = {
        "apt-proxy.conf": "".join(
            f'Acquire::{scheme}::Proxy "http://{proxy}:{mirror_proxy.PORT}/";\n' for scheme in ("http", "https")
        ),
        "hosts": f"{release.address} {release.host}\n",
        "ca.crt": release.cert.cert.read_text(),
        "seed.sh": vm.SEED_SH,
        "probe.sh": vm.PROBE_SH,
    }
    if el.http_cert is not None:
        cert, key, _ = el.http_cert
        # Traefik takes a certificate's PEM in place of its file name.
        standin = {"tls": {"certificates": [{"certFile": cert.read_text(), "keyFile": key.read_text()}]}}
        files[vm.STANDIN] = yaml.safe_dump(standin)
    return files


class VmLab:
    """The running lab and its machines; ``close`` ends both."""

    def __init__(self, rendered: Rendered, disks: dict[str, vm_image.Disk], cache: Path, log: Callable[[str], None]):
        self.log = log
        self.el = EdgeLab(Lab(), rendered)
        self.disks, self.cache = disks, cache
        self.checks: list[Check] = []
        self.proxy: mirror_proxy.MirrorProxy | None = None
        self.accel: dict[str, str] = {}
        self.release: day2.ReleaseServer

    def close(self) -> None:
        for edge in edges_of(self.el).values():
            if edge.guest.proc.poll() is None:
                edge.guest.proc.kill()
                edge.guest.proc.wait()
        if self.proxy is not None:
            self.proxy.close()
        self.el.close()

    def boot(self) -> None:
        """The network, every machine powered on at once, home's side, the boot rows."""
        el, cfg = self.el, self.el.cfg
        edge_ips = {name: e["ipv4"] for name, e in el.rendered.edges.items()}
        edge_served, delegated = cfg.dns.edge_served, lab_dns.delegated(cfg)
        dns_node = not edge_served or delegated
        topology.wire(el, edge_ips, dns_node=dns_node)
        plugs = {name: _plug(el, i, name, ip) for i, (name, ip) in enumerate(sorted(edge_ips.items()))}
        mirror = el.nodes["mirror"] = el.lab.node("mirror")
        mirror_ip = _internet_address(el)
        topology.attach(el.lab, el.nodes["inet"], mirror, "i-mirror", mirror_ip)
        self.proxy = mirror_proxy.MirrorProxy(
            mirror.call(lambda: mirror_proxy.listener(mirror_ip)), mirror_proxy.mirror_hosts()
        )
        release = self.release = day2.ReleaseServer(el)
        for arch in {spec.arch for spec in cfg.edges}:
            executable = vm.executable(vm_arch(arch), self.cache)
            release.publish(traefik.VERSION, rehearse.release(executable).good, archs=[arch])
        if any(s.mode is Mode.HTTP for s in cfg.services):
            el.http_cert = self_signed(
                [h for s in cfg.services if s.mode is Mode.HTTP for h in s.hostnames],
                el.lab.workdir,
                "edge-acme-standin",
            )
        files = _lab_files(el, mirror_ip, release)
        work = el.lab.workdir / "vm"
        work.mkdir()
        self.accel = {arch: vm.accelerator(d, work) for arch, d in self.disks.items()}
        for spec in cfg.edges:
            arch, ip = vm_arch(spec.arch), edge_ips[spec.name]
            user_data = (el.rendered.out / "nodes" / spec.name / "user-data.yaml").read_text()
            guest = vm.start(
                plugs[spec.name], work, self.disks[arch], spec.name, ip, topology.gateway(ip), user_data, files,
                self.accel[arch],
            )  # fmt: skip
            el.edges[spec.name] = cast(Edge, VmEdge(el, spec.name, ip, guest))
            self.log(f"rehearse: {spec.name} ({arch}, {self.accel[arch]}) powered on at {ip}")
        resolv = (
            f"nameserver {el.dns_ip}\n"
            if dns_node
            else "".join(f"nameserver {ip}\n" for _, ip in sorted(edge_ips.items())) + "options timeout:1 attempts:2\n"
        )
        if Path("/etc/resolv.conf").is_file():
            for node in el.nodes.values():
                node.bind("/etc/resolv.conf", resolv)
        if not edge_served:
            lab_dns.serve_zone(el, el.nodes["dns"], "zone-fragment.db", el.dns_ip)
        elif delegated:
            lab_dns.start_parent_and_resolver(el, el.nodes["dns"])
        el.start_home_services()
        for edge in edges_of(el).values():
            g = edge.guest
            report, seconds = vm.wait_probe(g)
            self.log(f"rehearse: {g.edge} reported after {seconds:.0f}s")
            user_data = yaml.safe_load((el.rendered.out / "nodes" / g.edge / "user-data.yaml").read_text())
            self.checks += vm.boot_checks(g, report, seconds, user_data, el.operator)
            if report:
                self.checks.append(
                    Check(
                        f"vm:{g.edge}:accel",
                        True,
                        self.accel[g.arch],
                        "",
                        f"QEMU {self.accel[g.arch].upper()}; guest uptime {report.get('uptime', '?').strip()}s at "
                        "the report; the user-data as rendered",
                    )
                )

    def first_push(self) -> None:
        """The boot, host-key and config steps on every edge, then home's tunnels."""
        el = self.el
        for name, edge in edges_of(el).items():
            t0 = time.monotonic()
            build.install_host_key(el, name)
            first = edge.push(el.rendered.bundle(name))
            if not first.ok:
                raise LabError(f"the first push to edge {name} failed:\n{first.output[-3000:]}")
            self.log(f"rehearse: {name}: boot, host-key and first push over SSH in {time.monotonic() - t0:.0f}s")
        build.bring_up_tunnels(el, timeout=60)
        if el.cfg.dns.edge_served:
            served = [name for _host, name, _check in edge_dns.names(el.cfg)]
            every = {e.public_ip for e in edges_of(el).values()}
            wait_for(
                lambda: all(v is not None and set(v) == every for v in el.ask_nameservers(el.edges, served).values()),
                timeout=120,
                interval=2,
                message="every edge's nameserver to answer every name with every edge",
            )


def vm_arch(arch: str) -> str:
    """The Debian architecture of a stack's ``arch`` (``x86_64`` or ``arm64``)."""
    return {"x86_64": "amd64"}.get(arch, arch)


# -- the rows ------------------------------------------------------------------------


TUNNEL_PROBE = f"""echo "== kind"; ip -d -j link show {edge_contract.WG_INTERFACE}
echo "== module"; cat /sys/module/wireguard/initstate
echo "== userspace"; grep -lx wireguard-go /proc/[0-9]*/comm 2>/dev/null || true
echo "== handshakes"; wg show {edge_contract.WG_INTERFACE} latest-handshakes
"""


def tunnel_row(el: EdgeLab, name: str) -> Check:
    """Home's tunnel to ``name`` runs on the guest kernel's WireGuard and carries packets."""
    edge = edges_of(el)[name]
    (seen,) = vm.parse_probe(edge.root(TUNNEL_PROBE).stdout + "== end\n")
    try:
        kind = json.loads(seen.get("kind") or "[{}]")[0].get("linkinfo", {}).get("info_kind")
    except (ValueError, IndexError):
        kind = None
    module = seen.get("module", "").strip()
    userspace = seen.get("userspace", "").split()
    handshakes = [int(p) for line in seen.get("handshakes", "").splitlines() for p in line.split()[1:2] if p.isdigit()]
    ping = el.home.run("ping", "-c", "5", "-i", "0.3", "-W", "2", el.tunnel_ip(name), check=False)
    rtt = [float(x.split("time=")[1].split()[0]) for x in ping.stdout.splitlines() if "time=" in x]
    ok = kind == "wireguard" and module == "live" and not userspace and any(handshakes) and len(rtt) == 5
    return Check(
        f"vm:{name}:tunnel",
        ok,
        round(sorted(rtt)[len(rtt) // 2], 2) if rtt else None,
        "ms",
        f"{edge_contract.WG_INTERFACE}: link kind {kind}, wireguard module {module or 'absent'}, "
        f"wireguard-go {'running ' + ' '.join(userspace) if userspace else 'not running'}, "
        f"{sum(1 for h in handshakes if h)} peer(s) with a handshake; home pinged the edge's tunnel address "
        f"{len(rtt)}/5 (median round trip)",
    )


def smoke_row(el: EdgeLab, name: str) -> Check:
    """Every service through ``name``, as a visitor; the echo says whom home saw."""
    results = smoke.smoke(el, edges=[name])
    bad = [f"{r.service} {r.check}: {r.detail}" for r in results if not r.ok]
    client = sum(1 for r in results if r.ok and el.client_ip in r.detail)
    return Check(
        f"vm:{name}:smoke",
        not bad and bool(results),
        sum(r.ok for r in results),
        "answered",
        f"{sum(r.ok for r in results)} of {len(results)} checks answered through the machine; "
        f"home saw the visitor's own address {el.client_ip} on {client} (the modes that promise it)"
        + (f"; FAILED: {'; '.join(bad)[:600]}" if bad else ""),
    )


def _serves_everything(el: EdgeLab, name: str) -> bool:
    return all(r.ok for r in smoke.smoke(el, edges=[name]))


def reboot_row(el: EdgeLab, name: str) -> Check:
    """``systemctl reboot`` on the guest; the seconds until every service answers
    through it again, with no push, and what the new boot reported."""
    edge = edges_of(el)[name]
    boots = len(vm.reports(edge.guest))
    t0 = time.monotonic()
    edge.root("systemd-run --on-active=1 systemctl reboot")  # the SSH session ends first
    problems = []
    try:
        wait_for(lambda: len(vm.reports(edge.guest)) > boots, timeout=ANSWER_TIMEOUT_S, interval=2, message="boot")
        wait_for(lambda: _serves_everything(el, name), timeout=ANSWER_TIMEOUT_S, interval=3, message="services")
    except AssertionError as exc:
        problems.append(str(exc)[:200])
    seconds = time.monotonic() - t0
    done = vm.reports(edge.guest)
    report = done[-1] if len(done) > boots else {}
    if not report or report.get("boot-id") == done[0].get("boot-id"):
        problems.append("the guest did not report a new boot")
    if failed := report.get("failed", "").strip():
        problems.append(f"failed units: {' '.join(line.split()[0] for line in failed.splitlines())}")
    first, order = vm.firewall_first(report)
    if not first:
        problems.append(f"the firewall was not loaded before the network: {order}")
    return Check(
        f"vm:{name}:reboot",
        not problems,
        round(seconds, 1),
        "s",
        "; ".join(problems) or f"rebooted; every service answered again without a push; {order}; no failed unit",
    )


def handover_row(el: EdgeLab, stack_: changes.Stack, name: str) -> Check:
    """A static Traefik change (a new tcp entrypoint) under the guest's systemd: the
    slot handover, while a visitor counts failures and a connection stays open."""
    cfg = el.cfg
    tcp = next(s for s in changes.new_services(cfg) if s["mode"] == str(Mode.TCP))
    held = next(s for s in cfg.services if s.mode is Mode.TCP and s.protocol == Protocol.TCP)
    with_new = stack_.render(services=[*stack_.values["services"], tcp])
    el.start_home_services(with_new)
    el.apply_home_filters(with_new)
    long_conn = changes.open_long_connection(el, name, held.port)
    done = rollout(el, with_new, edges=[name], timeout=VISITOR_TIMEOUT_S)
    survived = changes.long_connection_alive(el, long_conn)
    el.rendered = with_new
    new_ok = changes._service_answers(changes._probe_service(el, name, tcp), tcp["name"])
    failed = done.failed_changed[name]
    ok = done.ok and failed == 0 and sum(done.failed_unaffected.values()) == 0 and survived and new_ok
    return Check(
        "vm:traefik-handover",
        ok,
        failed,
        "failed requests",
        f"{name}: new entrypoint :{tcp['port']} through a Traefik slot handover under systemd, push "
        f"{'ok' if done.ok else 'FAILED ' + done.failure()}; slowest answer while it changed "
        f"{done.slowest_ms[name] / 1000:.1f} s (a visitor waits up to {VISITOR_TIMEOUT_S} s); {done.summary()[:300]}; "
        f"a connection to :{held.port} opened before it {'still echoes' if survived else 'was CUT'}; "
        f"the new service {'answers' if new_ok else 'does NOT answer'}",
    )


def push_target(el: EdgeLab, name: str) -> pushes.PushTarget:
    """The push rows' target: the operator's SSH, and a reset of the machine (QEMU's
    system_reset: the power cut, no shutdown) until it answers again."""
    edge = edges_of(el)[name]

    def ssh(command: str, stdin: str | None) -> subprocess.CompletedProcess:
        return edge.ssh(command, input=stdin, timeout=SSH_TIMEOUT_S)

    def spawn(command: str) -> subprocess.Popen:
        argv, _known = el.operator_ssh_argv(cast(Edge, edge), command)
        return el.operator.spawn(
            *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def restart() -> None:
        vm.qmp(edge.guest, "system_reset")
        time.sleep(5)  # past the point where the old sshd could still answer
        edge.wait_answers()

    return pushes.PushTarget(name, el.cfg.ssh.user, ssh, spawn, restart, timeout=ANSWER_TIMEOUT_S)


def push_rows(el: EdgeLab, stack_file: Path, project_file: Path | None, name: str) -> Iterator[Check]:
    """``pushes``' three rows against the machine, named ``vm:push-*``, each as it
    comes; the machine is back on ``old`` after each."""
    target = push_target(el, name)
    old = el.rendered.bundle(name)
    with tempfile.TemporaryDirectory(prefix="cgnat-edge-vm-pushes-") as tmp:
        a, b = (r.bundle(name) for r in pushes.keyed(el, Path(tmp), stack_file, project_file, 2))
    for row in (
        lambda: pushes.cut(target, old, a),
        lambda: pushes.reset(target, old, a),
        lambda: pushes.concurrent(target, old, a, b),
    ):
        check = row()
        yield dataclasses.replace(check, name="vm:" + check.name.replace(":", "-"))
        pushes.finish(pushes.start_push(target, old))


def day2_rows(
    el: EdgeLab, stack_: changes.Stack, name: str, release: day2.ReleaseServer, executable: bytes
) -> list[Check]:
    mode = str(el.cfg.protection.crowdsec)
    rows = [day2.traefik_upgrade_row(el, stack_, name, release, executable=executable)]
    rows.append(day2.crowdsec_enable_row(el, stack_, name, mode="offline" if mode == "off" else mode))
    return [dataclasses.replace(r, name="vm:" + r.name.removeprefix("push:")) for r in rows]


# -- the run -------------------------------------------------------------------------


def run(
    stack_file: Path,
    project_file: Path | None = None,
    *,
    only: list[str] | None = None,
    report: Path | None = None,
    cache: Path | None = None,
    keep: bool = False,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> tuple[bool, list[Check]]:
    """Every edge of the stack as a machine, all at once; (all ok, the rows)."""
    if only:
        raise rehearse.RehearsalError("--edge does not go with --vm: the machines are the stack's whole fleet")
    cache = cache or rehearse.cache_dir()
    started = time.monotonic()
    specs = stack.load(stack_file, project_file).parse().edges
    archs = {vm_arch(e.arch) for e in specs}
    vm.preflight(archs)
    checks: list[Check] = []
    disks = {}
    for arch in sorted(archs):
        d = disks[arch] = vm_image.disk(cache, arch, log)
        size = d.image.stat().st_size // 2**20
        checks.append(
            Check(f"vm:image:{arch}", True, round(d.seconds, 1), "s", f"{d.image.name} ({size} MiB) "
                  + ("built" if d.seconds else "cached"))
        )  # fmt: skip
    # The rows that change one edge take the first of this machine's architecture:
    # the second Traefik release is its executable with another version string.
    chosen = next((e for e in specs if vm_arch(e.arch) == rehearse.ARCH), specs[0])
    with rehearse._workdir(cache, keep) as work:
        rendered = render_stack(stack_file, work / "render", project_file=project_file, as_released=True)
        lab = VmLab(rendered, disks, cache, log)
        lab.el.as_released = True
        try:
            checks += _rows(lab, stack_file, project_file, chosen.name, work)
        finally:
            refused = lab.proxy.refused if lab.proxy else []
            lab.close()
    checks.append(
        Check(
            "vm:egress",
            not refused,
            len(refused),
            "refused",
            "the machines asked the lab's proxy for nothing but the Debian archive"
            if not refused
            else f"refused: {', '.join(refused[:5])}",
        )
    )
    checks.append(Check("vm:total", True, round(time.monotonic() - started, 1), "s", f"{len(specs)} machines"))
    if report:
        write_report(report, checks)
    return all(c.ok for c in checks), checks


def _rows(lab: VmLab, stack_file: Path, project_file: Path | None, chosen: str, work: Path) -> list[Check]:
    """The rows in order, each logged as it comes (a run takes long under TCG); a step
    that cannot go on ends the run with a failed row."""
    el = lab.el
    rows: list[Check] = []

    def add(*checks: Check) -> None:
        for c in checks:
            lab.log(f"rehearse: {'ok' if c.ok else 'FAIL'} {c.name} {c.value} {c.unit}: {c.detail[:300]}")
        rows.extend(checks)

    step = "boot"
    try:
        lab.boot()
        add(*lab.checks)
        if not all(c.ok for c in lab.checks):
            return rows
        step = "first-push"
        lab.first_push()
        for name in sorted(el.edges):
            add(tunnel_row(el, name), smoke_row(el, name))
        for name in sorted(el.edges):
            step = f"{name}:reboot"
            add(reboot_row(el, name))
        stack_ = changes.Stack(el, stack_file, project_file, work / "changes")
        step = "traefik-handover"
        add(handover_row(el, stack_, chosen))
        step = "pushes"
        for check in push_rows(el, stack_file, project_file, chosen):
            add(check)
        step = "day-2"
        executable = vm.executable(vm_arch(next(e.arch for e in el.cfg.edges if e.name == chosen)), lab.cache)
        add(*day2_rows(el, stack_, chosen, lab.release, executable.read_bytes()))
    except (LabError, AssertionError, RuntimeError, subprocess.SubprocessError, OSError) as exc:
        add(Check(f"vm:{step}", False, None, "", f"stopped: {str(exc)[-1500:]}"))
    return rows
