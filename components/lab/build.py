"""Building the lab for a render, in the order a deployment happens: the network, the
edges as their images come up, home's services, each edge's first boot, its boot and
host-key steps and first push (as ``pulumi up`` runs them), then home's tunnels.

``build`` hands back a running ``EdgeLab`` once every edge serves and names resolve; a
failure on the way tears down what was built.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path

from components.lab import lab_dns, platform_firewall, topology
from components.lab.certs import self_signed
from components.lab.edge import Edge
from components.lab.edge_lab import EdgeLab
from components.lab.errors import LabError
from components.lab.netns import Lab, wait_for
from components.lab.rendered import Rendered
from components.model.fleet import Mode
from components.model.road_warriors import INTERFACE as ROAD_WARRIORS
from components.renderers import bootstrap, edge_dns
from components.tools import offline


def build(
    rendered: Rendered, *, exclude_targets: Iterable[str] = (), before_push: Callable[[EdgeLab], object] | None = None
) -> EdgeLab:
    """Build and boot the lab for ``rendered``; on any failure it is torn down again.
    ``before_push`` adds to the lab what the edges must reach from their first push on
    (the alert receiver: a message the daemons raise meanwhile is not held back)."""
    lab = Lab()
    el = EdgeLab(lab, rendered)
    try:
        _build(el, exclude_targets, before_push)
    except BaseException:
        lab.close()
        raise
    return el


def _build(el: EdgeLab, exclude_targets: Iterable[str], before_push: Callable[[EdgeLab], object] | None = None) -> None:
    cfg, rendered = el.cfg, el.rendered
    edge_ips = {name: e["ipv4"] for name, e in rendered.edges.items()}
    if len(set(edge_ips.values())) != len(edge_ips):
        raise LabError(f"two edges got the same mock address {edge_ips}; rename one")
    # dnsMode edges: the edges are the nameservers.  With the whole domain theirs, the
    # nodes ask them straight; with a subzone, the lab's DNS node is the parent zone
    # (the delegation as the user sets it) and a resolver, as a visitor's ISP runs one.
    edge_served, delegated = cfg.dns.edge_served, lab_dns.delegated(cfg)
    dns_node = not edge_served or delegated
    topology.wire(el, edge_ips, dns_node=dns_node)
    _add_edges(el, edge_ips)
    resolv = (
        f"nameserver {el.dns_ip}\n"
        if dns_node
        else "".join(f"nameserver {ip}\n" for _, ip in sorted(edge_ips.items())) + "options timeout:1 attempts:2\n"
    )
    for node in (
        [*el.nodes.values(), *(e.node for e in el.edges.values())] if Path("/etc/resolv.conf").is_file() else ()
    ):
        node.bind("/etc/resolv.conf", resolv)

    if not edge_served:
        lab_dns.serve_zone(el, el.nodes["dns"], "zone-fragment.db", el.dns_ip)
    elif delegated:
        lab_dns.start_parent_and_resolver(el, el.nodes["dns"])
    el.start_home_services(exclude=exclude_targets)
    for edge in el.edges.values():
        edge.boot()
    if before_push is not None:
        before_push(el)
    for name, edge in el.edges.items():
        install_host_key(el, name)
        first = edge.push(rendered.bundle(name))
        if not first.ok:
            raise LabError(f"the first push to edge {name} failed:\n{first.output[-3000:]}")
    bring_up_tunnels(el)
    if edge_served:
        _wait_for_edge_nameservers(el, edge_ips)
    else:
        wait_for(
            lambda: el.probe([{"kind": "resolve", "name": f"ns1.{cfg.dns.zone}"}])[0].get("addresses") == [el.dns_ip],
            timeout=15,
            message="the lab's DNS server",
        )


def install_host_key(el: EdgeLab, name: str) -> None:
    """The program's ``<edge>-boot`` step (pinning the bootstrap key, it retires that key
    and reports the install key the edge made) and ``<edge>-host-key`` step (pinning
    the install key, it installs the pinned host key), as ``pulumi up`` runs them."""
    edge, run = el.edges[name], el.rendered.run
    boot = run.one("command:remote:Command", f"{name}-boot")
    done = edge.ssh(boot.inputs["create"], host_key=offline.reveal(boot.inputs["connection"])["hostKey"])
    edge.install_key = bootstrap.reported_install_key(done.stdout)
    if done.returncode != 0 or not edge.install_key:
        raise LabError(f"the boot step on edge {name} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    # sshd re-executes on the reload: pulumi-command retries the dial meanwhile.
    wait_for(
        lambda: edge.ssh("true", host_key=edge.install_key, timeout=10).returncode == 0,
        timeout=20,
        message=f"edge {name}'s sshd with its install key",
    )
    step = run.one("command:remote:Command", f"{name}-host-key")
    done = edge.ssh(step.inputs["create"], host_key=edge.install_key, input=offline.reveal(step.inputs["stdin"]))
    if done.returncode != 0:
        raise LabError(f"the host-key step on edge {name} failed:\n{(done.stdout + done.stderr)[-3000:]}")


def _add_edges(el: EdgeLab, edge_ips: dict[str, str]) -> None:
    """Each edge on the lab's internet as its image comes up, its cloud-config's files
    in place; with ``http`` services, the stand-in for their ACME certificate first."""
    cfg, lab = el.cfg, el.lab
    if any(s.mode is Mode.HTTP for s in cfg.services):
        el.http_cert = self_signed(
            [h for s in cfg.services if s.mode is Mode.HTTP for h in s.hostnames], lab.workdir, "edge-acme-standin"
        )
    for i, (name, ip) in enumerate(sorted(edge_ips.items())):
        node = lab.node(f"edge-{name}")
        topology.attach(lab, el.nodes["inet"], node, f"i-edge{i}", ip)
        el.edges[name] = Edge(el, name, node, ip, el.rendered.write_files(name))
        platform_firewall.prepare(el.edges[name], platform_firewall.traits(el, name))


def bring_up_tunnels(el: EdgeLab, timeout: float = 20) -> None:
    """Home's wg-quick files (the road warriors' too), up, and a handshake with every edge."""
    for tunnel in el.rendered.home["tunnels"]:
        iface = tunnel["interface"]
        el.home.write(f"/etc/wireguard/{iface}.conf", (el.rendered.out / "home" / f"{iface}.conf").read_text())
        el.home.run("wg-quick", "up", iface)
    devices = el.rendered.out / "home" / f"{ROAD_WARRIORS}.conf"
    if devices.is_file():  # the road warriors' sessions end at home
        el.home.write(f"/etc/wireguard/{ROAD_WARRIORS}.conf", devices.read_text())
        el.home.run("wg-quick", "up", ROAD_WARRIORS)
    for name in el.edges:
        # handshake_time is 0 until home's first handshake with the edge
        wait_for(
            functools.partial(el.handshake_time, name), timeout=timeout, message=f"home's handshake with edge {name}"
        )


def _wait_for_edge_nameservers(el: EdgeLab, edge_ips: dict[str, str]) -> None:
    cfg = el.cfg
    # Through the resolver (a subzone) or straight (the whole domain): the glue name.
    ns_name = edge_dns.nameserver(cfg, cfg.edges[0])
    want = [ip for name, ip in edge_ips.items() if name == cfg.edges[0].name]
    wait_for(
        lambda: el.probe([{"kind": "resolve", "name": ns_name}])[0].get("addresses") == want,
        timeout=15,
        message="the edges' nameservers",
    )
    # Each agent's first checks run once its edge serves, and the tunnel comes up only
    # with the first push: until every agent reports every check up, a nameserver may
    # still learn "down" from one, after answering with every edge on a check it had
    # not made yet.  The lab starts from the settled fleet.
    checks = sorted({check for _host, _name, check in edge_dns.names(cfg)})
    wait_for(
        lambda: all(
            edge.node.run(
                "curl", "-fsS", "-m", "3", "-o", "/dev/null",
                f"http://127.0.0.1:{edge_dns.HEALTH_PORT}/health/{check}", check=False,
            ).returncode == 0
            for edge in el.edges.values()
            for check in checks
        ),
        timeout=60,
        interval=0.5,
        message="every edge's health agent to report every check up",
    )  # fmt: skip
    served = [name for _host, name, _check in edge_dns.names(cfg)]
    every = set(edge_ips.values())
    wait_for(
        lambda: all(v is not None and set(v) == every for v in el.ask_nameservers(el.edges, served).values()),
        timeout=30,
        interval=0.5,
        message="every edge's nameserver to answer every name with every edge",
    )
