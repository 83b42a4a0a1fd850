"""Pull request previews: which PRs get one, and the ONE comment per stack that every run edits, failed or not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workflows.conftest import Runner, install
from tests.workflows.model import ACTIONS, WORKFLOWS, Job, Step, job, triggers

MARKER = "<!-- kametrix-deploy preview: staging -->"


def test_previews_run_on_same_repository_pull_requests_but_not_for_dependabot() -> None:
    """Fork and Dependabot runs get no secrets and a read-only token: their preview could only fail."""
    assert "pull_request" in triggers(WORKFLOWS["ci.yml"])
    for job_id in ("preview-staging", "preview-production"):
        condition = job("ci.yml", job_id).condition
        assert condition.startswith("github.event_name == 'pull_request'"), job_id
        assert "&& github.event.pull_request.head.repo.full_name == github.repository" in condition, job_id
        assert "&& github.actor != 'dependabot[bot]'" in condition, job_id
        assert "||" not in condition, f"{job_id}: every condition must hold"
        (preview,) = job("ci.yml", job_id).uses_action("preview")
        assert preview.raw["with"]["stack"] == job_id.removeprefix("preview-")


def test_production_is_previewed_on_the_promotion_pr_only() -> None:
    condition = job("ci.yml", "preview-production").condition
    assert "github.event.pull_request.base.ref == 'main'" in condition
    assert "github.event.pull_request.head.ref == 'develop'" in condition


def test_pull_request_workflows_never_change_a_stack() -> None:
    for name, workflow in WORKFLOWS.items():
        on = triggers(workflow)
        assert "pull_request_target" not in on, f"{name}: pull_request_target runs PR code with secrets"
        if "pull_request" in on:
            for job_id in workflow["jobs"]:
                assert not job(name, job_id).touches({"up", "refresh", "destroy", "import"}), f"{name}:{job_id}"


def test_the_comment_is_posted_after_a_failed_preview_too() -> None:
    """pulumi/actions commented only after a successful preview: the last green comment stayed."""
    steps = ACTIONS["preview"]["runs"]["steps"]
    names = [step["name"] for step in steps]
    assert names == ["pulumi preview", "Post or edit the PR comment", "Fail when the preview failed"]
    assert "set +e" in steps[0]["run"] and "PIPESTATUS[0]" in steps[0]["run"], "the preview step itself never fails"
    assert "if" not in steps[1], "the comment step runs whatever the preview's outcome"
    assert steps[2]["if"] == "steps.preview.outputs.outcome != 'success'"


@pytest.mark.parametrize(("pulumi_exit", "outcome"), [(0, "success"), (1, "failure")])
def test_the_preview_step_records_its_outcome_instead_of_failing(
    runner: Runner, pulumi_exit: int, outcome: str
) -> None:
    install(runner.bin_dir, "pulumi", f"#!/bin/sh\necho 'preview output for' \"$@\"\nexit {pulumi_exit}\n")
    step = Step(ACTIONS["preview"]["runs"]["steps"][0], Job("ci.yml", "preview-staging", {}, WORKFLOWS["ci.yml"]))
    result = runner.step(step, {"STACK": "staging"})
    assert result.code == 0 and result.outputs == {"outcome": outcome}, result.log
    assert "preview output for preview --stack staging" in (runner.work.parent / "preview-staging.txt").read_text()
    assert "### pulumi preview of staging" in result.summary


FAKE_GH = r"""#!/usr/bin/env bash
# Stand-in for `gh api`: serves the PR's comments from pages/*.json (as --paginate would, page by page,
# each filtered by --jq through the real jq) and records every call.
set -euo pipefail
echo "$*" >>"$GH_LOG"
args=("$@")
method=GET jq_filter="" fields=()
for ((i = 1; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --method) method="${args[i + 1]}" ;;
    --jq) jq_filter="${args[i + 1]}" ;;
    -F) fields+=("${args[i + 1]}") ;;
  esac
