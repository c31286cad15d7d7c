"""Day 2 in the Edge lab: every kind of change, pushed into running edges.

``cgnat-edge lab --changes`` boots the lab, then for each change kind re-renders the
stack with the change (same keys: the render continues from the first one's key
state, as ``pulumi up`` continues from its state), pushes every edge's new bundle with
the real push script over SSH, one edge at a time as the program's config steps do
(components/lab/rollout.py), and checks the effect on the running edges: a removed
key is refused at login, the new host key is the one sshd presents, a new LAN target
answers, wg0 runs the new MTU and addresses, a new service answers through every edge
and a removed one does not, a static Traefik change keeps an open connection alive.
The last row counts the prober's failed requests over every rolling push.

Each result is a ``Check`` (a row of the ``--report`` JSON).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from components.lab.certs import self_signed
from components.lab.edge_lab import EdgeLab
from components.lab.errors import LabError
from components.lab.netns import wait_for
from components.lab.rendered import Rendered, render_stack
from components.lab.report import Check
from components.lab.rollout import Rollout, rollout
from components.lab.smoke import smoke
from components.model import edge_contract
from components.model.fleet import FleetConfig, HomeRole, Mode
from components.model.keys import generate_host_key
from components.tools import home_files, offline


class Stack:
    """The lab's stack as config values; ``render`` applies changes on top."""

    def __init__(self, el: EdgeLab, stack_file: Path, project_file: Path | None, work: Path):
        self.el, self.stack_file, self.project_file, self.work = el, stack_file, project_file, work
        config = yaml.safe_load(stack_file.read_text())["config"]
        self.values: dict[str, Any] = {k.split(":", 1)[1]: v for k, v in config.items()}
        self.state = offline.key_state(el.rendered.run)
        self.n = 0

    def render(self, release: tuple[str, str] | None = None, **changes: Any) -> Rendered:
        """``release``: the pinned Traefik (version, executable digest), as ``render_stack`` takes it."""
        self.values.update(changes)
        self.n += 1
        return render_stack(
            self.stack_file,
            self.work / f"render-{self.n}",
            project_file=self.project_file,
            config_overrides=dict(self.values),
            state=self.state,
            operator_key=self.el.rendered.operator_key,
            release=release,
            as_released=self.el.as_released,
        )


# ---------------------------------------------------------------------------
# Observations on the running edges
# ---------------------------------------------------------------------------


def _login(el: EdgeLab, edge: str, key: Path, host_key: str | None = None) -> tuple[bool, str]:
    done = el.edges[edge].ssh("echo logged-in", key=key, host_key=host_key, timeout=30)
    return done.returncode == 0 and done.stdout.strip() == "logged-in", (done.stderr.strip().splitlines() or [""])[-1]


def _served_host_key(el: EdgeLab, edge: str) -> str:
    """The host keys the edge's sshd presents, but for its install key (ECDSA, its own)."""
    scan = el.operator.run("ssh-keyscan", "-T", "3", "-t", "ed25519,rsa", el.edges[edge].public_ip, check=False)
    keys = [" ".join(line.split()[1:3]) for line in scan.stdout.splitlines() if line and not line.startswith("#")]
    return "\n".join(sorted(keys))


def _probe_service(el: EdgeLab, edge: str, s: dict) -> dict:
    ip = el.edges[edge].public_ip
    mode = Mode(s["mode"])
    if mode.by_hostname:
        check = {"kind": "tls", "edge": ip, "sni": s["hostnames"][0], "path": "/change", "timeout": 3}
    else:
        check = {"kind": str(mode.protocol), "edge": ip, "port": s["port"], "payload": "chg"}
        check["timeout"] = 2
    (r,) = el.probe([check])
    return r


def _service_answers(r: dict, name: str) -> bool:
    body = r.get("body")
    return bool(r.get("ok")) and isinstance(body, dict) and body.get("service") == name


def _wg(el: EdgeLab, edge: str) -> tuple[int, list[str]]:
    node = el.edges[edge].node
    mtu = int(node.run("cat", "/sys/class/net/wg0/mtu").stdout)
    addrs = node.run("ip", "-o", "addr", "show", "dev", "wg0", "scope", "global").stdout
    return mtu, sorted(line.split()[3] for line in addrs.splitlines())


