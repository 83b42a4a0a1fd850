"""The state backend's credentials: what each backend needs on a runner, named before the first pulumi command."""

from __future__ import annotations

import re

import pytest

from tests.workflows.conftest import Runner
from tests.workflows.model import ACTIONS, PULUMI_CALL, SCRIPT_DIR, Step, jobs, logical_lines

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
        (
            {"PULUMI_BACKEND_URL": "https://api.pulumi.com"},
            None,
            "needs the secret PULUMI_ACCESS_TOKEN in the GitHub environment 'staging-preview' (declared from the "
            "production stack's stagingEnvironmentSecrets.PULUMI_READ_ACCESS_TOKEN)",
        ),
        ({"PULUMI_BACKEND_URL": "file:///home/runner/state"}, None, "lost after the job"),
        ({"PULUMI_BACKEND_URL": "gs://kametrix-state"}, None, "allowed s3://BUCKET or https://api.pulumi.com"),
        ({}, None, "has no PULUMI_BACKEND_URL secret (declared from the production stack's stagingEnvironmentSecrets"),
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
    assert names.index("Check the state backend's credentials") < names.index(assume["name"])


PULUMI_SECRETS = {
    "PULUMI_BACKEND_URL": "${{ secrets.PULUMI_BACKEND_URL }}",
    "PULUMI_CONFIG_PASSPHRASE": "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}",
    "PULUMI_ACCESS_TOKEN": "${{ secrets.PULUMI_ACCESS_TOKEN }}",
}


# What reading a stack's state needs: its backend, never the passphrase (nothing is decrypted).
BACKEND_SECRETS = {name: value for name, value in PULUMI_SECRETS.items() if name != "PULUMI_CONFIG_PASSPHRASE"}
READS_STATE_ONLY = re.compile(r"\bpulumi stack export --stack \S+(?! --show-secrets)")


def pulumi_calls(step: Step) -> list[str]:
    sources = [step.run, *((SCRIPT_DIR / name).read_text() for name in step.scripts())]
    return [line for source in sources for line in logical_lines(source).splitlines() if PULUMI_CALL.search(line)]


def runs_pulumi(step: Step) -> bool:
    return bool(pulumi_calls(step))


def secrets_needed(step: Step) -> dict[str, str]:
    """A step that only reads the state gets the backend's credentials; any other pulumi call the passphrase too."""
    if all(READS_STATE_ONLY.search(call) and "--show-secrets" not in call for call in pulumi_calls(step)):
        return BACKEND_SECRETS
    return PULUMI_SECRETS


def test_the_state_secrets_reach_only_the_steps_that_run_pulumi() -> None:
    """The passphrase decrypts every secret of the stage: a step that checks out code, installs packages, calls
    the registry or a health endpoint never holds it; a job-level env would hand it to every step."""
    checked, offenders = 0, []
    for j in jobs():
        held = [f"{name}" for name, value in j.env.items() if "secrets." in str(value)]
        if held:
            offenders.append(f"{j.label}: job-level env hands {held} to every step")
        for step in j.steps():
            passed = {name: step.env.get(name) for name in PULUMI_SECRETS if name in step.env}
            where = f"{j.label}: step {step.raw.get('name') or step.uses}"
            if runs_pulumi(step):
                checked += 1
                if passed != secrets_needed(step):
                    offenders.append(
                        f"{where} runs pulumi with {sorted(passed)} instead of {sorted(secrets_needed(step))}"
                    )
            elif passed and step.raw.get("id") != "backend":
                offenders.append(f"{where} runs no pulumi but holds {sorted(passed)}")
    assert checked >= 20
    assert not offenders, "\n".join(offenders)


def test_every_pulumi_job_gets_its_backend_credentials_from_its_environment() -> None:
    checked = 0
    for j in jobs():
        if not j.stacks():
            continue
        checked += 1
        assert {k: j.env.get(k) for k in ("AWS_ROLE_ARN", "AWS_REGION")} == {
            "AWS_ROLE_ARN": "${{ vars.AWS_ROLE_ARN }}",
            "AWS_REGION": "${{ vars.AWS_REGION }}",
        }, j.label
        assert j.raw["permissions"].get("id-token") == "write", f"{j.label}: OIDC to the backend's role"
        (setup,) = j.uses_action("setup")
        assert setup.raw["with"]["backend-url"] == PULUMI_SECRETS["PULUMI_BACKEND_URL"], j.label
        assert setup.raw["with"]["access-token"] == PULUMI_SECRETS["PULUMI_ACCESS_TOKEN"], j.label
    assert checked == 8
