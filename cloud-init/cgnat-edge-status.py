#!/usr/bin/python3
"""The edge's side of ``cgnat-edge status``: one JSON object of facts, judged on the
operator's machine (components/tools/status.py), which sends this program over SSH
with what to look at as its one argument.  Never installed on the edge, so it always
matches the status that asks.  Standard library only."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Any


def sh(*cmd: str) -> list[Any]:
    """[exit status, stdout, stderr]; 127 when the command cannot run at all."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return [r.returncode, r.stdout, r.stderr]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [127, "", str(exc)]


def digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def load(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def facts(args: dict[str, Any]) -> dict[str, Any]:
    bouncer = args["crowdsec"][-1]
    return {
        "now": time.time(),
        "cloudInit": sh("cloud-init", "status"),
        "wg": sh("wg", "show", args["interface"], "dump"),
        "slots": {u: sh("systemctl", "is-active", u)[0] == 0 for u in args["slots"]},
        "ping": sh("curl", "--fail", "--silent", "--max-time", "3", args["ping"]),
        "traefikVersion": sh("curl", "--fail", "--silent", "--max-time", "3", args["version"]),
        "verify": sh("python3", args["verify"]),
        "files": {p: digest(p) for p in args["files"]},
        "upgrades": mtime(args["upgradesStamp"]),
        "rebootRequired": os.path.exists(args["rebootRequired"]),
        "desired": load(args["desired"]),
        "geo": {"config": load(args["geoConfig"]), "status": load(args["geoStatus"])},
        "alerts": {"on": os.path.exists(args["alertsConfig"]), "state": load(args["alertsState"])},
        "crowdsec": {u: sh("systemctl", "is-active", u)[0] == 0 for u in args["crowdsec"]}
        if sh("systemctl", "is-enabled", bouncer)[0] == 0
        else None,
    }


if __name__ == "__main__":
    print(json.dumps(facts(json.loads(sys.argv[1]))))
