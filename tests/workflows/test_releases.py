"""Releases and rollbacks change a protected branch: the release App's token, one commit with who and why, no
[skip ci], no second deploy of it, and a revert that lands even when the branch moved during `pulumi up`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from components.shared_facts import UP_STEP
from tests.workflows.conftest import AppRepository, Result, Runner, checkout, git, install
from tests.workflows.model import ACTIONS, ROOT, SCRIPT_PATHS, WORKFLOW_PATHS, Job, job, jobs

BOT = "kametrix-release[bot]"
TOKEN = "ghs_not-a-real-token-0123456789"
PUSHING_JOBS = {"deploy-staging.yml:release", "deploy-production.yml:release", "rollback.yml:rollback"}
SKIP_MARKERS = re.compile(r"\[(skip ci|ci skip|no ci|skip actions|actions skip)\]|skip-checks:", re.I)


def release_env(**extra: str) -> dict[str, str]:
    return {"PUSH_TOKEN": TOKEN, "RELEASE_BOT": BOT, **extra}


@pytest.fixture
def main_checkout(tmp_path: Path, origin: Path, bin_dir: Path) -> Runner:
    return Runner(checkout(tmp_path, origin, "main"), bin_dir)


def change_version(runner: Runner, stage: str, version: str) -> None:
    path = runner.work / f"Pulumi.{stage}.yaml"
    path.write_text(re.sub(r"(kametrix-deploy:version: ).*", rf"\g<1>{version}", path.read_text()))


def pushed_file(origin: Path, branch: str, stage: str) -> str:
    return git(origin, "show", f"{branch}:Pulumi.{stage}.yaml")


def push_elsewhere(tmp_path: Path, origin: Path, edit: dict[str, str], message: str) -> None:
    """Someone else pushes to main meanwhile: `edit` maps a file to a regex substitution `old=>new` or new text."""
    other = tmp_path / "other"
    git(tmp_path, "clone", "--quiet", str(origin), str(other))
    for name, change in edit.items():
        path = other / name
        old, arrow, new = change.partition("=>")
        path.write_text(re.sub(old, new, path.read_text()) if arrow else change)
    git(other, "add", ".")
    git(other, "commit", "--quiet", "-m", message)
    git(other, "push", "--quiet", "origin", "HEAD:refs/heads/main")


def revert(runner: Runner, bump_sha: str) -> Result:
    what = ["--what", "release v1.5.0"]
    return runner.script("revert-version-change", "--stage", "production", "--bump", bump_sha, *what, env=release_env())


def bump(runner: Runner, **flags: str) -> tuple[int, dict[str, str], str]:
    args = [arg for flag, value in flags.items() for arg in (f"--{flag.rstrip('_')}", value)]
    result = runner.script("commit-version-change", *args, env=release_env())
    return result.code, result.outputs, result.log


def test_a_release_commit_names_the_version_who_asked_and_the_run_and_has_no_skip_ci(
    main_checkout: Runner, origin: Path
) -> None:
    change_version(main_checkout, "production", "v1.5.0")
    code, outputs, log = bump(
        main_checkout, stage="production", kind="release", version="v1.5.0", commit="2" * 40, from_="v1.4.2"
    )
    assert code == 0 and outputs["pushed"] == "true", log
    assert outputs["bump"] == git(origin, "rev-parse", "main")
    assert "kametrix-deploy:version: v1.5.0" in pushed_file(origin, "main", "production")
    message = git(origin, "log", "-1", "--format=%B", "main")
    assert message.startswith("release(production): v1.5.0\n")
    for line in ("Version: v1.5.0", f"App-Commit: {'2' * 40}", "Previous: v1.4.2", "Requested-By: release-lead"):
        assert line in message
    assert "Run: https://github.com/kametrix-org/kametrix-deploy/actions/runs/4242" in message
    assert not SKIP_MARKERS.search(message), "CI and the promotion PR's checks must run on a release commit"
    assert git(origin, "log", "-1", "--format=%an <%ae>", "main") == f"{BOT} <{BOT}@users.noreply.github.com>"
    assert TOKEN not in log


def test_a_release_of_the_pinned_version_pushes_nothing(main_checkout: Runner, origin: Path) -> None:
    before = git(origin, "rev-parse", "main")
    code, outputs, log = bump(
        main_checkout, stage="production", kind="release", version="v1.4.2", commit="3" * 40, from_="v1.4.2"
    )
    assert code == 0 and outputs == {"pushed": "false"}, log
    assert git(origin, "rev-parse", "main") == before


def test_a_rollback_commit_records_its_reason_as_data(main_checkout: Runner, origin: Path) -> None:
    reason = 'bad "checkout" $(touch pwned) `id`'
    change_version(main_checkout, "production", "v1.4.1")
    code, outputs, log = bump(
        main_checkout,
        stage="production",
        kind="rollback",
        version="v1.4.1",
        commit="1" * 40,
        from_="v1.4.2",
        reason=reason,
    )
    assert code == 0 and outputs["pushed"] == "true", log
    assert not (main_checkout.work / "pwned").exists(), "the reason is data, never run"
    message = git(origin, "log", "-1", "--format=%B", "main")
    assert message.startswith("rollback(production): v1.4.1\n") and f"Reason: {reason}" in message


def test_a_version_change_is_refused_when_the_branch_moved(main_checkout: Runner, origin: Path, tmp_path: Path) -> None:
    push_elsewhere(tmp_path, origin, {"README.md": "moved\n"}, "someone else's change")
    change_version(main_checkout, "production", "v1.5.0")
    code, outputs, _ = bump(
        main_checkout, stage="production", kind="release", version="v1.5.0", commit="2" * 40, from_="v1.4.2"
    )
    assert code != 0 and "pushed" not in outputs, "a non-fast-forward push must stop the release before pulumi up"


def push_bump(runner: Runner, version: str = "v1.5.0") -> str:
    change_version(runner, "production", version)
    code, outputs, log = bump(
        runner, stage="production", kind="release", version=version, commit="2" * 40, from_="v1.4.2"
    )
    assert code == 0, log
    return outputs["bump"]


def test_a_failed_update_is_reverted_on_top_of_a_branch_that_moved_meanwhile(
    main_checkout: Runner, origin: Path, tmp_path: Path
) -> None:
    """A revert rejected because main moved left the failed version for the queued deploy to redeploy."""
    original = pushed_file(origin, "main", "production")
    bump_sha = push_bump(main_checkout)
    push_elsewhere(tmp_path, origin, {"docs.md": "merged during pulumi up\n"}, "a merge during the update")
    with (main_checkout.work / "Pulumi.production.yaml").open("a") as left_by_the_update:
        left_by_the_update.write("# a local change the failed update left behind\n")
    result = revert(main_checkout, bump_sha)
    assert result.code == 0 and result.outputs == {"reverted": "true"}, result.log
    assert pushed_file(origin, "main", "production") == original, "main pins the version the server runs again"
    assert git(origin, "show", "main:docs.md") == "merged during pulumi up", "the other change stays"
    subject = git(origin, "log", "-1", "--format=%s", "main")
    assert subject == "revert(production): release v1.5.0 failed" and not SKIP_MARKERS.search(subject)
    assert TOKEN not in result.log


def test_a_revert_leaves_a_newer_version_change_alone(main_checkout: Runner, origin: Path, tmp_path: Path) -> None:
    bump_sha = push_bump(main_checkout)
    newer = {"Pulumi.production.yaml": "(kametrix-deploy:version: ).*=>\\g<1>v1.5.1"}
    push_elsewhere(tmp_path, origin, newer, "someone pinned another version")
    result = revert(main_checkout, bump_sha)
    assert result.code != 0 and "reverted" not in result.outputs, result.log
    assert "not reverting" in result.log
    assert "kametrix-deploy:version: v1.5.1" in pushed_file(origin, "main", "production")


def test_no_commit_a_workflow_makes_skips_ci() -> None:
    """[skip ci] on a bump left the promotion PR's checks pending and, squashed into main, skipped the deploy."""
    for path in [*WORKFLOW_PATHS, *SCRIPT_PATHS, *(ROOT / ".github" / "actions").glob("*/action.yml")]:
        assert not SKIP_MARKERS.search(path.read_text()), f"{path.relative_to(ROOT)} skips CI"


