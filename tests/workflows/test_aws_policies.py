"""The documented AWS set-up of the state backend (docs/aws/state-access.json): each stage's state in its own bucket,
each role trusted by exactly the GitHub environments that use it, in both OIDC subject formats, and allowed only
its own stage's bucket and secrets key.

A staging job that could edit production's state could add a resource whose delete command runs on production's
server at the next approved `pulumi up`: no role a staging, preview or drift job assumes names production's state.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.workflows.model import ROOT, STAGES
from tests.workflows.test_environments import named_environments

POLICIES = ROOT / "docs" / "aws" / "state-access.json"
ISSUER = "token.actions.githubusercontent.com"
READ_ACTIONS = {"s3:ListBucket", "s3:GetObject", "kms:Decrypt"}
WRITE_ACTIONS = {"s3:PutObject", "s3:DeleteObject"}


def documented() -> dict[str, Any]:
    data = json.loads(POLICIES.read_text())
    assert isinstance(data, dict)
    return data


def subjects(environment: str) -> set[str]:
    """Both formats GitHub issues: names only (older repositories) and names with immutable numeric IDs (those
    created or renamed since July 2026, or opted in)."""
    return {
        f"repo:<owner>/kametrix-deploy:environment:{environment}",
        f"repo:<owner>@<owner-id>/kametrix-deploy@<repository-id>:environment:{environment}",
    }


def environments_of_role(name: str) -> set[str]:
    """The GitHub environments whose jobs assume the role, from the workflows: a stage's deploy environment for
    its write role, its -preview and -drift environments for its read role."""
    stage = name.rsplit("-", 1)[1]
    wanted = {stage} if "-write-" in name else {f"{stage}-preview", f"{stage}-drift"}
    named = set(named_environments())
    assert wanted <= named, f"{name}: the workflows name no {sorted(wanted - named)}"
    return wanted


def trust_problems(name: str, role: dict[str, Any]) -> list[str]:
    problems = []
    for statement in role["trust"]["Statement"]:
        condition = statement.get("Condition", {})
        if statement.get("Effect") != "Allow":
            continue
        if statement.get("Action") != "sts:AssumeRoleWithWebIdentity":
            problems.append(f"{name}: trusts {statement.get('Action')}")
        if not str(statement.get("Principal", {}).get("Federated", "")).endswith(f":oidc-provider/{ISSUER}"):
            problems.append(f"{name}: trusts another principal than GitHub's OIDC provider")
        if set(condition) != {"StringEquals"}:
            problems.append(f"{name}: conditions {sorted(condition)}; allowed: StringEquals only (no pattern)")
        equals = condition.get("StringEquals", {})
        if equals.get(f"{ISSUER}:aud") != "sts.amazonaws.com":
            problems.append(f"{name}: aud must equal sts.amazonaws.com; received {equals.get(f'{ISSUER}:aud')!r}")
        trusted = equals.get(f"{ISSUER}:sub", [])
        trusted = {trusted} if isinstance(trusted, str) else set(trusted)
        wanted = set().union(*map(subjects, environments_of_role(name)))
        if trusted != wanted:
            problems.append(
                f"{name}: trusts sub {sorted(trusted)}; allowed exactly {sorted(wanted)} (both subject formats of "
                "the environments that use it)"
            )
    return problems


def permission_problems(name: str, role: dict[str, Any], buckets: dict[str, str]) -> list[str]:
    stage = role["stage"]
    problems = []
    own = {f"arn:aws:s3:::{buckets[stage]}", f"arn:aws:s3:::{buckets[stage]}/*"}
    own_key = f"arn:aws:kms:<region>:<account-id>:key/<{stage}-secrets-key-id>"
    allowed_actions = READ_ACTIONS | (WRITE_ACTIONS if "-write-" in name else set())
    for statement in role["permissions"]["Statement"]:
        if statement.get("Effect") != "Allow":
            continue
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in actions:
            if action not in allowed_actions:
                problems.append(f"{name}: allows {action}; allowed: {sorted(allowed_actions)}")
        for resource in resources:
            if resource not in own | {own_key}:
                problems.append(f"{name}: reaches {resource}; allowed: only {stage}'s bucket and secrets key")
    return problems


def all_problems(data: dict[str, Any]) -> list[str]:
    problems = []
    for name, role in data["roles"].items():
        problems += trust_problems(name, role) + permission_problems(name, role, data["buckets"])
    return problems


def test_each_stage_has_its_own_bucket_and_a_write_and_a_read_role() -> None:
    data = documented()
    assert set(data["buckets"]) == set(STAGES) and len(set(data["buckets"].values())) == len(STAGES)
    assert set(data["roles"]) == {f"kametrix-state-{kind}-{stage}" for kind in ("write", "read") for stage in STAGES}


def test_the_documented_policies_pass_every_rule() -> None:
    problems = all_problems(documented())
    assert not problems, "\n".join(problems)


def test_staging_secrets_cannot_reach_production_state() -> None:
    """staging's write role (and staging's read role) name no production bucket, object or key."""
    data = documented()
    for name in ("kametrix-state-write-staging", "kametrix-state-read-staging"):
        assert "production" not in json.dumps(data["roles"][name]["permissions"]), name
    broken = copy.deepcopy(data)
    broken["roles"]["kametrix-state-write-staging"]["permissions"]["Statement"][1]["Resource"] = "arn:aws:s3:::*/*"
    assert any("kametrix-state-write-staging: reaches arn:aws:s3:::*/*" in p for p in all_problems(broken))


def test_previews_and_drift_checks_cannot_write_any_state() -> None:
    data = documented()
    for stage in STAGES:
        statements = data["roles"][f"kametrix-state-read-{stage}"]["permissions"]["Statement"]
        assert not {a for s in statements for a in s["Action"]} & WRITE_ACTIONS
    broken = copy.deepcopy(data)
    broken["roles"]["kametrix-state-read-production"]["permissions"]["Statement"][1]["Action"].append("s3:PutObject")
    assert "kametrix-state-read-production: allows s3:PutObject" in " ".join(all_problems(broken))


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda c: c.pop("token.actions.githubusercontent.com:aud"), "aud must equal sts.amazonaws.com"),
        (lambda c: c.update({"token.actions.githubusercontent.com:sub": c[f"{ISSUER}:sub"][:1]}), "both subject"),
        (
            lambda c: c.update({"token.actions.githubusercontent.com:sub": [*c[f"{ISSUER}:sub"], "repo:<owner>/*"]}),
            "both subject formats",
        ),
    ],
)
def test_a_trust_policy_with_one_subject_format_a_wildcard_or_no_audience_is_refused(edit: Any, problem: str) -> None:
    """Repositories created or renamed since mid-2026 get subjects with numeric IDs: a policy naming only the old
    format refuses every S3 job; one matching a pattern trusts more than the environments."""
    broken = copy.deepcopy(documented())
    edit(broken["roles"]["kametrix-state-write-production"]["trust"]["Statement"][0]["Condition"]["StringEquals"])
    assert any(problem in p for p in all_problems(broken)), all_problems(broken)
    like = copy.deepcopy(documented())
    condition = like["roles"]["kametrix-state-read-staging"]["trust"]["Statement"][0]["Condition"]
    condition["StringLike"] = condition.pop("StringEquals")
    assert any("allowed: StringEquals only" in p for p in all_problems(like))


def test_the_workflows_docs_show_both_subject_formats_and_point_at_the_policies() -> None:
    text = (ROOT / "docs" / "workflows.md").read_text()
    assert "docs/aws/state-access.json" in text
    for subject in subjects("production"):
        assert subject in text, subject
