"""`cgnat-edge`: one parser for every command; each bad input ends in one message on
stderr with the fix and exit status 2, never a traceback, and writes nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from components import cli
from tests.support import DEV_STACK, PROJECT, ROOT

DEV = str(DEV_STACK)
WG_KEY = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
SSH_KEY = re.compile(r"ssh-ed25519 AAAA[A-Za-z0-9+/]+=*|(?:[0-9a-f]{2}:){15}[0-9a-f]{2}")
DIGEST = re.compile(r"\b[0-9a-f]{64}\b")


@pytest.fixture(scope="module")
def secret_render(tmp_path_factory):
    """A render of the dev stack with its secrets, as `home-config` reads it."""
    out = tmp_path_factory.mktemp("render") / "dev"
    assert cli.main(["render", "--stack-file", DEV, "--out", str(out), "--show-secrets"]) == 0
    return out


@pytest.fixture
def outputs_json(secret_render) -> str:
    """What `pulumi stack output --json --show-secrets` prints for the dev stack."""
    return (secret_render / "outputs.json").read_text()


def _fail(capsys, argv: list[str]) -> str:
    """Run a command that must refuse; returns its one-message stderr."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err


# -- one parser ----------------------------------------------------------------------------


def test_every_command_is_a_subcommand_of_one_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert re.findall(r"^    (\S+)", capsys.readouterr().out, re.M) == [
        "render",
        "home-config",
        "policy",
        "package-schema",
        "lab",
        "rehearse",
        "status",
    ]
    for command, option in [
        ("render", "--show-secrets"),
        ("home-config", "--qr-terminal EDGE"),
        ("policy", "--render-dir DIR"),
        ("lab", "--project-dir"),
        ("rehearse", "--cache CACHE"),
        ("status", "--identity FILE"),
    ]:
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert option in capsys.readouterr().out, command


def test_unknown_options_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["home-config", "--stack=dev"])
    assert exc.value.code == 2
    assert "cgnat-edge: error: unrecognized arguments: --stack=dev" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["render", "--stack", "dev", "--stack-file", DEV])
    assert exc.value.code == 2
    assert "argument --stack-file: not allowed with argument --stack" in capsys.readouterr().err


