"""A version is recorded once, the same way from a workflow step and a terminal, exactly as the program reads it."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import yaml

from tests import kit

SCRIPT = kit.PROJECT_DIR / "scripts" / "record_release.py"
REPOSITORY = "ghcr.io/kametrix-org/kametrix/kametrix"
APP = "sha256:" + "a1" * 32
MIGRATE = "sha256:" + "b2" * 32
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def record(stack_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--stack-file", str(stack_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def copy_of(stack: str, tmp_path: Path) -> Path:
    copied = tmp_path / f"Pulumi.{stack}.yaml"
    copied.write_text((kit.PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text())
    return copied


def v143(stack_file: Path, app: str = APP, commit: str = COMMIT) -> subprocess.CompletedProcess[str]:
    return record(
        stack_file, "--version", "v1.4.3", "--app-digest", app, "--migrate-digest", MIGRATE, "--commit", commit
    )


def test_a_recorded_version_is_what_production_then_deploys(tmp_path: Path) -> None:
    stack_file = copy_of("production", tmp_path)
    result = v143(stack_file, app=f"{REPOSITORY}@{APP}")
    assert result.returncode == 0, result.stderr
    assert "recorded v1.4.3" in result.stdout
    config = yaml.safe_load(stack_file.read_text())["config"]
    deployment = kit.run_stack(
        "production",
        overrides={
            "version": "v1.4.3",
            "image.digests": config["kametrix-deploy:image"]["digests"],
            "github.releases": config["kametrix-deploy:github"]["releases"],
        },
        registry_tags={},
    )
    assert deployment.output("imageRef") == f"{REPOSITORY}@{APP}"
    assert deployment.output("migrateImageRef") == f"{REPOSITORY}@{MIGRATE}"


def test_recording_only_adds_lines_and_keeps_every_comment(tmp_path: Path) -> None:
    stack_file = copy_of("production", tmp_path)
    before = stack_file.read_text().splitlines()
    assert v143(stack_file).returncode == 0
    diff = [line for line in difflib.ndiff(before, stack_file.read_text().splitlines()) if line[:1] in "+-"]
    assert [line for line in diff if line.startswith("-")] == [], diff
    assert sorted(diff) == sorted(
        ["+       v1.4.3:", f"+         app: {APP}", f"+         migrate: {MIGRATE}", f"+       v1.4.3: {COMMIT}"]
    ), diff


def test_recording_the_same_values_again_changes_nothing(tmp_path: Path) -> None:
    stack_file = copy_of("production", tmp_path)
    assert v143(stack_file).returncode == 0
    recorded = stack_file.read_text()
    again = v143(stack_file)
    assert again.returncode == 0 and "already recorded" in again.stdout
    assert stack_file.read_text() == recorded


def test_a_version_never_changes_its_bytes_or_its_commit(tmp_path: Path) -> None:
    stack_file = copy_of("production", tmp_path)
    assert v143(stack_file).returncode == 0
    recorded = stack_file.read_text()
    other = "sha256:" + "c3" * 32
    refused = v143(stack_file, app=other)
    assert refused.returncode == 1
    assert APP in refused.stderr and other in refused.stderr and "image.digests.v1.4.3" in refused.stderr
    moved = v143(stack_file, commit="f" * 40)
    assert moved.returncode == 1 and COMMIT in moved.stderr and "f" * 40 in moved.stderr
    assert stack_file.read_text() == recorded


def test_a_staging_build_is_recorded_without_a_release_record(tmp_path: Path) -> None:
    stack_file = copy_of("staging", tmp_path)
    args = ["--version", "staging-3f9c2a1", "--app-digest", APP, "--migrate-digest", MIGRATE]
    assert record(stack_file, *args).returncode == 0
    config = yaml.safe_load(stack_file.read_text())["config"]
    assert config["kametrix-deploy:image"]["digests"]["staging-3f9c2a1"] == {"app": APP, "migrate": MIGRATE}
    assert "releases" not in config["kametrix-deploy:github"], "staging would publish GitHub releases"
    refused = record(stack_file, *args, "--commit", COMMIT)
    assert refused.returncode == 1 and "--commit: allowed only for a stage that publishes releases" in refused.stderr


def test_bad_input_names_the_flag_what_is_allowed_and_what_was_received(tmp_path: Path) -> None:
    stack_file = copy_of("production", tmp_path)
    original = stack_file.read_text()
    bad_digest = record(stack_file, "--version", "v1.4.3", "--app-digest", "latest", "--migrate-digest", MIGRATE)
    assert bad_digest.returncode == 1
    assert "--app-digest: allowed: an image digest sha256:<64 lower-case hex>; received 'latest'" in bad_digest.stderr
    bad_version = record(stack_file, "--version", "main", "--app-digest", APP, "--migrate-digest", MIGRATE)
    assert bad_version.returncode == 1 and "--version: allowed an exact version" in bad_version.stderr
    assert "received 'main'" in bad_version.stderr
    assert stack_file.read_text() == original
