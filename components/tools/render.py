"""Offline render: everything a stack would generate, written to a folder.

For inspecting a stack before paying for a VPS (and for the lab, which boots these
very files).  Keys in a render are throwaway: they come from a mock engine with no
state, so nothing here is what a real ``pulumi up`` will deploy, but every byte is
produced by the same code."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pulumi
import yaml

from components import providers
from components.model import edge_contract
from components.renderers import bundle
from components.tools import home_files, offline


def _write(path: Path, text: str, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if private:
        home_files.write_private(path, text.encode())
    else:
        path.write_text(text)
    return path


RENDER_MARKER = "cgnatEdgeRender"
"""A key of a render's outputs.json and of no program output: ``status`` refuses those
outputs, whose addresses are the mock engine's."""

SERVER_TYPES = {p.server_resource_type for p in providers.REGISTRY.values()}


def _user_data(run: offline.Run) -> dict[str, str]:
    out = {}
    for r in run.resources:
        if r.type in SERVER_TYPES:
            edge = r.parent.rsplit("::", 1)[-1]
            provider = providers.for_resource_type(r.type)
            assert provider is not None, r.type
            out[edge] = provider.user_data(offline.reveal(r.inputs))
    return out


def _bundles(run: offline.Run) -> dict[str, str]:
    """Each edge's push bundle: the stdin of its ``<edge>-config`` step."""
    return {
        r.name.removesuffix("-config"): offline.reveal(r.inputs.get("stdin", ""))
        for r in run.resources
        if r.type == "command:remote:Command" and r.name.endswith("-config")
    }


def file_content(entry: dict) -> str:
    """A ``write_files`` entry's text as it lands on disk: big files travel gzipped in
    the cloud-config (see ``bootstrap.PLAIN_TEXT_BUDGET``) and cloud-init decodes them."""
    content = entry.get("content", "")
    encoding = entry.get("encoding", "text/plain")
    if encoding in ("gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        return gzip.decompress(base64.b64decode(content)).decode()
    if encoding in ("b64", "base64"):
        return base64.b64decode(content).decode()
    if encoding in ("gz", "gzip"):
        raise ValueError(f"{entry.get('path')}: raw gzip content cannot travel in YAML text")
    return content


def resource_table(run: offline.Run) -> list[dict]:
    return [
        {
            "type": r.type,
            "name": r.name,
            "urn": r.urn,
            "parent": r.parent,
            "inputs": offline.masked(r.inputs),
            "ignoreChanges": r.ignore_changes,
        }
        for r in sorted(run.resources, key=lambda r: r.urn)
    ]


def _asset(value: object) -> dict[str, str]:
    """A file the program hands Pulumi as an asset (the GeoIP database): named by its path,
    as the copy step reads it, not embedded."""
    if isinstance(value, pulumi.FileAsset):
        return {"fileAsset": str(value.path)}
    raise TypeError(f"{type(value).__name__} is not something a render can write")


def write(run: offline.Run, out: Path, show_secrets: bool = False) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    resources = resource_table(run)
    written.append(
        _write(out / "resources.json", json.dumps(resources, indent=2, sort_keys=True, default=_asset) + "\n")
    )
    lines = [f"{r['type']:<62} {r['name']:<36} {r['parent'].rsplit('::', 1)[-1]}" for r in resources]
    written.append(_write(out / "resources.txt", "\n".join(lines) + "\n"))
    shown = offline.reveal(run.outputs) if show_secrets else offline.masked(run.outputs)
    shown = {**shown, RENDER_MARKER: {"project": run.project, "stack": run.stack}}
    written.append(
        _write(out / "outputs.json", json.dumps(shown, indent=2, sort_keys=True) + "\n", private=show_secrets)
    )
    written.append(_write(out / "secret_outputs.json", json.dumps(run.secret_outputs()) + "\n"))

    for edge, user_data in sorted(_user_data(run).items()):
        node = out / "nodes" / edge
        written.append(_write(node / "user-data.yaml", user_data, private=True))
        doc = yaml.safe_load(user_data.split("\n", 1)[1]) if user_data.startswith("#cloud-config") else {}
        for entry in doc.get("write_files", []) if isinstance(doc, dict) else []:
            written.append(_write(node / "files" / entry["path"].lstrip("/"), file_content(entry), private=True))

    # What a push puts on each running edge (MANIFEST: mode, owner, path), unpacked.
    for edge, pushed in sorted(_bundles(run).items()):
        files = bundle.decode(pushed)
        written.append(
            _write(out / "nodes" / edge / "bundle" / edge_contract.BUNDLE_MANIFEST, bundle.manifest(files), True)
        )
        for f in files:
            written.append(_write(out / "nodes" / edge / "bundle" / bundle.member(f.path), f.content, private=True))

    dns = run.output("dns")
    written.append(_write(out / "dns" / "records.json", json.dumps(dns["records"], indent=2) + "\n"))
    written.append(_write(out / "dns" / "zone-fragment.db", dns["bind"]))
    written.append(_write(out / "dns" / "powerdns-lua.db", dns["powerdnsLua"]))
    written.append(
        _write(out / "dns" / "route53-change-batch.json", json.dumps(dns["route53ChangeBatch"], indent=2) + "\n")
    )
    written.append(
        _write(out / "dns" / "route53-health-checks.json", json.dumps(dns["route53HealthChecks"], indent=2) + "\n")
    )
    if "edgeServed" in dns:  # dnsMode edges: what the parent zone (or registrar) must hold
        written.append(_write(out / "dns" / "delegation.db", dns["edgeServed"]["delegationZoneFile"]))

    written += home_files.write({"homeConfigs": run.output("homeConfigs")}, out / "home", qr=False)
    return written


def render(
    stack_file: Path, out: Path, show_secrets: bool = False, project_file: Path | None = None
) -> tuple[offline.Run, list[Path]]:
    run = offline.run_program(stack_file, project_file=project_file)
    return run, write(run, out, show_secrets)
