"""The push bundle: what the ``<edge>-config`` step pipes into ``cloud-init/push.sh``.

Base64 of a tar.gz holding the MANIFEST and each file under ``files/<path>``
(``edge_contract.BUNDLE_MANIFEST``, ``BUNDLE_FILES``).  Owners and modes travel in the
MANIFEST, not in tar headers, so the push script applies exactly what the program
declared whatever the extracting tar does."""

from __future__ import annotations

import base64
import gzip
import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

from components.model import edge_contract


@dataclass(frozen=True)
class NodeFile:
    path: str
    content: str
    mode: str = "0644"
    owner: str = "root:root"


def manifest(files: Iterable[NodeFile]) -> str:
    return "".join(f"{f.mode}\t{f.owner}\t{f.path}\n" for f in files)


def member(path: str) -> str:
    """Where the file at ``path`` on the edge sits in the bundle."""
    return f"{edge_contract.BUNDLE_FILES}{path}"


def encode(files: list[NodeFile]) -> str:
    raw = io.BytesIO()
    # Fixed timestamps and names: the same files give the same bundle, so Pulumi sees
    # no change (and pushes nothing) until a file really changes.
    with (
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        members = [(edge_contract.BUNDLE_MANIFEST, manifest(files).encode())]
        members += [(member(f.path), f.content.encode()) for f in files]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(raw.getvalue()).decode()


def decode(bundle: str) -> list[NodeFile]:
    """The files of ``bundle``, in MANIFEST order."""
    contents: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(bundle)), mode="r:gz") as tar:
        for info in tar.getmembers():
            data = tar.extractfile(info) if info.isfile() else None
            if data is not None:
                contents[info.name] = data.read().decode()
    entries = [line.split("\t") for line in contents[edge_contract.BUNDLE_MANIFEST].splitlines()]
    return [NodeFile(path, contents[member(path)], mode, owner) for mode, owner, path in entries]
