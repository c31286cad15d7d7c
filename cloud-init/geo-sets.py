#!/usr/bin/env python3
"""cgnat-edge-geo-sets: fill the edge's country sets from the registries' statistics.

Reads /etc/cgnat-edge/geo.json (sources, countries, table, state directory).  Every
source is a registry "delegated-extended" file (https://www.nro.net/statistics); each
is fetched with the MD5 digest the registry publishes beside it and checked three
ways: the digest, the format version line, and the record count the file's own
header states.  Only when every source passes are the sets replaced, in one nftables
transaction (visitors never see a half-loaded set); the per-country files that the
ruleset includes are written first, so a later reload of the ruleset loads the same
sets.  On any failure the loaded sets and files stay as they were (the last good
lists) and status.json says what failed and since when.

Sources are fetched over HTTPS only, with the system's trust store.  Every download
must be whole within a deadline (FILE_DEADLINE_S, and RUN_DEADLINE_S for the run, or
$CGNAT_EDGE_GEO_DEADLINE seconds) and at most MAX_BYTES long: a server that stalls or
trickles bytes, or sends without end, fails the refresh like a corrupt file does.

    cgnat-edge-geo-sets [--force]     fetch when older than 20 hours (or forced), load
Standard library only: it runs on a bare Debian.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

CONFIG = os.environ.get("CGNAT_EDGE_GEO_CONFIG", "/etc/cgnat-edge/geo.json")
MAX_AGE_S = 20 * 3600
RUN_DEADLINE_S = float(os.environ.get("CGNAT_EDGE_GEO_DEADLINE") or 300)
"""Every download of a run, together; the unit's TimeoutStartSec leaves room for the load."""
FILE_DEADLINE_S = 120.0
"""One download: a registry's file is about 10 MB, seconds on an edge's link."""
SOCKET_TIMEOUT_S = 30.0
MAX_BYTES = 64 * 1024 * 1024
"""Six times the largest registry's file (RIPE's, about 10 MB in 2026): room for years of
growth, while a server sending without end cannot fill the edge's memory (the file is
held whole to check its MD5) or its disk."""
CHUNK = 1 << 16


class SourceError(Exception):
    pass


def _expire(signum: int, frame: object) -> None:
    raise TimeoutError("deadline passed")


def fetch(url: str, deadline: float) -> bytes:
    """The body at ``url``, whole by ``deadline`` (a time.monotonic() value) or not at all.

    urlopen's timeout bounds each socket operation, not the download: a server sending
    a byte every few seconds, in its TLS handshake, headers or body, would hold the
    refresh for ever.  An interval timer (SIGALRM) ends the download wherever it waits."""
    if urllib.parse.urlsplit(url).scheme != "https":
        raise SourceError(f"{url}: not an https:// URL; country lists are fetched over HTTPS only")
    left = deadline - time.monotonic()
    if left <= 0:
        raise SourceError(f"{url}: timed out: the run's {RUN_DEADLINE_S:g} s deadline passed before its download")
    req = urllib.request.Request(url, headers={"User-Agent": "cgnat-edge-geo-sets"})
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, left)
    try:
        with urllib.request.urlopen(req, timeout=min(left, SOCKET_TIMEOUT_S)) as r:
            if urllib.parse.urlsplit(r.geturl()).scheme != "https":
                raise SourceError(f"{url}: redirected to {r.geturl()}, which is not https://")
            body = bytearray()
            while chunk := r.read1(CHUNK):
                body += chunk
                if len(body) > MAX_BYTES:
                    raise SourceError(f"{url}: over {MAX_BYTES >> 20} MiB, far larger than a statistics file")
            return bytes(body)
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
            raise SourceError(f"{url}: timed out: not whole within its deadline ({left:.1f} s)") from exc
        raise SourceError(f"{url}: {exc}") from exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _stopped(signum: int, frame: object) -> None:
    raise SourceError(f"stopped by {signal.Signals(signum).name} (the unit's TimeoutStartSec, or a shutdown)")


def check(url: str, data: bytes, digest_text: bytes) -> None:
    """Raises SourceError unless ``data`` is a whole, untampered statistics file."""
    digests = re.findall(rb"\b[0-9a-fA-F]{32}\b", digest_text)
    if not digests:
        raise SourceError(f"{url}.md5 holds no MD5 digest")
    if hashlib.md5(data).hexdigest().encode() not in [d.lower() for d in digests]:
        raise SourceError(f"{url}: MD5 differs from {url}.md5 (corrupt or cut short)")
    lines = [ln for ln in data.decode("ascii", "replace").splitlines() if ln and not ln.startswith("#")]
    if not lines or not re.match(r"^2(\.\d+)?\|", lines[0]):
        raise SourceError(f"{url}: not an RIR statistics file (no version 2 header)")
    declared = int(lines[0].split("|")[3])
    records = [ln for ln in lines[1:] if ln.split("|")[-1] != "summary"]
    if len(records) != declared:
        raise SourceError(f"{url}: header declares {declared} records, file holds {len(records)}")


