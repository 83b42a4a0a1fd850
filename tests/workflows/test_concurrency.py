"""Who waits for whom: releases, deploys and rollbacks of a stack queue in `pulumi-<stack>`; previews never
enter that queue, and a newer preview cancels the one it supersedes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.workflows.conftest import Runner, install
from tests.workflows.model import STAGES, deploy_jobs, job, normalize, preview_jobs


def test_every_job_that_changes_a_stack_queues_in_its_stacks_group() -> None:
    """One group per stack, shared by all workflows: a rollback and a deploy never overlap, none is cancelled."""
    groups: dict[str, set[str]] = {stage: set() for stage in STAGES}
    for j in deploy_jobs():
        concurrency = j.raw["concurrency"]
        assert concurrency.get("cancel-in-progress") is False, f"{j.label}: a pending deploy is never cancelled"
        assert concurrency.get("queue") == "max", f"{j.label}: queue, in order, instead of replacing a pending run"
        (stack,) = j.stacks()
        for concrete_stack, concrete_group in j.expansions([stack, normalize(concurrency["group"])]):
            assert concrete_group == f"pulumi-{concrete_stack}", j.label
            groups[concrete_stack].add(concrete_group)
    assert groups == {stage: {f"pulumi-{stage}"} for stage in STAGES}


def test_previews_have_their_own_group_and_a_newer_one_cancels_the_older() -> None:
    """A production preview waiting for its reviewer held `pulumi-production`: an emergency rollback waited."""
    deploy_groups = {
        concrete for j in deploy_jobs() for (concrete,) in j.expansions([normalize(j.raw["concurrency"]["group"])])
    }
    checked = 0
    for j in preview_jobs():
        checked += 1
        concurrency = j.raw["concurrency"]
        assert concurrency.get("cancel-in-progress") is True, f"{j.label}: a superseded preview is cancelled"
        assert "queue" not in concurrency, j.label
        group = normalize(concurrency["group"])
        per_pr = group.replace("${{ github.event.pull_request.number }}", "<PR>")
        (stack,) = j.stacks()
        for concrete_group, concrete_stack in j.expansions([per_pr, stack]):
            assert concrete_group not in deploy_groups, f"{j.label} waits in the deploy queue {concrete_group}"
            assert concrete_stack in concrete_group, f"{j.label}: one group per stack"
        if j.workflow_name == "ci.yml":
            assert group.endswith("-${{ github.event.pull_request.number }}"), f"{j.label}: one group per PR"
    assert checked == 3, "two PR previews and the drift check"


FAKE_GH = r"""#!/usr/bin/env bash
# Stand-in for gh: `run list` answers the waiting runs of $GH_WAITING (through the real jq); calls are recorded.
set -euo pipefail
echo "$*" >>"$GH_LOG"
if [[ "$1 $2" == "run list" ]]; then
  [[ " $* " == *" --status waiting "* ]] || { echo "only waiting runs may be listed" >&2; exit 3; }
  jq -r '.[].databaseId' "$GH_WAITING"
fi
"""


def test_an_emergency_rollback_cancels_production_deploys_that_wait_for_approval(
    runner: Runner, tmp_path: Path
) -> None:
    """A deploy nobody has approved holds its place in `pulumi-production`: the rollback would wait behind it."""
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed (the GitHub runners have it)")
    (runner.bin_dir / "jq").symlink_to(jq)
    install(runner.bin_dir, "gh", FAKE_GH)
    log, waiting = tmp_path / "gh.log", tmp_path / "waiting.json"
    log.write_text("")
    waiting.write_text(json.dumps([{"databaseId": 11}, {"databaseId": 12}]))
    result = runner.script(
        "cancel-waiting-runs",
        "--workflow",
        "deploy-production.yml",
        env={"GH_LOG": str(log), "GH_WAITING": str(waiting)},
    )
    assert result.code == 0, result.log
    calls = log.read_text().splitlines()
    assert calls[0].startswith("run list --repo kametrix-org/kametrix-deploy --workflow deploy-production.yml")
    assert calls[1:] == [
        "run cancel 11 --repo kametrix-org/kametrix-deploy",
        "run cancel 12 --repo kametrix-org/kametrix-deploy",
    ]
    make_way, rollback = job("rollback.yml", "make-way"), job("rollback.yml", "rollback")
    assert "cancel-waiting-runs --workflow deploy-production.yml" in make_way.run_text()
    assert make_way.condition == "inputs.stage == 'production'" and "concurrency" not in make_way.raw
    assert make_way.raw["permissions"] == {"actions": "write"}
    assert rollback.raw["needs"] == ["make-way"], "the rollback enters the queue after the waiting runs left it"
    assert "needs.make-way.result != 'failure'" in rollback.condition, "and not when they could not be cancelled"
