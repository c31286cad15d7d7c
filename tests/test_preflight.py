"""What the program refuses right after parsing, before its first resource: a provider
SDK this installation lacks, and user-data over its provider's limit.  The program under
the mocks, the render and the policy check each refuse such a stack as a config problem,
with nothing registered and no traceback."""

from __future__ import annotations

import copy
import re
import sys

import pytest
import yaml

from components import cli, preflight, program
from components.config import stack
from components.model import platforms
from components.providers import oracle
from components.tools import offline, render
from tests.support import DEV_STACK, PROD_STACK, ROOT, run_program

SDK_PROBLEM = re.compile(
    r"cgnat-edge:edges\[3\]\.provider: edge 'ams' is on Oracle Cloud, whose Pulumi SDK \(pulumi_oci, an optional "
    r"extra\) cannot be imported here \(.+\); install it with `uv sync --extra oracle` "
    r"\(pip: `pip install 'cgnat-edge\[oracle\]'`\)"
)
"""The prod stack's fourth edge, ``ams``, is its Oracle one."""


@pytest.fixture
def registered(monkeypatch) -> list[str]:
    """The names of the resources the mock engine is asked to create."""
    created: list[str] = []
    monkeypatch.setattr(offline.CloudMocks, "new_resource", lambda _self, args: created.append(args.name))
    return created


@pytest.fixture
def without_oci(monkeypatch) -> None:
    """``import pulumi_oci`` raises ImportError, as where the extra is not installed."""
    monkeypatch.setitem(sys.modules, "pulumi_oci", None)


def _refused(capsys, argv: list[str]) -> list[str]:
    """The problems a command prints when it refuses the stack."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    head, *problems = err.splitlines()
    assert head == f"cgnat-edge: the stack configuration has {len(problems)} problem(s); nothing was created:", err
    return [p.removeprefix("  - ") for p in problems]


# -- a provider SDK that is not installed --------------------------------------------------


def test_the_program_without_the_oracle_sdk_registers_nothing(without_oci):
    run, raised = run_program(PROD_STACK)
    assert run.resources == []
    assert len(raised) == 1 and isinstance(raised[0], program.StackConfigError), raised
    [problem] = raised[0].problems
    assert SDK_PROBLEM.fullmatch(problem), problem


@pytest.mark.parametrize("command", ["render", "policy"])
def test_render_and_policy_without_the_oracle_sdk_name_the_extra(command, without_oci, registered, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [command, "--stack-file", str(PROD_STACK), *(["--out", str(out)] if command == "render" else [])]
    [problem] = _refused(capsys, argv)
    assert SDK_PROBLEM.fullmatch(problem), problem
    assert registered == [] and not out.exists()


def test_only_a_stack_with_an_oracle_edge_needs_its_sdk():
    asked: list[str] = []

    def missing(name: str) -> None:
        asked.append(name)
        raise ModuleNotFoundError(f"No module named {name!r}")

    assert preflight.missing_sdks(stack.load(DEV_STACK).parse(), missing) == []
    assert asked == []
    [problem] = preflight.missing_sdks(stack.load(PROD_STACK).parse(), missing)
    assert asked == ["pulumi_oci"] and SDK_PROBLEM.fullmatch(problem)
    assert "(No module named 'pulumi_oci')" in problem
    assert preflight.missing_sdks(stack.load(PROD_STACK).parse()) == [], "the test environment has the extra"


# -- user-data over the provider's limit ---------------------------------------------------


def _services(n: int) -> list[dict]:
    """The dev stack's services and ``n`` more TCP services, each on a port of its own:
    what grows the user-data (the first boot's ruleset and Traefik's entrypoints; the
    routers arrive with the first push)."""
    services = copy.deepcopy(stack.load(DEV_STACK).raw()["services"])
    for i in range(n):
        services.append(
            {"name": f"s{i}", "mode": "tcp", "port": 10000 + i, "target": f"192.168.1.{10 + i % 200}:{8000 + i}"}
        )
    return services


USER_DATA_PROBLEM = re.compile(
    r"cgnat-edge:services: the user-data of edge 'fsn' would be (\d+) bytes, over the 32768-byte user-data limit of "
    r"Hetzner Cloud by (\d+) bytes \((\d+) services\); declare fewer services or split the "
    r"services over two stacks"
)


def test_user_data_over_the_limit_registers_nothing():
    """2000 more services: over Hetzner's 32 KiB for ``fsn``, still under DigitalOcean's
    64 KiB for ``ams``, so only ``fsn`` is named."""
    run, raised = run_program(DEV_STACK, config_overrides={"services": _services(2000)})
    assert run.resources == []
    assert len(raised) == 1 and isinstance(raised[0], program.StackConfigError), raised
    [problem] = raised[0].problems
    match = USER_DATA_PROBLEM.fullmatch(problem)
    assert match, problem
    size, over, count = map(int, match.groups())
    assert size > 32768 and size - over == 32768 and count == 2005


@pytest.mark.parametrize("command", ["render", "policy"])
def test_render_and_policy_refuse_oversized_user_data_without_a_traceback(command, registered, tmp_path, capsys):
    data = yaml.safe_load(DEV_STACK.read_text())
    data["config"]["cgnat-edge:services"] = _services(2000)
    path = tmp_path / "Pulumi.big.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "out"
    argv = [command, "--stack-file", str(path), "--project-dir", str(ROOT)]
    [problem] = _refused(capsys, argv + (["--out", str(out)] if command == "render" else []))
    assert USER_DATA_PROBLEM.fullmatch(problem), problem
    assert registered == [] and not out.exists()


def test_the_size_checked_is_the_size_deployed(dev_run, prod_run, monkeypatch):
    """The throwaway keys make user-data of the deployed size: a limit one byte under the
    edge's real user-data refuses it, naming that size; the real size itself passes."""
    deployed = render._user_data(dev_run)["fsn"]
    size = len(deployed.encode())
    cfg = stack.load(DEV_STACK).parse()
    hetzner = platforms.get("hetzner")
    monkeypatch.setattr(hetzner, "user_data_limit", size)
    assert preflight.oversized_user_data(cfg) == []
    monkeypatch.setattr(hetzner, "user_data_limit", size - 1)
    [problem] = preflight.oversized_user_data(cfg)
    assert problem.startswith(f"cgnat-edge:services: the user-data of edge 'fsn' would be {size} bytes, over the ")

    # Oracle counts its gzipped metadata, where random keys pack to a few bytes more or less.
    server = prod_run.one(oracle.PROVIDER.server_resource_type, "ams-instance")
    metadata = oracle.metadata_size(offline.reveal(server.inputs)["metadata"])
    monkeypatch.undo()
    monkeypatch.setattr(oracle, "METADATA_LIMIT", metadata - 64)
    [problem] = preflight.oversized_user_data(stack.load(PROD_STACK).parse())
    found = re.fullmatch(
        r"cgnat-edge:services: the instance metadata of edge 'ams' \(gzipped user-data and SSH keys\) would be "
        r"(\d+) bytes, over Oracle Cloud's \d+-byte limit by \d+ bytes; declare fewer services or fewer "
        r"cgnat-edge:sshPublicKeys",
        problem,
    )
    assert found and abs(int(found.group(1)) - metadata) <= 16, (problem, metadata)
