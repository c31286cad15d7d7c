"""Nothing the provider's metadata serves stays valid after the first push: the user
data holds only the bootstrap host key, which the ``<edge>-boot`` step retires."""

from __future__ import annotations

import hashlib
import re

import pytest
import yaml

from components.lab import secrets
from components.lab.netns import wait_for
from components.model import edge_contract
from components.model.keys import generate_host_key, generate_keypair
from components.renderers import bootstrap, templates
from components.tools import offline, render
from tests.support import require_tool

WG_KEY = f"{offline.DYNAMIC_PREFIX}/cgnat-edge:WireGuardKey"


def test_findings_name_a_wireguard_key_in_use_and_any_other_private_key():
    """The ``secrets:user-data`` row's judge can fail, on exactly what it looks for."""
    require_tool("wg", "ssh-keygen")
    bootstrap_private, bootstrap_public = generate_host_key()
    other_private, _ = generate_host_key()
    wg_private, wg_public = generate_keypair()
    clean = f"#cloud-config\nssh_keys:\n  ed25519_private: |\n    {bootstrap_private}\n"
    assert secrets.user_data_findings([clean], bootstrap_public, {wg_public}) == []
    leaked = clean + f"[Interface]\nPrivateKey = {wg_private}\n"
    assert secrets.user_data_findings([leaked], bootstrap_public, {wg_public}) == ["a WireGuard private key in use"]
    assert secrets.user_data_findings([leaked], bootstrap_public, set()) == []  # a key nobody uses is harmless
    another = secrets.user_data_findings([clean, other_private], bootstrap_public, set())
    assert another == ["a private key block (ssh-ed25519)"]


def test_the_rendered_user_data_holds_only_the_bootstrap_key(dev_run, prod_run):
    require_tool("wg", "ssh-keygen")
    for run in (dev_run, prod_run):
        in_use = {offline.reveal(r.outputs["public_key"]) for r in run.by_type(WG_KEY)}
        assert len(in_use) == len(run.by_type(WG_KEY)) > len(run.output("edges"))
        for edge, text in render._user_data(run).items():
            boot = run.one("command:remote:Command", f"{edge}-boot")
            bootstrap_public = offline.reveal(boot.inputs["connection"])["hostKey"]
            files = [render.file_content(w) for w in yaml.safe_load(text)["write_files"]]
            assert secrets.user_data_findings([text, *files], bootstrap_public, in_use) == [], edge


def test_the_boot_script_retires_the_contract_host_key():
    """The script runs before the first push brings the edge contract, so it names the
    paths itself: the contract's."""
    script = templates.text("retire-bootstrap-key.sh")
    assert re.search(rf"^host_key={re.escape(edge_contract.HOST_KEY)}$", script, re.M)
    assert re.search(rf"^install_key={re.escape(edge_contract.INSTALL_KEY)}$", script, re.M)
    assert f"-t {edge_contract.INSTALL_KEY_TYPE.split('-')[0]} -b {edge_contract.INSTALL_KEY_TYPE[-3:]}" in script


BOOT_COMMAND_SHA256 = "e3ce76fe44ffaeae0ddd092c7c1f4d90140fa52d28ef83e75d14c25a1ee50d06"


def test_the_boot_command_stays_as_deployed():
    """A changed boot command re-runs ``<edge>-boot`` on every deployed edge, over a
    connection pinned to the bootstrap key those edges no longer have: ``pulumi up``
    would fail on each.  Change it only together with a way for deployed edges to skip
    the re-run (a new step name that existing edges never get, for instance)."""
    digest = hashlib.sha256(bootstrap.boot_command("root").encode()).hexdigest()
    assert digest == BOOT_COMMAND_SHA256


