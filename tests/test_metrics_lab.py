"""``cgnat-edge lab --alerts``, the metrics rows: every edge's endpoint scraped from home
through its tunnel (every promised series, every series the home dashboard queries,
the handshake age growing through the operator's SSH forward once the tunnel is cut),
and closed to the internet and the visitor, which the row would see if it were not."""

from __future__ import annotations

import pytest

from components.lab import metrics
from components.model import edge_contract
from components.renderers import metrics as edge_metrics

pytestmark = [pytest.mark.netns, pytest.mark.lab]
LAB_TOOLS = ("prometheus-node-exporter",)


def test_home_scrapes_every_edge_through_its_tunnel(el):
    row = metrics.scrape_row(el)
    print(row)
    assert row.ok, row.detail
    assert row.unit == "series" and row.value > 100 * len(el.edges), row
    assert "handshake age" in row.detail and "through the operator's SSH forward" in row.detail
    # The series the home dashboard queries are among those scraped (the row checks all).
    assert {"cgnat_edge_check_up", "cgnat_edge_dns_answers_total"} <= metrics.dashboard_families(el.rendered.home)


def test_the_endpoint_is_closed_to_the_internet_and_the_row_would_see_it_open(el):
    row = metrics.closed_row(el)
    assert row.ok, row.detail
    assert row.value == 4 * len(el.edges), row
    # The same ruleset with the metrics port open to everyone: the row fails.
    edge = el.edges[sorted(el.edges)[0]]
    rules = edge.read(edge_contract.NFT_CONF)
    scoped = next(line for line in rules.splitlines() if f"tcp dport {edge_metrics.PORT} accept" in line)
    opened_file = str(edge.work / "metrics-open.nft")
    edge.node.write(opened_file, rules.replace(scoped, f"        tcp dport {edge_metrics.PORT} accept"))
    edge.node.run("nft", "-f", opened_file)
    try:
        opened = metrics.closed_row(el)
    finally:
        edge.node.run("nft", "-f", edge_contract.NFT_CONF)
    assert not opened.ok, opened
    assert f"internet -> {edge.name}" in opened.detail and f"visitor -> {edge.name}" in opened.detail, opened.detail
    assert metrics.closed_row(el).ok
