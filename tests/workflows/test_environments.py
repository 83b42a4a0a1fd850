"""Which GitHub environment each job runs in, that the stacks declare every one of them with its protection,
that each job checks that protection before anything else, and which secrets each preview can decrypt."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import tempfile
from typing import Any

import pytest

from components.config import GITHUB_ADMINISTRATOR, ConfigError
from components.github_environment import READ_ONLY_SECRETS
from tests import kit
from tests.workflows.conftest import Runner
from tests.workflows.model import (
    BRANCH_OF_STAGE,
    PULUMI_CALL,
    ROOT,
    SCRIPT_DIR,
    STACKLESS_SUBCOMMANDS,
    STAGES,
    WORKFLOWS,
    deploy_jobs,
    job,
    jobs,
    preview_jobs,
    triggers,
)

ENVIRONMENT = "github:index/repositoryEnvironment:RepositoryEnvironment"
BRANCH_POLICY = "github:index/repositoryEnvironmentDeploymentPolicy:RepositoryEnvironmentDeploymentPolicy"
ENV_SECRET = "github:index/actionsEnvironmentSecret:ActionsEnvironmentSecret"
CHECK_ENVIRONMENT = ROOT / ".github" / "scripts" / "check_environment.py"


@functools.cache
def declared_environments() -> dict[str, dict[str, Any]]:
    """Every environment the real stack files declare (all by production's stack, the one that administers the
    repository): name -> reviewers, admin bypass, branches, secrets."""
    environment_secrets = {
        "RELEASE_APP_PRIVATE_KEY": "TESTSECRET-app-key",
        "APP_REPOSITORY_TOKEN": "TESTSECRET-app-repository-token",
    }
    declared: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        deployment = kit.run_stack(
            stage,
            secrets={
                name: {**kit.TEST_SECRETS[name], **environment_secrets}
                for name in ("githubEnvironmentSecrets", "stagingEnvironmentSecrets")
            }
            if stage == GITHUB_ADMINISTRATOR
            else None,
        )
        for environment in deployment.of_type(ENVIRONMENT):
            name = environment.inputs["environment"]
            reviewers = environment.inputs.get("reviewers") or []
            declared[name] = {
                "declared_by": stage,
                "reviewers": bool(reviewers and (reviewers[0].get("users") or reviewers[0].get("teams"))),
                "prevent_self_review": environment.inputs["preventSelfReview"],
                "admins_bypass": environment.inputs["canAdminsBypass"],
                "branches": sorted(
                    p.inputs["branchPattern"]
                    for p in deployment.of_type(BRANCH_POLICY)
                    if p.inputs["environment"] == name
                ),
                "secrets": sorted(
                    s.inputs["secretName"] for s in deployment.of_type(ENV_SECRET) if s.inputs["environment"] == name
                ),
            }
    return declared


def named_environments() -> dict[str, set[str]]:
    """Every environment a workflow job names, concretely -> the jobs naming it."""
    named: dict[str, set[str]] = {}
    for j in jobs():
        environment = j.environment()
        if environment is not None:
            for (concrete,) in j.expansions([environment]):
                named.setdefault(concrete, set()).add(j.label)
    return named


def test_jobs_that_change_a_stack_run_in_that_stacks_environment() -> None:
    """`pulumi up` on production only ever runs behind the production environment's reviewers."""
    checked = 0
    for j in deploy_jobs():
        checked += 1
        environment = j.environment()
        assert environment is not None, f"{j.label} changes a stack outside any environment"
        for stack in j.stacks():
            for concrete_stack, concrete_env in j.expansions([stack, environment]):
                assert concrete_env == concrete_stack, f"{j.label} changes {concrete_stack} in {concrete_env}"
    assert checked == 5, "deploy and release of each stage, and the rollback"


