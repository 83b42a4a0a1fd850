"""ONE open issue per subject: a failed production deployment, a drifted stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workflows.conftest import Runner, install
from tests.workflows.model import Step, job, logical_lines

FAKE_GH = r"""#!/usr/bin/env bash
# Stand-in for gh: `issue list` answers from $GH_ISSUES; every call is recorded.
set -euo pipefail
echo "$*" >>"$GH_LOG"
if [[ "$1 $2" == "issue list" ]]; then cat "$GH_ISSUES"; fi
"""


@pytest.fixture
def gh(runner: Runner, with_jq: Path, tmp_path: Path) -> Path:
    install(runner.bin_dir, "gh", FAKE_GH)
    return tmp_path / "gh.log"


def upsert(runner: Runner, log: Path, open_issues: list[dict[str, object]], *args: str) -> list[str]:
    issues = log.parent / "issues.json"
    issues.write_text(json.dumps(open_issues))
    log.write_text("")
    result = runner.script("upsert-issue", *args, env={"GH_LOG": str(log), "GH_ISSUES": str(issues), "GH_TOKEN": "x"})
    assert result.code == 0, result.log
    return [line for line in log.read_text().splitlines() if not line.startswith("label create")]


DEPLOYMENT = ["--title", "Production deployment failed", "--label", "deployment", "--label", "production"]


def test_a_failure_opens_the_issue_once_and_comments_on_it_while_it_is_open(runner: Runner, gh: Path) -> None:
    body = runner.work / "body.md"
    body.write_text("failed")
    calls = upsert(runner, gh, [], *DEPLOYMENT, "--body-file", str(body))
    assert calls[0].startswith(
        "issue list --repo kametrix-org/kametrix-deploy --state open --label deployment --label production"
    )
    assert calls[1].startswith("issue create --repo kametrix-org/kametrix-deploy --title Production deployment failed")
    calls = upsert(
        runner, gh, [{"number": 7, "title": "Production deployment failed"}], *DEPLOYMENT, "--body-file", str(body)
    )
    assert calls[1] == f"issue comment 7 --repo kametrix-org/kametrix-deploy --body-file {body}"
    assert len(calls) == 2


def test_a_clean_drift_check_closes_only_its_stages_issue(runner: Runner, gh: Path) -> None:
    open_issues = [
        {"number": 3, "title": "Drift detected: production"},
        {"number": 4, "title": "Drift detected: staging"},
    ]
    calls = upsert(
        runner, gh, open_issues, "--title", "Drift detected: staging", "--label", "drift", "--close", "clean"
    )
    assert calls[1] == "issue close 4 --repo kametrix-org/kametrix-deploy --comment clean"
    assert (
        upsert(runner, gh, [], "--title", "Drift detected: staging", "--label", "drift", "--close", "clean")[1:] == []
    )


def test_failures_of_both_deploy_workflows_land_in_the_one_deployment_issue() -> None:
    for workflow in ("deploy-production.yml", "rollback.yml"):
        reporter = job(workflow, "report-failure")
        assert "failure" in reporter.condition
        assert reporter.raw["concurrency"]["group"] == "deployment-issue-production", "two failures, one issue"
        assert 'upsert-issue --title "Production deployment failed" --label deployment --label production' in (
            " ".join(logical_lines(reporter.run_text()).split())
        )


def test_drift_opens_updates_and_closes_its_stages_issue() -> None:
    script = " ".join(logical_lines(job("drift.yml", "drift").run_text()).split())
    assert 'upsert-issue --title "Drift detected: $STAGE" --label drift --close' in script
    assert 'upsert-issue --title "Drift detected: $STAGE" --label drift --body-file "$body"' in script
    assert 'pulumi preview --stack "$STAGE" --refresh --expect-no-changes' in script


def test_a_rejected_approval_opens_no_deployment_issue() -> None:
    """A reviewer who rejects a deployment fails its job before any step: that decision is no failure to report.
    Only a job whose first step ran (it was approved) reports."""
    reporters = {"deploy-production.yml": ["deploy", "release"], "rollback.yml": ["rollback"]}
    for workflow, reported in reporters.items():
        condition = job(workflow, "report-failure").condition
        for job_id in reported:
            reporter_job = job(workflow, job_id)
            first = reporter_job.own_steps()[0]
            assert first.raw.get("id") == "started" and first.run.strip() == 'echo "started=true" >>"$GITHUB_OUTPUT"'
            assert reporter_job.raw["outputs"]["started"] == "${{ steps.started.outputs.started }}"
            assert f"needs.{job_id}.result == 'failure' && needs.{job_id}.outputs.started == 'true'" in condition, (
                f"{workflow}: a rejected {job_id} would open the issue: {condition}"
            )


def test_the_drift_check_opens_updates_and_closes_its_stages_backups_issue() -> None:
    drift = job("drift.yml", "drift")
    script = " ".join(logical_lines(drift.run_text()).split())
    assert 'upsert-issue --title "Backups need attention: $STAGE" --label backups --close' in script
    assert 'upsert-issue --title "Backups need attention: $STAGE" --label backups --body-file "$body"' in script
    condition = backup_check().raw["if"]
    assert condition == "${{ !cancelled() }}", "a drifted or failed preview still has its backups checked"


def backup_check() -> Step:
    (check,) = [step for step in job("drift.yml", "drift").own_steps() if step.raw.get("name") == "Check the backups"]
    return check


# Stand-in for the program's .venv python: records how the runner was asked, answers as $BACKUPS_ANSWER says.
FAKE_RUNNER = r"""#!/usr/bin/env bash
echo "$*" >>"$RUNNER_LOG"
echo "newest base backup: 20261203-010000F (2 h ago)"
[[ "$BACKUPS_ANSWER" == fresh ]] || { echo "error: the backups of production need attention: stale" >&2; exit 1; }
"""


@pytest.mark.parametrize(("answer", "status"), [("fresh", "ok"), ("stale", "attention")])
def test_the_backup_check_asks_the_runner_over_the_stacks_access_and_says_ok_or_attention(
    stack_runner: Runner, answer: str, status: str
) -> None:
    check = backup_check()
    python = stack_runner.work / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    install(python.parent, "python", FAKE_RUNNER)
    log = stack_runner.work.parent / "runner.log"
    result = stack_runner.step(check, {"STAGE": "production", "RUNNER_LOG": str(log), "BACKUPS_ANSWER": answer})
    assert result.code == 0 and result.outputs == {"status": status}, result.log
    assert log.read_text() == "-m runner --stack production backups --check\n"
    assert "newest base backup" in (stack_runner.work.parent / "backups.txt").read_text()


def test_a_stage_without_a_backup_section_has_no_backups_to_check(stack_runner: Runner) -> None:
    check = backup_check()
    stack_runner.pulumi("config", "rm", "--stack", "production", "--path", "backup")
    log = stack_runner.work.parent / "runner.log"
    result = stack_runner.step(check, {"STAGE": "production", "RUNNER_LOG": str(log)})
    assert result.code == 0 and result.outputs == {"status": "none"}, result.log
    assert not log.exists(), "the runner was asked about backups the stack does not declare"
