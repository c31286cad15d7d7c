"""The policy pack's entry; the stack files it reads the config from are one folder up."""

from pathlib import Path

from components.tools import policy_pack

policy_pack.serve(Path(__file__).resolve().parent.parent)
