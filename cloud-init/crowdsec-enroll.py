"""Enrols this edge in the CrowdSec console, the enrolment key read from stdin.

``cscli console enroll`` takes the key only as an argument, and an argument can be
read in /proc by every user of the machine while the command runs.  This makes the
same two Central API calls cscli makes (log in as this machine with the credentials
its registration wrote, then enrol with the key), so the key lives only in this
process's memory and in the TLS request.

    python3 crowdsec-enroll.py NAME [TAG...] < key
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

CREDENTIALS = "/etc/crowdsec/online_api_credentials.yaml"
CONSOLE_OPTIONS = ("manual", "tainted")
"""What ``cscli console enroll`` turns on after enrolling, in every version since 1.4."""


def credentials(text: str) -> dict[str, str]:
    """The flat ``key: value`` file cscli writes (url, login, password)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and line[:1] not in (" ", "#"):
            out[key.strip()] = value.strip().strip("'\"")
    return out


def post(url: str, body: dict, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json", "User-Agent": "crowdsec/cgnat-edge-enroll"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        data = response.read()
    return json.loads(data) if data.strip() else {}


def scenarios() -> list[str]:
    """The installed scenarios: the Central API wants them with every login."""
    listed = subprocess.run(["cscli", "scenarios", "list", "-o", "json"], capture_output=True, text=True, check=True)
    return sorted(s["name"] for s in json.loads(listed.stdout).get("scenarios") or [])


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: crowdsec-enroll.py NAME [TAG...] < key", file=sys.stderr)
        return 2
    name, tags = argv[0], argv[1:]
    key = sys.stdin.read().strip()
    if not key:
        print("no enrolment key on stdin", file=sys.stderr)
        return 2
    with open(CREDENTIALS) as handle:
        creds = credentials(handle.read())
    if not {"url", "login", "password"} <= creds.keys():
        print(f"{CREDENTIALS} has no Central API registration (crowdsec: online registers it)", file=sys.stderr)
        return 1
    api = creds["url"].rstrip("/") + "/v3"
    try:
        login = post(
            f"{api}/watchers/login",
            {"machine_id": creds["login"], "password": creds["password"], "scenarios": scenarios()},
        )
        post(
            f"{api}/watchers/enroll",
            {"attachment_key": key, "name": name, "tags": tags, "overwrite": True},
            login["token"],
        )
    except urllib.error.HTTPError as error:
        # The answer's body can echo the request; the status and the step say enough.
        print(f"the Central API refused the enrolment: {error.code} {error.reason} ({error.url})", file=sys.stderr)
        return 1
    subprocess.run(["cscli", "console", "enable", *CONSOLE_OPTIONS], check=True, capture_output=True)
    print(f"enrolled as {name}; accept it in the CrowdSec console")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
