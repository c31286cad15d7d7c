"""``edges``: the VPSes, each on a platform, in one of its locations, on one of its
server types; and ``ha``, which asks for more than one platform."""

from __future__ import annotations

import functools
from typing import Any

from components.config.keys import fix_key
from components.config.parser import Parser, whole_number
from components.model import catalog, platforms
from components.model.fleet import EdgeSpec
from components.model.platforms.base import Platform


def parse(p: Parser, items: list[Any] | None) -> list[EdgeSpec]:
    if items is None:
        return []
    if not items:
        p.fail("edges", f"is empty; declare at least one edge, e.g. {_example_edge()}")
    edges: list[EdgeSpec] = []
    seen_names: set[str] = set()
    seen_indexes: dict[int, str] = {}
    for i, item in enumerate(items):
        key = f"edges[{i}]"
        if not isinstance(item, dict):
            p.fail(
                key,
                f"must be a mapping with name, provider and location; write it like {_example_edge()}",
            )
            continue
        own = getattr(platforms.REGISTRY.get(str(item.get("provider", ""))), "edge_fields", ())
        known = ("name", "provider", "location", "serverType", "image", "index", *own)
        for k in sorted(set(item) - set(known)):
            p.fail(f"{key}.{k}", f"is not a known edge field; use {', '.join(known)}")
        name = p.unique_name(key, item, seen_names, "edge")
        if name is None:
            continue
        provider_name = str(item.get("provider", ""))
        provider = platforms.REGISTRY.get(provider_name)
        if provider is None:
            p.fail(
                f"{key}.provider",
                f"{provider_name!r} is not a supported provider; use one of {', '.join(platforms.REGISTRY)}",
            )
            continue
        code = str(item.get("location") or "")
        location = _location(p, key, code, provider)
        if location is None:
            continue
        stype = _server_type(p, key, item, provider, code)
        if stype is None:
            continue
        image = str(item.get("image") or provider.default_image)
        if image not in provider.images:
            p.fail(
                f"{key}.image",
                f"{image!r} is not an image the edge bootstrap supports on {provider.label}; "
                f"use {' or '.join(provider.images)} (or leave image out)",
            )
            continue
        if item.get("index") is None and len(items) > 1:
            p.fail(
                f"{key}.index",
                f"is required when the fleet has more than one edge: it fixes the edge's tunnel addresses, so "
                f"removing another edge never moves them; set index: {i + 1} (its place in the list today)",
            )
            continue
        raw_index = item.get("index")
        index = i + 1 if raw_index is None else whole_number(raw_index)
        if index is None or index < 1:
            p.fail(f"{key}.index", f"{raw_index!r} must be a whole number from 1; it fixes the edge's tunnel addresses")
            continue
        if index in seen_indexes:
            p.fail(
                f"{key}.index",
                f"index {index} is already used by edge {seen_indexes[index]!r}; give each edge its own index",
            )
            continue
        failed = len(p.problems)
        options = provider.parse_edge(item, functools.partial(_fail_field, p, key))
        if len(p.problems) > failed:
            continue
        seen_indexes[index] = name
        edges.append(EdgeSpec(name, provider.name, location, stype, image, index, options))
    return edges


def _location(p: Parser, key: str, code: str, provider: Platform) -> catalog.Location | None:
    location = provider.location(code)
    if location is None:
        codes = ", ".join(loc.code for loc in provider.locations)
        p.fail(
            f"{key}.location",
            f"is required; use one of {codes}"
            if not code
            else f"{code!r} is not a {provider.label} location{provider.locations_note}; use one of {codes}",
        )
    return location


def _fail_field(p: Parser, key: str, field: str, message: str) -> None:
    p.fail(f"{key}.{field}", message)


def _example_edge() -> str:
    provider = next(iter(platforms.REGISTRY.values()))
    location = provider.locations[0].code
    return f"{{name: {location[:3]}, provider: {provider.name}, location: {location}}}"


def _server_type(p: Parser, key: str, item: dict, provider: Platform, code: str) -> catalog.ServerType | None:
    """The edge's server type.  Without ``serverType`` the provider's default is used,
    or, where that is not offered, the cheapest type offered there (with a warning)."""
    types_here = provider.types_in(code)
    if not item.get("serverType"):
        default = provider.server_type(provider.default_server_type)
        if default is not None and code in default.locations:
            return default
        if not types_here:
            p.fail(f"{key}.location", f"{provider.label} offers no server type big enough for an edge in {code}")
            return None
        chosen = types_here[0]
        p.warn(
            f"{key}.serverType",
            f"{provider.default_server_type} is not offered in {code}; using {chosen.name} ({chosen.arch}, "
            f"{chosen.monthly_price:.2f} {chosen.currency}/month), the cheapest type there. "
            f"Set serverType to choose another: {', '.join(t.name for t in types_here)}",
        )
        return chosen
    type_name = str(item["serverType"])
    stype = provider.server_type(type_name)
    if stype is None:
        p.fail(
            f"{key}.serverType",
            f"{type_name!r} is not a known {provider.label} server type; use one of {', '.join(t.name for t in provider.server_types)}",
        )
        return None
    if code not in stype.locations:
        arm = [t.name for t in types_here if t.arch == "arm64"]
        fix = (
            f"use {', '.join(arm)}"
            if arm
            else f"{provider.label} has no arm64 type there; set serverType to one offered there "
            f"({', '.join(t.name for t in types_here)}) or move the edge to {', '.join(sorted(stype.locations))}"
        )
        p.fail(f"{key}.serverType", f"{type_name} ({stype.arch}) is not offered in {code}; {fix}")
        return None
    if stype.ram_gb < catalog.MIN_RAM_GB:
        p.fail(
            f"{key}.serverType",
            f"{type_name} has {stype.ram_gb:g} GB RAM, too little for Traefik and unattended upgrades; "
            f"use at least {catalog.MIN_RAM_GB:g} GB, e.g. {provider.default_server_type}",
        )
        return None
    return stype


def check_ha(p: Parser, ha: bool, edges: list[EdgeSpec], items: list[Any] | None) -> None:
    """``ha`` promises that one provider's outage leaves an edge up; checked only when
    every edge parsed, so a typo in one edge is not also reported as an HA problem."""
    if not ha or not edges or len(edges) != len(items or []):
        return
    used = sorted({e.provider for e in edges})
    if len(used) > 1:
        return
    others = [name for name in platforms.REGISTRY if name not in used]
    p.fail(
        "ha",
        f"is true but every edge is on {used[0]}, so one provider outage takes the whole fleet down; "
        f"add an edge on {' or '.join(others)} to {fix_key('edges')}, or set {fix_key('ha')} to false",
    )
