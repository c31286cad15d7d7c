"""An Oracle Cloud edge in the lab, next to the lab stack's Hetzner and DigitalOcean
edges, with its image's firewall quirk reproduced: Ubuntu's /etc/iptables/rules.v4
(everything but SSH rejected) on disk, loaded, and netfilter-persistent enabled to load
it again at every boot.  The edge boots as its cloud-config says (the takeover
commands, then nftables) and must then run exactly the rendered ruleset, after the
first boot and after reboots in either order of the two loaders, with every service
answering through it.  Without the takeover the image's rules win: a negative control.
"""

from __future__ import annotations

import pytest

from components.config import stack
from components.lab import platform_firewall
from components.lab.smoke import smoke
from tests.support import LAB_STACK, PROJECT

pytestmark = [pytest.mark.netns, pytest.mark.lab]

ORACLE_EDGE = {
    "name": "fra",
    "provider": "oracle",
    "index": 3,
    "location": "eu-frankfurt-1",
    "compartment": "ocid1.tenancy.oc1..aaaaaaaaexampleexampleexampleexampleexampleexampleexample",
}


LAB_OVERRIDES = {"edges": [*stack.load(LAB_STACK, PROJECT).raw()["edges"], ORACLE_EDGE]}
LAB_TOOLS = ("iptables-nft-restore",)


def _failed(results):
    return [f"{r.edge} {r.service} {r.check}: {r.detail}" for r in results if not r.ok]


def test_every_service_answers_through_the_oracle_edge_next_to_the_others(el):
    assert sorted(el.edges) == ["ams", "fra", "fsn"]
    assert el.edges["fra"].takeover and not el.edges["fsn"].takeover
    results = smoke(el)
    assert not _failed(results), "\n".join(_failed(results))
    assert {r.service for r in results if r.edge == "fra"} == {s.name for s in el.cfg.services}


def test_after_the_first_boot_the_ruleset_is_exactly_the_rendered_one(el):
    edge = el.edges["fra"]
    assert platform_firewall.ruleset_differences(edge) == []
    # the image's rules were there before the boot, and are retired now
    assert platform_firewall.LOADER not in edge.enabled
    assert edge.node.run("test", "-e", "/etc/iptables/rules.v4", check=False).returncode != 0
    assert "REJECT" in edge.read("/etc/iptables/rules.v4.replaced-by-cgnat-edge")
    verify = edge.node.run("/usr/local/sbin/cgnat-edge-verify", check=False)
    assert "nftables runs as declared" in verify.stdout, verify.stdout + verify.stderr


@pytest.mark.parametrize("order", platform_firewall.ORDERS, ids="-then-".join)
def test_a_reboot_in_either_loader_order_keeps_the_rendered_ruleset(el, order):
    edge = el.edges["fra"]
    assert platform_firewall.reboot(edge, order) == []  # the image loads nothing any more
    assert platform_firewall.ruleset_differences(edge) == []
    results = smoke(el, edges=["fra"])
    assert not _failed(results), "\n".join(_failed(results))


def test_the_lab_command_reports_the_platform_firewall_rows(el):
    rows = platform_firewall.checks(el)
    assert [r.name for r in rows] == [
        f"platform-firewall:fra:{when}:{what}"
        for when in ("boot", "reboot-nftables-then-image", "reboot-image-then-nftables")
        for what in ("ruleset", "services")
    ]
    assert all(r.ok for r in rows), [(r.name, r.detail) for r in rows if not r.ok]
    per_service = [len(s.hostnames) + bool(s.http_target) if s.mode.by_hostname else 1 for s in el.cfg.services]
    assert {r.value for r in rows if r.name.endswith(":services")} == {sum(per_service)}


def test_without_the_takeover_the_image_rules_reject_the_services(el):
    """The negative control: the image as it comes, rebooted with netfilter-persistent
    after nftables.  The quirk the takeover exists for is real in the reproduction."""
    edge = el.edges["fra"]
    edge.node.run("cp", "/etc/iptables/rules.v4.replaced-by-cgnat-edge", "/etc/iptables/rules.v4")
    edge.enabled.add(platform_firewall.LOADER)
    try:
        assert platform_firewall.reboot(edge, ("nftables", "image")) == ["/etc/iptables/rules.v4"]
        differences = platform_firewall.ruleset_differences(edge)
        assert any("reject" in line for line in differences), differences
        results = smoke(el, edges=["fra"], services=["bench", "blog"])
        assert results and all(not r.ok for r in results), [(r.service, r.ok, r.detail) for r in results]
    finally:
        for command in edge.takeover:
            edge.node.sh(command)
        platform_firewall.reboot(edge, ("image", "nftables"))
    assert platform_firewall.ruleset_differences(edge) == []
    results = smoke(el, edges=["fra"], services=["bench", "blog"])
    assert not _failed(results), "\n".join(_failed(results))
