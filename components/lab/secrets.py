"""What the provider's metadata could give away, against a running lab (``--attacks``):

* ``secrets:user-data``  every edge's rendered user data, its files decoded: ok when
  the only private key block in it is the bootstrap key that the ``<edge>-boot`` step
  pins (and retires), and no 44-character base64 string in it is a WireGuard private
  key whose public half (``wg pubkey``) any key in the lab uses.
* ``secrets:host-key-retired``  after the first push, each edge's sshd (the lab runs a
  real one) presents no key from its user data, a connection pinned to the bootstrap
  key is refused, and a second push pinned to the edge's host key succeeds.
* ``secrets:metadata-blocked``  a fake metadata service at every provider's addresses
  (IPv4 and IPv6), beyond the first edge as the real one is.  Root on the edge (what
  cloud-init runs as) is answered: the service is up.  Nothing else is: a non-root user
  on the edge, a visitor whose packets the lab's internet routes to the edge, a
  neighbour in the provider's network (IPv4 and IPv6, the edge forwarding both), and
  home's side of the tunnel, where road warriors' sessions now end (a device's packets
  reach an edge only from home: through the tunnel, or as a visitor from home's
  uplink).  The value: how many of those were answered.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from components.lab.edge_lab import EdgeLab
from components.lab.netns import Node, wait_for
from components.lab.report import Check
from components.renderers import nftables
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


METADATA_PORT = 80
META_LINK_V4 = ("169.254.0.1", 16)
"""The edge's side of the link to the fake service: link-local, as the provider's is."""
META_LINK_V6 = ("fd00:c1::1", 64)
NEIGHBOUR = ("2001:db8:ff::1", "2001:db8:ff::2", "203.0.113.241", "203.0.113.242")
"""Edge and neighbour on their own link (IPv6 and IPv4, documentation addresses)."""
NOBODY = "65534"

ASK = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(1.5)
try:
    s.connect((host, port))
    s.send(b"user-data?")
    print("answered" if s.recv(16) == b"user-data?" else "odd")
except OSError as e:
    print(f"nothing ({e.__class__.__name__})")
"""


def _ask(node: Node, host: str, *, user: str | None = None) -> str:
    argv = ["python3", "-c", ASK, host, str(METADATA_PORT)]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return node.run(*argv, check=False, timeout=15).stdout.strip() or "nothing"


def _fake_metadata(el: EdgeLab, edge: Node) -> tuple[list[str], list[str]]:
    """The service on its own node behind ``edge``; a TCP echo on every address."""
    v4, v6 = nftables.metadata_addresses()
    meta = el.nodes.get("metadata")
    if meta is None:
        meta = el.nodes["metadata"] = el.lab.node("metadata")
        el.lab.link(
            edge, "meta0", [f"{META_LINK_V4[0]}/{META_LINK_V4[1]}", f"{META_LINK_V6[0]}/{META_LINK_V6[1]}"],
            meta, "eth0", [f"{a}/{META_LINK_V4[1]}" for a in v4] + [f"{a}/{META_LINK_V6[1]}" for a in v6],
        )  # fmt: skip
        meta.route("default", "via", META_LINK_V4[0])
        meta.route("default", "via", META_LINK_V6[0])
        for address in [*v4, *v6]:
            bind = f"[{address}]" if ":" in address else address
            kind = "TCP6" if ":" in address else "TCP4"
            meta.spawn("socat", f"{kind}-LISTEN:{METADATA_PORT},bind={bind},reuseaddr,fork", "EXEC:cat")
        wanted = {f"{a}:{METADATA_PORT}" for a in v4} | {f"[{a}]:{METADATA_PORT}" for a in v6}
        wait_for(lambda: wanted <= set(meta.run("ss", "-Hlnt", check=False).stdout.split()), message="metadata up")
    return v4, v6


def _neighbour(el: EdgeLab, edge: Node, v4: list[str], v6: list[str]) -> Node:
    nb = el.nodes.get("neighbour")
    if nb is None:
        edge_v6, nb_v6, edge_v4, nb_v4 = NEIGHBOUR
        nb = el.nodes["neighbour"] = el.lab.node("neighbour")
        el.lab.link(edge, "nb0", [f"{edge_v6}/64", f"{edge_v4}/30"], nb, "eth0", [f"{nb_v6}/64", f"{nb_v4}/30"])
        for address in v4:
            nb.route(f"{address}/32", "via", edge_v4)
        for address in v6:
            nb.route(f"{address}/128", "via", edge_v6)
    return nb


def metadata_blocked(el: EdgeLab) -> Check:
    name = min(el.edges, key=lambda n: next(e.index for e in el.cfg.edges if e.name == n))
    edge = el.edges[name]
    v4, v6 = _fake_metadata(el, edge.node)
    neighbour = _neighbour(el, edge.node, v4, v6)
    # The provider's network delivers to the edge whatever is addressed to it: the lab's
    # internet routes the metadata addresses to this edge, and the edge routes both
    # families (forward services route IPv4 anyway).
    inet = el.nodes["inet"]
    for address in v4:
        inet.run("ip", "route", "replace", f"{address}/32", "via", edge.public_ip)
    forwarding_v6 = edge.node.run("sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip()
    edge.node.sysctl("net.ipv6.conf.all.forwarding", 1)
    home_iface = el.home_interface(name)
    peer = el.home.run("wg", "show", home_iface, "peers").stdout.split()[0]
    allowed = el.home.run("wg", "show", home_iface, "allowed-ips").stdout.split()[1:]
    el.home.run("wg", "set", home_iface, "peer", peer, "allowed-ips", ",".join([*allowed, *(f"{a}/32" for a in v4)]))
    for address in v4:
        el.home.run("ip", "route", "replace", f"{address}/32", "dev", home_iface, "table", "main")
    try:
        root = {a: _ask(edge.node, a) for a in [*v4, *v6]}
        refused = {
            **{f"non-root on {name} -> {a}": _ask(edge.node, a, user=NOBODY) for a in [*v4, *v6]},
            **{f"visitor -> {a}": _ask(el.client, a) for a in v4},
            **{f"neighbour -> {a}": _ask(neighbour, a) for a in [*v4, *v6]},
            **{f"home through {home_iface} -> {a}": _ask(el.home, a) for a in v4},
        }
    finally:
        for address in v4:
            el.home.run("ip", "route", "del", f"{address}/32", "dev", home_iface, "table", "main", check=False)
            inet.run("ip", "route", "del", f"{address}/32", check=False)
        el.home.run("wg", "set", home_iface, "peer", peer, "allowed-ips", ",".join(allowed), check=False)
        edge.node.sysctl("net.ipv6.conf.all.forwarding", forwarding_v6 or 0)
    up = all(r == "answered" for r in root.values())
    answered = [who for who, r in refused.items() if r == "answered"]
    detail = f"root on {name}: {', '.join(f'{a} {r}' for a, r in root.items())}; " + "; ".join(
        f"{who}: {r}" for who, r in refused.items()
    )
    return Check("secrets:metadata-blocked", up and not answered, len(answered), "answered", detail)


def run_secrets(el: EdgeLab) -> list[Check]:
    return [user_data(el), host_key_retired(el), metadata_blocked(el)]