def test_previews_and_drift_never_use_the_deploy_environments() -> None:
    seen = set()
    for j in preview_jobs():
        environment = j.environment()
        assert environment is not None, f"{j.label}: previews read their secrets from their own environment"
        for stack in j.stacks():
            for concrete_stack, concrete_env in j.expansions([stack, environment]):
                assert concrete_env in {f"{concrete_stack}-preview", f"{concrete_stack}-drift"}, j.label
                seen.add((j.workflow_name, concrete_env))
        assert j.raw["environment"].get("deployment") is False, f"{j.label}: a preview is not a deployment"
    assert seen == {
        ("ci.yml", "staging-preview"),
        ("ci.yml", "production-preview"),
        ("drift.yml", "staging-drift"),
        ("drift.yml", "production-drift"),
    }


def test_every_environment_a_workflow_names_is_declared_by_the_stacks() -> None:
    """GitHub creates a missing environment with no protection: the stacks declare every one."""
    missing = set(named_environments()) - set(declared_environments())
    assert not missing, f"named by workflows, declared by no stack: {sorted(missing)}"


def script(name: str) -> str:
    return (SCRIPT_DIR / name).read_text()


def protection_declared(name: str) -> set[str]:
    environment = declared_environments()[name]
    wanted = set()
    if environment["reviewers"]:
        wanted |= {"reviewers"} | ({"no-admin-bypass"} if not environment["admins_bypass"] else set())
        wanted |= {"no-self-review"} if environment["prevent_self_review"] else set()
    if environment["branches"]:
        wanted.add("branch-policy")
    return wanted


def test_every_job_checks_its_environment_protection_before_anything_else() -> None:
    """Before a stack's first `pulumi up` (or after a hand edit) an environment can be bare or loosened: the job
    stops, whatever protection the stack declares for it is missing, and the branch it admits is the stage's."""
    for j in jobs():
        environment = j.environment()
        if environment is None:
            continue
        (setup,) = j.uses_action("setup")
        steps = j.steps()
        first_check = next(i for i, s in enumerate(steps) if "check-environment" in s.scripts())
        first_pulumi = next(
            i for i, s in enumerate(steps) if PULUMI_CALL.search(s.run + "\n".join(map(script, s.scripts())))
        )
        assert first_check < first_pulumi, f"{j.label}: the check runs before any pulumi command"
        passed = setup.raw["with"]
        for concrete_env, required, branch in j.expansions(
            [environment, str(passed["require-protection"]), str(passed.get("branch", ""))]
        ):
            declared = protection_declared(concrete_env)
            assert set(required.split()) == declared, f"{j.label}: checks {required!r}, {concrete_env} has {declared}"
            admitted = declared_environments()[concrete_env]["branches"]
            assert [branch] == admitted if branch else not admitted, f"{j.label}: checks {branch!r}, admits {admitted}"
            assert concrete_env == setup.with_["environment"] or "${{" in setup.with_["environment"], j.label


BARE = {"name": "production", "can_admins_bypass": True, "protection_rules": [], "deployment_branch_policy": None}
PROTECTED = {
    "name": "production",
    "can_admins_bypass": False,
    "protection_rules": [
        {"type": "required_reviewers", "prevent_self_review": True, "reviewers": [{"type": "Team", "reviewer": {}}]},
        {"type": "branch_policy"},
    ],
    "deployment_branch_policy": {"protected_branches": False, "custom_branch_policies": True},
}
MAIN_ONLY = {"total_count": 1, "branch_policies": [{"id": 1, "name": "main", "type": "branch"}]}
ALL = ["--require", "reviewers", "--require", "no-admin-bypass", "--require", "no-self-review"]
ALL += ["--require", "branch-policy", "--branch", "main"]


