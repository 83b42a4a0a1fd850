"""Rollback for an incident, on a real Docker host over real SSH: recorded bytes, no registry, seconds.

The tests run in order against one stage whose images live in a repository of its own (copied from the
target's versions), so a tag pushed again here touches nobody else's releases.
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from embedded_default.target import LocalTarget, registry_digest, stopped_registry
from tests.e2e.stage import Stage, UpdateResult, explain, staged
from tests.e2e.test_releases import (
    RELEASE_STEPS,
    backups,
    migrations,
    on_server,
    recorded,
    served_version,
)

VERSIONS = ("v1.0.0", "v2.0.0")


@pytest.fixture(scope="module")
def stage(target: LocalTarget, prepared_stack: Path, pulumi_cli: Path) -> Iterator[Stage]:
    repository = f"kametrix/rollback-{uuid.uuid4().hex[:8]}"
    for version in VERSIONS:
        for tag in (version, f"{version}-migrate"):
            copied = f"{target.registry}/{repository}:{tag}"
            target.docker("tag", f"{target.app_repository}:{tag}", copied)
            target.docker("push", "--quiet", copied)
    # Two images kept: pruning reaches the previous version's images on the second release.
    overrides = {"image.repository": repository, "release.imagesToKeep": 2}
    with staged(target, prepared_stack, pulumi_cli, app_port=13200, overrides=overrides) as created:
        yield created
    listed = target.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", f"{target.registry}/{repository}")
    for image in listed.stdout.decode().split():
        target.docker("image", "rm", image, check=False)


@contextmanager
def registry_stopped(target: LocalTarget) -> Iterator[None]:
    """The target's registry is down until the block ends."""
    with stopped_registry(target):
        assert registry_digest(f"{target.app_repository}:v1.0.0") is None, "the registry still answers"
        yield


def on_host(stage: Stage, image: str) -> bool:
    return stage.target.docker("image", "inspect", image, check=False).returncode == 0


def pinned(stage: Stage, version: str, role: str) -> str:
    return f"{stage.repository}@{stage.digests(version)[role]}"


def step_output(result: UpdateResult, name: str) -> str:
    return result.step(name).stdout


def test_each_version_released_is_recorded_and_deployed_by_its_recorded_digest(stage: Stage) -> None:
    for version in VERSIONS:
        result = stage.up(version)
        assert result.ok, explain(result)
        assert f"recorded {version}'s digests under image.digests" in result.output, explain(result)
        assert stage.digests(version) == {
            "app": registry_digest(f"{stage.repository}:{version}"),
            "migrate": registry_digest(f"{stage.repository}:{version}-migrate"),
        }
        assert recorded(stage, "APP_IMAGE") == pinned(stage, version, "app")
        assert recorded(stage, "MIGRATE_IMAGE") == pinned(stage, version, "migrate")
        assert stage.outputs()["imageRef"] == pinned(stage, version, "app")
    assert served_version(stage) == "v2.0.0"


def test_a_tag_pushed_again_with_other_bytes_stops_the_update_before_the_server(stage: Stage) -> None:
    tag = f"{stage.repository}:v1.0.0"
    record_before = on_server(stage, f"cat {shlex.quote(stage.app_dir)}/release.env")
    stage.target.docker("tag", f"{stage.repository}:v2.0.0", tag)
    stage.target.docker("push", "--quiet", tag)
    try:
        result = stage.up("v1.0.0")
    finally:
        stage.target.docker("tag", f"{stage.target.app_repository}:v1.0.0", tag)
        stage.target.docker("push", "--quiet", tag)
    assert registry_digest(tag) == stage.digests("v1.0.0")["app"], "the tag was not put back"
    assert not result.ok and "the tag was pushed again with other bytes" in result.output, explain(result)
    for named in ("'v1.0.0'", stage.digests("v1.0.0")["app"], stage.digests("v2.0.0")["app"], "docker push"):
        assert named in result.output, f"the error does not name {named}: {explain(result)}"
    assert result.runs == [], "a server step ran"
    assert on_server(stage, f"cat {shlex.quote(stage.app_dir)}/release.env") == record_before
    assert served_version(stage) == "v2.0.0"
    stage.configure({"version": "v2.0.0"})