def test_branches_change_only_with_the_release_app_token_after_checking_it_is_set_up() -> None:
    """GITHUB_TOKEN cannot push to a protected branch, and its pushes start no workflows."""
    pushing = set()
    for j in jobs():
        steps = j.own_steps()
        changing = [s for s in steps if {"commit-version-change", "revert-version-change"} & set(s.scripts())]
        if not changing:
            continue
        pushing.add(j.label)
        assert "contents" not in j.write_scopes(), f"{j.label}: pushes use the App's token, never GITHUB_TOKEN"
        (token_step,) = j.uses_action("release-token")
        checkout = next(i for i, s in enumerate(steps) if s.uses.startswith("actions/checkout@"))
        guards = [s for s in steps[checkout + 1 :] if s.uses.startswith("./.github/workflows/guards/")][:1]
        assert steps.index(token_step) == checkout + 1 + len(guards), (
            f"{j.label}: the App check comes right after the checkout (and the guard of its branch)"
        )
        for step in changing:
            assert step.env["PUSH_TOKEN"] == f"${{{{ steps.{token_step.raw['id']}.outputs.token }}}}", j.label
            assert step.env["RELEASE_BOT"] == f"${{{{ steps.{token_step.raw['id']}.outputs.bot }}}}", j.label
    assert pushing == PUSHING_JOBS
    token_action = ACTIONS["release-token"]["runs"]["steps"]
    assert "check-release-app" in token_action[0]["run"], "the job stops first when the App is not set up"
    assert token_action[1]["with"]["permission-contents"] == "write" and len(token_action[1]["with"]) == 3


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, ["PRODUCTION_RELEASE_APP_CLIENT_ID", "PRODUCTION_RELEASE_APP_SLUG", "RELEASE_APP_PRIVATE_KEY"]),
        (
            {"RELEASE_APP_CLIENT_ID": "Iv23liAbCdEf", "RELEASE_APP_SLUG": "kametrix-release"},
            ["RELEASE_APP_PRIVATE_KEY"],
        ),
        (
            {"RELEASE_APP_SLUG": "kametrix-release", "RELEASE_APP_PRIVATE_KEY_SET": "true"},
            ["PRODUCTION_RELEASE_APP_CLIENT_ID"],
        ),
        (
            {
                "RELEASE_APP_CLIENT_ID": "Iv23liAbCdEf",
                "RELEASE_APP_SLUG": "Bad Slug",
                "RELEASE_APP_PRIVATE_KEY_SET": "true",
            },
            ["PRODUCTION_RELEASE_APP_SLUG"],
        ),
    ],
)
def test_a_release_without_the_app_stops_naming_what_to_configure(
    runner: Runner, env: dict[str, str], missing: list[str]
) -> None:
    result = runner.script("check-release-app", env={"STAGE": "production", **env})
    assert result.code != 0, result.log
    for name in missing:
        kind = "secret" if "KEY" in name else "repository variable"
        assert f"missing {kind} {name}" in result.log, result.log
    assert "on main's ruleset's bypass list: docs/workflows.md, One-time GitHub set-up" in result.log


