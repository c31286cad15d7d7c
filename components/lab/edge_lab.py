"""The Edge lab: a stack's own rendered configs carrying real traffic on one machine.

Before paying for a VPS, a user (``sudo cgnat-edge lab``) or the test suite builds,
in network namespaces (components/lab/topology.py), everything between a visitor and
home, and boots every edge from its rendered cloud-config (components/lab/edge.py);
``build`` (components/lab/build.py) makes an ``EdgeLab``, the running lab the checks
work on.  Home brings its tunnels up with the generated wg-quick files and dials out
through the CGNAT; nothing can dial in.  ``server`` holds every service target
address and runs ``services``.  Every node resolves inside the lab (its own
/etc/resolv.conf), never through a resolver outside it (components/lab/lab_dns.py).

The test stack (tests/fixtures/Pulumi.lab.yaml) uses documentation prefixes only.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from components.lab.certs import self_signed
from components.lab.edge import Edge
from components.lab.errors import LabError
from components.lab.netns import Lab, Node, wait_for
from components.lab.rendered import Rendered
from components.model.fleet import FleetConfig, Mode, Protocol, Target
from components.tools import home_files

SERVICES_SCRIPT = Path(__file__).resolve().parent / "services.py"


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
        if s.mode is Mode.PASSTHROUGH:
            cert, key, _ = certs[s.name]
            add(
                "tcp",
                s.target,
                {"kind": "tls", "service": s.name, "proxy": s.proxy_protocol, "cert": str(cert), "key": str(key)},
            )
            if s.http_target:
                add("tcp", s.http_target, {"kind": "http", "service": s.name})
        elif s.mode is Mode.HTTP:
            add("tcp", s.target, {"kind": "http", "service": s.name})
            if s.forward_auth is not None and s.forward_auth.at_home:
                fa = s.forward_auth
                add("tcp", Target(fa.host, fa.port), {"kind": "idp", "service": f"{s.name}-signin"})
        elif s.mode is Mode.TCP or (s.mode is Mode.FORWARD and s.protocol == Protocol.TCP):
            add("tcp", s.target, {"kind": "tcp-echo", "service": s.name, "proxy": s.proxy_protocol})
        else:
            add("udp", s.target, {"kind": "udp-echo", "service": s.name})
    return list(out.values())


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
    as_released: bool = False
    """Changes render with the program's own Traefik pins (edges that are machines of their
    own architecture), not with this machine's executable for every edge."""

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
        options: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess:
        argv, known = self.operator_ssh_argv(edge, command, key=key, host_key=host_key, options=options)
        try:
            return self.operator.run(*argv, input=input, timeout=timeout, check=False)
        finally:
            known.unlink()

    def operator_ssh_argv(
        self,
        edge: Edge,
        command: str,
        *,
        key: Path | None = None,
        host_key: str | None = None,
        options: tuple[str, ...] = (),
    ) -> tuple[list[str], Path]:
        """The operator's ssh command line for ``command`` on ``edge``, pinning
        ``host_key`` (default: the rendered one), and the known-hosts file it reads;
        ``options``: more of ssh's own (a port forward)."""
        known = self.lab.workdir / f"known_hosts-{time.monotonic_ns()}"
        known.write_text(f"{edge.public_ip} {host_key or self.rendered.host_key(edge.name)}\n")
        if key is None:
            key = self.lab.workdir / "operator-key"
            if not key.exists():
                home_files.write_private(key, self.rendered.operator_key[0].encode())
        argv = [
            "ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5", *options, f"{self.cfg.ssh.user}@{edge.public_ip}", command,
        ]  # fmt: skip
        return argv, known

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
            # The tunnels' tables; the road warriors' (cgnat-rw.conf) has no from_edge.
            if (
                name.startswith("cgnat_edge")
                and "chain from_edge {" in self.home.run("nft", "list", "table", family, name).stdout
            ):
                self.home.run("nft", "insert", "rule", family, name, "from_edge", "accept")

    def start_home_services(self, rendered: Rendered | None = None, exclude: Iterable[str] = ()) -> list[dict]:
        """Run listeners for every target of ``rendered`` (default: the lab's render)
        that is not served yet; a changed stack brings its new targets along."""
        cfg = (rendered or self.rendered).cfg
        for s in cfg.services:
            if s.mode is Mode.PASSTHROUGH and s.name not in self.home_certs:
                self.home_certs[s.name] = self_signed(s.hostnames, self.lab.workdir, f"home-{s.name}")
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
