"""What the workflows read from and record in a stack, run through the real Pulumi CLI on a file backend.

Each test runs the exact script a workflow step calls, in a checkout of the real stack files whose stacks
the CLI initialised, so a `pulumi config`/`stack output` call that fails on the real files fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.workflows.conftest import Runner, git
from tests.workflows.model import ROOT, SCRIPT_DIR, job, jobs, local_action

STAGING_COMMIT = "3f9c2a1d7b8e4f6a0c5d2e9b1a7f3c8d4e6b2a90"
RELEASED = {"v1.4.1": "8d2e6b1a7f3c9d4e0a5b2c7f1e3d9a6b4c8e2f10", "v1.4.2": "3f9c2a1d7b8e4f6a0c5d2e9b1a7f3c8d4e6b2a90"}
NEW_COMMIT = "2222222222222222222222222222222222222222"


def stack_config(runner: Runner, stage: str) -> dict[str, object]:
    config = yaml.safe_load((runner.work / f"Pulumi.{stage}.yaml").read_text())["config"]
    assert isinstance(config, dict)
    return config


def test_production_is_read_without_a_commit_key_and_checks_out_no_build_context(stack_runner: Runner) -> None:
    """drift.yml read `commit` of production, which has none: the production leg failed every night."""
    result = stack_runner.script("stack-version", "--stage", "production")
    assert result.code == 0, result.log
    assert result.outputs == {"from": "unknown", "to": "v1.4.2", "commit": RELEASED["v1.4.2"], "build_commit": ""}


def test_staging_is_read_with_its_build_commit(stack_runner: Runner) -> None:
    stack_runner.deployed("staging", {"version": "staging-1111111"})
    result = stack_runner.script("stack-version", "--stage", "staging")
    assert result.code == 0, result.log
    assert result.outputs == {
        "from": "staging-1111111",
        "to": "staging-3f9c2a1",
        "commit": STAGING_COMMIT,
        "build_commit": STAGING_COMMIT,
    }


@pytest.mark.parametrize("version", ["staging-abcdef0", "v1.2.3"])
def test_staging_refuses_a_version_not_derived_from_its_commit(stack_runner: Runner, version: str) -> None:
    stack_runner.pulumi("config", "set", "--stack", "staging", "version", version)
    result = stack_runner.script("stack-version", "--stage", "staging")
    assert result.code != 0 and "staging-3f9c2a1 (derived from commit)" in result.log, result.log


def test_every_job_that_reads_a_stack_reads_it_through_stack_version() -> None:
    """One reader for deploys, previews and drift; nothing reads `commit` of a stack on its own."""
    readers = {j.label for j in jobs() if j.uses_action("read-stack")}
    assert readers == {
        "ci.yml:preview-staging",
        "ci.yml:preview-production",
        "deploy-staging.yml:deploy",
        "deploy-production.yml:deploy",
        "deploy-production.yml:release",
        "drift.yml:drift",
    }
    for j in jobs():
        assert "config get commit" not in j.run_text(), f"{j.label} reads `commit` outside stack-version"


APP_DIGEST = "sha256:" + "1" * 64
MIGRATE_DIGEST = "sha256:" + "2" * 64


def recorded_digests(runner: Runner, stage: str) -> dict[str, object]:
    image = stack_config(runner, stage)["kametrix-deploy:image"]
    assert isinstance(image, dict)
    digests = image.get("digests", {})
    assert isinstance(digests, dict)
    return digests


def test_a_production_release_records_a_new_version_with_its_digests_and_commit(stack_runner: Runner) -> None:
    result = stack_runner.script(
        "record-release",
        *("--stage", "production", "--version", "v1.5.0", "--commit", NEW_COMMIT),
        *("--app-digest", APP_DIGEST, "--migrate-digest", f"ghcr.io/kametrix-org/kametrix/kametrix@{MIGRATE_DIGEST}"),
    )
    assert result.code == 0, result.log
    config = stack_config(stack_runner, "production")
    assert config["kametrix-deploy:version"] == "v1.5.0"
    github = config["kametrix-deploy:github"]
    assert isinstance(github, dict)
    assert github["releases"] == {**RELEASED, "v1.5.0": NEW_COMMIT}, "recorded releases stay, the new one is added"
    digests = recorded_digests(stack_runner, "production")
    assert digests["v1.5.0"] == {"app": APP_DIGEST, "migrate": MIGRATE_DIGEST}
    assert {"v1.4.1", "v1.4.2"} <= set(digests), "recorded versions stay"
    release = config["kametrix-deploy:release"]
    assert isinstance(release, dict)
    assert release["requestedBy"] == "https://github.com/kametrix-org/kametrix-deploy/actions/runs/4242 (release-lead)"
    assert stack_runner.pulumi("config", "get", "--stack", "production", "--path", 'github.releases["v1.5.0"]') == (
        NEW_COMMIT
    )
    assert stack_runner.pulumi("config", "get", "--stack", "production", "--path", 'image.digests["v1.5.0"].app') == (
        APP_DIGEST
    ), "the CLI does not read what was recorded"
    assert "# What each version is, for good" in (stack_runner.work / "Pulumi.production.yaml").read_text()


def test_a_new_production_version_without_its_digests_is_refused(stack_runner: Runner) -> None:
    result = stack_runner.script(
        "record-release", "--stage", "production", "--version", "v1.5.0", "--commit", NEW_COMMIT
    )
    assert result.code != 0 and "only versions whose digests are recorded" in result.log, result.log
    assert "v1.5.0" not in recorded_digests(stack_runner, "production")


def test_pinning_the_live_version_again_names_no_new_requester(stack_runner: Runner) -> None:
    live = stack_config(stack_runner, "production")["kametrix-deploy:version"]
    assert isinstance(live, str)
    result = stack_runner.script(
        "record-release", "--stage", "production", "--version", live, "--commit", RELEASED[live]
    )
    assert result.code == 0, result.log
    release = stack_config(stack_runner, "production").get("kametrix-deploy:release") or {}
    assert isinstance(release, dict) and "requestedBy" not in release, "every step would run again"


def test_a_recorded_version_keeps_its_commit_and_its_digests(stack_runner: Runner) -> None:
    ok = stack_runner.script(
        "record-release", "--stage", "production", "--version", "v1.4.1", "--commit", RELEASED["v1.4.1"]
    )
    assert ok.code == 0, ok.log
    assert stack_config(stack_runner, "production")["kametrix-deploy:version"] == "v1.4.1"
    moved = stack_runner.script(
        "record-release", "--stage", "production", "--version", "v1.4.1", "--commit", NEW_COMMIT
    )
    assert moved.code != 0 and "keeps its commit" in moved.log, moved.log
    rebuilt = stack_runner.script(
        "record-release",
        *("--stage", "production", "--version", "v1.4.1", "--commit", RELEASED["v1.4.1"]),
        *("--app-digest", APP_DIGEST, "--migrate-digest", MIGRATE_DIGEST),
    )
    assert rebuilt.code != 0 and "never changes its bytes" in rebuilt.log, rebuilt.log


def test_a_staging_release_records_its_builds_digests(stack_runner: Runner) -> None:
    version = f"staging-{NEW_COMMIT[:7]}"
    args = ["--stage", "staging", "--version", version, "--commit", NEW_COMMIT, "--commit-time", "2026-11-28T12:00:00Z"]
    assert stack_runner.script("record-release", *args).code == 0
    assert version not in recorded_digests(stack_runner, "staging"), "digests before the build"
    one = stack_runner.script("record-release", *args, "--app-digest", APP_DIGEST)
    assert one.code != 0 and "give both --app-digest and --migrate-digest" in one.log, one.log
    result = stack_runner.script(
        "record-release", *args, "--app-digest", APP_DIGEST, "--migrate-digest", MIGRATE_DIGEST
    )
    assert result.code == 0, result.log
    assert recorded_digests(stack_runner, "staging")[version] == {"app": APP_DIGEST, "migrate": MIGRATE_DIGEST}
    assert stack_runner.script("stack-version", "--stage", "staging").code == 0, "the recorded file still reads"


def test_a_staging_release_records_its_commit_and_time(stack_runner: Runner) -> None:
    args = ["--stage", "staging", "--version", f"staging-{NEW_COMMIT[:7]}", "--commit", NEW_COMMIT]
    refused = stack_runner.script("record-release", *args)
    assert refused.code != 0 and "--commit-time" in refused.log, refused.log
    result = stack_runner.script("record-release", *args, "--commit-time", "2026-11-28T12:00:00Z")
    assert result.code == 0, result.log
    config = stack_config(stack_runner, "staging")
    assert config["kametrix-deploy:version"] == f"staging-{NEW_COMMIT[:7]}"
    assert config["kametrix-deploy:commit"] == NEW_COMMIT
    assert config["kametrix-deploy:commitTime"] == "2026-11-28T12:00:00Z"
    assert stack_runner.script("stack-version", "--stage", "staging").code == 0, "the recorded pair is consistent"


def test_the_release_is_recorded_in_one_place() -> None:
    """Releases and rollbacks of both stages write the stack file only through record-release."""
    recorders = sorted({j.label for j in jobs() for step in j.steps() if "record-release" in step.scripts()})
    assert recorders == ["deploy-production.yml:release", "deploy-staging.yml:release", "rollback.yml:rollback"]
    for j in jobs():
        assert "pulumi config set" not in j.run_text(), f"{j.label} writes the stack file outside record-release"


def test_a_rollback_goes_to_the_previous_recorded_version(stack_runner: Runner) -> None:
    stack_runner.deployed("production", {"version": "v1.4.2", "previousVersion": "v1.4.1"})
    result = stack_runner.script("choose-rollback-target", "--stage", "production", "--target", "")
    assert result.code == 0, result.log
    assert result.outputs == {"version": "v1.4.1", "from": "v1.4.2", "recorded": RELEASED["v1.4.1"]}


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
    stack_runner: Runner, stage: str, target: str, problem: str
) -> None:
    stack_runner.deployed("production", {"version": "v1.4.2", "previousVersion": "v1.4.1"})
    result = stack_runner.script("choose-rollback-target", "--stage", stage, "--target", target)
    assert result.code != 0 and problem in result.log, result.log


def test_a_rollback_without_a_previous_version_asks_for_a_target(stack_runner: Runner) -> None:
    result = stack_runner.script("choose-rollback-target", "--stage", "production")
    assert result.code != 0 and "give the target version explicitly" in result.log, result.log


def test_a_staging_rollback_reads_a_copy_without_the_build_and_production_its_file(stack_runner: Runner) -> None:
    committed = (stack_runner.work / "Pulumi.staging.yaml").read_text()
    staging = stack_runner.script("no-build-config", "--stage", "staging")
    assert staging.code == 0, staging.log
    copy = staging.outputs["file"]
    assert copy != str(stack_runner.work / "Pulumi.staging.yaml")
    config = yaml.safe_load(Path(copy).read_text())["config"]
    assert "build" not in config["kametrix-deploy:image"] and config["kametrix-deploy:version"] == "staging-3f9c2a1"
    assert (stack_runner.work / "Pulumi.staging.yaml").read_text() == committed, "the committed file keeps its build"
    production = stack_runner.script("no-build-config", "--stage", "production")
    assert production.outputs["file"] == str(stack_runner.work / "Pulumi.production.yaml"), production.log
    up = next(s for s in job("rollback.yml", "rollback").steps() if s.raw.get("id") == "up")
    assert '--config-file "$CONFIG_FILE"' in up.run


def test_the_committed_stack_files_are_what_the_cli_initialised(stack_runner: Runner) -> None:
    """The fixture itself: both stacks exist on the file backend and the checkout is clean."""
    assert stack_runner.pulumi("stack", "ls", "--json").count('"name"') == 2
    assert git(stack_runner.work, "status", "--porcelain") == ""


def test_each_release_records_its_digests_where_they_are_known() -> None:
    """Production records what resolve-digests found before its update; staging records its build's digests,
    the update's imageRef and migrateImageRef, after it. Either way through record-release."""
    production = job("deploy-production.yml", "release").own_steps()
    names = [step.raw.get("name") for step in production]
    record = next(step for step in production if "record-release" in step.scripts())
    assert names.index("Resolve the version's image digests and verify their provenance") < names.index(
        record.raw["name"]
    )
    assert record.env["APP_DIGEST"] == "${{ steps.digests.outputs.app_digest }}", record.env
    assert record.env["MIGRATE_DIGEST"] == "${{ steps.digests.outputs.migrate_digest }}", record.env
    assert "--app-digest" in record.run and "--migrate-digest" in record.run
    staging = job("deploy-staging.yml", "release").own_steps()
    names = [step.raw.get("name") for step in staging]
    after_up = next(step for step in staging if step.raw.get("name") == "Record the build's digests")
    built = next(step for step in staging if step.raw.get("name") == "Read the build's images")
    assert names.index("pulumi up") < names.index("Read the build's images") < names.index("Record the build's digests")
    script = (SCRIPT_DIR / "staging-build").read_text()
    assert "imageRef" in script and "migrateImageRef" in script and "staging-build" in built.scripts()
    assert after_up.env["APP_DIGEST"] == "${{ steps.built.outputs.app_digest }}", after_up.env
    assert "record-release" in after_up.scripts() and "--app-digest" in after_up.run
    pushed = staging[names.index("Record the build's digests") + 1]
    assert "commit-version-change" in pushed.scripts() and "--kind record" in pushed.run, pushed.run


def test_every_job_that_records_a_release_has_what_record_release_py_needs() -> None:
    """scripts/record_release.py needs ruamel.yaml: the setup action installs requirements.txt into .venv."""
    assert any(line.startswith("ruamel.yaml==") for line in (ROOT / "requirements.txt").read_text().splitlines())
    assert "record_release.py" in (ROOT / ".github" / "scripts" / "record-release").read_text()
    assert ".venv/bin/pip install" in (ROOT / ".github" / "actions" / "setup" / "action.yml").read_text()
    recorders = [j for j in jobs() if any("record-release" in step.scripts() for step in j.steps())]
    assert len(recorders) == 3, [j.label for j in recorders]
    for recorder in recorders:
        steps = recorder.own_steps()
        setup = [i for i, step in enumerate(steps) if local_action(step.raw) == "setup"]
        first_record = next(i for i, step in enumerate(steps) if "record-release" in step.scripts())
        assert setup and setup[0] < first_record, f"{recorder.label} records before the setup action installed .venv"
