"""The per-source limits under attack on the running lab (components/lab/floods.py):
each row from the real rendered ruleset, Traefik, PowerDNS and sshd, and the two that
prove the nftables limits once more with the limit taken out, where they must fail."""

from __future__ import annotations

import re

import pytest

from components.lab import floods
from components.lab.netns import wait_for
from components.model import edge_contract

pytestmark = [pytest.mark.netns, pytest.mark.lab]


def _without(node, fragment: str):
    """Delete the input rules whose text holds ``fragment``; a function that puts them
    back where they were (before the first rule after them that stays)."""
    listing = node.run("nft", "-a", "list", "chain", "inet", edge_contract.NFT_TABLE, "input").stdout
    rules = [line.strip().rpartition(" # handle ") for line in listing.splitlines() if " # handle " in line]
    gone = [(rule, handle) for rule, _, handle in rules if fragment in rule]
    assert gone, f"no input rule holds {fragment!r}"
    last = max(i for i, (rule, _, _) in enumerate(rules) if fragment in rule)
    after = rules[last + 1][2]
    for _rule, handle in gone:
        node.run("nft", "delete", "rule", "inet", edge_contract.NFT_TABLE, "input", "handle", handle)

    def restore() -> None:
        for rule, _handle in gone:
            node.run("nft", "insert", "rule", "inet", edge_contract.NFT_TABLE, "input", "position", after, rule)

    return restore


def test_meter_fill(el):
    row = floods.meter_fill(el)
    assert row.ok, row.detail
    assert 0 < row.value < floods.PROBES / 2


def test_meter_fill_fails_without_the_shared_budget(el):
    """The sources a full set cannot take share one budget; without that rule a new
    source passes the full meter unlimited, as it did before the sets had a size."""
    node = floods._first_edge(el).node
    # From an empty set, as the row starts: sources an earlier flood left behind would let
    # the spoofed packets themselves through to PowerDNS here, and its answers crowd out
    # the probes.
    wait_for(lambda: floods.element_count(node, "dns_v4") == 0, timeout=30, message="the meter's set to empty")
    restore = _without(node, "!= @dns_v4 limit rate")
    try:
        row = floods.meter_fill(el)
    finally:
        restore()
    # The set was full, as in the row, and the new source got more through than the
    # rate allows.
    assert not row.ok and "the set was full" in row.detail, row.detail
    allowed = re.search(r"the rate allows (\d+)", row.detail)
    assert allowed is not None and row.value > int(allowed.group(1)), row.detail


def test_slow_clients(el):
    row = floods.slow_clients(el)
    assert row.ok, row.detail
    assert row.value >= floods.SUCCESS_PCT


def test_slow_clients_fails_without_the_connection_count(el):
    restore = _without(floods._first_edge(el).node, "ct count over")
    try:
        row = floods.slow_clients(el)
    finally:
        restore()
    assert not row.ok
    assert "per-source count" in row.detail


def test_dns_tcp(el):
    row = floods.dns_tcp(el)
    assert row.ok, row.detail
    assert row.value >= floods.SUCCESS_PCT


def test_ssh(el):
    row = floods.ssh_flood(el)
    assert row.ok, row.detail
