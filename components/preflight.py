"""What would stop ``pulumi up`` after its first resource, checked before it.

The parser reads only the stack's text.  Two more things used to end a run halfway,
with resources already created and the reason at the bottom of a traceback: a
provider whose Pulumi SDK this installation lacks (an optional extra), and an edge
whose user-data is over its provider's limit (known only once it is rendered).  The
program checks both right after parsing (``program.read_config``), so the render, the
policy check and ``pulumi up`` refuse such a stack as they refuse a config problem."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from components import providers
from components.config.keys import fix_key
from components.model import platforms
from components.model.fleet import FleetConfig
from components.model.keys import generate_host_key
from components.renderers import bootstrap


def problems(cfg: FleetConfig, import_module: Callable[[str], Any] = importlib.import_module) -> list[str]:
    """Every problem, each worded as the parser words one (``cgnat-edge:key: ...; fix``)."""
    return [*missing_sdks(cfg, import_module), *oversized_user_data(cfg)]


def missing_sdks(cfg: FleetConfig, import_module: Callable[[str], Any] = importlib.import_module) -> list[str]:
    """One problem per provider whose SDK cannot be imported, at its first edge."""
    found: list[str] = []
    checked: set[str] = set()
    for i, edge in enumerate(cfg.edges):
        platform = platforms.get(edge.provider)
        if platform.sdk_extra is None or edge.provider in checked:
            continue
        checked.add(edge.provider)
        try:
            import_module(platform.sdk_module)
        except ImportError as exc:
            found.append(
                f"{fix_key(f'edges[{i}].provider')}: edge {edge.name!r} is on {platform.label}, whose Pulumi SDK "
                f"({platform.sdk_module}, an optional extra) cannot be imported here ({exc}); install it with "
                f"`uv sync --extra {platform.sdk_extra}` (pip: `pip install 'cgnat-edge[{platform.sdk_extra}]'`)"
            )
    return found


def oversized_user_data(cfg: FleetConfig) -> list[str]:
    """Each edge's user-data, rendered as the program renders it, held to its provider's
    limit.  Only the bootstrap key is not known before ``pulumi up`` makes it; a throwaway
    key of the same kind has the same size, so the size measured here is the size deployed
    (to a few bytes where gzip packs the key: a large stack, a provider that gzips)."""
    bootstrap_key = generate_host_key()
    stack_key = generate_host_key()[1]
    found: list[str] = []
    for edge in cfg.edges:
        try:
            text = bootstrap.user_data(cfg, edge, bootstrap_key)
            providers.get(edge.provider).check_user_data(edge, text, [stack_key, *cfg.ssh.public_keys])
        except bootstrap.UserDataTooLarge as exc:
            found.append(str(exc))
    return found
