"""A corpus of bad stack files, each with the message it must produce.

Every file in ``bad_stacks/`` is ``bad_stacks/base.yaml`` with one thing wrong (or a few),
and holds only what differs: an overlay, merged into the base key by key.  A mapping
merges into the base's mapping; a mapping onto a list of named items (``edges``,
``services``) merges into the item of that ``name``, and a name the list lacks appends
an item of that name; ``!delete`` removes a key or a named item; ``!replace`` takes a
mapping as it is instead of merging it; any other value, lists included, replaces the
base's.  Files in ``bad_stacks/whole/`` are read as they are: what is wrong with them is
their text (YAML syntax, encoding, a duplicate key, a list where the mapping belongs),
which no overlay could carry.

A file's header says what it expects: ``# expect: text`` lines the error must contain
(``# expect-re:`` for a regular expression), ``# problems: N`` how many problems it
reports (one mistake, one line: no echo of it from other keys), and ``# raises:
StackFileError`` when the file cannot even be read as a stack.  A file headed ``# accept:
why`` is the opposite case, a strange but valid stack that must parse without a problem
(the corpus keeps both, so a fix that refuses too much fails here too).  Whatever is wrong, the
error must be one of the two the tools print without a traceback, and every problem must
name its ``cgnat-edge:`` key and a fix."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from components import program
from components.config import ConfigError, stack
from components.config.stack import StackFileError
from components.tools import offline
from tests.support import DEV_STACK, PROJECT, run_program

CORPUS = Path(__file__).resolve().parent / "bad_stacks"
WHOLE = CORPUS / "whole"
FILES = sorted([*CORPUS.glob("Pulumi.*.yaml"), *WHOLE.glob("Pulumi.*.yaml")], key=lambda p: p.name)

DELETE = object()
"""``!delete``: the key or named item is removed from the base."""


class Replace(dict):
    """``!replace``: a mapping taken as it is, where merging would read it as named items."""


class Plain(str):
    """A scalar as written in the overlay (``off``, ``1_380``, ``2024-01-01``), written
    back the same way: the corpus tests how the stack's text is read, so the overlay
    must not read it first."""

    tag = "tag:yaml.org,2002:str"


class _OverlayLoader(yaml.SafeLoader):
    def construct_plain(self, node):
        plain = Plain(node.value)
        plain.tag = node.tag
        return plain


for _tag in ("bool", "int", "float", "null", "timestamp"):
    _OverlayLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _OverlayLoader.construct_plain)


class _CorpusDumper(yaml.SafeDumper):
    pass


_CorpusDumper.add_representer(Plain, lambda dumper, value: dumper.represent_scalar(value.tag, str(value)))


_OverlayLoader.add_constructor("!delete", lambda loader, node: DELETE)
_OverlayLoader.add_constructor("!replace", lambda loader, node: Replace(loader.construct_mapping(node, deep=True)))


def _named(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in value)


def merge(base: Any, overlay: Any) -> Any:
    """``base`` with ``overlay`` applied by the rule in this module's docstring."""
    if isinstance(overlay, dict) and not isinstance(overlay, Replace):
        if isinstance(base, dict):
            merged = dict(base)
            for key, value in overlay.items():
                if value is DELETE:
                    del merged[key]
                else:
                    merged[key] = merge(merged[key], value) if key in merged else value
            return merged
        if base and _named(base):
            items = list(base)
            for name, value in overlay.items():
                index = next((i for i, item in enumerate(items) if item["name"] == name), None)
                if value is DELETE:
                    del items[index]
                elif index is None:
                    items.append({"name": name, **value})
                else:
                    items[index] = merge(items[index], value)
            return items
    return dict(overlay) if isinstance(overlay, Replace) else overlay