def test_a_set_up_app_passes_the_check(runner: Runner) -> None:
    env = {
        "STAGE": "staging",
        "RELEASE_APP_CLIENT_ID": "Iv23liAbCdEf",
        "RELEASE_APP_SLUG": "kametrix-release-staging",
        "RELEASE_APP_PRIVATE_KEY_SET": "true",
    }
    assert runner.script("check-release-app", env=env).code == 0
    assert runner.script("check-release-app", env={**env, "STAGE": "preview"}).code != 0
    keyless = runner.script("check-release-app", env={**env, "RELEASE_APP_PRIVATE_KEY_SET": "false"})
    assert "declared from the production stack's stagingEnvironmentSecrets.RELEASE_APP_PRIVATE_KEY" in keyless.log


def release_app_variables(j: Job) -> set[str]:
    """The repository variables naming a release App that a job reads, anywhere in its definition."""
    return set(re.findall(r"vars\.((?:STAGING|PRODUCTION)?_?RELEASE_APP_\w+)", str(j.raw)))


def test_each_stage_pushes_with_its_own_release_app_and_skips_only_its_pushes() -> None:
    """One App shared by both stages let staging's key push to main past its ruleset: each stage has its own."""
    for stage in ("staging", "production"):
        own = {f"{stage.upper()}_RELEASE_APP_CLIENT_ID", f"{stage.upper()}_RELEASE_APP_SLUG"}
        for job_id in ("deploy", "release"):
            j = job(f"deploy-{stage}.yml", job_id)
            assert release_app_variables(j) <= own, f"{j.label} reads {release_app_variables(j) - own}"
        (token,) = job(f"deploy-{stage}.yml", "release").uses_action("release-token")
        assert token.raw["with"]["stage"] == stage
        assert token.raw["with"]["client-id"] == f"${{{{ vars.{stage.upper()}_RELEASE_APP_CLIENT_ID }}}}"
    rollback = job("rollback.yml", "rollback")
    (token,) = rollback.uses_action("release-token")
    for stage, client_id, slug in rollback.expansions(
        [str(token.raw["with"]["stage"]), str(token.raw["with"]["client-id"]), str(token.raw["with"]["slug"])]
    ):
        assert client_id == f"vars.{stage.upper()}_RELEASE_APP_CLIENT_ID", (stage, client_id)
        assert slug == f"vars.{stage.upper()}_RELEASE_APP_SLUG", (stage, slug)
    for j in jobs():
        assert not {"RELEASE_APP_CLIENT_ID", "RELEASE_APP_SLUG"} & release_app_variables(j), f"{j.label}: shared App"


