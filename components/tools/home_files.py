"""Writes the home-side configs out of the stack outputs, as files only their owner can read.

The configs carry the home private key, so they only ever reach disk here, and only
with mode 0600: every file is written into a private staging folder first and renamed
into place, so there is no moment where a key is readable by others (see ``write``).
The outputs are input like any other: a saved copy can be edited, so every name in it
is checked before it becomes part of a file name.
"""

from __future__ import annotations

import contextlib
import errno
import io
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from components.config.parser import NAME_RE, NAME_RULE
from components.model.road_warriors import INTERFACE as ROAD_WARRIOR_INTERFACE
from components.renderers import metrics_home
from components.renderers.tunnel import IFNAMSIZ

OUTPUT_KEY = "homeConfigs"
PULUMI_STACK_OUTPUT = ("pulumi", "stack", "output", "--json", "--show-secrets")
_OR_SAVED = (
    "or pass a saved copy of the outputs: run `pulumi stack output --json --show-secrets > outputs.json` "
    "where Pulumi works and give that file (or `-` to read it from stdin)"
)
_REREAD = (
    "was the file edited, or made by another version? Read the outputs again from the deployed stack "
    "(`pulumi stack select <stack>`, `pulumi stack output --json --show-secrets`), after `pulumi up` with this version"
)
_INTERFACE_RE = re.compile(rf"[a-z][a-z0-9-]{{0,{IFNAMSIZ - 1}}}")


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


def _kind(value: Any) -> str:
    """The JSON name of ``value``'s type, as the user sees it in the outputs file."""
    if isinstance(value, bool):
        return "true/false"
    names = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    """A bad value quoted so that a line break, a NUL or a megabyte stays one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + "...'"


def _bad(field: str, problem: str) -> HomeConfigError:
    return HomeConfigError(f"{OUTPUT_KEY}{'.' if field else ''}{field}: {problem}; {_REREAD}")


def _member(obj: dict, key: str, field: str) -> Any:
    if key not in obj:
        raise _bad(f"{field}.{key}" if field else key, "is missing")
    return obj[key]


def _object(value: Any, field: str, holds: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(field, f"must be an object ({holds}), got {_kind(value)}")
    return value


def _name(value: Any, field: str, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise _bad(field, f"{_shown(value)} is not a valid {what} name ({NAME_RULE})")
    return value


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise _bad(field, f"must be the text of a config file, got {_kind(value)}")
    try:
        value.encode()
    except UnicodeEncodeError:  # JSON can spell a lone surrogate, which no file can hold
        raise _bad(field, "is not UTF-8 text") from None
    return value


def _endpoint(value: Any, field: str) -> None:
    """An edge's metrics endpoint: it is written into the scrape config."""
    host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    try:
        ipaddress.ip_address(host)
        ok = port.isdigit() and 0 < int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        raise _bad(field, f"{_shown(value)} is not an IPv4 address and port (address:port)")


def _checked(configs: Any) -> dict:
    """``configs`` once every field the files are made of has its type, and every name
    that becomes part of a file name is an edge or device name as the config allows
    them (or a Linux interface name): a name from the outputs can then never be ``..``,
    an absolute path, or carry a ``/``, a NUL or a line break."""
    configs = _object(configs, "", "structured, wgQuick, openwrt, routeros")
    structured = _object(_member(configs, "structured", ""), "structured", "the structured form")
    tunnels = _member(structured, "tunnels", "structured")
    if not isinstance(tunnels, list):
        raise _bad("structured.tunnels", f"must be an array (one tunnel per edge), got {_kind(tunnels)}")
    interfaces: dict[str, str] = {}
    for i, tunnel in enumerate(tunnels):
        field = f"structured.tunnels[{i}]"
        tunnel = _object(tunnel, field, "edge, interface, ...")
        edge = _name(_member(tunnel, "edge", field), f"{field}.edge", "edge")
        interface = _member(tunnel, "interface", field)
        if not isinstance(interface, str) or not _INTERFACE_RE.fullmatch(interface):
            raise _bad(
                f"{field}.interface",
                f"{_shown(interface)} is not a Linux interface name (at most {IFNAMSIZ} lowercase letters, "
                "digits or hyphens, starting with a letter)",
            )
        if edge in interfaces:
            raise _bad(f"{field}.edge", f"edge {edge!r} has a tunnel already; every edge has one")
        if interface in interfaces.values():
            raise _bad(
                f"{field}.interface", f"{interface!r} is another edge's interface already; every edge has its own"
            )
        interfaces[edge] = interface
        if "metrics" in tunnel:
            _endpoint(tunnel["metrics"], f"{field}.metrics")
    for edge, text in _object(_member(configs, "wgQuick", ""), "wgQuick", "a wg-quick file per edge").items():
        _name(edge, "wgQuick", "edge")
        if edge not in interfaces:
            raise _bad(f"wgQuick.{edge}", "has no tunnel in structured.tunnels")
        _text(text, f"wgQuick.{edge}")
    for key in ("openwrt", "routeros"):
        _text(_member(configs, key, ""), key)
    if configs.get("wgQuickRoadWarriors") is not None:
        _text(configs["wgQuickRoadWarriors"], "wgQuickRoadWarriors")
    devices = _object(configs.get("roadWarriors", {}), "roadWarriors", "a wg-quick file per device and edge")
    for device, per_edge in devices.items():
        _name(device, "roadWarriors", "road warrior")
        per_edge = _object(per_edge, f"roadWarriors.{device}", "a wg-quick file per edge")
        for edge, text in per_edge.items():
            _name(edge, f"roadWarriors.{device}", "edge")
            _text(text, f"roadWarriors.{device}.{edge}")
    return configs