def write_corpus(folder: Path) -> None:
    """Every bad stack as the whole stack file it stands for, all side by side in
    ``folder``: a stack may name a file beside it (``dnsGeoipDatabase``)."""
    base = yaml.safe_load((CORPUS / "base.yaml").read_text())
    for path in FILES:
        if path.parent == WHOLE:
            shutil.copyfile(path, folder / path.name)
        else:
            overlay = yaml.load(path.read_text(), Loader=_OverlayLoader)
            merged = merge(base, overlay)
            (folder / path.name).write_text(
                yaml.dump(merged, Dumper=_CorpusDumper, sort_keys=False, allow_unicode=False)
            )


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad_stacks")
    write_corpus(folder)
    return folder


PROVIDER_REGISTRY: set[str] = set()

PROBLEM_RE = re.compile(r"^cgnat-edge:[A-Za-z][A-Za-z0-9]*(\[\d+\]|\.[A-Za-z]+)*: \S.*; \S")
"""``cgnat-edge:key: what is wrong; the fix``."""


def header(path: Path) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        match = re.match(r"# (expect|expect-re|raises|problems|accept): (.*)$", line)
        if match:
            fields.setdefault(match.group(1), []).append(match.group(2))
    return fields


def error_of(path: Path) -> Exception:
    try:
        stack.load(path, project_file=PROJECT).parse()
    except (ConfigError, StackFileError) as exc:
        return exc
    pytest.fail(f"{path.name} was accepted")


REFUSED = [p for p in FILES if "accept" not in header(p)]
ACCEPTED = [p for p in FILES if "accept" in header(p)]


def params(files: list[Path]):
    for path in files:
        name = stack.stack_name(path)
        marks = [pytest.mark.xfail(reason="provider registry", strict=False)] if name in PROVIDER_REGISTRY else []
        yield pytest.param(path, id=name, marks=marks)


def test_corpus_is_large_and_every_file_says_what_it_expects():
    """The base itself is a good stack, so each file fails for what its overlay changes."""
    assert len(FILES) >= 100
    assert stack.load(CORPUS / "base.yaml", project_file=PROJECT).parse().edges
    for path in FILES:
        fields = header(path)
        assert bool(fields.get("expect") or fields.get("expect-re")) != bool(fields.get("accept")), (
            f"{path.name} needs either # expect: lines or one # accept: line"
        )
    assert {stack.stack_name(p) for p in FILES} >= PROVIDER_REGISTRY


def test_overlay_rule():
    base = {"a": 1, "m": {"x": 1, "y": 2}, "items": [{"name": "p", "v": 1}, {"name": "q", "v": 2}]}
    overlay = "a: !delete\nm: {y: three}\nitems:\n  p: {v: nine}\n  q: !delete\n  r: {v: three}\n"
    assert merge(base, yaml.load(overlay, Loader=_OverlayLoader)) == {
        "m": {"x": 1, "y": "three"},
        "items": [{"name": "p", "v": "nine"}, {"name": "r", "v": "three"}],
    }
    replaced = merge(base, yaml.load("items: !replace {p: one}\nm: [one]\n", Loader=_OverlayLoader))
    assert replaced == {"a": 1, "m": ["one"], "items": {"p": "one"}} and type(replaced["items"]) is dict
    assert base["m"] == {"x": 1, "y": 2} and len(base["items"]) == 2, "the base is left as it was"


@pytest.mark.parametrize("path", params(ACCEPTED))
def test_strange_but_valid_stack_is_accepted(path, corpus):
    try:
        stack.load(corpus / path.name, project_file=PROJECT).parse()
    except (ConfigError, StackFileError) as exc:
        pytest.fail(f"{path.name} was refused: {exc}")


@pytest.mark.parametrize("path", params(REFUSED))
def test_bad_stack_is_refused_with_its_message(path, corpus):
    fields = header(path)
    error = error_of(corpus / path.name)
    expected_type = fields.get("raises", ["ConfigError"])[0]
    assert type(error).__name__ == expected_type, f"{type(error).__name__}: {error}"
    message = str(error)
    for text in fields.get("expect", []):
        assert text in message, f"{text!r} not in:\n{message}"
    for pattern in fields.get("expect-re", []):
        assert re.search(pattern, message), f"/{pattern}/ not in:\n{message}"
    if isinstance(error, ConfigError):
        assert error.problems
        for problem in error.problems:
            assert PROBLEM_RE.match(problem), f"not `cgnat-edge:key: problem; fix`: {problem}"
        assert message.count("\n  - ") == len(error.problems)
        if "problems" in fields:
            assert len(error.problems) == int(fields["problems"][0]), message
    else:
        assert str(corpus / path.name) in message, "a stack-file error names the file"
        assert "Traceback" not in message