def test_a_push_by_the_release_app_is_not_deployed_a_second_time() -> None:
    """The pushing job deploys its own commit; the push it triggers must not ask for another approval."""
    for stage in ("staging", "production"):
        bot_push = f"github.actor != format('{{0}}[bot]', vars.{stage.upper()}_RELEASE_APP_SLUG)"
        deploy = job(f"deploy-{stage}.yml", "deploy")
        assert f"github.event_name == 'push' && {bot_push}" in deploy.condition, stage
    slug_check = ACTIONS["release-token"]["runs"]["steps"][2]
    assert slug_check["env"]["TOKEN_SLUG"] == "${{ steps.token.outputs.app-slug }}", "the token is RELEASE_APP_SLUG's"


def run_validate(runner: Runner, reason: str, ref: str) -> int:
    step = next(s for s in job("rollback.yml", "rollback").steps() if s.raw.get("name") == "Validate the request")
    return runner.step(step, {"STAGE": "production", "GITHUB_REF": ref, "REASON": reason}).code


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
    runner: Runner, reason: str, ref: str, ok: bool
) -> None:
    assert (run_validate(runner, reason, ref) == 0) == ok


def test_rollback_builds_nothing() -> None:
    rollback = job("rollback.yml", "rollback")
    script = rollback.script_text()
    assert "docker build" not in script and "docker push" not in script
    assert "packages" not in rollback.raw["permissions"]
    assert all(step.with_.get("path") != "app" for step in rollback.steps()), "no build context is checked out"
    assert "no-build-config" in rollback.run_text()