def load(source: dict | str | os.PathLike) -> dict:
    """The ``homeConfigs`` output out of ``source``: the parsed JSON of ``pulumi stack
    output --json --show-secrets``, a path to such a file, or a render folder; every
    field checked before anything is written from it."""
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
    return _checked(configs)


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


def _qr_png_if_it_fits(text: str) -> bytes | None:
    import segno

    try:
        return qr_png(text)
    except segno.DataOverflowError:
        return None


def qr_terminal(text: str) -> str:
    """The same QR code as UTF-8 half blocks, to scan straight off a terminal."""
    import segno

    buf = io.StringIO()
    segno.make(text, error="l").terminal(out=buf, compact=True)
    return buf.getvalue()


def _files(configs: dict, qr: bool) -> dict[str, bytes]:
    """Every file's name and content, made in memory before the first one is written."""
    interfaces = {t["edge"]: t["interface"] for t in configs["structured"]["tunnels"]}
    files: dict[str, bytes] = {}

    def put(name: str, text: str) -> None:
        if f"{name}.conf" in files:  # road-warrior-a-b-c: device a-b with edge c, or a with b-c
            raise HomeConfigError(
                f"two configs would both be written as {name}.conf; rename a road warrior or an edge (a device "
                "name followed by an edge name must not read as another device's)"
            )
        files[f"{name}.conf"] = text.encode()
        png = _qr_png_if_it_fits(text) if qr else None
        if png is not None:  # a home with many services and filters outgrows a QR code
            files[f"{name}.png"] = png

    for edge, text in sorted(configs["wgQuick"].items()):
        put(interfaces[edge], text)
    if configs.get("wgQuickRoadWarriors"):
        put(ROAD_WARRIOR_INTERFACE, configs["wgQuickRoadWarriors"])
    for device, per_edge in sorted(configs.get("roadWarriors", {}).items()):
        for edge, text in sorted(per_edge.items()):
            put(f"road-warrior-{device}-{edge}", text)
    files["openwrt.sh"] = configs["openwrt"].encode()
    files["routeros.rsc"] = configs["routeros"].encode()
    files["home.json"] = (json.dumps(configs["structured"], indent=2) + "\n").encode()
    files.update({name: text.encode() for name, text in metrics_home.files(configs["structured"]).items()})
    return files


def _new_folders(folder: Path) -> list[Path]:
    """``folder`` and its missing parents, outermost first, each made as ``mkdir -p``
    would; the caller removes them again if the write fails."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
            break
        missing.append(path)
    for path in reversed(missing):
        path.mkdir()
    return missing[::-1]


def _staging(folder: Path, prefix: str) -> Path:
    """A fresh 0700 folder in ``folder``; an error names ``folder``, not a random name."""
    try:
        return Path(tempfile.mkdtemp(dir=folder, prefix=prefix))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(folder)) from None


def _fill(staging: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        write_private(staging / name, data)


def write(source: dict | str | os.PathLike, out_dir: Path, qr: bool = False) -> list[Path]:
    """Write every home config into ``out_dir`` and return the paths written.

    ``source`` is the parsed JSON of ``pulumi stack output --json --show-secrets``, or
    an offline render directory (its ``outputs.json``), or a path to such a JSON file.

    Every file is first written into a private (0700) staging folder on the same
    filesystem, and nothing reaches ``out_dir`` until all of them are there, so a
    failure leaves ``out_dir`` as it was.  A new ``out_dir`` is that staging folder,
    made beside it and renamed into place whole, so it is 0700 from the start.  An
    ``out_dir`` that exists is the user's: its mode stays (a shared folder keeps its
    sticky bit), files this tool does not write stay, and each file it writes replaces
    the old one by an atomic rename, from a staging folder made inside ``out_dir``
    because only there is a rename sure to stay on one filesystem (the folder may be a
    mount point); those renames are the one step that can stop halfway (a folder where a
    file goes, another user's file in a sticky folder), and every file is then whole,
    old or new.  Replacing rather than refusing a folder with files in it: writing
    the configs again after each ``pulumi up`` is the normal use, often into a folder
    that also holds the user's own things (a ``home.key``, notes), and
    a ``--force`` needed on every run would soon be given without a thought.  A file of
    an edge or device that is gone is left for the user to delete."""
    files = _files(load(source), qr)
    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise HomeConfigError(f"{out_dir} exists and is not a folder; give --out a folder, new or one to update")
        staging = _staging(out_dir, ".cgnat-edge-")
        try:
            _fill(staging, files)
            for name in files:
                os.replace(staging / name, out_dir / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        made = _new_folders(out_dir.parent)
        staging = None
        try:
            staging = _staging(out_dir.parent, f".{out_dir.name}.")
            _fill(staging, files)
            staging.rename(out_dir)
        except BaseException:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            for path in reversed(made):
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise
    return [out_dir / name for name in files]