def _interface(el: EdgeLab, edge: str) -> tuple[str, int | None]:
    """(wg0's ifindex, its wireguard-go process): both unchanged = changed in place."""
    e = el.edges[edge]
    return e.node.run("cat", "/sys/class/net/wg0/ifindex").stdout.strip(), e.wireguard_pid()


def _apply_home(el: EdgeLab, rendered: Rendered) -> None:
    """What the user does after a tunnel change: write home's configs again, bring the
    tunnels up with them (the lab plays the home router)."""
    home = el.home
    for tunnel in el.rendered.home["tunnels"]:
        home.run("wg-quick", "down", tunnel["interface"], check=False)
    for tunnel in rendered.home["tunnels"]:
        iface = tunnel["interface"]
        home.write(f"/etc/wireguard/{iface}.conf", (rendered.out / "home" / f"{iface}.conf").read_text())
        home.run("wg-quick", "up", iface)
    el.rendered = rendered


def _serves(el: EdgeLab, edge: str) -> bool:
    return all(r.ok for r in smoke(el, edges=[edge], services=["git-ssh"]))


def _settle(el: EdgeLab, rendered: Rendered, edges: list[str]) -> None:
    el.rendered = rendered
    el.start_home_services(rendered)
    for name in edges:
        wait_for(
            functools.partial(_serves, el, name),
            timeout=30,
            interval=0.5,
            message=f"edge {name} serving again",
        )


def _stand_in_certificate(el: EdgeLab, rendered: Rendered) -> None:
    """The lab's stand-in for ACME covers every http hostname of ``rendered``."""
    hosts = [h for s in rendered.cfg.services if s.mode is Mode.HTTP for h in s.hostnames]
    el.http_cert = self_signed(hosts, el.lab.workdir, f"edge-acme-standin-{time.monotonic_ns()}")
    cert, key, _ = el.http_cert
    standin = yaml.safe_dump({"tls": {"certificates": [{"certFile": str(cert), "keyFile": str(key)}]}})
    path = f"{edge_contract.TRAEFIK_DYNAMIC_DIR}/lab-acme-standin.yaml"
    for edge in el.edges.values():
        # Renamed into place: Traefik watches the folder and must never read half a file.
        edge.node.write(f"{path}.new", standin, 0o644)
        edge.node.run("mv", "-f", f"{path}.new", path)


LONG_CLIENT = r"""
import socket, sys, threading, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.recv(4096)
state = {"echoes": 0, "cut": None}
def keep():  # one byte a second, as a chatty long-lived session would
    while state["cut"] is None:
        try:
            s.sendall(b"x")
            if s.recv(16) != b"x":
                state["cut"] = "closed"
            state["echoes"] += 1
        except OSError as exc:
            state["cut"] = str(exc)
        time.sleep(1)
threading.Thread(target=keep, daemon=True).start()
print("open", flush=True)
for line in sys.stdin:
    print(f"cut {state['cut']}" if state["cut"] else f"alive {state['echoes']}", flush=True)
"""


