"""``vpn:edge-sees-ciphertext`` on the lab stack: a taken-over edge that sends in a
device's name reaches nothing at home, the device reaches its target through every
edge, and the edges carry only its WireGuard packets."""

from __future__ import annotations

import pytest

from components.lab import vpn

pytestmark = [pytest.mark.netns, pytest.mark.lab]


def test_a_taken_over_edge_reaches_nothing_in_a_devices_name(el):
    row = vpn.run_edge_sees_ciphertext(el)
    assert row[0].ok, row[0].detail
    assert row[0].value == 0
    detail = row[0].detail
    assert f"0 of {vpn.INJECTED} connections" in detail and "0 packets arrived at the target's host" in detail
    assert "from its own tunnel address: answered" in detail
    for name in el.edges:
        assert f"{name}: 192.0.2.30 home saw 192.0.2.225" in detail, detail
    assert detail.count("and 0 to or from 192.0.2.225") == len(el.edges), detail


def test_the_row_fails_when_home_takes_a_device_address_from_an_edge(el):
    """Without home's pool-source drop on the taken edge's tunnel (and without reverse
    path filtering, which many routers leave off), the same injection reaches the
    declared target, one the edge may reach from its own address: the row sees it
    arrive and fails."""
    taken = sorted(el.edges, key=lambda n: next(e.index for e in el.cfg.edges if e.name == n))[0]
    iface = el.home_interface(taken)
    table = "cgnat_edge_" + iface.replace("-", "_")
    keys = ("net.ipv4.conf.all.rp_filter", f"net.ipv4.conf.{iface}.rp_filter")
    saved = {k: el.home.run("sysctl", "-n", k).stdout.strip() for k in keys}
    el.home.run("nft", "delete", "chain", "inet", table, "pool")
    for k in keys:
        el.home.sysctl(k, 0)
    try:
        [row] = vpn.run_edge_sees_ciphertext(el)
    finally:
        for k, v in saved.items():
            el.home.sysctl(k, v)
        el.apply_home_filters(el.rendered)
    assert not row.ok and row.value > 0, row.detail
    assert f"{row.value} packets arrived at the target's host" in row.detail