# -- stack selection -----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["render", "policy", "lab"])
def test_an_unknown_stack_names_the_folder_and_the_stacks_there(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _fail(capsys, [command, "--stack", "staging", "--project-dir", str(ROOT)])
    assert err == (
        f"cgnat-edge {command}: no stack file Pulumi.staging.yaml in {ROOT} (stacks there: dev, prod); "
        "pass --stack NAME, --stack-file PATH, or --project-dir for the folder that holds Pulumi.yaml\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_the_default_stack_is_searched_in_the_working_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _fail(capsys, ["render"])
    assert f"no stack file Pulumi.dev.yaml in {tmp_path} (no Pulumi.<stack>.yaml there at all)" in err
    assert list(tmp_path.iterdir()) == []


def test_a_stack_file_indented_with_tabs(tmp_path, capsys):
    (tmp_path / "Pulumi.yaml").write_text(PROJECT.read_text())
    stack = tmp_path / "Pulumi.tabs.yaml"
    stack.write_text("config:\n\tcgnat-edge:domain: example.org\n")
    err = _fail(capsys, ["render", "--stack-file", str(stack), "--out", str(tmp_path / "out")])
    assert err.startswith(f"cgnat-edge render: {stack} is not valid YAML at line 2, column 1: ")
    assert "(YAML does not allow tabs for indentation; indent with spaces); fix the file and run again\n" in err
    assert not (tmp_path / "out").exists()


def test_a_stack_file_without_a_project_beside_it(tmp_path, capsys, monkeypatch):
    stack = tmp_path / "Pulumi.dev.yaml"
    stack.write_text(DEV_STACK.read_text())
    monkeypatch.chdir(tmp_path)  # no project here either
    err = _fail(capsys, ["policy", "--stack-file", str(stack)])
    assert err == (
        f"cgnat-edge policy: {tmp_path / 'Pulumi.yaml'} does not exist; run from the project folder "
        "(the one holding Pulumi.yaml) or pass --project-dir\n"
    )


def test_a_stack_file_elsewhere_belongs_to_the_project_in_the_current_folder(capsys, monkeypatch):
    """As the README runs the lab: from the project folder, with the fixture in tests/."""
    monkeypatch.chdir(ROOT)
    assert cli.main(["policy", "--stack-file", "tests/fixtures/Pulumi.lab.yaml"]) == 0
    assert capsys.readouterr().out.startswith("policy: stack lab (")


def test_project_dir_gives_the_project_for_a_stack_file_elsewhere(tmp_path, capsys):
    stack = tmp_path / "Pulumi.dev.yaml"
    stack.write_text(DEV_STACK.read_text())
    assert cli.main(["policy", "--stack-file", str(stack), "--project-dir", str(ROOT)]) == 0
    assert capsys.readouterr().out.startswith("policy: stack dev (27 resources, 4 outputs): no violations")


def test_a_config_error_is_the_message_alone(tmp_path, capsys):
    (tmp_path / "Pulumi.yaml").write_text(PROJECT.read_text())
    data = yaml.safe_load(DEV_STACK.read_text())
    data["config"]["cgnat-edge:tunnelMtu"] = 9000
    (tmp_path / "Pulumi.bad.yaml").write_text(yaml.safe_dump(data))
    err = _fail(capsys, ["policy", "--stack", "bad", "--project-dir", str(tmp_path)])
    assert err.startswith("cgnat-edge: the stack configuration has 1 problem(s); nothing was created:\n")
    assert "  - cgnat-edge:tunnelMtu: 9000 is out of range" in err


# -- home-config ---------------------------------------------------------------------------


def _path_with(tmp_path, script: str | None) -> str:
    """A PATH that holds only a stand-in `pulumi` (or none at all)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if script is not None:
        (bin_dir / "pulumi").write_text("#!/bin/sh\n" + script)
        (bin_dir / "pulumi").chmod(0o755)
    return str(bin_dir)


def test_home_config_without_the_pulumi_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", _path_with(tmp_path, None))
    err = _fail(capsys, ["home-config", "--out", str(tmp_path / "home")])
    assert err == (
        "cgnat-edge home-config: the Pulumi CLI is not installed (no `pulumi` on PATH), so the stack outputs "
        "cannot be read; install it (https://www.pulumi.com/docs/install/), or pass a saved copy of the outputs: "
        "run `pulumi stack output --json --show-secrets > outputs.json` where Pulumi works and give that file "
        "(or `-` to read it from stdin)\n"
    )
    assert not (tmp_path / "home").exists()


def test_home_config_asks_the_pulumi_cli(tmp_path, capsys, monkeypatch, outputs_json):
    saved = tmp_path / "saved.json"
    saved.write_text(outputs_json)
    monkeypatch.setenv(
        "PATH", _path_with(tmp_path, f'[ "$*" = "stack output --json --show-secrets" ] && exec /bin/cat {saved}')
    )
    assert cli.main(["home-config", "--out", str(tmp_path / "home")]) == 0
    assert (tmp_path / "home" / "wg-fsn.conf").read_text() == json.loads(outputs_json)["homeConfigs"]["wgQuick"]["fsn"]


def test_home_config_when_the_pulumi_cli_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", _path_with(tmp_path, "echo 'error: no stack selected' >&2; exit 255"))
    err = _fail(capsys, ["home-config", "--out", str(tmp_path / "home")])
    assert err.startswith(
        "cgnat-edge home-config: `pulumi stack output --json --show-secrets` failed: error: no stack selected; "
        "select the deployed stack (`pulumi stack select NAME`), or pass a saved copy of the outputs"
    )
    assert not (tmp_path / "home").exists()


def test_home_config_when_the_pulumi_cli_prints_no_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", _path_with(tmp_path, "echo 'warning: a newer version of Pulumi is available'"))
    err = _fail(capsys, ["home-config", "--out", str(tmp_path / "home")])
    assert err.startswith(
        "cgnat-edge home-config: the output of `pulumi stack output --json --show-secrets` is not JSON "
        "(line 1, column 1: Expecting value)"
    )


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("", "stdin is empty; pass what `pulumi stack output --json --show-secrets` prints"),
        (
            "homeConfigs: {}",
            "stdin is not JSON (line 1, column 1: Expecting value); pass what "
            "`pulumi stack output --json --show-secrets` prints, or a render folder made with --show-secrets",
        ),
        ('{"homeConfigs": {"structured": ', "stdin is not JSON (line 1, column 32: Expecting value)"),
        ("[1, 2]", "no 'homeConfigs' output found; is this the output of `pulumi stack output --json --show-secrets`"),
        ('{"homeConfigs": "[secret]"}', "homeConfigs is hidden; add --show-secrets to `pulumi stack output --json`"),
        ('{"homeConfigs": "{oops"}', "the homeConfigs output is not JSON (line 1, column 2"),
        ('{"homeConfigs": 7}', "homeConfigs: must be an object (structured, wgQuick, openwrt, routeros), got a number"),
        (
            '{"homeConfigs": {"structured": {}, "wgQuick": {}, "openwrt": "", "routeros": ""}}',
            "homeConfigs.structured.tunnels: is missing; was the file edited, or made by another version?",
        ),
    ],
)
def test_home_config_from_stdin_that_is_not_the_outputs(stdin, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(stdin))
    err = _fail(capsys, ["home-config", "-", "--out", str(tmp_path / "home")])
    assert err.startswith(f"cgnat-edge home-config: {message}")
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\xff", b"not json at all\n"])
def test_home_config_from_a_file_that_is_not_json(content, tmp_path, capsys):
    saved = tmp_path / "outputs.txt"
    saved.write_bytes(content)
    err = _fail(capsys, ["home-config", str(saved), "--out", str(tmp_path / "home")])
    assert err.startswith(f"cgnat-edge home-config: {saved} is not JSON")
    assert not (tmp_path / "home").exists()


def test_home_config_from_a_file_that_does_not_exist(tmp_path, capsys):
    err = _fail(capsys, ["home-config", str(tmp_path / "nope.json"), "--out", str(tmp_path / "home")])
    assert err == (
        f"cgnat-edge home-config: {tmp_path / 'nope.json'} does not exist; render the stack first or pass "
        "the output of `pulumi stack output --json --show-secrets`\n"
    )


def test_qr_terminal_for_an_unknown_edge_writes_nothing(secret_render, tmp_path, capsys):
    err = _fail(capsys, ["home-config", str(secret_render), "--out", str(tmp_path / "home"), "--qr-terminal", "nosuch"])
    assert err == "cgnat-edge home-config: no edge 'nosuch'; edges are ams, fsn\n"
    assert not (tmp_path / "home").exists()


def test_qr_terminal_prints_the_code_after_the_files(secret_render, tmp_path, capsys):
    assert cli.main(["home-config", str(secret_render), "--out", str(tmp_path / "home"), "--qr-terminal", "fsn"]) == 0
    out = capsys.readouterr().out
    listed, qr = out.split("routeros.rsc\n")[0], out.split("home.json\n")[1]
    assert str(tmp_path / "home" / "wg-fsn.conf") in listed
    assert {"█", "▀", "▄"} & set(qr) and len(qr.splitlines()) > 20


def test_an_unwritable_out_is_a_message(secret_render, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = _fail(capsys, ["home-config", str(secret_render), "--out", str(blocker / "home")])
    assert err == f"cgnat-edge home-config: {blocker}: Not a directory\n"
    assert blocker.read_text() == ""


def test_the_installed_command_prints_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "components.cli", "home-config", "-", "--out", str(tmp_path / "home")],
        input="garbage",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("cgnat-edge home-config: stdin is not JSON (line 1, column 1: Expecting value)")
    assert len(done.stderr.splitlines()) == 1


# -- lab -----------------------------------------------------------------------------------


def test_lab_without_root_says_how_to_run_it(capsys, monkeypatch):
    from components.lab import runner

    monkeypatch.setattr(runner.os, "geteuid", lambda: 1000)
    err = _fail(capsys, ["lab", "--stack", "dev", "--project-dir", str(ROOT)])
    assert err.startswith("cgnat-edge lab: the lab needs root for network namespaces; ")
    assert "sudo .venv/bin/cgnat-edge lab" in err


# -- what a render writes ------------------------------------------------------------------


def _whole_floats(text: str) -> list[float]:
    found: list[float] = []
    json.loads(text, parse_float=lambda s: found.append(float(s)) or float(s))
    return [f for f in found if f.is_integer()]


@pytest.mark.parametrize(
    "name", ["home/home.json", "dns/records.json", "dns/route53-change-batch.json", "outputs.json", "resources.json"]
)
def test_rendered_numbers_stay_integers(secret_render, name):
    text = (secret_render / name).read_text()
    assert _whole_floats(text) == []
    if name == "home/home.json":
        assert json.loads(text)["forwardAllow"][0]["port"] == 443 and '"port": 443,' in text
    if name == "dns/records.json":
        assert {r["ttl"] for r in json.loads(text)} == {60}


def _keys_aside(text: str) -> str:
    # pushedFiles: digests of files that hold keys change with the keys.
    return DIGEST.sub("DIGEST", SSH_KEY.sub("SSH-KEY", WG_KEY.sub("KEY", text)))


def test_a_render_is_the_same_every_run_keys_aside(secret_render, tmp_path):
    again = tmp_path / "again"
    assert cli.main(["render", "--stack-file", DEV, "--out", str(again), "--show-secrets"]) == 0
    for name in ("home/home.json", "dns/records.json", "outputs.json", "resources.json"):
        first, second = ((d / name).read_text() for d in (secret_render, again))
        assert _keys_aside(first) == _keys_aside(second), name