@pytest.fixture
def app_history(tmp_path: Path) -> tuple[Path, list[str]]:
    """An app repository with three commits; the second is tagged v1.2.3."""
    repo = tmp_path / "app-history"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=develop")
    commits = []
    for index in range(3):
        (repo / "file").write_text(str(index))
        git(repo, "add", "file")
        git(repo, "commit", "--quiet", "-m", f"app commit {index}")
        commits.append(git(repo, "rev-parse", "HEAD"))
        if index == 1:
            git(repo, "tag", "v1.2.3")
    return repo, commits


def test_versions_resolve_to_exactly_one_app_commit(runner: Runner, app_history: tuple[Path, list[str]]) -> None:
    history, commits = app_history
    cases = {
        f"staging-{commits[2][:7]}": commits[2],
        f"v2025.01.15-{commits[0][:7]}": commits[0],
        "v1.2.3": commits[1],
        "v9.9.9": None,
        "staging-0000000": None,
    }
    for version, expected in cases.items():
        result = runner.script("resolve-version", "--version", version, "--history", str(history))
        if expected is None:
            assert result.code != 0, f"{version} resolved: {result.log}"
        else:
            assert result.code == 0 and result.outputs["commit"] == expected, f"{version}: {result.log}"
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", result.outputs["commit_time"]), result.outputs


def test_a_recorded_version_resolves_to_its_recorded_commit(runner: Runner) -> None:
    result = runner.script("resolve-version", "--version", "v1.4.1", "--recorded", "1" * 40)
    assert result.code == 0 and result.outputs == {"commit": "1" * 40}, result.log


def test_the_rollback_summary_records_the_reason_escaped(runner: Runner) -> None:
    step = next(s for s in job("rollback.yml", "rollback").steps() if s.raw.get("name") == "Summary (with the reason)")
    env = {
        "STAGE": "production",
        "REASON": "EU <cards> `fail` | badly",
        "FROM_VERSION": "v1.4.2",
        "TO_VERSION": "v1.4.1",
    }
    result = runner.step(step, env)
    assert result.code == 0, result.log
    assert "**Reason:** EU &lt;cards&gt; &#96;fail&#96; | badly" in result.summary
    assert "| from | v1.4.2 |" in result.summary and "| to | v1.4.1 |" in result.summary
    assert "| stack update | - |" in result.summary and "| stack file reverted | no |" in result.summary


@pytest.fixture
def app_clone(app_repository: AppRepository, tmp_path: Path) -> tuple[Path, list[str], str]:
    """The app's develop checked out with its history (as deploy-staging does): its commits, and the head of a
    pull request that is not on develop (refs/pull/7/head)."""
    (tmp_path / "work").mkdir(exist_ok=True)
    clone = app_repository.clone(tmp_path / "work" / "app", "refs/pull/7/head")
    return clone, app_repository.on_develop, app_repository.unreviewed


def test_staging_pins_develop_or_a_commit_on_it(runner: Runner, app_clone: tuple[Path, list[str], str]) -> None:
    clone, commits, _ = app_clone
    head = runner.script("pin-app-commit", "--app-ref", "develop", "--dir", str(clone))
    assert head.code == 0 and head.outputs["commit"] == commits[1], head.log
    assert head.outputs["version"] == f"staging-{commits[1][:7]}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", head.outputs["commit_time"]), head.outputs
    older = runner.script("pin-app-commit", "--app-ref", commits[0], "--dir", str(clone))
    assert older.code == 0 and older.outputs["commit"] == commits[0], older.log
    assert git(clone, "rev-parse", "HEAD") == commits[0], "the build context is the pinned commit"


