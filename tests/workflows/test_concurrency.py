"""Who waits for whom: releases, deploys and rollbacks of a stack queue in `pulumi-<stack>`; previews never
enter that queue, and a newer preview cancels the one it supersedes."""

from __future__ import annotations

from tests.workflows.model import STAGES, deploy_jobs, normalize, preview_jobs


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
