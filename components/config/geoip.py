"""``dnsGeoipDatabase``: a user's GeoIP City database for the edges' nearest-first
answers (dnsMode edges).

The database is checked here, before anything is created: PowerDNS's geoip backend
refuses to start on a file that is not an MMDB, which on an edge would take its DNS
down at the next push.  Only City databases are accepted: the answers are ordered by
distance, and a Country database has no coordinates (PowerDNS's ``latlon()`` then
says 0,0 for every client)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from components.config.parser import Parser
from components.model.fleet import DnsMode

KEY = "dnsGeoipDatabase"
METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
"""Starts the metadata section of every MaxMind DB file (MaxMind DB spec 2.0)."""
METADATA_WINDOW = 128 * 1024
"""The spec puts the metadata within the file's last 128 KiB."""
MIN_BYTES = 64
MAX_BYTES = 512 * 1024 * 1024
"""DB-IP City Lite is ~130 MB, GeoLite2 City ~60 MB; a bigger file is not one of them
(and an edge with 1 GB of RAM maps it)."""
FETCH = (
    "download DB-IP's free 'IP to City Lite' mmdb (https://db-ip.com/db/download/ip-to-city-lite) "
    "or MaxMind's GeoLite2 City"
)


def database_type(data: bytes) -> str | None:
    """The ``database_type`` metadata string, or None when ``data`` holds no MMDB metadata."""
    at = data.rfind(METADATA_MARKER)
    if at < 0:
        return None
    meta = data[at + len(METADATA_MARKER) :]
    key = b"database_type"
    i = meta.find(bytes([0x40 | len(key)]) + key)  # the key as an MMDB utf8 string
    if i < 0:
        return ""
    control = meta[i + 1 + len(key)]
    if control >> 5 != 2:  # a utf8 string (pointers are not used in metadata)
        return ""
    size = control & 0x1F
    start = i + 2 + len(key)
    if size == 29:
        size, start = 29 + meta[start], start + 1
    return meta[start : start + size].decode("utf-8", "replace")


def parse(p: Parser, mode: DnsMode, base_dir: Path) -> str:
    """The database's absolute path, or "" when none is set."""
    text = p.raw.get(KEY)
    if text in (None, ""):
        return ""
    if not isinstance(text, str):
        p.fail(KEY, f"must be a file path, got {type(text).__name__}; write it as path/to/dbip-city-lite.mmdb")
        return ""
    if mode != DnsMode.EDGES:
        p.fail(
            KEY,
            f"is set but cgnat-edge:dnsMode is {mode}; only the edges' own nameservers (dnsMode edges) use it: "
            "set dnsMode to edges or remove it",
        )
        return ""
    path = Path(text).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        p.fail(KEY, f"{path} does not exist or is not a file; {FETCH}, or remove the key")
        return ""
    size = path.stat().st_size
    if not MIN_BYTES <= size <= MAX_BYTES:
        p.fail(KEY, f"{path} is {size} bytes, not a GeoIP City database; {FETCH}")
        return ""
    with path.open("rb") as f:
        f.seek(max(0, size - METADATA_WINDOW))
        kind = database_type(f.read())
    if kind is None:
        p.fail(KEY, f"{path} is not a MaxMind DB (mmdb) file (no metadata marker); {FETCH} in mmdb format")
        return ""
    if "city" not in kind.lower():
        p.fail(
            KEY,
            f"{path} is a {kind or 'untyped'} database, which has no coordinates to order edges by distance; "
            f"use a City database: {FETCH}",
        )
        return ""
    return str(path.resolve())


def sha256(path: str) -> str:
    """The file's digest: what Pulumi state keeps for the copy to the edges (not the file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