WHOLE_PROGRAM = [
    "crowdsec-enroll-plain",
    "edge-index-500",
    "ssh-key-garbage",
    "ssh-key-eight-as",
    "ssh-key-comment-cr",
    "ha-one-provider",
    "home-key-all-zero",
    "acme-ca-http",
    "service-target-loopback",
    "lan-loopback",
    "several-problems",
]


@pytest.mark.parametrize("name", WHOLE_PROGRAM)
def test_whole_program_registers_nothing(name, corpus):
    """Through the program as ``pulumi up`` runs it (values as the CLI stores them):
    the same problems, raised as a RunError before a single resource is registered."""
    path = corpus / f"Pulumi.{name}.yaml"
    result, raised = run_program(path)
    assert result.resources == []
    assert len(raised) == 1 and isinstance(raised[0], program.StackConfigError), raised
    assert raised[0].problems == error_of(path).problems


@pytest.mark.parametrize("kind", ["openssh", "wireguard"])
def test_a_pasted_private_key_is_refused_and_never_echoed(kind, tmp_path):
    """Made at run time, so no private key block sits in the repository."""
    from components.model.keys import generate_host_key, generate_keypair

    private = generate_host_key()[0] if kind == "openssh" else generate_keypair()[0] + " x"
    data = yaml.safe_load(DEV_STACK.read_text())
    data["config"]["cgnat-edge:sshPublicKeys"] = [private]
    path = tmp_path / "Pulumi.pasted.yaml"
    path.write_text(yaml.safe_dump(data))
    error = error_of(path)
    assert isinstance(error, ConfigError) and len(error.problems) == 1
    expected = (
        "it is a PRIVATE key, which must never leave your machine"
        if kind == "openssh"
        else "no key type (use ssh-ed25519"
    )
    assert error.problems[0].startswith("cgnat-edge:sshPublicKeys[0]: is not an OpenSSH public key: ")
    assert expected in error.problems[0]
    body = private.split()[0] if kind == "wireguard" else private.splitlines()[1]
    assert body not in str(error)


SPELLINGS = {
    "yaml11-crowdsec-off": lambda cfg: cfg.protection.crowdsec.value == "off",
    "yaml11-ipv6-no": lambda cfg: cfg.tunnel.ipv6_prefix is None,
    "yaml11-ha-yes": lambda cfg: cfg.ha is True,
    "yaml11-road-warrior-internet-no": lambda cfg: cfg.road_warriors.peers[0].internet is False,
    "yaml11-road-warrior-internet-quoted": lambda cfg: cfg.road_warriors.peers[0].internet is True,
    "num-index-quoted": lambda cfg: [e.index for e in cfg.edges] == [1, 2],
    "binary-email": lambda cfg: cfg.acme.email == "admin@example.org",
    "yaml-anchors-merge": lambda cfg: (
        [(e.name, e.provider) for e in cfg.edges] == [("fsn", "hetzner"), ("ams", "digitalocean")]
    ),
}


@pytest.mark.parametrize("name", SPELLINGS)
def test_a_spelling_means_the_same_to_render_and_to_pulumi_up(name, corpus):
    """The program under ``pulumi up`` gets each value as the text the CLI passes;
    ``render``, ``policy`` and the lab read the stack file.  Both readings give the
    same typed config, and the spelling means what it says."""
    path = corpus / f"Pulumi.{name}.yaml"
    read = stack.load(path, project_file=PROJECT).parse()
    assert SPELLINGS[name](read), read
    seen = []
    offline.run_program(path, program=lambda: seen.append(program.read_config()), project_file=PROJECT)
    assert seen == [read]
