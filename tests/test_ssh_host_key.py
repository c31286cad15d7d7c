"""The host key the program generates is the one the edge's sshd serves, so the
operator's SSH client (pulumi-command) can pin it from the very first connection."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from components.lab.netns import wait_for
from components.model import edge_contract
from components.model.keys import generate_host_key
from components.renderers import bootstrap
from components.resources.keys import SshHostKeyProvider
from tests.support import namespaces, require_tool


@pytest.mark.netns
def test_generated_pair_matches_ssh_keygen(tmp_path):
    require_tool("ssh-keygen")
    private, public = generate_host_key()
    path = tmp_path / "key"
    path.write_text(private)
    path.chmod(0o600)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    assert derived.split()[:2] == public.split()[:2]
    assert public.startswith("ssh-ed25519 ")


def test_provider_keeps_the_key_unless_rotated():
    provider = SshHostKeyProvider()
    created = provider.create({"rotation": 0})
    assert created.outs["private_key"].startswith("-----BEGIN OPENSSH " + "PRIVATE KEY-----")
    assert provider.diff(created.id, created.outs, {"rotation": 0}).changes is False
    assert created.outs["previous_public_key"] == ""
    rotation = provider.diff(created.id, created.outs, {"rotation": 1})
    assert rotation.changes is True and rotation.replaces == []  # in place: the old key is remembered
    rotated = provider.update(created.id, created.outs, {"rotation": 1}).outs
    assert rotated["previous_public_key"] == created.outs["public_key"] != rotated["public_key"]
    assert rotated["private_key"] != created.outs["private_key"] and rotated["rotation"] == 1


def test_cloud_config_installs_only_that_key(fleet_config):
    private, public = generate_host_key()
    doc = yaml.safe_load(bootstrap.user_data(fleet_config, fleet_config.edges[0], (private, public)))
    assert doc["ssh_keys"] == {"ed25519_private": private, "ed25519_public": public}
    assert doc["ssh_deletekeys"] is True and "ssh_genkeytypes" not in doc


@pytest.fixture
def lab():
    with namespaces("sshd", "ssh") as lab:
        yield lab


@pytest.mark.netns
def test_client_pinning_the_key_connects_and_rejects_an_impostor(lab, tmp_path):
    operator, edge = lab.node("operator"), lab.node("edge")
    lab.link(operator, "eth0", ["203.0.113.1/24"], edge, "eth0", ["203.0.113.2/24"])

    host_private, host_public = generate_host_key()
    user_private, user_public = generate_host_key()
    for name, text in {"host": host_private, "user": user_private, "authorized": user_public}.items():
        (tmp_path / name).write_text(text if text.endswith("\n") else text + "\n")
        (tmp_path / name).chmod(0o600)
    (tmp_path / "sshd_config").write_text(
        f"HostKey {tmp_path}/host\nAuthorizedKeysFile {tmp_path}/authorized\nListenAddress 203.0.113.2\nPort 2222\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
    )
    edge.run("mkdir", "-p", "/run/sshd")
    edge.spawn("/usr/sbin/sshd", "-D", "-e", "-f", str(tmp_path / "sshd_config"))

    def connect(known_host_key: str) -> subprocess.CompletedProcess:
        (tmp_path / "known_hosts").write_text(f"[203.0.113.2]:2222 {known_host_key}\n")
        return operator.run(
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            "2222",
            "-i",
            str(tmp_path / "user"),
            "-o",
            f"UserKnownHostsFile={tmp_path}/known_hosts",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=3",
            "root@203.0.113.2",
            "echo pinned-ok",
            check=False,
        )

    done = wait_for(
        lambda: (r := connect(host_public)).returncode == 0 and r,
        timeout=15,
        message="sshd to accept the pinned client",
    )
    assert done.stdout.strip() == "pinned-ok"
    impostor = connect(generate_host_key()[1])
    assert impostor.returncode != 0 and "Host key verification failed" in impostor.stderr


@pytest.mark.netns
def test_an_openssh_upgrade_never_adds_a_served_host_key(tmp_path):
    """Debian's openssh-server postinst creates the RSA and ECDSA host keys when they
    are missing (it reads HostKey from sshd_config only, not from drop-ins).  With the
    edge's drop-in sshd still serves the pinned ed25519 key alone, and the edge's apt
    hook (run by dpkg after every upgrade) deletes the new keys again."""
    import re
    from pathlib import Path

    from components import config as config_module
    from tests.support import stack_raw

    require_tool("sshd", "ssh-keyscan", "apt-config", "ssh-keygen")
    postinst = Path("/var/lib/dpkg/info/openssh-server.postinst")
    if not postinst.is_file():
        pytest.skip("openssh-server is not installed from Debian's package")
    text = postinst.read_text()
    functions = text[text.index("get_config_option() {") : text.index("new_config=")]
    cfg = config_module.parse(stack_raw(), stack="dev")
    files = {f.path: f for f in bootstrap.node_files(cfg, cfg.edges[0], "[Interface]\n", generate_host_key())}
    with namespaces() as lab:
        edge = lab.node("edge")
        edge.overlay("/etc")
        edge.run("sh", "-c", "rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub /etc/ssh/sshd_config.d/*")
        for path in (
            edge_contract.SSHD_DROPIN,
            edge_contract.HOST_KEY,
            f"{edge_contract.HOST_KEY}.pub",
            bootstrap.HOST_KEYS_HOOK_PATH,
        ):
            edge.run("mkdir", "-p", str(Path(path).parent))
            edge.write(path, files[path].content, int(files[path].mode, 8))

        edge.run("sh", "-c", functions + "\ncreate_keys")  # what the upgrade runs
        created = edge.run("sh", "-c", "ls /etc/ssh/ssh_host_*_key").stdout.split()
        assert {"/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_ecdsa_key"} <= set(created), created

        edge.run("mkdir", "-p", "/run/sshd")
        edge.spawn("/usr/sbin/sshd", "-D", "-e", "-p", "2222", "-o", "PidFile=none", "-o", "UsePAM=no")
        pinned = " ".join(files[f"{edge_contract.HOST_KEY}.pub"].content.split()[:2])

        def served():
            scan = edge.run("ssh-keyscan", "-p", "2222", "-t", "rsa,ecdsa,ed25519", "127.0.0.1", check=False).stdout
            return sorted(" ".join(line.split()[1:3]) for line in scan.splitlines() if line and line[0] != "#")

        assert wait_for(served, timeout=10, message="sshd answering") == [pinned]

        # apt reads the hook from apt.conf.d (the machine may have hooks of its own).
        hook = edge.run("apt-config", "dump", "DPkg::Post-Invoke").stdout
        (command,) = {c for c in re.findall(r'^DPkg::Post-Invoke:: "(.*)";$', hook, re.M) if "ssh_host_" in c}
        edge.run("sh", "-c", command)
        left = edge.run("sh", "-c", "ls /etc/ssh/ssh_host_*_key*").stdout.split()
        assert left == [edge_contract.HOST_KEY, f"{edge_contract.HOST_KEY}.pub"]
