"""The branch rulesets of main and develop (docs/github/ruleset-*.json, imported once) and CODEOWNERS.

A writer who could merge their own change to develop ran it with staging's secrets; one who could push to main ran
it with production-drift's. Both branches take only pull requests approved by a code owner other than the last
pusher, with the unit tests green; only the stage's own release App bypasses, and each App only its own branch.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
from typing import Any

import pytest

from tests.workflows.model import BRANCH_OF_STAGE, ROOT, WORKFLOWS

RULESETS = {branch: ROOT / "docs" / "github" / f"ruleset-{branch}.json" for branch in ("main", "develop")}
CODEOWNERS = ROOT / ".github" / "CODEOWNERS"
# What runs with a stage's secrets, or decides what does.
GUARDED = [
    ".github/workflows/deploy-production.yml",
    ".github/actions/setup/action.yml",
    ".github/scripts/lib.sh",
    ".github/CODEOWNERS",
    ".github/dependabot.yml",
    "components/image.py",
    "components/config/stage_policy.py",
    "__main__.py",
    "Pulumi.yaml",
    "Pulumi.production.yaml",
    "Pulumi.staging.yaml",
    "requirements.txt",
    "requirements.lock.txt",
    "scripts/record_release.py",
    "docs/github/ruleset-main.json",
    "docs/aws/state-access.json",
]


def ruleset(branch: str) -> dict[str, Any]:
    data = json.loads(RULESETS[branch].read_text())
    assert isinstance(data, dict)
    return data


def rule(data: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = [r for r in data["rules"] if r["type"] == kind] or [None]
    assert found is not None, f"{data['name']}: no {kind} rule"
    return dict(found.get("parameters") or {})


def ruleset_problems(branch: str, data: dict[str, Any]) -> list[str]:
    problems = []
    if data.get("enforcement") != "active" or data.get("target") != "branch":
        problems.append(f"{branch}: enforcement {data.get('enforcement')}, target {data.get('target')}")
    if data["conditions"]["ref_name"]["include"] != [f"refs/heads/{branch}"]:
        problems.append(f"{branch}: applies to {data['conditions']['ref_name']['include']}")
    kinds = {r["type"] for r in data["rules"]}
    for kind in ("deletion", "non_fast_forward", "pull_request", "required_status_checks"):
        if kind not in kinds:
            problems.append(f"{branch}: lacks the {kind} rule")
    if "pull_request" in kinds:
        review = rule(data, "pull_request")
        if review.get("required_approving_review_count", 0) < 1:
            problems.append(f"{branch}: a pull request merges without an approving review")
        for flag in ("require_code_owner_review", "require_last_push_approval", "dismiss_stale_reviews_on_push"):
            if review.get(flag) is not True:
                problems.append(f"{branch}: {flag} is not true")
    if "required_status_checks" in kinds:
        contexts = {c["context"] for c in rule(data, "required_status_checks")["required_status_checks"]}
        unit = WORKFLOWS["ci.yml"]["jobs"]["unit"]["name"]
        if unit not in contexts:
            problems.append(f"{branch}: the status check {unit!r} (ci.yml) is not required")
    actors = data.get("bypass_actors", [])
    if [(a["actor_type"], a["bypass_mode"]) for a in actors] != [("Integration", "always")]:
        problems.append(f"{branch}: bypass actors {actors}; allowed: exactly the stage's release App")
    return problems


@pytest.mark.parametrize("branch", sorted(RULESETS))
def test_each_stage_branch_takes_only_reviewed_pull_requests_with_green_tests(branch: str) -> None:
    problems = ruleset_problems(branch, ruleset(branch))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (
            lambda r: r["rules"][2]["parameters"].update(required_approving_review_count=0),
            "without an approving review",
        ),
        (lambda r: r["rules"][2]["parameters"].update(require_code_owner_review=False), "require_code_owner_review"),
        (lambda r: r["rules"][2]["parameters"].update(require_last_push_approval=False), "require_last_push_approval"),
        (
            lambda r: r["bypass_actors"].append({"actor_type": "Integration", "bypass_mode": "always", "actor_id": 1}),
            "bypass actors",
        ),
        (
            lambda r: r["bypass_actors"].__setitem__(
                0, {"actor_type": "RepositoryRole", "bypass_mode": "always", "actor_id": 5}
            ),
            "bypass actors",
        ),
    ],
)
def test_a_ruleset_that_lets_a_writer_merge_alone_or_another_actor_bypass_is_refused(edit: Any, problem: str) -> None:
    broken = copy.deepcopy(ruleset("main"))
    edit(broken)
    assert any(problem in p for p in ruleset_problems("main", broken)), ruleset_problems("main", broken)


def test_each_branch_is_bypassed_only_by_its_own_stages_release_app() -> None:
    """The import command fills each ruleset's one bypass actor with its own stage's App ID: staging's App, whose
    key staging's jobs hold, can never push to main."""
    setup = (ROOT / "docs" / "workflows.md").read_text()
    for stage, branch in BRANCH_OF_STAGE.items():
        assert f"the {stage} release App" in ruleset(branch)["name"]
        assert ruleset(branch)["bypass_actors"][0]["actor_id"] is None, "filled in at import, never another App's"
        command = re.search(rf"jq --argjson app \"\$(\w+)\" [^\n]*ruleset-{branch}\.json", setup)
        assert command, f"docs/workflows.md shows how to import ruleset-{branch}.json"
        assert command.group(1) == f"{stage.upper()}_RELEASE_APP_ID", command.group(0)


def codeowners() -> list[tuple[str, list[str]]]:
    entries = []
    for line in CODEOWNERS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pattern, *owners = line.split()
            entries.append((pattern, owners))
    return entries


def owned(path: str, entries: list[tuple[str, list[str]]]) -> list[str]:
    """The owners of `path`: the last matching pattern wins (anchored patterns; a trailing `/` is a folder)."""
    owners: list[str] = []
    for pattern, pattern_owners in entries:
        anchored = pattern.lstrip("/")
        if (anchored.endswith("/") and path.startswith(anchored)) or fnmatch.fnmatchcase(path, anchored):
            owners = pattern_owners
    return owners


def test_code_owners_review_everything_that_runs_with_a_stages_secrets() -> None:
    entries = codeowners()
    unowned = [path for path in GUARDED if not owned(path, entries)]
    assert not unowned, f"no code owner reviews {unowned}"
    assert all((ROOT / path).exists() for path in GUARDED), "the list names real files"
    assert not owned(".github/workflows/ci.yml", [(p, o) for p, o in entries if p != "/.github/"])


def test_the_rulesets_and_codeowners_are_guarded_by_themselves() -> None:
    """A change that loosens a ruleset's document or CODEOWNERS needs a code owner's approval too."""
    entries = codeowners()
    for path in (".github/CODEOWNERS", "docs/github/ruleset-main.json", "docs/github/ruleset-develop.json"):
        assert owned(path, entries), path
