"""The parts of the Pulumi SDK outside its public API that the program and the mock
runner (``offline``) cannot do without, kept here so that an SDK upgrade which moves
one of them breaks this module and nothing else.

* ``pulumi.runtime.mocks.MockMonitor``: the stock mock engine.  The public ``Mocks``
  sees a resource's type, name and inputs only; the offline render and the tests also
  check parents, options, URNs and the stack's outputs, which only the monitor (the
  engine's side of ``set_mocks``) receives.
* ``pulumi.runtime.rpc``: what the monitor receives is the engine's wire form; only
  ``deserialize_properties`` reads it, and only ``is_rpc_secret`` tells a secret in it
  apart from a plain value.
* ``pulumi.runtime.settings.set_root_resource``: ``set_mocks`` registers a root stack
  of its own and leaves it installed.  The program must run in a fresh one
  (``run_in_stack``, as the language host runs it), or its exports never reach the
  engine, and only this setter clears the old one.
* ``pulumi.runtime.config.CONFIG``: the config set for the running program.  The public
  API reads one key at a time and cannot list them; the program lists them to report a
  key it does not know (a typo) instead of ignoring it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pulumi
from pulumi.runtime import config, rpc, settings
from pulumi.runtime.mocks import MockMonitor

__all__ = ["MockMonitor", "config_keys", "from_wire", "is_secret", "run_in_new_stack"]


def from_wire(struct: Any) -> Any:
    """Properties off the engine's wire as Python values, secrets still marked."""
    return rpc.deserialize_properties(struct)


def is_secret(value: Any) -> bool:
    """Whether ``value`` (off the wire) is a secret; its plain value is ``value["value"]``."""
    return rpc.is_rpc_secret(value)


def run_in_new_stack(program: Callable[[], None]) -> None:
    """Run ``program`` to completion in a new root stack, on the event loop the SDK uses."""
    settings.set_root_resource(None)  # type: ignore[arg-type]
    try:
        loop = asyncio.get_event_loop()
    except RuntimeError:  # a thread without a loop
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    loop.run_until_complete(pulumi.runtime.run_in_stack(program))


def config_keys() -> set[str]:
    """Every config key set for the running program, whichever way it was passed."""
    return set(config.CONFIG.get()) | set(pulumi.runtime.get_config_env())
