"""The lab's own DNS, on the ``dns`` node: what the user's DNS provider serves, and the
resolver a visitor's ISP runs.

Through the render's zone, served by PowerDNS (dnsMode records); or, when the edges
serve a subzone, through a recursive resolver that starts at the parent zone (the
render's delegation) and follows it to the edges.  With the whole domain the edges',
the nodes ask the edges' nameservers straight and this module runs nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from components.lab.edge_lab import EdgeLab
from components.lab.errors import LabError
from components.lab.netns import Node
from components.lab.rendered import Rendered
from components.model.fleet import FleetConfig


def zone(rendered: Rendered, dns_ip: str, records: str) -> str:
    """The zone the user's DNS provider holds, with the render's ``dns/<records>``."""
    zone = rendered.cfg.dns.zone
    head = (
        f"$ORIGIN {zone}.\n$TTL 3600\n"
        f"@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 604800 60\n"
        f"@ IN NS ns1.{zone}.\nns1 IN A {dns_ip}\n"
    )
    return head + (rendered.out / "dns" / records).read_text()


def serve_zone(el: EdgeLab, node: Node, records: str, address: str, port: int = 53) -> Path:
    """PowerDNS serving that zone on ``address``; returns its work folder."""
    work = el.lab.workdir / "dns"
    work.mkdir()
    (work / "zone").write_text(zone(el.rendered, el.dns_ip, records))
    (work / "named.conf").write_text(f'zone "{el.cfg.dns.zone}" {{ type master; file "{work / "zone"}"; }};\n')
    node.spawn(
        "pdns_server", "--no-config", "--daemon=no", "--guardian=no", "--launch=bind",
        f"--bind-config={work / 'named.conf'}", f"--socket-dir={work}", f"--local-address={address}",
        f"--local-port={port}", "--security-poll-suffix=", "--disable-syslog", "--loglevel=4",
        log=work / "pdns.log",
    )  # fmt: skip
    return work


def delegated(cfg: FleetConfig) -> bool:
    """The edges serve a subzone of the zone the user's DNS provider holds."""
    return cfg.dns.edge_served and cfg.dns.edge_zone != cfg.dns.zone


PARENT_PORT = 5300
"""The parent zone's server, on the DNS node's loopback behind its resolver."""


def start_parent_and_resolver(el: EdgeLab, node: Node) -> None:
    """The user's DNS provider, serving the delegation the render gives
    (``dns/delegation.db``: NS, glue and the hostnames' CNAMEs), and a recursive
    resolver that starts there and follows the delegation to the edges.  Its cache
    lives a second, so the lab sees the edges' answers as they change."""
    if shutil.which("pdns_recursor") is None:
        raise LabError(
            f"the stack's edges serve a subzone ({el.cfg.dns.edge_zone}): the lab resolves through the parent "
            "zone with PowerDNS Recursor; install it (apt-get install pdns-recursor)"
        )
    work = serve_zone(el, node, "delegation.db", "127.0.0.1", PARENT_PORT)
    (work / "recursor").mkdir()
    node.spawn(
        "pdns_recursor", f"--config-dir={work / 'recursor'}", f"--socket-dir={work / 'recursor'}",
        "--daemon=no", f"--local-address={el.dns_ip}", "--local-port=53", "--allow-from=0.0.0.0/0,::/0",
        f"--forward-zones={el.cfg.dns.zone}=127.0.0.1:{PARENT_PORT}", "--hint-file=no", "--max-cache-ttl=1",
        "--max-negative-ttl=1", "--packetcache-ttl=0", "--dnssec=off", "--security-poll-suffix=",
        "--dont-query=",  # its default list holds the documentation ranges the lab lives in
        "--disable-syslog", "--loglevel=4", "--threads=1",
        log=work / "recursor.log",
    )  # fmt: skip
