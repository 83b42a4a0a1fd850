"""Database changes are planned operations, never side effects of a release: a rotated password is taken up at the
cutover with no request failing, and a new PostgreSQL image is a step of its own, backed up first, with its downtime
said and measured, put back if it never turns healthy."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded_default.target import LocalTarget, registry_digest
from tests.e2e.load import Load
from tests.e2e.stage import Stage, explain, staged
from tests.e2e.test_releases import app_get, app_url, row_counts, running_colours, served_version, sql

ROTATED = "ENGINEFACT-rotated-db-password-7d21"


@pytest.fixture(scope="module")
def stage(target: LocalTarget, prepared_stack: Path, pulumi_cli: Path) -> Iterator[Stage]:
    with staged(target, prepared_stack, pulumi_cli, app_port=13900) as created:
        first = created.up("v1.0.0")
        assert first.ok, explain(first)
        yield created


def can_log_in(stage: Stage, role: str) -> bool:
    rows = sql(stage, f"select rolcanlogin from pg_roles where rolname = 'kametrix_{role}'")  # noqa: S608 - a colour
    return rows == ["t"]


def test_a_rotated_database_password_is_taken_up_at_the_cutover_and_no_request_fails(stage: Stage) -> None:
    live = running_colours(stage)
    (old,) = live
    # Each /api/health asks the database on a connection of its own: a moment where the serving colour and the
    # database disagreed on the password would fail it.
    with Load(app_url(stage, "/api/health"), rate=50) as load:
        stage.set_secret("postgresPassword", ROTATED)
        result = stage.up()
    assert result.ok, explain(result)
    assert result.ran() == ["server-env", "server-up"], "a rotation restarted or touched more than the cutover"
    assert load.result.requests > 100 and load.result.failed == 0, load.result
    (new,) = running_colours(stage)
    assert new != old, "the new password was not taken up by a new colour"
    settings = app_get(stage, "/api/env-check")
    assert settings["POSTGRES_PASSWORD"]["sha256"] == hashlib.sha256(ROTATED.encode()).hexdigest()
    assert can_log_in(stage, new) and not can_log_in(stage, old), "the stopped colour's role can still log in"
    assert not can_log_in(stage, "migrate"), "the migrations' role may log in outside migrations"


def relabelled_postgres(stage: Stage, tmp_path: Path, dockerfile: str) -> str:
    """A PostgreSQL image of other bytes (the target's, with `dockerfile` on top), pushed; its reference."""
    tag = f"{stage.target.registry}/kametrix/postgres:e2e-{uuid.uuid4().hex[:8]}"
    (tmp_path / "Dockerfile").write_text(f"FROM {stage.target.postgres_image}\n{dockerfile}\n")
    stage.target.docker("build", "--quiet", "--tag", tag, str(tmp_path))
    stage.target.docker("push", "--quiet", tag)
    return tag


def test_a_new_postgres_image_is_its_own_step_backed_up_first_with_its_downtime_said(
    stage: Stage, tmp_path: Path
) -> None:
    sql(stage, "insert into customers (name, phone) values ('kept across postgres images', '+4930222222')")
    before = row_counts(stage)
    image = relabelled_postgres(stage, tmp_path, 'LABEL org.kametrix.e2e="another postgres image"')
    stage.configure({"app.postgresImage": image})
    preview = stage.run("preview")
    assert "--postgres-image" in preview.output and image in preview.output, "the preview does not say so"
    with Load(app_url(stage, "/api/health"), rate=50) as load:
        result = stage.up()
    assert result.ok, explain(result)
    assert result.ran() == ["server-database"], "a new database image moved traffic or re-ran a release step"
    said = result.step("server-database").stdout
    assert "backing up first" in said and "-before-postgres-change.dump" in said, said
    assert "the database was down for" in said, said
    assert row_counts(stage) == before, "rows did not survive the new image"
    assert served_version(stage) == "v1.0.0"
    container = stage.setting("app.dbContainer")
    assert stage.target.docker("inspect", "--format", "{{.Config.Image}}", container).stdout.decode().strip() == image
    # The stated window: requests needing the database while it restarted failed, and only those.
    assert load.result.requests > 50, load.result
    print(f"postgres replaced: {load.result.failed} of {load.result.requests} health checks failed")


def test_a_postgres_image_that_never_turns_healthy_is_put_back(stage: Stage, tmp_path: Path) -> None:
    before = row_counts(stage)
    running = stage.setting("app.postgresImage")
    broken = relabelled_postgres(stage, tmp_path, 'ENTRYPOINT ["false"]')
    stage.configure({"app.postgresImage": broken})
    result = stage.up()
    assert not result.ok and result.failed is not None and result.failed.name == "server-database", explain(result)
    assert "was not installed; putting" in result.failed.error and "serves again" in result.failed.error
    container = stage.setting("app.dbContainer")
    inspected = stage.target.docker("inspect", "--format", "{{.Config.Image}}", container).stdout.decode().strip()
    assert inspected == running, "the broken image was left in place"
    assert row_counts(stage) == before
    assert app_get(stage, "/api/health")["status"] == "healthy"
    stage.configure({"app.postgresImage": running})
    back = stage.up()
    assert back.ok, explain(back)


def test_no_release_step_ever_replaces_postgres(stage: Stage) -> None:
    container = stage.setting("app.dbContainer")
    started = stage.target.docker("inspect", "--format", "{{.State.StartedAt}}", container).stdout
    result = stage.up("v2.0.0")
    assert result.ok, explain(result)
    assert "backing up" in result.step("server-backup").stdout
    assert stage.target.docker("inspect", "--format", "{{.State.StartedAt}}", container).stdout == started
    assert registry_digest(f"{stage.repository}:v2.0.0") in json.dumps(stage.outputs())
