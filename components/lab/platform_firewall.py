"""An image's own boot-time firewall, reproduced on a lab edge.

Some platform images ship iptables rules of their own (``ImageTraits.boot_firewall``)
that netfilter-persistent loads at every boot, in no fixed order with nftables.service.
The lab puts them on the edge as the image would (files on disk, rules loaded, the
loader enabled) before the edge's first boot, which then runs the bootstrap's
``firewall_takeover`` commands as cloud-init's runcmd does; ``reboot`` replays a boot's
firewall phase in either order, so a test can see which ruleset a real reboot leaves.
"""

from __future__ import annotations

import re
import subprocess

from components import providers
from components.lab.edge import Edge
from components.lab.edge_lab import EdgeLab
from components.lab.report import Check
from components.lab.smoke import smoke
from components.model import edge_contract
from components.model.platforms.base import ImageTraits
from components.renderers import nftables

LOADER = "netfilter-persistent.service"
"""The Debian-family unit that loads /etc/iptables/rules.v4 and rules.v6 at boot."""
RESTORE = {"rules.v4": "iptables-nft-restore", "rules.v6": "ip6tables-nft-restore"}
"""The nft backend, as the images that ship such rules (Ubuntu 24.04) use: their tables
live beside the edge's, where ``flush ruleset`` reaches them."""
ORDERS = (("nftables", "image"), ("image", "nftables"))


def traits(el: EdgeLab, edge: str) -> ImageTraits:
    spec = next(e for e in el.cfg.edges if e.name == edge)
    return providers.get(spec.provider).image_traits(spec.image)


def prepare(edge: Edge, image: ImageTraits) -> None:
    """The edge as its image comes up, before cloud-init: the image's rules on disk and
    loaded, its loader enabled; the edge's boot will run ``image.firewall_takeover``."""
    edge.takeover = image.firewall_takeover
    if not image.boot_firewall:
        return
    for path, text in image.boot_firewall:
        edge.node.run("mkdir", "-p", path.rsplit("/", 1)[0])
        edge.node.write(path, text, 0o640)
    load_image_rules(edge)
    edge.enabled.add(LOADER)


def load_image_rules(edge: Edge) -> list[str]:
    """What the image's loader does at boot: restore each rules file that is still
    there.  Returns the files it loaded."""
    if LOADER not in edge.enabled:
        return []
    loaded = []
    for name, tool in RESTORE.items():
        path = f"/etc/iptables/{name}"
        if edge.node.run("test", "-e", path, check=False).returncode == 0:
            edge.node.run(tool, input=edge.read(path))
            loaded.append(path)
    return loaded


def reboot(edge: Edge, order: tuple[str, str]) -> list[str]:
    """A boot's firewall phase: an empty kernel ruleset, then the image's loader and
    nftables.service in ``order``.  Returns the rules files the image loaded."""
    edge.node.run("nft", "flush", "ruleset")
    loaded: list[str] = []
    for step in order:
        if step == "nftables":
            edge.node.run("nft", "-f", edge_contract.NFT_CONF)
        else:
            loaded = load_image_rules(edge)
    return loaded


def _without_counted(listing: str) -> str:
    """``nft list ruleset`` without the elements of the per-source sets, which the
    kernel fills with whoever came (``nftables.filled_sets``): the rules are compared."""
    filled = {entry.split()[-1] for entry in nftables.filled_sets()}
    kept: list[str] = []
    current, skipping = "", False
    for line in listing.splitlines(keepends=True):
        words = line.split()
        if words[:1] == ["set"]:
            current = words[1]
        if not skipping and current in filled and line.lstrip().startswith("elements = {"):
            skipping = True
        if skipping:
            skipping = not line.rstrip().endswith("}")
            continue
        kept.append(line)
    return "".join(kept)


def ruleset_differences(edge: Edge) -> list[str]:
    """Lines the running ruleset has or lacks against the rendered file, both listed by
    the same nft (the rendered one loaded in a scratch namespace)."""
    want = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'nft -f "$1" && nft list ruleset', "sh", "/dev/stdin"],
        input=edge.read(edge_contract.NFT_CONF),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    have = _without_counted(edge.node.run("nft", "list", "ruleset").stdout)
    # Counters count (the named ones the metrics read): their rules are compared.
    want, have = (re.sub(r"packets \d+ bytes \d+", "packets bytes", x) for x in (want, have))
    if have == want:
        return []
    extra = sorted(set(have.splitlines()) - set(want.splitlines()))
    missing = sorted(set(want.splitlines()) - set(have.splitlines()))
    return [f"+ {line.strip()}" for line in extra] + [f"- {line.strip()}" for line in missing]


def checks(el: EdgeLab) -> list[Check]:
    """Report rows for every edge whose image ships a boot-time firewall: the running
    ruleset against the rendered one after its boot and after a reboot in each loader
    order, and the services answering through it after each (``cgnat-edge lab``)."""
    rows: list[Check] = []
    for name, edge in sorted(el.edges.items()):
        if not traits(el, name).boot_firewall:
            continue
        for when, order in (("boot", None), *((f"reboot-{'-then-'.join(o)}", o) for o in ORDERS)):
            loaded = reboot(edge, order) if order else []
            differences = ruleset_differences(edge)
            rows.append(
                Check(
                    f"platform-firewall:{name}:{when}:ruleset",
                    not differences and not loaded,
                    len(differences),
                    "lines",
                    "exactly the rendered ruleset" if not differences else "; ".join(differences[:5]),
                )
            )
            results = smoke(el, edges=[name])
            failed = [f"{r.service} {r.check}: {r.detail}" for r in results if not r.ok]
            rows.append(
                Check(
                    f"platform-firewall:{name}:{when}:services",
                    bool(results) and not failed,
                    len(results) - len(failed),
                    "answered",
                    "; ".join(failed[:5]) or f"all {len(results)} checks answered",
                )
            )
    return rows
