"""Each stage's GitHub environment admits exactly the branches its deploy workflow runs from.

The workflow's branch is fixed where GitHub reads it before any stack file: its `on.push.branches`, the
`refs/heads/...` it refuses other runs with, and the ref it checks out. The stack declares the environment's
deployment branches; one more there (develop, a wildcard) lets a deployment pass GitHub's gate only for the
workflow to refuse it at run time, one fewer blocks the workflow's own runs.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from components.config import PRODUCTION_BRANCH
from tests import kit
from tests.workflows.model import BRANCH_OF_STAGE, STAGES, WORKFLOWS, triggers

REFUSED_REF = re.compile(r"refs/heads/([A-Za-z0-9._/-]+)")


def workflow_branches(workflow: dict[Any, Any]) -> dict[str, set[str]]:
    """Each place in a deploy workflow that names its branch -> the branches it names: its trigger, and in each job
    that deploys (runs in an environment) the refs it refuses others with and the ref it checks out."""
    found = {"on.push.branches": set(triggers(workflow)["push"]["branches"])}
    for job_id, job in workflow["jobs"].items():
        if "environment" not in job:
            continue
        for step in job.get("steps", []):
            refused = REFUSED_REF.findall(str(step.get("run", "")))
            if refused:
                found[f"jobs.{job_id}: {step.get('name', 'a step')}"] = set(refused)
            with_ = step.get("with") or {}
            if str(step.get("uses", "")).startswith("actions/checkout@") and "repository" not in with_:
                found[f"jobs.{job_id}: checkout ref"] = {str(with_.get("ref"))}
    return found


def branch_mismatches(stage: str, workflow: dict[Any, Any], stack: dict[str, Any]) -> list[str]:
    workflow_file = f".github/workflows/deploy-{stage}.yml"
    github = stack["config"]["kametrix-deploy:github"]
    declared = {
        "github.deploymentBranches": github["deploymentBranches"],
        "github.drift.deploymentBranches": github["drift"]["deploymentBranches"],
    }
    mismatches = []
    for place, branches in workflow_branches(workflow).items():
        for key, listed in declared.items():
            if set(listed) != branches or len(listed) != len(branches):
                mismatches.append(
                    f"Pulumi.{stage}.yaml {key}: {listed}, but {workflow_file} ({place}) deploys from "
                    f"{sorted(branches)}; allowed: exactly the branches the workflow deploys from"
                )
    return mismatches


@pytest.mark.parametrize("stage", STAGES)
def test_the_stack_admits_exactly_the_branches_its_deploy_workflow_runs_from(stage: str) -> None:
    workflow = WORKFLOWS[f"deploy-{stage}.yml"]
    assert len(workflow_branches(workflow)) >= 4, "the workflow names its branch in its trigger, checks and checkouts"
    mismatches = branch_mismatches(stage, workflow, kit.stack_file(stage))
    assert not mismatches, "\n".join(mismatches)
    assert set().union(*workflow_branches(workflow).values()) == {BRANCH_OF_STAGE[stage]}


def test_the_production_branch_the_config_enforces_is_the_workflows() -> None:
    assert set().union(*workflow_branches(WORKFLOWS["deploy-production.yml"]).values()) == {PRODUCTION_BRANCH}


@pytest.mark.parametrize("branches", [["main", "develop"], ["*"], ["develop"]])
def test_a_stack_whose_branches_differ_from_the_workflows_is_refused_naming_both(branches: list[str]) -> None:
    stack = copy.deepcopy(kit.stack_file("production"))
    stack["config"]["kametrix-deploy:github"]["deploymentBranches"] = branches
    mismatches = branch_mismatches("production", WORKFLOWS["deploy-production.yml"], stack)
    assert mismatches
    assert all(m.startswith(f"Pulumi.production.yaml github.deploymentBranches: {branches}, but ") for m in mismatches)
    assert any("deploy-production.yml (on.push.branches) deploys from ['main']" in m for m in mismatches)


def test_a_workflow_that_moves_its_branch_is_refused() -> None:
    workflow = copy.deepcopy(WORKFLOWS["deploy-production.yml"])
    triggers(workflow)["push"]["branches"] = ["release"]
    mismatches = branch_mismatches("production", workflow, kit.stack_file("production"))
    assert len(mismatches) == 2 and all("(on.push.branches) deploys from ['release']" in m for m in mismatches)
