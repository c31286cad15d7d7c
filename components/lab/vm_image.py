"""A Debian 12 cloud disk per architecture, for rehearsing an edge as a virtual machine.

Built once with ``debootstrap`` (arm64 through qemu-user-static's binfmt handler) and
cached beside the chroot rehearsal's root: an ext4 filesystem in a qcow2 file, plus the
kernel and initrd taken out of it so QEMU boots them directly (no boot loader, no
firmware: the same command line on both architectures).  Every boot gets a qcow2
overlay, so the cached disk stays as built.

What the disk holds beyond the chroot root is what a provider's image has: a kernel,
systemd-networkd for the network config the provider hands cloud-init, no SSH host
keys (cloud-init writes the edge's own), and two lab units:

* ``cgnat-lab-seed`` (before cloud-init, every boot): copies the seed disk's ``lab/``
  folder to /run/cgnat-lab and runs its ``seed.sh`` (the apt proxy, as a provider image
  points at the provider's mirror, the release host's address, the lab CA);
* ``cgnat-lab-probe`` (after cloud-init, every boot): runs its ``probe.sh``, which
  writes what the rehearsal checks to a virtio serial port, so the checks need no
  login on the guest.

Both run what the seed disk brings, so the disk is rebuilt only for another package
list or kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.lab import rehearse

KERNELS = {"amd64": "linux-image-cloud-amd64", "arm64": "linux-image-arm64"}
"""The kernel a provider's image of that architecture boots; both build WireGuard in as a module."""
PACKAGES = (*(p for p in rehearse.PACKAGES if not p.startswith("linux-image")), "udev", "nftables")
"""The chroot root's packages (its kernel aside); ``udev``, which a machine needs for
systemd-networkd to take its network card (a chroot has no devices); ``nftables`` for the
probe to read the ruleset with: Debian installs its unit disabled, so what loads at boot
is still the user-data's doing."""
DISK_SIZE = "3G"
SEED_LABEL = "CIDATA"
PROBE_PORT = "cgnat.probe"
TOOLS = ("debootstrap", "mkfs.ext4", "qemu-img")
LAB_DIR = "/run/cgnat-lab"
"""Where the boot unit copies the seed disk's ``lab/`` folder: the scripts the rehearsal
runs on the guest travel on the seed disk, so changing them never rebuilds the disk."""
SLIM = """path-exclude=/usr/share/man/*
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
"""
"""dpkg's excludes for the disk: man-db's trigger and the docs cost minutes under
qemu-user when the disk is not the host's architecture, and no edge reads them."""

SEED_UNIT = """[Unit]
Description=cgnat-edge rehearsal: the lab's files from the seed disk
DefaultDependencies=no
After=local-fs.target systemd-udevd.service
Before=cloud-init-local.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/cgnat-lab-seed
TimeoutStartSec=15min

[Install]
WantedBy=cloud-init-local.service
"""
SEED_SCRIPT = f"""#!/bin/sh
# cgnat-edge rehearsal: copy the seed disk's lab/ folder to {LAB_DIR}, then run its seed.sh.
set -eu
# blkid reads the disks itself: under TCG udev's by-label link can come late.
for _ in $(seq 600); do dev=$(blkid -L {SEED_LABEL}) && break; sleep 1; done
mnt=$(mktemp -d)
mount -o ro "$dev" "$mnt"
rm -rf {LAB_DIR}
cp -r "$mnt/lab" {LAB_DIR}
umount "$mnt"
if [ -f {LAB_DIR}/seed.sh ]; then exec sh {LAB_DIR}/seed.sh; fi
"""
PROBE_UNIT = f"""[Unit]
Description=cgnat-edge rehearsal: report the boot to the lab
After=cloud-final.service multi-user.target
ConditionPathExists={LAB_DIR}/probe.sh

[Service]
Type=oneshot
ExecStart=/bin/sh {LAB_DIR}/probe.sh

[Install]
WantedBy=multi-user.target
"""
BUILD_SCRIPT = """set -eu
root=$1
printf '%s\\n' 'LABEL=cgnat-root / ext4 defaults,errors=remount-ro 0 1' > "$root/etc/fstab"
echo localhost > "$root/etc/hostname"
: > "$root/etc/machine-id"
rm -f "$root"/etc/ssh/ssh_host_*
chroot "$root" systemctl enable systemd-networkd.service cgnat-lab-seed.service cgnat-lab-probe.service >/dev/null 2>&1
chroot "$root" systemctl is-enabled systemd-networkd.service cgnat-lab-seed.service cgnat-lab-probe.service
"""


class ImageError(rehearse.RehearsalError):
    """The VM disk could not be built; the message says why."""


@dataclass(frozen=True)
class Disk:
    arch: str
    image: Path
    kernel: Path
    initrd: Path
    seconds: float
    """How long the build took; 0 when it came from the cache."""


