"""The one error the lab raises when it cannot run: the CLI shows its message as it is."""

from __future__ import annotations


class LabError(RuntimeError):
    """The lab could not be built from this stack; the message says why."""
