"""Writes the home-side configs out of the stack outputs, as files only root can read.

The configs carry the home private key, so they only ever reach disk here, and only
with mode 0600 in a 0700 directory: every file is written to a private temporary file
first and renamed into place, so there is no moment where a key is readable by others.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

OUTPUT_KEY = "homeConfigs"


class HomeConfigError(Exception):
    """The source does not hold usable home configs; the message says what to run."""


def _load(source: dict | str | os.PathLike) -> dict:
    hidden_fix = "add --show-secrets to `pulumi stack output --json`"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            hidden_fix = "render with `cgnat-edge render --show-secrets`, or use the render's home/ folder"
            path = path / "outputs.json"
        try:
            source = json.loads(path.read_text())
        except FileNotFoundError:
            raise HomeConfigError(
                f"{path} does not exist; render the stack first or pass the output of `pulumi stack output --json --show-secrets`"
            ) from None
    if not isinstance(source, dict) or OUTPUT_KEY not in source:
        raise HomeConfigError(
            f"no {OUTPUT_KEY!r} output found; is this the output of `pulumi stack output --json --show-secrets` after `pulumi up`?"
        )
    configs = source[OUTPUT_KEY]
    if isinstance(configs, str):
        if configs == "[secret]":
            raise HomeConfigError(f"{OUTPUT_KEY} is hidden; {hidden_fix}")
        configs = json.loads(configs)
    if not all(k in configs for k in ("structured", "wgQuick", "openwrt", "routeros")):
        raise HomeConfigError(
            f"{OUTPUT_KEY} lacks one of structured, wgQuick, openwrt, routeros; was it made by another version?"
        )
    return configs


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by its owner only, from the first byte on (no window in
    which a key is world-readable), and atomically: a reader sees old or new."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def qr_png(text: str) -> bytes:
    """A QR code the WireGuard mobile apps can scan."""
    import segno

    buf = io.BytesIO()
    segno.make(text, error="l").save(buf, kind="png", scale=6, border=4)
    return buf.getvalue()


def qr_terminal(text: str) -> str:
    """The same QR code as UTF-8 half blocks, to scan straight off a terminal."""
    import segno

    buf = io.StringIO()
    segno.make(text, error="l").terminal(out=buf, compact=True)
    return buf.getvalue()


def write(source: dict | str | os.PathLike, out_dir: Path, qr: bool = False) -> list[Path]:
    """Write every home config below ``out_dir`` and return the paths written.

    ``source`` is the parsed JSON of ``pulumi stack output --json --show-secrets``, or
    an offline render directory (its ``outputs.json``), or a path to such a JSON file."""
    configs = _load(source)
    data = configs["structured"]
    out_dir = Path(out_dir)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out_dir, 0o700)
    written: list[Path] = []

    def put(name: str, content: str | bytes) -> None:
        path = out_dir / name
        write_private(path, content.encode() if isinstance(content, str) else content)
        written.append(path)

    interfaces = {t["edge"]: t["interface"] for t in data["tunnels"]}
    for edge, text in sorted(configs["wgQuick"].items()):
        put(f"{interfaces[edge]}.conf", text)
        if qr:
            put(f"{interfaces[edge]}.png", qr_png(text))
    put("openwrt.uci", configs["openwrt"])
    put("routeros.rsc", configs["routeros"])
    put("home.json", json.dumps(data, indent=2) + "\n")
    return written


def run(args: Sequence[str] | None = None) -> int:
    """``cgnat-edge home-config [SOURCE] [--out DIR] [--qr] [--qr-terminal EDGE]``."""
    parser = argparse.ArgumentParser(
        prog="cgnat-edge home-config", description="Write the home-side WireGuard configs (mode 0600)."
    )
    parser.add_argument(
        "source", nargs="?", help="render directory or JSON file; '-' reads stdin; default: ask `pulumi stack output`"
    )
    parser.add_argument("--out", default="home-configs", help="directory to write (created with mode 0700)")
    parser.add_argument("--qr", action="store_true", help="also write a PNG QR code of each wg-quick file")
    parser.add_argument(
        "--qr-terminal", metavar="EDGE", help="print the wg-quick file of EDGE as a QR code on the terminal"
    )
    opts = parser.parse_args(args)
    try:
        if opts.source == "-":
            source: Any = json.load(sys.stdin)
        elif opts.source:
            source = opts.source
        else:
            done = subprocess.run(
                ["pulumi", "stack", "output", "--json", "--show-secrets"], capture_output=True, text=True
            )
            if done.returncode:
                raise HomeConfigError(f"`pulumi stack output` failed: {done.stderr.strip()}")
            source = json.loads(done.stdout)
        paths = write(source, Path(opts.out), opts.qr)
        if opts.qr_terminal:
            configs = _load(source)
            if opts.qr_terminal not in configs["wgQuick"]:
                raise HomeConfigError(
                    f"no edge {opts.qr_terminal!r}; edges are {', '.join(sorted(configs['wgQuick']))}"
                )
            sys.stdout.write(qr_terminal(configs["wgQuick"][opts.qr_terminal]))
    except HomeConfigError as exc:
        print(f"cgnat-edge home-config: {exc}", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0
