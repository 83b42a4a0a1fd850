"""The state backend's credentials: what each backend needs on a runner, named before the first pulumi command."""

from __future__ import annotations

import pytest

from tests.workflows.conftest import Runner
from tests.workflows.model import ACTIONS, jobs

ROLE = "arn:aws:iam::123456789012:role/kametrix-state-read"


@pytest.mark.parametrize(
    ("env", "kind", "problem"),
    [
        ({"PULUMI_BACKEND_URL": "s3://kametrix-state", "AWS_ROLE_ARN": ROLE, "AWS_REGION": "eu-central-1"}, "s3", ""),
        (
            {"PULUMI_BACKEND_URL": "s3://kametrix-state", "AWS_REGION": "eu-central-1"},
            None,
            "needs the variable AWS_ROLE_ARN",
        ),
        ({"PULUMI_BACKEND_URL": "s3://kametrix-state", "AWS_ROLE_ARN": ROLE}, None, "needs the variable AWS_REGION"),
        ({"PULUMI_BACKEND_URL": "https://api.pulumi.com", "PULUMI_ACCESS_TOKEN": "pul-x"}, "cloud", ""),
        ({"PULUMI_BACKEND_URL": "https://api.pulumi.com"}, None, "needs the secret PULUMI_ACCESS_TOKEN"),
        ({"PULUMI_BACKEND_URL": "file:///home/runner/state"}, None, "lost after the job"),
        ({"PULUMI_BACKEND_URL": "gs://kametrix-state"}, None, "allowed s3://BUCKET or https://api.pulumi.com"),
        ({}, None, "has no PULUMI_BACKEND_URL secret"),
    ],
)
def test_each_backend_gets_the_credentials_it_needs_or_the_job_says_which_are_missing(
    runner: Runner, env: dict[str, str], kind: str | None, problem: str
) -> None:
    result = runner.script("backend-credentials", env={"ENVIRONMENT_NAME": "staging-preview", **env})
    if kind is not None:
        assert result.code == 0 and result.outputs == {"kind": kind}, result.log
    else:
        assert result.code != 0 and problem in result.log and "staging-preview" in result.log, result.log
    assert "kametrix-state" not in result.log, "the backend URL is a secret"


def test_an_s3_backend_is_reached_through_oidc_and_nothing_else_gets_aws_credentials() -> None:
    steps = ACTIONS["setup"]["runs"]["steps"]
    (assume,) = [s for s in steps if str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials@")]
    assert assume["if"] == "steps.backend.outputs.kind == 's3'"
    assert assume["with"]["role-to-assume"] == "${{ env.AWS_ROLE_ARN }}"
    assert "aws-access-key-id" not in assume["with"], "no long-lived AWS keys"
    names = [s.get("name") for s in steps]
    assert names.index("Check the state backend's credentials") < names.index("Install the Pulumi CLI")


def test_every_pulumi_job_gets_its_backend_credentials_from_its_environment() -> None:
    wanted = {
        "PULUMI_BACKEND_URL": "${{ secrets.PULUMI_BACKEND_URL }}",
        "PULUMI_CONFIG_PASSPHRASE": "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}",
        "PULUMI_ACCESS_TOKEN": "${{ secrets.PULUMI_ACCESS_TOKEN }}",
        "AWS_ROLE_ARN": "${{ vars.AWS_ROLE_ARN }}",
        "AWS_REGION": "${{ vars.AWS_REGION }}",
    }
    checked = 0
    for j in jobs():
        if not j.stacks():
            continue
        checked += 1
        assert {k: j.env.get(k) for k in wanted} == wanted, j.label
        assert j.raw["permissions"].get("id-token") == "write", f"{j.label}: OIDC to the backend's role"
        assert j.uses_action("setup"), j.label
    assert checked == 8