def test_the_prune_keeps_both_images_of_the_previous_version(stage: Stage) -> None:
    assert recorded(stage, "PREVIOUS_VERSION") == "v1.0.0"
    for role in ("app", "migrate"):
        assert on_host(stage, pinned(stage, "v1.0.0", role)), f"the previous version's {role} image was pruned"


def test_a_rollback_with_the_registry_down_needs_no_registry_no_backup_and_no_migration(stage: Stage) -> None:
    kept_backups, applied = backups(stage), migrations(stage)
    with registry_stopped(stage.target):
        result = stage.up("v1.0.0")
    assert result.ok, explain(result)
    # The release's steps alone: the stage's files, settings and database have nothing to do.
    assert result.ran() == RELEASE_STEPS
    assert "no backup: v1.0.0 already ran on this server" in step_output(result, "server-backup")
    assert "no migration: v1.0.0 already ran on this server" in step_output(result, "server-migrate")
    assert "its schema is already there" in step_output(result, "server-migrate")
    assert served_version(stage) == "v1.0.0"
    assert backups(stage) == kept_backups, "a rollback took a backup"
    assert migrations(stage) == applied, "a rollback changed the schema"


def test_an_operator_can_ask_a_rollback_for_a_backup_anyway(stage: Stage) -> None:
    kept_backups = backups(stage)
    stage.configure({"release.backupOnRollback": True})
    result = stage.up("v2.0.0")
    assert result.ok, explain(result)
    assert "backing up: release.backupOnRollback asks for one" in step_output(result, "server-backup")
    assert "no migration: v2.0.0 already ran" in step_output(result, "server-migrate")
    assert len(backups(stage)) == len(kept_backups) + 1
    assert served_version(stage) == "v2.0.0"
    stage.configure({"release.backupOnRollback": None})


def test_break_glass_switches_back_on_the_server_and_the_realigned_stack_updates_correctly(stage: Stage) -> None:
    app_dir = shlex.quote(stage.app_dir)
    with registry_stopped(stage.target):
        switched = stage.target.ssh(f"bash {app_dir}/bin/switch-back.sh")
    assert switched.returncode == 0, switched.stderr.decode()
    out = switched.stdout.decode()
    assert "switched back to v1.0.0" in out and "pulumi config set version v1.0.0" in out, out
    assert served_version(stage) == "v1.0.0"
    # Going back is going down the releases that served: v1.0.0 is the first, so nothing served before it.
    assert (recorded(stage, "VERSION"), recorded(stage, "PREVIOUS_VERSION")) == ("v1.0.0", "")

    realigned = stage.up("v1.0.0")
    assert realigned.ok, explain(realigned)
    assert realigned.ran() == RELEASE_STEPS
    assert "no backup" in step_output(realigned, "server-backup")
    assert "nothing to switch" in step_output(realigned, "server-up"), "the realigned stack switched again"
    assert served_version(stage) == "v1.0.0"
    assert (recorded(stage, "VERSION"), recorded(stage, "PREVIOUS_VERSION")) == ("v1.0.0", "")

    forward = stage.up("v2.0.0")
    assert forward.ok, explain(forward)
    assert served_version(stage) == "v2.0.0"
    assert "previous=v1.0.0" in step_output(forward, "server-up")


def test_previous_never_toggles_a_second_rollback_goes_further_back_not_forward(stage: Stage) -> None:
    assert served_version(stage) == "v2.0.0" and recorded(stage, "PREVIOUS_VERSION") == "v1.0.0"
    back = stage.run("rollback", "--yes")
    assert back.ok and "rolling back to v1.0.0" in back.output, explain(back)
    assert served_version(stage) == "v1.0.0"
    # v1.0.0 served first here: there is nothing further back, and v2.0.0 (what was rolled back from) is not "previous".
    again = stage.run("rollback", "--yes")
    assert not again.ok, explain(again)
    assert "records no version that served before the live one" in again.output, explain(again)
    assert again.runs == [] and served_version(stage) == "v1.0.0"
