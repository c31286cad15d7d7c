"""What the provider's metadata could give away, against a running lab (``--attacks``):

* ``secrets:user-data``  every edge's rendered user data, its files decoded: ok when
  the only private key block in it is the bootstrap key that the ``<edge>-boot`` step
  pins (and retires), and no 44-character base64 string in it is a WireGuard private
  key whose public half (``wg pubkey``) any key in the lab uses.
* ``secrets:host-key-retired``  after the first push, each edge's sshd (the lab runs a
  real one) presents no key from its user data, a connection pinned to the bootstrap
  key is refused, and a second push pinned to the edge's host key succeeds.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from components.lab.edge_lab import EdgeLab
from components.lab.report import Check
from components.tools import offline

PRIVATE_BLOCK = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
WG_KEY_CANDIDATE = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=(?![A-Za-z0-9+/=])")


def _ssh_public(private: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "key"
        # A block inside YAML is indented; ssh-keygen reads it without.
        path.write_text("".join(line.strip() + "\n" for line in private.strip().splitlines()))
        path.chmod(0o600)
        done = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True)
    return " ".join(done.stdout.split()[:2]) if done.returncode == 0 else f"unreadable: {done.stderr.strip()}"


def _wg_public(candidate: str) -> str:
    done = subprocess.run(["wg", "pubkey"], input=candidate + "\n", capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def user_data_findings(texts: Iterable[str], bootstrap_public: str, wireguard_in_use: set[str]) -> list[str]:
    """What in ``texts`` (the user data and its decoded files) stays valid after the
    first push: private key blocks other than the bootstrap key, and WireGuard private
    keys whose public half is in ``wireguard_in_use``."""
    findings: list[str] = []
    seen: set[str] = set()
    for text in texts:
        for block in PRIVATE_BLOCK.findall(text):
            public = _ssh_public(block)
            if public != " ".join(bootstrap_public.split()[:2]) and block not in seen:
                findings.append(f"a private key block ({public.split()[0]})")
            seen.add(block)
        for candidate in set(WG_KEY_CANDIDATE.findall(text)) - seen:
            seen.add(candidate)
            if _wg_public(candidate) in wireguard_in_use:
                findings.append("a WireGuard private key in use")
    return findings


def _wireguard_in_use(el: EdgeLab) -> set[str]:
    run = el.rendered.run
    keys = {
        offline.reveal(r.outputs["public_key"])
        for r in run.by_type(f"{offline.DYNAMIC_PREFIX}/cgnat-edge:WireGuardKey")
    }
    keys |= {e["wireguardPublicKey"] for e in el.rendered.edges.values()}
    if el.cfg.road_warriors is not None:
        keys |= {p.public_key for p in el.cfg.road_warriors.peers if p.public_key}
    return keys


def _bootstrap_public(el: EdgeLab, edge: str) -> str:
    boot = el.rendered.run.one("command:remote:Command", f"{edge}-boot")
    return offline.reveal(boot.inputs["connection"])["hostKey"]


def user_data(el: EdgeLab) -> Check:
    in_use = _wireguard_in_use(el)
    found: dict[str, list[str]] = {}
    for edge in sorted(el.edges):
        text = (el.rendered.out / "nodes" / edge / "user-data.yaml").read_text()
        texts = [text, *(str(f["content"]) for f in el.rendered.write_files(edge))]
        found[edge] = user_data_findings(texts, _bootstrap_public(el, edge), in_use)
    count = sum(len(f) for f in found.values())
    detail = (
        "; ".join(f"{edge}: {', '.join(f) if f else 'only the bootstrap key'}" for edge, f in found.items())
        + f" ({len(in_use)} WireGuard public keys in use compared)"
    )
    return Check("secrets:user-data", count == 0 and bool(in_use), count, "keys", detail)


def _scan(el: EdgeLab, edge: str) -> set[str]:
    scan = el.operator.run(
        "ssh-keyscan", "-T", "3", "-t", "ed25519,ecdsa,rsa", el.edges[edge].public_ip, check=False
    )  # fmt: skip
    return {" ".join(line.split()[1:3]) for line in scan.stdout.splitlines() if line and not line.startswith("#")}


def host_key_retired(el: EdgeLab) -> Check:
    ok, notes = True, []
    for edge in sorted(el.edges):
        in_user_data = " ".join(el.rendered.cloud_config(edge)["ssh_keys"]["ed25519_public"].split()[:2])
        served = _scan(el, edge)
        bootstrap_refused = el.edges[edge].ssh("true", host_key=in_user_data).returncode != 0
        again = el.edges[edge].push(el.rendered.bundle(edge), host_key=el.rendered.host_key(edge))
        pinned = " ".join(el.rendered.host_key(edge).split()[:2])
        good = bool(served) and in_user_data not in served and pinned in served and bootstrap_refused and again.ok
        ok &= good
        notes.append(
            f"{edge}: sshd presents {len(served)} keys, "
            f"{'the bootstrap key among them' if in_user_data in served else 'none from the user data'}"
            f"{', the pinned one among them' if pinned in served else ', NOT the pinned one'}; pinning the "
            f"bootstrap key is {'refused' if bootstrap_refused else 'ACCEPTED'}; a push pinning the host key "
            f"{'succeeds' if again.ok else 'FAILS: ' + again.output[-200:]}"
        )
    return Check("secrets:host-key-retired", ok, len(el.edges), "edges", "; ".join(notes))


def run_secrets(el: EdgeLab) -> list[Check]:
    return [user_data(el), host_key_retired(el)]
