"""A corpus of bad stack files, each with the message it must produce.

Every file in ``bad_stacks/`` is the example stack with one thing wrong (or a few).
Its header says what: ``# expect: text`` lines the error must contain (``# expect-re:``
for a regular expression), ``# problems: N`` how many problems it reports (one mistake,
one line: no echo of it from other keys), and ``# raises: StackFileError`` when the file
cannot even be read as a stack.  Whatever is wrong, the error must be one of the two the tools print
without a traceback, and every problem must name its ``cgnat-edge:`` key and a fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from components import program
from components.config import ConfigError, stack
from components.config.stack import StackFileError
from components.tools import offline

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "bad_stacks"
FILES = sorted(CORPUS.glob("Pulumi.*.yaml"))

PROVIDER_REGISTRY: set[str] = set()

PROBLEM_RE = re.compile(r"^cgnat-edge:[A-Za-z][A-Za-z0-9]*(\[\d+\]|\.[A-Za-z]+)*: \S.*; \S")
"""``cgnat-edge:key: what is wrong; the fix``."""


def header(path: Path) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        match = re.match(r"# (expect|expect-re|raises|problems): (.*)$", line)
        if match:
            fields.setdefault(match.group(1), []).append(match.group(2))
    return fields


def error_of(path: Path) -> Exception:
    try:
        stack.load(path, project_file=ROOT / "Pulumi.yaml").parse()
    except (ConfigError, StackFileError) as exc:
        return exc
    pytest.fail(f"{path.name} was accepted")


def params():
    for path in FILES:
        name = stack.stack_name(path)
        marks = [pytest.mark.xfail(reason="provider registry", strict=False)] if name in PROVIDER_REGISTRY else []
        yield pytest.param(path, id=name, marks=marks)


def test_corpus_is_large_and_every_file_says_what_it_expects():
    assert len(FILES) >= 100
    for path in FILES:
        fields = header(path)
        assert fields.get("expect") or fields.get("expect-re"), f"{path.name} has no # expect: line"
    assert {stack.stack_name(p) for p in FILES} >= PROVIDER_REGISTRY


@pytest.mark.parametrize("path", params())
def test_bad_stack_is_refused_with_its_message(path):
    fields = header(path)
    error = error_of(path)
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
        assert str(path) in message, "a stack-file error names the file"
        assert "Traceback" not in message


WHOLE_PROGRAM = [
    "crowdsec-enroll-plain",
    "edge-index-500",
    "ssh-key-garbage",
    "ssh-key-eight-as",
    "ha-one-provider",
    "home-key-all-zero",
    "acme-ca-http",
    "service-target-loopback",
    "lan-loopback",
    "several-problems",
]


@pytest.mark.parametrize("name", WHOLE_PROGRAM)
def test_whole_program_registers_nothing(name):
    """Through the program as ``pulumi up`` runs it (values as the CLI stores them):
    the same problems, raised as a RunError before a single resource is registered."""
    path = CORPUS / f"Pulumi.{name}.yaml"
    raised: list[Exception] = []

    def run() -> None:
        try:
            program.main()
        except Exception as exc:  # kept to count what was registered before it
            raised.append(exc)

    result = offline.run_program(path, program=run, project_file=ROOT / "Pulumi.yaml")
    assert result.resources == []
    assert len(raised) == 1 and isinstance(raised[0], program.StackConfigError), raised
    assert raised[0].problems == error_of(path).problems


@pytest.mark.parametrize("kind", ["openssh", "wireguard"])
def test_a_pasted_private_key_is_refused_and_never_echoed(kind, tmp_path):
    """Made at run time, so no private key block sits in the repository."""
    import yaml

    from components.model.keys import generate_host_key, generate_keypair

    private = generate_host_key()[0] if kind == "openssh" else generate_keypair()[0] + " x"
    data = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
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