@pytest.mark.netns
@pytest.mark.lab
def test_secrets_rows_on_the_lab(el):
    """On the running lab: the user data gives nothing away, and each edge's sshd
    presents only keys that never passed through the metadata."""
    user_data, retired, metadata = secrets.run_secrets(el)
    assert metadata.ok and metadata.value == 0, metadata.detail
    assert metadata.detail.count(" answered") == 2  # root on the edge, IPv4 and IPv6: the service was up
    assert metadata.detail.count("nothing") == 6, metadata.detail
    assert user_data.ok and user_data.value == 0, user_data.detail
    assert retired.ok and retired.value == len(el.edges), retired.detail
    assert all(e.install_key.startswith(f"{edge_contract.INSTALL_KEY_TYPE} ") for e in el.edges.values())

    # The row can fail: an edge that serves its bootstrap key again is caught.
    name = sorted(el.edges)[0]
    edge, script = el.edges[name], bootstrap.as_root(el.cfg.ssh.user, bootstrap.host_key_script())
    keys = el.rendered.cloud_config(name)["ssh_keys"]
    put_back = edge.ssh(script, host_key=edge.install_key, input=keys["ed25519_private"])
    assert put_back.returncode == 0, put_back.stderr
    try:
        caught = secrets.host_key_retired(el)
        assert not caught.ok and f"{name}: sshd presents 2 keys, the bootstrap key among them" in caught.detail
    finally:
        pinned = offline.reveal(el.rendered.run.one("command:remote:Command", f"{name}-host-key").inputs["stdin"])
        restored = edge.ssh(script, host_key=edge.install_key, input=pinned)
        assert restored.returncode == 0, restored.stderr
    assert secrets.host_key_retired(el).ok


@pytest.mark.netns
@pytest.mark.lab
def test_the_metadata_row_fails_without_the_edge_rules(el):
    """The refusals are the ruleset's doing: with an accept before everything in the
    edge's forward and output chains, every routed and non-root request is answered."""
    name = min(el.edges, key=lambda n: next(e.index for e in el.cfg.edges if e.name == n))
    node = el.edges[name].node
    for chain in ("forward", "output"):
        node.run("nft", "insert", "rule", "inet", "cgnat_edge", chain, "accept")
    try:
        row = secrets.metadata_blocked(el)
    finally:
        for chain in ("forward", "output"):
            handle = node.run("nft", "-a", "list", "chain", "inet", "cgnat_edge", chain).stdout
            first = next(line for line in handle.splitlines() if line.strip().startswith("accept # handle"))
            node.run("nft", "delete", "rule", "inet", "cgnat_edge", chain, "handle", first.split()[-1])
    assert not row.ok and row.value == 6, row.detail
    assert secrets.metadata_blocked(el).ok


@pytest.mark.netns
@pytest.mark.lab
def test_an_edge_made_before_the_install_key_upgrades_in_place(el):
    """An edge made by an earlier version: its host key is the one in its user data (now
    the bootstrap key), its sshd drop-in names only that key, and it has no install key.
    The boot step, which re-runs once on the upgrade, leaves it reachable by an install
    key it makes; the host-key step and a push then work as on a new edge."""
    name = sorted(el.edges)[-1]
    edge, user = el.edges[name], el.cfg.ssh.user
    keys = el.rendered.cloud_config(name)["ssh_keys"]
    bootstrap_public = " ".join(keys["ed25519_public"].split()[:2])
    put_back = edge.ssh(
        bootstrap.as_root(user, bootstrap.host_key_script()), host_key=edge.install_key, input=keys["ed25519_private"]
    )
    assert put_back.returncode == 0, put_back.stderr
    older = (
        f"sed -i '\\#{edge_contract.INSTALL_KEY}#d' {edge_contract.SSHD_DROPIN} && "
        f"rm -f {edge_contract.INSTALL_KEY} {edge_contract.INSTALL_KEY}.pub && systemctl reload ssh.service"
    )
    assert edge.ssh(bootstrap.as_root(user, older), host_key=bootstrap_public).returncode == 0
    wait_for(
        lambda: edge.ssh("true", host_key=edge.install_key, timeout=10).returncode != 0,
        timeout=20,
        message="sshd without the install key",
    )

    boot = edge.ssh(bootstrap.boot_command(user), host_key=bootstrap_public)
    assert boot.returncode == 0, boot.stdout + boot.stderr
    install_key = bootstrap.reported_install_key(boot.stdout)
    assert install_key.startswith(f"{edge_contract.INSTALL_KEY_TYPE} ") and install_key != edge.install_key
    edge.install_key = install_key
    wait_for(
        lambda: edge.ssh("true", host_key=install_key, timeout=10).returncode == 0,
        timeout=20,
        message="sshd with the new install key",
    )
    step = el.rendered.run.one("command:remote:Command", f"{name}-host-key")
    installed = edge.ssh(step.inputs["create"], host_key=install_key, input=offline.reveal(step.inputs["stdin"]))
    assert installed.returncode == 0, installed.stderr
    pushed = edge.push(el.rendered.bundle(name), host_key=el.rendered.host_key(name))
    assert pushed.ok, pushed.output[-2000:]
    assert secrets.host_key_retired(el).ok