@pytest.mark.parametrize("kind", ["pull request head", "ref of a pull request", "tag", "short sha", "unknown"])
def test_staging_refuses_to_build_what_is_not_on_the_apps_develop(
    runner: Runner, app_clone: tuple[Path, list[str], str], kind: str
) -> None:
    """A pull request's head (its code unreviewed) built by staging could later be promoted to production."""
    clone, commits, pull = app_clone
    app_ref = {
        "pull request head": pull,
        "ref of a pull request": "refs/pull/7/head",
        "tag": "v1.2.3",
        "short sha": commits[0][:7],
        "unknown": "9" * 40,
    }[kind]
    result = runner.script("pin-app-commit", "--app-ref", app_ref, "--dir", str(clone))
    assert result.code != 0 and result.outputs == {}, result.log
    assert "on the app's develop" in result.log, result.log
    validate = next(s for s in job("deploy-staging.yml", "release").steps() if s.raw.get("id") == "validate")
    gate = runner.step(validate, {"APP_REF": app_ref, "GITHUB_REF": "refs/heads/develop"})
    assert (gate.code == 0) == (kind in ("pull request head", "unknown")), f"{kind}: only full SHAs pass the input"


FAKE_PULLS = r"""#!/usr/bin/env bash
# Stand-in for `gh api repos/R/commits/SHA/pulls --jq F`: the pull requests of $GH_PULLS/SHA.json (else none).
set -euo pipefail
sha=$(sed -E 's#.*/commits/([0-9a-f]+)/pulls#\1#' <<<"$2")
if [[ -f "$GH_PULLS/$sha.json" ]]; then jq "$4" "$GH_PULLS/$sha.json"; else echo '[]' | jq "$4"; fi
"""


@pytest.fixture
def develop(runner: Runner, with_jq: Path, tmp_path: Path) -> Path:
    """This repository's develop in the runner's workspace: a commit merged through a reviewed pull request."""
    install(runner.bin_dir, "gh", FAKE_PULLS)
    pulls = tmp_path / "pulls"
    pulls.mkdir()
    git(runner.work, "init", "--quiet", "--initial-branch=develop")
    for name in ("Pulumi.staging.yaml", "README.md"):
        (runner.work / name).write_text("initial\n")
    (runner.work / ".github" / "actions").mkdir(parents=True)
    (runner.work / ".github" / "actions" / "setup.yml").write_text("reviewed\n")
    git(runner.work, "add", ".")
    git(runner.work, "commit", "--quiet", "-m", "Merge pull request #7 from feature")
    merged = git(runner.work, "rev-parse", "HEAD")
    (pulls / f"{merged}.json").write_text(
        json.dumps([{"number": 7, "merged_at": "2026-12-01", "base": {"ref": "develop"}}])
    )
    return pulls


def commit_on(work: Path, path: str, text: str, message: str) -> str:
    (work / path).write_text(text)
    git(work, "add", path)
    git(work, "commit", "--quiet", "--allow-empty", "-m", message)
    return git(work, "rev-parse", "HEAD")


def guard(runner: Runner, pulls: Path) -> Result:
    (step,) = [s for s in job("deploy-staging.yml", "release").steps() if s.via == "reviewed-develop"]
    return runner.step(step, {"GH_PULLS": str(pulls), "GH_TOKEN": "x"})


def test_version_changes_the_release_app_pushed_above_a_reviewed_merge_pass(runner: Runner, develop: Path) -> None:
    commit_on(runner.work, "Pulumi.staging.yaml", "version: staging-1111111\n", "release(staging): staging-1111111")
    commit_on(runner.work, "Pulumi.staging.yaml", "version: staging-1111111\ndigests\n", "record(staging)")
    result = guard(runner, develop)
    assert result.code == 0, result.log
    assert "2 version change(s) on top of" in result.log


