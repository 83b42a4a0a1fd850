"""The health check after every deploy and rollback: a valid build of the deployed commit, bounded retries."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.workflows.conftest import Runner, install
from tests.workflows.model import deploy_jobs

EXPECTED = "3f9c2a1d7b8e4f6a0c5d2e9b1a7f3c8d4e6b2a90"


def test_every_deploy_ends_with_the_one_health_check() -> None:
    for j in deploy_jobs():
        (check,) = [s for s in j.own_steps() if "health-check" in s.scripts()]
        assert check.raw["name"] == "Health check", j.label
        assert check.env["APP_URL"] == "${{ vars.APP_URL }}", j.label
        assert check.env["EXPECTED_SHA"].startswith("${{ steps."), j.label


@pytest.mark.parametrize(
    ("body", "healthy"),
    [
        ('{"build": {"id": "v1", "gitSha": "SHA", "valid": true}}', True),
        ('{"build": {"id": "v1", "gitSha": "SHORT", "valid": true}}', True),
        ('{"build": {"id": "v1", "valid": true}}', True),
        ('{"build": {"id": "v1", "gitSha": "SHA", "valid": false}}', False),
        ('{"build": {"id": "v1", "gitSha": "0123456789abcdef0123456789abcdef01234567", "valid": true}}', False),
        ('{"status": "healthy"}', False),
        ("<html>502 Bad Gateway</html>", False),
    ],
)
def test_the_health_check_wants_a_valid_build_of_the_deployed_commit(
    body: str, healthy: bool, runner: Runner, with_jq: Path, tmp_path: Path
) -> None:
    (tmp_path / "body.json").write_text(body.replace("SHORT", EXPECTED[:7]).replace("SHA", EXPECTED))
    install(runner.bin_dir, "curl", f'#!/bin/sh\necho "$*" >>"{tmp_path}/curl.log"\ncat "{tmp_path}/body.json"\n')
    (tmp_path / "curl.log").write_text("")
    result = runner.script("health-check", "--url", "https://app.kametrix.example/", "--expected-sha", EXPECTED)
    assert (result.code == 0) == healthy, result.log
    calls = (tmp_path / "curl.log").read_text().splitlines()
    assert calls and all("https://app.kametrix.example/api/health?build=true" in c for c in calls)
    assert len(calls) == (1 if healthy else 15), "bounded retries"