def open_long_connection(el: EdgeLab, edge: str, port: int = 2222) -> subprocess.Popen:
    """A raw TCP connection through ``edge`` to home's echo on ``port``, held open across changes."""
    proc = el.client.spawn(
        sys.executable, "-c", LONG_CLIENT, el.edges[edge].public_ip, str(port),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
    return proc


def long_connection_alive(el: EdgeLab, proc) -> bool:
    try:
        proc.stdin.write("status\n")
        proc.stdin.flush()
        return proc.stdout.readline().startswith("alive")
    except (BrokenPipeError, OSError):
        return False


# ---------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------


def new_services(cfg: FleetConfig) -> list[dict[str, Any]]:
    """One service of each mode to add and remove again, with targets in the stack's
    own first LAN prefix (hosts .10 to .30, as the example stacks use)."""
    lan = cfg.home.lan_prefixes[0].network_address
    return [
        {"name": "wiki", "mode": "passthrough", "hostnames": [f"wiki.{cfg.domain}"], "target": f"{lan + 11}:443"},
        {"name": "shop", "mode": "http", "hostnames": [f"shop.{cfg.domain}"], "target": f"{lan + 21}:8080"},
        {"name": "mqtt", "mode": "tcp", "port": 8883, "target": f"{lan + 10}:8883"},
        {"name": "voice", "mode": "udp", "port": 9987, "target": f"{lan + 30}:9987"},
    ]


MATRIX_SERVICES = {"git-ssh": (Mode.TCP, 2222), "valheim": (Mode.UDP, 2456)}
"""What the matrix probes through every change, as both example stacks declare them."""
NEW_LAN = (
    "192.0.2.128/26",
    "192.0.2.129/26",
    {"name": "nas", "mode": "tcp", "port": 2300, "target": "192.0.2.140:2300"},
)


def _only_fleet_files_changed(el: EdgeLab, output: str) -> bool:
    """A push that changed nothing; with dnsMode edges, nothing but the files that list
    the fleet (the zone and the agent's allow list in the ruleset)."""
    if "already up to date" in output:
        return True
    updated = set(re.findall(r"updated (\S+)", output))
    return el.cfg.dns.edge_served and bool(updated) and updated <= {edge_contract.PDNS_ZONE, edge_contract.NFT_CONF}


def _require_matrix_services(cfg: FleetConfig) -> None:
    have = {s.name: (s.mode, s.port) for s in cfg.services}
    missing = [f"{n} ({mode} {port})" for n, (mode, port) in MATRIX_SERVICES.items() if have.get(n) != (mode, port)]
    if missing:
        raise LabError(
            f"--changes probes the services {', '.join(missing)} through every change, and the stack lacks them; "
            "run it on the example stacks (--stack dev, or --stack-file tests/fixtures/Pulumi.lab.yaml)"
        )


def run_matrix(el: EdgeLab, stack_file: Path, project_file: Path | None = None) -> list[Check]:
    """Every change kind in turn, each starting from where the one before left the
    fleet; then the prober's count over every rolling push."""
    _require_matrix_services(el.cfg)
    with tempfile.TemporaryDirectory(prefix="cgnat-edge-changes-") as tmp:
        matrix = Matrix(el, Stack(el, stack_file, project_file, Path(tmp)))
        second_key, keys = matrix.add_ssh_key()
        matrix.remove_ssh_key(second_key, keys)
        matrix.rotate_host_key()
        matrix.add_lan_prefix()
        matrix.mtu()
        matrix.tunnel_prefix()
        matrix.add_services()
        matrix.remove_services()
        matrix.service_target()
        matrix.remove_edge()
        matrix.rolling()
    return matrix.checks


class Matrix:
    """The change matrix on one running lab: a method per change kind, each appending
    its rows (or, when a push fails, the row saying so)."""

    def __init__(self, el: EdgeLab, stack: Stack):
        self.el, self.stack = el, stack
        self.edges = sorted(el.edges)
        self.added = new_services(el.cfg)
        self.checks: list[Check] = []
        self.rollouts: list[tuple[str, Rollout]] = []
        """The rolling pushes the prober watched, by change kind."""

    def push(self, kind: str, rendered: Rendered, probe: bool = True) -> Rollout | None:
        r = rollout(self.el, rendered, probe=probe)
        if probe:
            self.rollouts.append((kind, r))
        if not r.ok:
            self.checks.append(Check(f"change:{kind}", False, detail=r.failure()))
            return None
        return r

    # -- SSH keys ---------------------------------------------------------------------

    def add_ssh_key(self) -> tuple[Path, list[str]]:
        """A second operator key; returns it and the keys the stack had before."""
        el, edges = self.el, self.edges
        second_private, second_public = generate_host_key()
        second = el.lab.workdir / "second-operator-key"
        home_files.write_private(second, second_private.encode())
        keys = [*list(self.stack.values["sshPublicKeys"]), el.rendered.operator_key[1]]
        if self.push("add-ssh-key", self.stack.render(sshPublicKeys=[*keys, second_public])):
            logins = {e: _login(el, e, second) for e in edges}
            self.checks.append(
                Check(
                    "change:add-ssh-key",
                    all(ok for ok, _ in logins.values()),
                    sum(ok for ok, _ in logins.values()),
                    "edges",
                    "the added key logs in on " + ", ".join(e for e, (ok, _) in logins.items() if ok),
                )
            )
        return second, keys

    def remove_ssh_key(self, second: Path, keys: list[str]) -> None:
        el, edges = self.el, self.edges
        if self.push("remove-ssh-key", self.stack.render(sshPublicKeys=keys)):
            logins = {e: _login(el, e, second) for e in edges}
            still = {e: _login(el, e, el.lab.workdir / "operator-key")[0] for e in edges}
            refused = [e for e, (ok, why) in logins.items() if not ok and "Permission denied" in why]
            self.checks.append(
                Check(
                    "change:remove-ssh-key",
                    refused == edges and all(still.values()),
                    len(refused),
                    "edges",
                    f"the removed key is refused ('Permission denied') on {', '.join(refused)}; the kept key logs in",
                )
            )

    # -- host key rotation --------------------------------------------------------------

    def rotate_host_key(self) -> None:
        el, edges = self.el, self.edges
        old_keys = {e: el.rendered.host_key(e) for e in edges}
        rotated = self.stack.render(sshHostKeyRotation=1)
        self.stack.state = offline.key_state(rotated.run)
        ok, detail = True, []
        for e in edges:
            # As the program does: the <edge>-host-key step pins the install key the edge
            # reported at boot and installs the new key; the push then pins the new one.
            step = rotated.run.one("command:remote:Command", f"{e}-host-key")
            pinned = el.edges[e].install_key
            installed = el.edges[e].ssh(
                step.inputs["create"], host_key=pinned, input=offline.reveal(step.inputs["stdin"])
            )
            result = el.edges[e].push(rotated.bundle(e), host_key=rotated.host_key(e))
            result.ok &= installed.returncode == 0
            new = " ".join(rotated.host_key(e).split()[:2])
            served = _served_host_key(el, e)
            old_refused = el.edges[e].ssh("true", host_key=old_keys[e]).returncode != 0
            new_ok = el.edges[e].ssh("true", host_key=rotated.host_key(e)).returncode == 0
            pinned_install = bool(pinned) and pinned.strip() not in (old_keys[e].strip(), rotated.host_key(e).strip())
            ok &= result.ok and served == new and old_refused and new_ok and pinned_install
            detail.append(
                f"{e}: the host-key step pinned {'the install key' if pinned_install else 'ANOTHER key'} and "
                f"{'installed the new one' if installed.returncode == 0 else 'FAILED: ' + installed.stderr[-200:]}; "
                f"sshd serves {'the new key only' if served == new else served!r}; pinning the old key is "
                f"{'refused' if old_refused else 'STILL ACCEPTED'}; the push {'pinning the new key ' if new_ok else ''}"
                f"{'passed' if result.ok else 'FAILED: ' + result.output[-300:]}"
            )
        el.rendered = rotated
        self.checks.append(Check("change:rotate-host-key", ok, len(edges), "edges", "; ".join(detail)))

    # -- the tunnels: a new LAN prefix with a target in it, the MTU, the tunnel prefix ----

    def add_lan_prefix(self) -> None:
        el, edges, stack = self.el, self.edges, self.stack
        prefix, router_address, nas = NEW_LAN
        el.home.addresses("lan" if el.cfg.home.role == HomeRole.ROUTER else "eth0", [router_address])
        lan = [*list(stack.values["homeLanPrefixes"]), prefix]
        services = [*list(stack.values["services"]), nas]
        if self.push("add-lan-prefix", stack.render(homeLanPrefixes=lan, services=services), probe=False):
            _apply_home(el, stack.render())
            _settle(el, el.rendered, edges)
            answers = {e: _probe_service(el, e, nas) for e in edges}
            routed = {e: el.edges[e].node.run("ip", "route", "get", "192.0.2.140").stdout.split()[2] for e in edges}
            ok = all(_service_answers(a, "nas") for a in answers.values()) and set(routed.values()) == {"wg0"}
            self.checks.append(
                Check(
                    "change:add-lan-prefix",
                    ok,
                    sum(_service_answers(a, "nas") for a in answers.values()),
                    "edges",
                    f"192.0.2.140 routed via {routed}; the new target answers: "
                    + ", ".join(f"{e}={a.get('error') or 'yes'}" for e, a in answers.items()),
                )
            )

    def mtu(self) -> None:
        el, edges, stack = self.el, self.edges, self.stack
        mtu = int(stack.values.get("tunnelMtu", 1380)) - 60
        interfaces = {e: _interface(el, e) for e in edges}
        if self.push("mtu", stack.render(tunnelMtu=mtu), probe=False):
            running = {e: _wg(el, e)[0] for e in edges}
            in_place = interfaces == {e: _interface(el, e) for e in edges}
            _apply_home(el, stack.render())
            _settle(el, el.rendered, edges)
            self.checks.append(
                Check(
                    "change:mtu",
                    set(running.values()) == {mtu} and in_place,
                    mtu,
                    "bytes",
                    f"wg0 MTU on the running edges: {running}; "
                    + ("same interface and wireguard-go process" if in_place else "the interface was RECREATED"),
                )
            )

    def tunnel_prefix(self) -> None:
        el, edges, stack = self.el, self.edges, self.stack
        old_prefix = el.cfg.tunnel.ipv4_prefix
        new_prefix = str(
            ipaddress.ip_network((int(old_prefix.network_address) + old_prefix.num_addresses, old_prefix.prefixlen))
        )
        before = {e: _wg(el, e)[1] for e in edges}
        interfaces = {e: _interface(el, e) for e in edges}
        if self.push("tunnel-prefix", stack.render(tunnelIpv4Prefix=new_prefix), probe=False):
            after = {e: _wg(el, e)[1] for e in edges}
            in_place = interfaces == {e: _interface(el, e) for e in edges}
            _apply_home(el, stack.render())
            _settle(el, el.rendered, edges)
            answers = {e: _probe_service(el, e, {"mode": Mode.TCP, "port": 2222}) for e in edges}
            peers = {
                e: (a.get("body") or {}).get("peer") if isinstance(a.get("body"), dict) else None
                for e, a in answers.items()
            }
            v4_before = {e: {a for a in before[e] if "." in a} for e in edges}
            ok = all(
                any(ipaddress.ip_interface(a).ip in ipaddress.ip_network(new_prefix) for a in after[e])
                and not v4_before[e] & {a for a in after[e] if "." in a}
                and peers[e] == el.tunnel_ip(e)
                for e in edges
            )
            self.checks.append(
                Check(
                    "change:tunnel-prefix",
                    ok and in_place,
                    new_prefix,
                    "",
                    f"wg0 addresses {before} -> {after}, "
                    + ("same interface and wireguard-go process" if in_place else "the interface was RECREATED")
                    + f"; home sees the edges as {peers}",
                )
            )

    # -- services of every mode: added, then removed (static changes: new ports) ----------

    def add_services(self) -> None:
        el, edges, stack = self.el, self.edges, self.stack
        long_conn = open_long_connection(el, edges[0])
        with_new = stack.render(services=list(stack.values["services"]) + self.added)
        _stand_in_certificate(el, with_new)
        el.start_home_services(with_new)
        el.apply_home_filters(with_new)  # home first lets the edges reach the new targets
        r = self.push("add-services", with_new)
        if r:
            el.rendered = with_new
            for s in self.added:
                answers = {e: _probe_service(el, e, s) for e in edges}
                self.checks.append(
                    Check(
                        f"change:add-service-{s['mode']}",
                        all(_service_answers(a, s["name"]) for a in answers.values()),
                        sum(_service_answers(a, s["name"]) for a in answers.values()),
                        "edges",
                        f"{s['name']} answers: "
                        + ", ".join(f"{e}={a.get('error') or 'yes'}" for e, a in answers.items()),
                    )
                )
        survived = long_connection_alive(el, long_conn)
        self.checks.append(
            Check(
                "change:traefik-static",
                bool(r) and survived,
                "kept" if survived else "cut",
                "",
                "new entrypoints through a Traefik handover on every edge; a TCP connection opened before it "
                + ("still echoes" if survived else "was cut"),
            )
        )

    def remove_services(self) -> None:
        el, edges, stack = self.el, self.edges, self.stack
        kept = [s for s in stack.values["services"] if s not in self.added]
        if self.push("remove-services", stack.render(services=kept)):
            el.rendered = stack.render()
            for s in self.added:
                answers = {e: _probe_service(el, e, s) for e in edges}
                absent = {e: not _service_answers(a, s["name"]) for e, a in answers.items()}
                self.checks.append(
                    Check(
                        f"change:remove-service-{s['mode']}",
                        all(absent.values()),
                        sum(absent.values()),
                        "edges",
                        f"{s['name']} no longer answers: "
                        + ", ".join(
                            f"{e}={(a.get('error') or a.get('status') or 'answered')}" for e, a in answers.items()
                        ),
                    )
                )

    # -- a dynamic-only change: a service's target moves ----------------------------------

    def service_target(self) -> None:
        el, edges, stack = self.el, self.edges, self.stack
        git_ssh = next(s for s in el.cfg.services if s.name == "git-ssh")
        new_target = f"{git_ssh.target.host}:2023"
        moved = [dict(s, target=new_target) if s["name"] == "git-ssh" else s for s in stack.values["services"]]
        rendered = stack.render(services=moved)
        el.start_home_services(rendered)
        el.lift_home_filters()
        r = self.push("service-target", rendered)
        el.apply_home_filters(rendered)
        if r:
            el.rendered = rendered
            answers = {e: _probe_service(el, e, {"mode": Mode.TCP, "port": 2222}) for e in edges}
            listeners = {
                e: (a.get("body") or {}).get("listener") if isinstance(a.get("body"), dict) else None
                for e, a in answers.items()
            }
            self.checks.append(
                Check(
                    "change:service-target",
                    set(listeners.values()) == {new_target},
                    sum(v == new_target for v in listeners.values()),
                    "edges",
                    f"git-ssh answered by {listeners}",
                )
            )

    # -- remove an edge ---------------------------------------------------------------------

    def remove_edge(self) -> None:
        el, edges, stack = self.el, self.edges, self.stack
        # The last edge of the stack's list: the others keep their index and addresses.
        gone = stack.values["edges"][-1]["name"]
        kept = [e for e in edges if e != gone]
        remaining = [e for e in stack.values["edges"] if e["name"] != gone]
        # A fleet left on one provider must say so (ha: false), or the parser refuses it.
        rendered = stack.render(edges=remaining, ha=len({e["provider"] for e in remaining}) > 1)
        tunnels_before = {e: _wg(el, e) for e in kept}
        r = rollout(el, rendered, edges=kept, probe=False)
        untouched = all(_only_fleet_files_changed(el, out) for out in r.outputs.values())
        el.edges[gone].crash()
        _apply_home(el, rendered)
        home_links = el.home.run("ip", "-o", "link", "show").stdout
        serving = all(all(x.ok for x in smoke(el, edges=[e], services=["git-ssh", "valheim"])) for e in kept)
        self.checks.append(
            Check(
                "change:remove-edge",
                r.ok
                and untouched
                and tunnels_before == {e: _wg(el, e) for e in kept}
                and serving
                and f"wg-{gone}" not in home_links,
                len(kept),
                "edges",
                f"{gone} removed; {', '.join(kept)} got the same bundle (nothing changed but the edge zone and the "
                "health agent's allow list with dnsMode edges), same tunnel addresses, "
                f"still serving; home has no tunnel to {gone}",
            )
        )
        del el.edges[gone]

    # -- the prober over every rolling push -----------------------------------------------

    def rolling(self) -> None:
        unaffected = sum(sum(r.failed_unaffected.values()) for _, r in self.rollouts)
        dynamic = sum(
            sum(r.failed_changed.values())
            for k, r in self.rollouts
            if k in ("service-target", "add-ssh-key", "remove-ssh-key")
        )
        static = {
            k: sum(r.failed_changed.values()) for k, r in self.rollouts if k in ("add-services", "remove-services")
        }
        self.checks.append(
            Check(
                "rolling:failed-requests",
                unaffected == 0 and dynamic == 0,
                unaffected,
                "requests",
                f"failed on edges not being changed: {unaffected}; on the changed edge during dynamic-only pushes: "
                f"{dynamic}; during static changes (Traefik handover): {static}. "
                + " | ".join(f"{k}: {r.summary()}" for k, r in self.rollouts),
            )
        )