@pytest.mark.parametrize(
    "path", [".github/actions/setup.yml", "README.md", "components/image.py", ".github/scripts/lib.sh"]
)
def test_staging_secrets_cannot_put_unreviewed_code_on_develop(runner: Runner, develop: Path, path: str) -> None:
    """Staging's release App bypasses develop's ruleset: with its key, code could reach develop unreviewed and the
    next staging release would build and attest images with it. Such a commit stops every staging deploy."""
    (runner.work / path).parent.mkdir(parents=True, exist_ok=True)
    pushed = commit_on(runner.work, path, "pushed with the App's token\n", "release(staging): staging-2222222")
    commit_on(runner.work, "Pulumi.staging.yaml", "version: staging-3333333\n", "release(staging): staging-3333333")
    result = guard(runner, develop)
    assert result.code != 0, result.log
    assert f"develop's commit {pushed} came through no reviewed pull request and changes {path}" in result.log


def test_a_pull_request_that_was_not_merged_into_develop_proves_no_review(runner: Runner, develop: Path) -> None:
    head = commit_on(runner.work, ".github/actions/setup.yml", "unreviewed\n", "an open pull request's head")
    (develop / f"{head}.json").write_text(
        json.dumps(
            [
                {"number": 8, "merged_at": None, "base": {"ref": "develop"}},
                {"number": 9, "merged_at": "2026-12-01", "base": {"ref": "feature"}},
            ]
        )
    )
    result = guard(runner, develop)
    assert result.code != 0 and f"{head} came through no reviewed pull request" in result.log, result.log


def test_every_staging_deploy_checks_develop_before_it_runs_anything_of_develops() -> None:
    for job_id in ("deploy", "release"):
        steps = job("deploy-staging.yml", job_id).own_steps()
        checkout = steps[0]
        assert checkout.uses.startswith("actions/checkout@") and checkout.raw["with"]["fetch-depth"] == 0, job_id
        assert steps[1].uses == "./.github/workflows/guards/reviewed-develop", f"{job_id}: the guard runs second"
    guard_file = ROOT / ".github" / "workflows" / "guards" / "reviewed-develop" / "action.yml"
    assert ".github/scripts" not in guard_file.read_text().split("runs:")[1], "its logic is inline, out of reach"


def up_step_state(stage: str, version: str) -> list[dict[str, object]]:
    """The state's `up` step after an update that switched to `version`, as the program declares it."""
    create = f"bash /opt/kametrix/bin/up.sh --app-dir /opt/kametrix --project kametrix --version {version} --x y"
    return [
        {
            "urn": f"urn:pulumi:{stage}::kametrix-deploy::kametrix:server_release:ServerRelease$command:remote:"
            f"Command::{UP_STEP}",
            "custom": True,
            "type": "command:remote:Command",
            "inputs": {"create": create},
            "outputs": {"create": create},
        }
    ]


def test_what_a_failed_update_made_live_is_read_from_the_state_without_decrypting_it(
    stack_runner: Runner, with_jq: Path
) -> None:
    stack_runner.deployed("production", {"version": "v1.4.2"}, resources=up_step_state("production", "v1.5.0"))
    result = stack_runner.script("switched-version", "--stage", "production", env={"PULUMI_CONFIG_PASSPHRASE": ""})
    assert result.code == 0 and result.outputs == {"version": "v1.5.0"}, result.log


def test_a_failed_update_that_already_switched_keeps_its_version_pinned() -> None:
    """The version commit is taken back only when the failed update did not make its version live: a later resource
    (a GitHub release) failing after the switch leaves the new version serving, and the next push must not roll
    production back."""
    checked = 0
    for j in jobs():
        steps = [step.raw for step in j.steps()]
        ids = [step.get("id") for step in steps]
        if "revert" not in ids:
            continue
        checked += 1
        assert "switched" in ids and ids.index("switched") < ids.index("revert"), j.label
        switched, revert = steps[ids.index("switched")], steps[ids.index("revert")]
        assert "switched-version" in switched["run"], j.label
        version = revert["env"]["VERSION"].strip("${} ")
        assert f"steps.switched.outputs.version != {version}" in " ".join(revert["if"].split()), j.label
    assert checked == 3