def key(arch: str) -> str:
    """The cache key: another package list, kernel or lab unit builds a new disk."""
    parts = [rehearse.SUITE, rehearse.MIRROR, sorted(PACKAGES), KERNELS[arch], DISK_SIZE]
    parts += [rehearse.LOCALE_SETUP, SLIM, SEED_UNIT, SEED_SCRIPT, PROBE_UNIT, BUILD_SCRIPT]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def preflight(arch: str) -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise ImageError(
            f"missing tools: {', '.join(missing)}; on Debian: apt-get install debootstrap e2fsprogs qemu-utils"
        )
    if arch != rehearse.ARCH and not Path(f"/proc/sys/fs/binfmt_misc/qemu-{_qemu_arch(arch)}").exists():
        raise ImageError(
            f"no binfmt handler for {arch} executables, needed to build its disk; "
            f"apt-get install qemu-user-static binfmt-support && update-binfmts --enable qemu-{_qemu_arch(arch)}"
        )


def _qemu_arch(arch: str) -> str:
    return {"amd64": "x86_64", "arm64": "aarch64"}[arch]


def disk(cache: Path, arch: str, log: Callable[[str], None] = print) -> Disk:
    """The cached disk of ``arch``, built when missing."""
    stem = cache / f"vm-{rehearse.SUITE}-{arch}-{key(arch)}"
    image, kernel, initrd = (Path(f"{stem}{suffix}") for suffix in (".qcow2", ".vmlinuz", ".initrd"))
    if image.exists() and kernel.exists() and initrd.exists():
        return Disk(arch, image, kernel, initrd, 0.0)
    preflight(arch)
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob(f"vm-{rehearse.SUITE}-{arch}-*"):
        stale.unlink()  # built from another package list: never used again
    start = time.monotonic()
    log(f"rehearse: building the {arch} VM disk with debootstrap (cached in {image})")
    with tempfile.TemporaryDirectory(dir=cache, prefix=f"build-vm-{arch}-") as tmp:
        root = Path(tmp) / "root"
        debs = cache / f"debootstrap-{arch}"
        debs.mkdir(exist_ok=True)
        done = rehearse._run(
            [
                "debootstrap",
                "--foreign",
                f"--arch={arch}",
                f"--variant={rehearse.VARIANT}",
                f"--cache-dir={debs.resolve()}",
                "--include=" + ",".join((*PACKAGES, KERNELS[arch])),
                rehearse.SUITE,
                root,
                rehearse.MIRROR,
            ]
        )
        if done.returncode == 0:
            # Between the stages, so that no package unpacks what the excludes leave out.
            _write(root, "etc/dpkg/dpkg.cfg.d/01-cgnat-slim", SLIM, 0o644)
            done = rehearse._run(["chroot", root, "/debootstrap/debootstrap", "--second-stage"])
        if done.returncode != 0:
            raise ImageError(f"debootstrap ({arch}) failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        gen = rehearse._run(["chroot", root, "sh", "-c", rehearse.LOCALE_SETUP])
        if gen.returncode != 0:
            raise ImageError(f"generating the locale failed: {gen.stderr}")
        _write(root, "etc/systemd/system/cgnat-lab-seed.service", SEED_UNIT, 0o644)
        _write(root, "usr/local/sbin/cgnat-lab-seed", SEED_SCRIPT, 0o755)
        _write(root, "etc/systemd/system/cgnat-lab-probe.service", PROBE_UNIT, 0o644)
        done = rehearse._run(["bash", "-c", BUILD_SCRIPT, "build", root])
        if done.returncode != 0:
            raise ImageError(f"setting up the {arch} disk failed: {done.stdout}{done.stderr}")
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True)
        for name, target in (("vmlinuz", kernel), ("initrd.img", initrd)):
            found = sorted((root / "boot").glob(f"{name}-*"))
            if not found:
                raise ImageError(f"the {arch} disk has no /boot/{name}-*: the kernel package did not install")
            shutil.copyfile(found[-1], f"{target}.part")
        raw = Path(tmp) / "disk.raw"
        done = rehearse._run(["mkfs.ext4", "-q", "-L", "cgnat-root", "-d", root, raw, DISK_SIZE])
        if done.returncode != 0:
            raise ImageError(f"making the {arch} filesystem failed: {done.stderr}")
        done = rehearse._run(["qemu-img", "convert", "-O", "qcow2", raw, f"{image}.part"])
        if done.returncode != 0:
            raise ImageError(f"converting the {arch} disk failed: {done.stderr}")
        for target in (kernel, initrd, image):
            os.replace(f"{target}.part", target)
    return Disk(arch, image, kernel, initrd, time.monotonic() - start)


def overlay(base: Disk, path: Path, size: str = "8G") -> Path:
    """A copy-on-write disk over ``base`` for one boot; the cached disk is never written."""
    done = rehearse._run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base.image.resolve(), "-F", "qcow2", path, size]
    )
    if done.returncode != 0:
        raise ImageError(f"creating the overlay {path} failed: {done.stderr}")
    return path


def _write(root: Path, path: str, text: str, mode: int) -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)
