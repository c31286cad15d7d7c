"""The dev stack's edges booted as QEMU machines (components/lab/vm.py), and the parts
that decide its rows: the probe's report, the ruleset check, the seed disk, the proxy.

The VM test builds (or takes from the cache, $CGNAT_EDGE_CACHE or /var/cache/cgnat-edge)
a Debian 12 disk per architecture and boots fsn (Hetzner cax, arm64) and ams
(DigitalOcean, amd64) at once: minutes under TCG.  ``-m vm`` selects it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from components import cli
from components.lab import mirror_proxy, vm, vm_image
from components.lab.netns import wait_for
from tests.support import DEV_STACK, namespaces, require_root, require_tool

PROBE = """== uptime
41.2
== arch
aarch64
== status
status: done
== result
{"v1": {"errors": []}}
== failed
== nft
{"nftables": [{"chain": {"family": "inet", "table": "filter", "name": "input", "hook": "input", "policy": "drop"}}]}
== end
"""


@pytest.mark.netns
@pytest.mark.vm
def test_rehearse_vm_dev(tmp_path, capsys):
    """``cgnat-edge rehearse --vm --stack dev --report FILE``: both edges boot clean in their own architecture."""
    require_root()
    require_tool(*vm.TOOLS, *vm_image.TOOLS, "qemu-system-x86_64", "qemu-system-aarch64")
    report = tmp_path / "vm.json"
    code = cli.main(["rehearse", "--vm", "--stack-file", str(DEV_STACK), "--report", str(report)])
    rows = {row["name"]: row for row in json.loads(report.read_text())["checks"]}
    assert code == 0, [r for r in rows.values() if not r["ok"]]
    assert "FAIL" not in capsys.readouterr().out
    assert rows["vm:fsn:arch"]["value"] == "aarch64"
    assert rows["vm:ams:arch"]["value"] == "x86_64"
    expected = {
        *(
            f"vm:{edge}:{row}"
            for edge in ("fsn", "ams")
            for row in ("boot", "arch", "accel", "tunnel", "smoke", "reboot")
        ),
        *(f"vm:{row}" for row in ("traefik-handover", "push-cut", "push-reset", "push-concurrent")),
        *(
            f"vm:{row}"
            for row in ("traefik-upgrade", "crowdsec-enable", "egress", "total", "image:amd64", "image:arm64")
        ),
    }
    assert set(rows) == expected
    for edge in ("fsn", "ams"):
        assert rows[f"vm:{edge}:boot"]["value"] > 0 and rows[f"vm:{edge}:reboot"]["value"] > 0
        assert rows[f"vm:{edge}:smoke"]["value"] >= 5
    assert rows["vm:traefik-handover"]["value"] == 0
    assert rows["vm:egress"]["value"] == 0


def test_probe_reports_one_per_boot_and_only_when_complete():
    assert vm.parse_probe(PROBE.replace("== end\n", "")) == []
    (report,) = vm.parse_probe(PROBE)
    assert report["arch"] == "aarch64\n" and report["failed"] == ""
    second = PROBE.replace("41.2", "17.5")
    reports = vm.parse_probe(PROBE + second + "== uptime\n3.0\n")
    assert [r["uptime"] for r in reports] == ["41.2\n", "17.5\n"]


def test_the_firewall_must_come_before_the_network():
    before = "ActiveEnterTimestampMonotonic=4100000\nActiveEnterTimestampMonotonic=5350000\n"
    assert vm.firewall_first({"firewall-before-network": before}) == (
        True,
        "nftables active 1.25s before systemd-networkd",
    )
    after = "ActiveEnterTimestampMonotonic=6100000\nActiveEnterTimestampMonotonic=5350000\n"
    assert not vm.firewall_first({"firewall-before-network": after})[0]
    never = "ActiveEnterTimestampMonotonic=0\nActiveEnterTimestampMonotonic=5350000\n"
    assert not vm.firewall_first({"firewall-before-network": never})[0]


def test_default_drop_needs_an_input_chain_that_drops():
    ruleset = vm.parse_probe(PROBE)[0]["nft"]
    assert vm._default_drop(ruleset)
    assert not vm._default_drop(ruleset.replace('"drop"', '"accept"'))
    assert not vm._default_drop(ruleset.replace('"hook": "input"', '"hook": "forward"'))
    assert not vm._default_drop("Error: Could not process rule: Operation not permitted")


def test_seed_disk_holds_the_user_data_unchanged(tmp_path):
    require_tool("mkfs.vfat", "mcopy", "mmd")
    user_data = "#cloud-config\nruncmd:\n  - [echo, 'ünïcode and \"quotes\"']\n"
    network = vm.network_config("203.0.113.5", "203.0.113.1")
    disk = vm.seed(tmp_path / "seed.img", "fsn", user_data, network, {"hosts": "198.51.100.1 github.com\n"})
    read = subprocess.run(["mcopy", "-n", "-i", disk, "::/user-data", "-"], capture_output=True, text=True)
    assert read.stdout == user_data
    hosts = subprocess.run(["mcopy", "-n", "-i", disk, "::/lab/hosts", "-"], capture_output=True, text=True)
    assert hosts.stdout == "198.51.100.1 github.com\n"
    label = subprocess.run(["mlabel", "-s", "-i", disk, "::"], capture_output=True, text=True)
    assert vm_image.SEED_LABEL in label.stdout
    read = subprocess.run(["mcopy", "-n", "-i", disk, "::/network-config", "-"], capture_output=True, text=True)
    eth0 = yaml.safe_load(read.stdout)["ethernets"]["eth0"]
    assert eth0["addresses"] == ["203.0.113.5/24"] and eth0["routes"] == [{"to": "0.0.0.0/0", "via": "203.0.113.1"}]


@pytest.mark.netns
def test_proxy_refuses_anything_but_the_archive():
    """A guest asking the lab's proxy for another host gets 403 and the refusal is kept for the report."""
    with namespaces("curl") as lab:
        node = lab.node("guest-side")
        node.run("ip", "tuntap", "add", "dev", "tap0", "mode", "tap")
        node.addresses("tap0", ["198.51.100.1/24"])
        proxy = mirror_proxy.MirrorProxy(node.call(lambda: mirror_proxy.listener("198.51.100.1")), {"deb.debian.org"})
        try:
            done = node.run(
                "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", "http://198.51.100.1:3142",
                "http://203.0.113.7/secret", check=False,
            )  # fmt: skip
            assert done.stdout == "403"
            tunnel = node.run(
                "curl", "-s", "-o", "/dev/null", "-w", "%{http_connect}", "-x", "http://198.51.100.1:3142",
                "https://203.0.113.7/", check=False,
            )  # fmt: skip
            assert tunnel.stdout == "403"
            wait_for(lambda: proxy.refused == ["GET http://203.0.113.7/secret", "CONNECT 203.0.113.7:443"])
        finally:
            proxy.close()


def test_mirror_hosts_read_both_source_formats(tmp_path: Path):
    (tmp_path / "a.list").write_text("deb http://mirror.example.org/debian bookworm main\n")
    (tmp_path / "b.sources").write_text("Types: deb\nURIs: http://security.example.org/debian-security\n")
    assert mirror_proxy.mirror_hosts([tmp_path]) == {"deb.debian.org", "mirror.example.org", "security.example.org"}
