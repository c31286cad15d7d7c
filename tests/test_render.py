"""`cgnat-edge render`: the offline render a user inspects before paying for a VPS."""

from __future__ import annotations

import json
import stat

import yaml

from components import cli
from tests.support import DEV_STACK, PROJECT


def test_render_writes_every_artifact(tmp_path, capsys):
    out = tmp_path / "dev"
    assert cli.main(["render", "--stack-file", str(DEV_STACK), "--out", str(out)]) == 0
    assert "rendered 27 resources" in capsys.readouterr().out

    for edge in ("fsn", "ams"):
        user_data = out / "nodes" / edge / "user-data.yaml"
        assert stat.S_IMODE(user_data.stat().st_mode) == 0o600
        doc = yaml.safe_load(user_data.read_text())
        files = {e["path"] for e in doc["write_files"]}
        for path in files:
            assert (out / "nodes" / edge / "files" / path.lstrip("/")).is_file(), path
        # The tunnel's key travels with the push, never in the user data.
        assert "/etc/wireguard/wg0.conf" not in files
        wg = (out / "nodes" / edge / "bundle/files/etc/wireguard/wg0.conf").read_text()
        assert "ListenPort = 51820" in wg and "PrivateKey = " in wg
    assert {p.name for p in (out / "home").iterdir()} == {
        "wg-fsn.conf",
        "wg-ams.conf",
        "openwrt.sh",
        "routeros.rsc",
        "home.json",
        "prometheus-edges.yml",
        "grafana-edges.json",
    }
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (out / "home").iterdir())
    assert "IN A" in (out / "dns" / "zone-fragment.db").read_text()

    outputs = json.loads((out / "outputs.json").read_text())
    assert outputs["homeConfigs"] == "[secret]" and outputs["edges"]["fsn"]["arch"] == "arm64"
    assert json.loads((out / "secret_outputs.json").read_text()) == ["homeConfigs"]
    resources = json.loads((out / "resources.json").read_text())
    server = next(r for r in resources if r["name"] == "fsn-server")
    assert server["inputs"]["userData"] == "[secret]" and server["ignoreChanges"] == ["userData", "sshKeys"]
    # Nothing secret in the files meant to be shared (resources, outputs).
    private = (out / "home" / "wg-fsn.conf").read_text().split("PrivateKey = ")[1].split()[0]
    assert private not in (out / "resources.json").read_text() + (out / "outputs.json").read_text()


def test_home_config_from_a_render_needs_its_secrets(tmp_path, capsys):
    out = tmp_path / "dev"
    cli.main(["render", "--stack-file", str(DEV_STACK), "--out", str(out)])
    capsys.readouterr()
    assert cli.main(["home-config", str(out), "--out", str(tmp_path / "home")]) == 2
    assert capsys.readouterr().err == (
        "cgnat-edge home-config: homeConfigs is hidden; render with `cgnat-edge render --show-secrets`, "
        "or use the render's home/ folder\n"
    )
    assert not (tmp_path / "home").exists()
    cli.main(["render", "--stack-file", str(DEV_STACK), "--out", str(out), "--show-secrets"])
    assert cli.main(["home-config", str(out), "--out", str(tmp_path / "home")]) == 0
    assert (tmp_path / "home" / "wg-ams.conf").read_text().startswith("# cgnat-edge")


def test_bad_stack_exits_with_the_config_message(tmp_path, capsys):
    stack = tmp_path / "Pulumi.bad.yaml"
    data = yaml.safe_load(DEV_STACK.read_text())
    data["config"]["cgnat-edge:tunnelMtu"] = 9000
    stack.write_text(yaml.safe_dump(data))
    (tmp_path / "Pulumi.yaml").write_text(PROJECT.read_text())
    assert cli.main(["render", "--stack-file", str(stack), "--out", str(tmp_path / "out")]) == 2
    assert "cgnat-edge:tunnelMtu: 9000 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compressed_files_are_rendered_as_the_edge_writes_them(tmp_path):
    from components.tools import offline, render
    from tests.support import stack_raw

    services = [
        {"name": f"svc{i}", "mode": "tcp", "port": 10000 + i, "target": f"192.168.1.{i % 250 + 1}:{20000 + i}"}
        for i in range(150)
    ]
    run = offline.run_program(DEV_STACK, config_overrides={"services": stack_raw()["services"] + services})
    render.write(run, tmp_path)
    doc = yaml.safe_load((tmp_path / "nodes/fsn/user-data.yaml").read_text())
    assert any(e.get("encoding") == "gz+b64" for e in doc["write_files"])
    static = (tmp_path / "nodes/fsn/files/etc/traefik/traefik.yaml").read_text()
    assert ":10149/tcp" in json.dumps(yaml.safe_load(static)["entryPoints"])


def test_each_edge_bundle_is_written_unpacked_with_the_desired_state(tmp_path):
    """``nodes/<edge>/bundle/`` is what a push puts on that edge: every file, with the
    MANIFEST of modes and owners; removing an SSH key from the stack removes it there."""
    from components.tools import offline, render
    from tests.support import stack_raw

    keys = stack_raw()["sshPublicKeys"]
    extra = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ removed-later"
    run = offline.run_program(DEV_STACK, config_overrides={"sshPublicKeys": [*keys, extra]})
    render.write(run, tmp_path / "a")
    bundle = tmp_path / "a" / "nodes" / "fsn" / "bundle"
    manifest = [line.split("\t") for line in (bundle / "MANIFEST").read_text().splitlines()]
    paths = {p for _, _, p in manifest}
    for path in ("/etc/wireguard/wg0.conf", "/etc/nftables.conf", "/etc/traefik/traefik.yaml",
                 "/etc/traefik/dynamic/cgnat-edge.yaml", "/etc/ssh/sshd_config.d/50-cgnat-edge.conf",
                 "/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/cgnat-edge-authorized-keys/root",
                 "/etc/systemd/system/traefik@.service", "/etc/systemd/system/cgnat-edge-wg-endpoint.timer",
                 "/etc/cgnat-edge/desired.json"):  # fmt: skip
        assert path in paths and (bundle / "files" / path.lstrip("/")).is_file(), path
    assert ("0600", "root:root", "/etc/ssh/ssh_host_ed25519_key") in [tuple(m) for m in manifest]
    assert (bundle / "files/etc/ssh/ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600
    authorized = (bundle / "files/etc/ssh/cgnat-edge-authorized-keys/root").read_text()
    assert extra in authorized
    host_pub = (bundle / "files/etc/ssh/ssh_host_ed25519_key.pub").read_text().strip()
    connection = offline.reveal(run.one("command:remote:Command", "fsn-config").inputs["connection"])
    assert host_pub == connection["hostKey"].strip()
    dropin = (bundle / "files/etc/ssh/sshd_config.d/50-cgnat-edge.conf").read_text()
    assert "HostKey /etc/ssh/ssh_host_ed25519_key\n" in dropin
    assert "AuthorizedKeysFile /etc/ssh/cgnat-edge-authorized-keys/%u\n" in dropin

    again = offline.run_program(DEV_STACK, config_overrides={"sshPublicKeys": keys}, state=offline.key_state(run))
    render.write(again, tmp_path / "b")
    assert extra not in (tmp_path / "b/nodes/fsn/bundle/files/etc/ssh/cgnat-edge-authorized-keys/root").read_text()
