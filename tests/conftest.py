"""Shared fixtures: the example stack, parsed the way the program parses it."""

from __future__ import annotations

import pytest

from components import config as config_module
from tests.support import stack_raw


@pytest.fixture
def raw_config() -> dict:
    return stack_raw()


@pytest.fixture
def fleet_config(raw_config):
    return config_module.parse(raw_config, stack="dev")