def parse(data: bytes, wanted: set[str]) -> dict[tuple[str, int], list]:
    """(country, family) -> address ranges, allocated and assigned space only."""
    out: dict[tuple[str, int], list] = {}
    for line in data.decode("ascii", "replace").splitlines():
        f = line.split("|")
        if len(f) < 7 or line.startswith("#") or f[-1] == "summary" or f[1].upper() not in wanted:
            continue
        if f[6] not in ("allocated", "assigned"):
            continue
        cc, kind, start, value = f[1].upper(), f[2], f[3], f[4]
        if kind == "ipv4":
            first = ipaddress.IPv4Address(start)
            out.setdefault((cc, 4), []).append((int(first), int(first) + int(value) - 1))
        elif kind == "ipv6":
            net = ipaddress.IPv6Network(f"{start}/{value}", strict=False)
            out.setdefault((cc, 6), []).append((int(net.network_address), int(net.broadcast_address)))
    return out


def merge(ranges: list) -> list:
    """Sorted, with overlapping and adjacent ranges joined (nftables refuses overlaps)."""
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return merged


def element(lo: int, hi: int, family: int) -> str:
    cls = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    nets = list(ipaddress.summarize_address_range(cls(lo), cls(hi)))
    return str(nets[0]) if len(nets) == 1 else f"{cls(lo)}-{cls(hi)}"


def country_file(table: list[str], country: str, sets: dict) -> tuple[str, dict]:
    lines, counts = [], {}
    for family in (4, 6):
        ranges = merge(sets.get((country, family), []))
        counts[f"v{family}"] = len(ranges)
        if ranges:
            items = ",\n  ".join(element(lo, hi, family) for lo, hi in ranges)
            lines.append(f"add element {table[0]} {table[1]} geo{family}_{country.lower()} {{\n  {items}\n}}")
    return "\n".join(lines) + "\n", counts


def write_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load(cfg: dict, files: dict[str, str]) -> None:
    """Flush and fill every set in one transaction."""
    table = cfg["table"]
    script = "".join(
        f"flush set {table[0]} {table[1]} geo{family}_{c.lower()}\n" for c in cfg["countries"] for family in (4, 6)
    ) + "".join(files[c] for c in cfg["countries"])
    done = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True)
    if done.returncode != 0:
        raise SourceError(f"nft refused the sets: {done.stderr.strip()[:500]}")


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _stopped)  # recorded in status.json like any failure
    with open(CONFIG) as f:
        cfg = json.load(f)
    state = cfg["state"]
    os.makedirs(f"{state}/raw", mode=0o755, exist_ok=True)
    status_path = f"{state}/status.json"
    try:
        with open(status_path) as f:
            status = json.load(f)
    except (OSError, ValueError):
        status = {}
    now = int(time.time())
    status["checked"] = now
    wanted = sorted(cfg["countries"])
    if not wanted:  # no country filters on this fleet: nothing to fetch
        status.update(ok=True, error="", countries_loaded=[])
        write_atomic(status_path, json.dumps(status, indent=1) + "\n")
        return 0
    try:
        fresh = now - int(status.get("fetched", 0)) < MAX_AGE_S and status.get("sources") == cfg["sources"]
        raws = []
        if fresh and "--force" not in argv:
            for i, _ in enumerate(cfg["sources"]):
                with open(f"{state}/raw/{i}", "rb") as f:
                    raws.append(f.read())
        else:
            run_deadline = time.monotonic() + RUN_DEADLINE_S
            for url in cfg["sources"]:
                data = fetch(url, min(run_deadline, time.monotonic() + FILE_DEADLINE_S))
                digest = fetch(url + ".md5", min(run_deadline, time.monotonic() + FILE_DEADLINE_S))
                check(url, data, digest)
                raws.append(data)
            for i, data in enumerate(raws):
                with open(f"{state}/raw/{i}.new", "wb") as f:
                    f.write(data)
                os.replace(f"{state}/raw/{i}.new", f"{state}/raw/{i}")
            status["fetched"] = now
            status["sources"] = cfg["sources"]
        if fresh and "--force" not in argv and status.get("countries_loaded") == wanted and status.get("ok"):
            return 0  # nothing new: the loaded sets are current
        sets: dict = {}
        for data in raws:
            for key, ranges in parse(data, set(wanted)).items():
                sets.setdefault(key, []).extend(ranges)
        files, counts = {}, {}
        for c in wanted:
            files[c], counts[c] = country_file(cfg["table"], c, sets)
        load(cfg, files)
        for c in wanted:
            write_atomic(f"{state}/{c.lower()}.nft", files[c])
        status.update(ok=True, error="", loaded=now, countries_loaded=wanted, counts=counts)
        status.pop("failing_since", None)
    except (SourceError, OSError, ValueError) as exc:
        status.update(ok=False, error=str(exc))
        status.setdefault("failing_since", now)
        print(f"cgnat-edge-geo-sets: {exc}; keeping the last good sets", file=sys.stderr)
    write_atomic(status_path, json.dumps(status, indent=1) + "\n")
    return 0 if status["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
