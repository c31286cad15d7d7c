"""Writes the home-side configs out of the stack outputs, as files only root can read.

The configs carry the home private key, so they only ever reach disk here, and only
with mode 0600 in a 0700 directory: every file is written to a private temporary file
first and renamed into place, so there is no moment where a key is readable by others.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

OUTPUT_KEY = "homeConfigs"
PULUMI_STACK_OUTPUT = ("pulumi", "stack", "output", "--json", "--show-secrets")
_OR_SAVED = (
    "or pass a saved copy of the outputs: run `pulumi stack output --json --show-secrets > outputs.json` "
    "where Pulumi works and give that file (or `-` to read it from stdin)"
)


class HomeConfigError(Exception):
    """The source does not hold usable home configs; the message says what to run."""


def _parse_json(text: str | bytes, where: str) -> Any:
    if not text.strip():
        raise HomeConfigError(f"{where} is empty; pass what `pulumi stack output --json --show-secrets` prints")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HomeConfigError(
            f"{where} is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); pass what "
            "`pulumi stack output --json --show-secrets` prints, or a render folder made with --show-secrets"
        ) from None
    except ValueError:  # not UTF-8 at all
        raise HomeConfigError(
            f"{where} is not JSON text; pass what `pulumi stack output --json --show-secrets` prints"
        ) from None


def read_source(source: str | None) -> dict | Path:
    """What ``home-config`` was pointed at: ``-`` is stdin, a path stays a path (a render
    folder or a saved JSON file, read by ``load``); without a source the Pulumi CLI is
    asked for the selected stack's outputs, the usual case right after ``pulumi up``."""
    if source == "-":
        return _parse_json(sys.stdin.read(), "stdin")
    if source:
        return Path(source)
    try:
        done = subprocess.run(PULUMI_STACK_OUTPUT, capture_output=True, text=True)
    except FileNotFoundError:
        raise HomeConfigError(
            "the Pulumi CLI is not installed (no `pulumi` on PATH), so the stack outputs cannot be read; "
            f"install it (https://www.pulumi.com/docs/install/), {_OR_SAVED}"
        ) from None
    if done.returncode:
        raise HomeConfigError(
            f"`{' '.join(PULUMI_STACK_OUTPUT)}` failed: {done.stderr.strip() or f'exit {done.returncode}'}; "
            f"select the deployed stack (`pulumi stack select NAME`), {_OR_SAVED}"
        )
    return _parse_json(done.stdout, f"the output of `{' '.join(PULUMI_STACK_OUTPUT)}`")


def _well_formed(configs: Any) -> bool:
    try:
        interfaces = {t["edge"]: t["interface"] for t in configs["structured"]["tunnels"]}
        return (
            all(isinstance(v, str) for v in (configs["openwrt"], configs["routeros"], *interfaces.values()))
            and isinstance(configs["wgQuick"], dict)
            and all(edge in interfaces and isinstance(text, str) for edge, text in configs["wgQuick"].items())
        )
    except (KeyError, TypeError):
        return False


def load(source: dict | str | os.PathLike) -> dict:
    """The ``homeConfigs`` output out of ``source``: the parsed JSON of ``pulumi stack
    output --json --show-secrets``, a path to such a file, or a render folder."""
    hidden_fix = "add --show-secrets to `pulumi stack output --json`"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            hidden_fix = "render with `cgnat-edge render --show-secrets`, or use the render's home/ folder"
            path = path / "outputs.json"
        try:
            source = _parse_json(path.read_bytes(), str(path))
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
        configs = _parse_json(configs, f"the {OUTPUT_KEY} output")
    if not isinstance(configs, dict) or not all(k in configs for k in ("structured", "wgQuick", "openwrt", "routeros")):
        raise HomeConfigError(
            f"{OUTPUT_KEY} lacks one of structured, wgQuick, openwrt, routeros; was it made by another version?"
        )
    if not _well_formed(configs):
        raise HomeConfigError(
            f"{OUTPUT_KEY} does not have the shape this version writes (a tunnel per wgQuick edge, text configs); "
            "was it made by another version? Run `pulumi up` with this version first"
        )
    return configs


def wg_quick(configs: dict, edge: str) -> str:
    """The wg-quick file of ``edge`` (or ``device/edge``: a road warrior's), or an error
    listing the ones there are."""
    if "/" in edge:
        device, _, name = edge.partition("/")
        files = configs.get("roadWarriors", {})
        if name not in files.get(device, {}):
            known = [f"{d}/{e}" for d, per_edge in sorted(files.items()) for e in sorted(per_edge)]
            raise HomeConfigError(f"no road warrior {edge!r}; there are {', '.join(known) or 'none'}")
        return files[device][name]
    if edge not in configs["wgQuick"]:
        raise HomeConfigError(f"no edge {edge!r}; edges are {', '.join(sorted(configs['wgQuick']))}")
    return configs["wgQuick"][edge]


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


def _fits_qr(text: str) -> bool:
    import segno

    try:
        segno.make(text, error="l")
    except segno.DataOverflowError:
        return False
    return True


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
    configs = load(source)
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
        if qr and _fits_qr(text):  # a home with many services and filters outgrows a QR code
            put(f"{interfaces[edge]}.png", qr_png(text))
    for device, per_edge in sorted(configs.get("roadWarriors", {}).items()):
        for edge, text in sorted(per_edge.items()):
            put(f"road-warrior-{device}-{edge}.conf", text)
            if qr:
                put(f"road-warrior-{device}-{edge}.png", qr_png(text))
    put("openwrt.sh", configs["openwrt"])
    put("routeros.rsc", configs["routeros"])
    put("home.json", json.dumps(data, indent=2) + "\n")
    return written