def check_environment(
    environment: object, *args: str, policies: object = MAIN_ONLY
) -> subprocess.CompletedProcess[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as answer:
        json.dump(policies, answer)
        answer.flush()
        return subprocess.run(
            [sys.executable, str(CHECK_ENVIRONMENT), "--environment", "production", *args]
            + (["--branch-policies", answer.name] if "branch-policy" in args else []),
            input=json.dumps(environment) if not isinstance(environment, str) else environment,
            capture_output=True,
            text=True,
            check=False,
        )


def test_an_environment_github_created_bare_fails_the_check_naming_each_missing_protection() -> None:
    result = check_environment(BARE, *ALL, policies={"total_count": 0, "branch_policies": []})
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error::")]
    assert len(errors) == 4, result.stdout
    assert "required reviewer" in errors[0] and "GitHub Enterprise" in errors[0]
    assert "bypass" in errors[1] and "Prevent self-review" in errors[2]
    assert "admitting exactly the branch 'main'; received none" in errors[3]


def test_a_protected_environment_passes_and_an_unreadable_one_fails_closed() -> None:
    assert check_environment(PROTECTED, *ALL).returncode == 0
    assert check_environment("", *ALL).returncode == 1, "no answer from the API is a failure, not a pass"
    assert check_environment({**PROTECTED, "can_admins_bypass": True}, *ALL).returncode == 1


@pytest.mark.parametrize(
    ("policies", "problem"),
    [
        ([{"name": "*", "type": "branch"}], "received * (patterns admit more than one branch: *)"),
        ([{"name": "ma*", "type": "branch"}], "patterns admit more than one branch: ma*"),
        ([{"name": "main", "type": "branch"}, {"name": "develop", "type": "branch"}], "received develop, main"),
        ([{"name": "main", "type": "branch"}, {"name": "v*", "type": "tag"}], "received main, tag v*"),
        ([{"name": "develop", "type": "branch"}], "received develop"),
    ],
)
def test_a_branch_policy_that_admits_more_or_another_branch_fails_the_check(
    policies: list[dict[str, str]], problem: str
) -> None:
    """`*` (or a second branch) in production's policy lets a run from that branch through GitHub's gate."""
    result = check_environment(PROTECTED, *ALL, policies={"total_count": len(policies), "branch_policies": policies})
    assert result.returncode == 1 and problem in result.stdout, result.stdout


def test_an_environment_whose_reviewers_may_approve_their_own_runs_fails_the_check() -> None:
    rules = [{**PROTECTED["protection_rules"][0], "prevent_self_review": False}]  # type: ignore[index]
    result = check_environment({**PROTECTED, "protection_rules": rules}, *ALL)
    assert result.returncode == 1 and "Prevent self-review" in result.stdout, result.stdout


def test_the_read_only_environments_are_declared_with_their_protection() -> None:
    declared = declared_environments()
    for stage in STAGES:
        preview, drift = declared[f"{stage}-preview"], declared[f"{stage}-drift"]
        assert preview["reviewers"] and preview["prevent_self_review"] and not preview["admins_bypass"], stage
        assert preview["branches"] == [], f"{stage}-preview: pull requests come from any branch; reviewers gate them"
        assert drift["branches"] == [BRANCH_OF_STAGE[stage]], stage
        for environment in (preview, drift):
            assert set(environment["secrets"]) <= set(READ_ONLY_SECRETS), f"{stage}: {environment['secrets']}"
        assert "RELEASE_APP_PRIVATE_KEY" in declared[stage]["secrets"], "the deploy environment holds the App key"
    production_drift = declared["production-drift"]
    assert production_drift["reviewers"] and production_drift["prevent_self_review"], (
        "production-drift runs main's code with production's passphrase: a production reviewer lets it run"
    )
    assert not production_drift["admins_bypass"]
    assert not declared["staging-drift"]["reviewers"], "staging's nightly check never waits"


# Stack secrets whose holder can change production, and how: what a job decrypts with a stage's passphrase.
CHANGES_PRODUCTION = {
    "githubToken": "administers this repository: could rewrite the production environment's reviewers",
    "githubAppPrivateKey": "administers this repository: could rewrite the production environment's reviewers",
    "githubEnvironmentSecrets": "holds production's release App key, which pushes to main past its ruleset",
    "stagingEnvironmentSecrets": "holds staging's passphrase and App key (production's stack keeps them)",
    "sshPrivateKey": "production's logs in to the production server",
    "registryPassword": "production's reads the images production deploys (their bytes, not their choice)",
}


def decryptable(stage: str) -> set[str]:
    """The secret keys a job holding the stage's passphrase decrypts: every secret key of its stack file."""
    return {key.partition(":")[2] for key in kit.stack_config(stage)[1]}


def test_each_preview_decrypts_only_what_its_gate_allows() -> None:
    """A preview or drift check runs with the stage's passphrase, which decrypts every secret in Pulumi.<stage>.yaml.
    Staging's hold nothing that changes production: no GitHub credential, and its registry token's pushes fail
    production's provenance check. Production's are read only after a production reviewer approved the run."""
    assert not decryptable("staging") & set(CHANGES_PRODUCTION) - {"registryPassword", "sshPrivateKey"}, (
        "staging's stack holds a GitHub credential"
    )
    assert {"githubToken", "githubEnvironmentSecrets", "stagingEnvironmentSecrets"} <= decryptable("production")
    from_pull_requests = {
        environment
        for environment, labels in named_environments().items()
        for label in labels
        if "pull_request" in triggers(WORKFLOWS[label.partition(":")[0]])
    }
    for environment in sorted(name for name in named_environments() if name.endswith(("-preview", "-drift"))):
        stage = environment.rpartition("-")[0]
        declared = declared_environments()[environment]
        gated = declared["reviewers"] and declared["prevent_self_review"] and not declared["admins_bypass"]
        if stage == "production":
            assert gated, f"{environment} decrypts {sorted(decryptable(stage))} without a production reviewer"
        elif environment in from_pull_requests:
            assert gated, f"{environment}: a pull request's program reads staging's secrets without an approval"
        else:
            assert declared["branches"] == [BRANCH_OF_STAGE[stage]], f"{environment}: reachable from any branch"


def test_the_preview_reads_the_state_with_read_only_credentials() -> None:
    """Previews get the read token (Pulumi Cloud) or their environment's own AWS role, never the deploy ones."""
    stage_secrets = {
        **kit.TEST_SECRETS["stagingEnvironmentSecrets"],
        "PULUMI_ACCESS_TOKEN": "TESTSECRET-deploy-token",
        "PULUMI_READ_ACCESS_TOKEN": "TESTSECRET-read-token",
        "RELEASE_APP_PRIVATE_KEY": "TESTSECRET-app-key",
    }
    production = kit.run_stack("production", secrets={"stagingEnvironmentSecrets": stage_secrets})
    values = {
        (s.inputs["environment"], s.inputs["secretName"]): s.plain("value") for s in production.of_type(ENV_SECRET)
    }
    assert values[("staging", "PULUMI_ACCESS_TOKEN")] == "TESTSECRET-deploy-token"
    assert values[("staging-preview", "PULUMI_ACCESS_TOKEN")] == "TESTSECRET-read-token"
    assert values[("staging-drift", "PULUMI_ACCESS_TOKEN")] == "TESTSECRET-read-token"
    assert ("staging", "PULUMI_READ_ACCESS_TOKEN") not in values
    assert values[("staging", "PULUMI_CONFIG_PASSPHRASE")] == "TESTSECRET-staging-passphrase-5791", "staging's own"
    app_keys = {env for env, name in values if name == "RELEASE_APP_PRIVATE_KEY"}
    assert app_keys <= {"staging", "production"}, f"a read-only environment holds a release App key: {app_keys}"


def test_the_stacks_refuse_a_preview_without_reviewers_and_a_drift_check_from_another_branch() -> None:
    with pytest.raises(ConfigError) as raised:
        kit.run_stack(
            "staging", overrides={"github.preview": kit.DELETE, "github.drift": {"deploymentBranches": ["main"]}}
        )
    problems = {problem.key: problem.message for problem in raised.value.problems}
    assert "staging-preview runs pull requests' code" in problems["kametrix-deploy:github.preview.reviewers"]
    assert problems["kametrix-deploy:github.drift.deploymentBranches"] == (
        "allowed: branches the stage deploys from (develop); received main"
    )


def test_the_drift_check_starts_each_stage_from_its_own_branch() -> None:
    """A schedule runs on the default branch only; production-drift admits main only."""
    drift = WORKFLOWS["drift.yml"]
    assert {"schedule", "workflow_dispatch"} <= set(triggers(drift))
    start = job("drift.yml", "start-checks")
    assert start.condition == "github.event_name == 'schedule'" and start.raw["permissions"] == {"actions": "write"}
    for stage, branch in BRANCH_OF_STAGE.items():
        assert (
            f'gh workflow run drift.yml --repo "$GITHUB_REPOSITORY" --ref {branch} -f stage={stage}' in start.run_text()
        )
    check = job("drift.yml", "drift")
    assert check.condition == "github.event_name == 'workflow_dispatch'"
    assert check.raw["environment"]["name"] == "${{ inputs.stage }}-drift"


@pytest.mark.parametrize(
    ("stage", "ref", "ok"),
    [
        ("production", "refs/heads/main", True),
        ("production", "refs/heads/develop", False),
        ("staging", "refs/heads/develop", True),
        ("staging", "refs/heads/main", False),
    ],
)
def test_a_drift_check_runs_only_from_its_stages_branch(runner: Runner, stage: str, ref: str, ok: bool) -> None:
    step = job("drift.yml", "drift").own_steps()[0]
    assert (runner.step(step, {"STAGE": stage, "GITHUB_REF": ref}).code == 0) == ok


def test_every_pulumi_invocation_names_its_stack() -> None:
    offenders, total = [], 0
    for j in jobs():
        for sub, stack, source in j.pulumi_calls():
            if sub in STACKLESS_SUBCOMMANDS:
                continue
            total += 1
            if not stack:
                offenders.append(f"{j.label}: `{source}` names no stack")
    assert total >= 20
    assert not offenders, "\n".join(offenders)


def test_deploy_jobs_check_out_the_head_of_the_stage_branch() -> None:
    """A queued run must deploy the branch as it is now, never the older commit that queued it."""
    for j in deploy_jobs():
        own = [s for s in j.own_steps() if s.uses.startswith("actions/checkout@") and "repository" not in s.with_]
        assert len(own) == 1, f"{j.label}: one checkout of this repository"
        ref = str(own[0].raw["with"]["ref"])
        stacks = sorted(j.stacks())
        for concrete_ref, concrete_stack in j.expansions([ref, *stacks]):
            assert concrete_ref == BRANCH_OF_STAGE[concrete_stack], f"{j.label}: checks out {concrete_ref!r}"


def test_a_previews_passphrase_decrypts_the_stages_registry_token(stack_runner: Runner) -> None:
    """Why the gate exists, shown with the real CLI: the preview environment's two secrets (backend URL and
    passphrase) are all it takes to read a secret that can push an image production pulls."""
    token = "TESTSECRET-registry-write-token"
    stack_runner.pulumi("config", "set", "--secret", "--stack", "staging", "registryPassword", stdin=token)
    assert token not in (stack_runner.work / "Pulumi.staging.yaml").read_text(), "stored encrypted"
    preview_secrets = set(declared_environments()["staging-preview"]["secrets"])
    assert {"PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE"} <= preview_secrets
    assert stack_runner.pulumi("config", "get", "--stack", "staging", "registryPassword") == token
    assert declared_environments()["staging-preview"]["reviewers"], "so a reviewer approves every staging preview"


def test_no_job_outside_an_environment_reads_a_secret() -> None:
    """A repository secret reaches every branch's workflow, a pull request's rewritten one included: every secret
    (APP_REPOSITORY_TOKEN too) is an environment secret, read only by jobs that run in the environment."""
    readers = 0
    for j in jobs():
        referenced = set(re.findall(r"secrets\.(\w+)", str(j.raw)))
        if j.environment() is None:
            assert not referenced, f"{j.label} reads {sorted(referenced)} outside any environment"
        else:
            readers += bool(referenced)
    assert readers >= 8
    stack_declared = declared_environments()
    for name in ("staging", "production", "staging-preview", "staging-drift", "production-drift"):
        assert "APP_REPOSITORY_TOKEN" in stack_declared[name]["secrets"], f"{name} gets the app repository's token"


def test_production_refuses_a_drift_check_nobody_approves() -> None:
    with pytest.raises(ConfigError) as raised:
        kit.run_stack("production", overrides={"github.drift": {"deploymentBranches": ["main"]}})
    problems = {problem.key: problem.message for problem in raised.value.problems}
    assert (
        "production-drift runs main's code with production's passphrase"
        in (problems["kametrix-deploy:github.drift.reviewers"])
    )
    kit.run_stack("staging", overrides={"github.drift": {"deploymentBranches": ["develop"]}})
