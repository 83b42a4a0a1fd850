"""The README's first command releases the local stack for real through the runner, says what answers and what it
left running, and run again unchanged is a no-op."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from embedded_default import workspace as local_workspace
from embedded_default.target import LocalTarget
from tests.e2e.stage import remove_project
from tests.kit import PROJECT_DIR

COMMITTED = yaml.safe_load((PROJECT_DIR / "Pulumi.local.yaml").read_text())["config"]
APP = COMMITTED["kametrix-deploy:app"]
APP_DIR = COMMITTED["kametrix-deploy:server"]["appDir"]


def main_job(pulumi_cli: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "embedded_default", "up"],
        cwd=PROJECT_DIR,
        env={**os.environ, "KAMETRIX_PULUMI_CLI": str(pulumi_cli)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def released(target: LocalTarget, pulumi_cli: Path) -> Iterator[list[subprocess.CompletedProcess[str]]]:
    """The main job run twice on this clone's local stack (.pulumi/local), then its stage removed. A local stack an
    operator made here is never touched: the test then skips."""
    if (local_workspace.DEFAULT_DIR / "state").exists():
        pytest.skip(f"{local_workspace.DEFAULT_DIR} holds a local stack of this clone's own; it is left alone")
    runs = [main_job(pulumi_cli), main_job(pulumi_cli)]
    yield runs
    remove_project(target, APP_DIR, APP["composeProject"])
    shutil.rmtree(local_workspace.DEFAULT_DIR)


def test_the_main_job_releases_the_local_stack_and_says_what_answers(
    released: list[subprocess.CompletedProcess[str]],
) -> None:
    first = released[0]
    assert first.returncode == 0, first.stdout + first.stderr
    with urllib.request.urlopen(f"{APP['url']}/api/version", timeout=5) as response:  # noqa: S310 - loopback
        version = json.loads(response.read())["version"]
    assert version == COMMITTED["kametrix-deploy:version"]
    said = first.stdout
    assert f"answering now:   {APP['url']} serves {version}" in said, said
    assert "python -m runner --stack local release v2.0.0 --yes" in said
    assert "python -m runner --stack local rollback --yes" in said
    assert "left running:" in said and '"dockerd":' in said and "python -m embedded_default down" in said
    assert "stand-in for pulumi-command" in said, "the engine's log does not say the providers are stand-ins"


def test_the_main_job_run_again_unchanged_is_a_no_op(released: list[subprocess.CompletedProcess[str]]) -> None:
    again = released[1]
    assert again.returncode == 0, again.stdout + again.stderr
    assert "unchanged" in again.stdout and "created" not in again.stdout.split("Resources:")[-1], again.stdout
    assert not any(f"{op} " in again.stdout.split("Resources:")[-1] for op in ("updated", "replaced")), again.stdout