done
if [[ "$method" == GET ]]; then
  for page in "$GH_PAGES"/*.json; do jq -r "$jq_filter" "$page"; done
  exit 0
fi
for field in "${fields[@]}"; do
  cp "${field#body=@}" "$GH_LOG.body"
done
[[ -z "$jq_filter" ]] || echo '{"id": 999}' | jq -r "$jq_filter"
"""


@pytest.fixture
def gh(runner: Runner, with_jq: Path, tmp_path: Path) -> Path:
    install(runner.bin_dir, "gh", FAKE_GH)
    pages = tmp_path / "pages"
    pages.mkdir()
    return pages


BOT = {"login": "github-actions[bot]", "type": "Bot"}
HEAD_SHA = "feedfacefeedfacefeedfacefeedfacefeedface"


def comment_page(pages: Path, number: int, comments: list[tuple[int, str]], user: dict[str, str] = BOT) -> None:
    """A page of the PR's comments, each written by `user` (the workflows' own token by default)."""
    page = [{"id": i, "body": body, "user": user} for i, body in comments]
    (pages / f"{number:02d}.json").write_text(json.dumps(page))


def post(runner: Runner, pages: Path, outcome: str) -> tuple[list[str], str]:
    log = pages.parent / "gh.log"
    log.write_text("")
    (runner.work.parent / "preview.txt").write_text("+ 1 to create\n~~~ tilde fence in the output\n")
    result = runner.script(
        "preview-comment",
        "--stack",
        "staging",
        "--pr",
        "42",
        "--head-sha",
        HEAD_SHA,
        "--outcome",
        outcome,
        "--log",
        str(runner.work.parent / "preview.txt"),
        env={"GH_LOG": str(log), "GH_PAGES": str(pages), "GH_TOKEN": "x"},
    )
    assert result.code == 0, result.log
    body_file = Path(f"{log}.body")
    return log.read_text().splitlines(), body_file.read_text() if body_file.exists() else ""


def test_the_comment_found_beyond_the_first_page_is_edited_and_duplicates_removed(runner: Runner, gh: Path) -> None:
    """pulumi/actions looked at the first 30 comments only: busy PRs got a second comment."""
    comment_page(gh, 1, [(i, f"review comment {i}") for i in range(1, 31)])
    comment_page(gh, 2, [(31, f"{MARKER}\nold preview"), (32, "more talk"), (33, f"{MARKER}\nduplicate")])
    calls, body = post(runner, gh, "failure")
    assert calls[0].startswith("api --paginate repos/kametrix-org/kametrix-deploy/issues/42/comments")
    assert calls[1].startswith("api --method PATCH repos/kametrix-org/kametrix-deploy/issues/comments/31 ")
    assert calls[2] == "api --method DELETE repos/kametrix-org/kametrix-deploy/issues/comments/33"
    assert len(calls) == 3, "no new comment"
    assert body.startswith(MARKER) and "**failed**" in body, "a failed preview replaces the last green comment"
    assert "+ 1 to create" in body and "~~~ tilde" not in body, "the output cannot close its own fence"


def test_the_first_preview_of_a_pr_creates_the_comment(runner: Runner, gh: Path) -> None:
    comment_page(gh, 1, [(1, "looks good"), (2, "<!-- kametrix-deploy preview: production -->\nthe other stack")])
    calls, body = post(runner, gh, "success")
    assert calls[1].startswith("api --method POST repos/kametrix-org/kametrix-deploy/issues/42/comments ")
    assert len(calls) == 2, "the other stack's comment is not this stack's"
    assert body.startswith(MARKER) and ": succeeded" in body


def test_a_marker_posted_by_someone_else_is_never_taken_for_the_preview(runner: Runner, gh: Path) -> None:
    """Anyone who can comment can post the marker first with "no changes": the reviewer would read theirs."""
    someone = {"login": "mallory", "type": "User"}
    comment_page(gh, 1, [(7, f"{MARKER}\n#### `pulumi preview` of `staging`: succeeded\nno changes")], someone)
    comment_page(gh, 2, [(8, f"{MARKER}\nposted by another App")], {"login": "other-app[bot]", "type": "Bot"})
    calls, body = post(runner, gh, "success")
    assert calls[1].startswith("api --method POST repos/kametrix-org/kametrix-deploy/issues/42/comments "), calls
    assert len(calls) == 2, "their comments are neither edited nor deleted: ours is posted beside them"
    assert body.startswith(MARKER)


def test_the_comment_names_the_head_commit_the_reviewer_read(runner: Runner, gh: Path) -> None:
    """A pull_request run checks out the merge commit (GITHUB_SHA); the reviewer reads the PR's head."""
    comment_page(gh, 1, [])
    _, body = post(runner, gh, "success")
    assert f"Head commit `{HEAD_SHA}`" in body and "0123456789abcdef" not in body, body
    step = ACTIONS["preview"]["runs"]["steps"][1]
    assert step["env"]["HEAD_SHA"] == "${{ github.event.pull_request.head.sha }}"
    assert '--head-sha "$HEAD_SHA"' in step["run"]


COMMENT_EVENTS = {"issue_comment", "pull_request_review_comment", "pull_request_review", "discussion_comment"}


def test_a_comment_starts_no_workflow_and_no_workflow_runs_a_pull_requests_code_with_secrets() -> None:
    """Someone who can only comment reaches nothing: no workflow starts on a comment or a review, and none runs on
    pull_request_target (a PR's code with the repository's secrets)."""
    for name, workflow in WORKFLOWS.items():
        on = set(triggers(workflow))
        assert not on & COMMENT_EVENTS, f"{name} starts on {sorted(on & COMMENT_EVENTS)}"
        assert "pull_request_target" not in on and "workflow_run" not in on, f"{name}: {sorted(on)}"
