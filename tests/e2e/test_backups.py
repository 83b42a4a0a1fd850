"""The data survives the server (issue 18): a stage that declares a backup repository archives every WAL segment to
it, off the server, encrypted; a release marks a restore point in seconds instead of dumping the database; one command
restores to a time, to just before a release migrated, or to the latest; and the restore drill catches a corrupted
backup. The repository is a real S3-compatible server (S3Proxy) on its own network, never the app server's disk.

The tests run in order against one stage, as its history would go.
"""

from __future__ import annotations

import re
import shlex
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from components.shared_facts import BACKUP_CONFIG_DIR
from embedded_default.backups import (
    BackupRepository,
    ensure_backup_repository,
    remove_backup_repository,
    repository_pid,
    stop_backup_repository,
)
from embedded_default.target import LocalTarget
from tests.e2e.stage import Stage, explain, staged
from tests.e2e.test_releases import app_get, on_server, served_version, sql

CIPHER_PASS = "BACKUPFACT-cipher-pass-0123456789abcdefghijklmnop"
WRONG_CIPHER_PASS = "BACKUPFACT-another-pass-0123456789abcdefghijklmno"


@pytest.fixture(scope="module")
def repository(target: LocalTarget) -> Iterator[BackupRepository]:
    """The repository for this module; one it started goes afterwards, however the tests end: daemon, network (with
    its bridge), objects. One started by hand (`python -m embedded_default.backups up`) stays."""
    already_running = repository_pid() is not None
    try:
        yield ensure_backup_repository(target)
    finally:
        if not already_running:
            remove_backup_repository(target)


@pytest.fixture(scope="module")
def stage(target: LocalTarget, prepared_stack: Path, pulumi_cli: Path, repository: BackupRepository) -> Iterator[Stage]:
    overrides = {
        **repository.stack_settings(f"/e2e-{uuid.uuid4().hex[:8]}"),
        "backup.archiveTimeoutSeconds": 10,
        "release.backup": None,
    }
    with staged(target, prepared_stack, pulumi_cli, app_port=14100, overrides=overrides) as created:
        created.set_secret("backupCipherPass", CIPHER_PASS)
        created.set_secret("backupRepositoryKey", repository.access_key)
        created.set_secret("backupRepositorySecret", repository.secret_key)
        yield created


def customers(stage: Stage) -> list[str]:
    """The customers' names (the tests' own have no space; the seed's are split, which compares alike)."""
    return sql(stage, "select name from customers order by id")


def add_customer(stage: Stage, name: str) -> None:
    sql(stage, f"insert into customers (name, phone) values ('{name}', '+4930123456')")  # noqa: S608 - test's own


def backups_said(stage: Stage, *args: str) -> str:
    result = stage.run("backups", *args)
    return result.output


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_archived_past(stage: Stage, moment: str, timeout: float = 60) -> None:
    """Until PostgreSQL archived a WAL segment after `moment` (archive_timeout: 10 s here)."""
    assert re.fullmatch(r"[0-9-]{10}T[0-9:]{8}Z", moment), moment
    query = f"select coalesce(last_archived_time, 'epoch') > timestamptz '{moment}' from pg_stat_archiver"  # noqa: S608
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sql(stage, query) == ["t"]:
            return
        time.sleep(1)
    raise AssertionError(f"nothing archived after {moment} within {timeout} s")


def wait_for_a_base_backup(stage: Stage, timeout: float = 180) -> str:
    """What `backups` says once the scheduler took the stage's first base backup."""
    deadline = time.monotonic() + timeout
    said = backups_said(stage)
    while "newest base  none" in said and time.monotonic() < deadline:
        time.sleep(3)
        said = backups_said(stage)
    return said


def test_the_first_release_archives_to_the_repository_and_the_scheduler_takes_a_full_backup(stage: Stage) -> None:
    result = stage.up("v1.0.0")
    assert result.ok, explain(result)
    assert "every WAL segment is archived to the backup repository" in result.step("server-database").stdout
    said = wait_for_a_base_backup(stage)
    assert "newest base  none" not in said and "F " in said, said
    assert "restorable   up to 20" in said, said
    assert "pg_dump      0 " in said, said


def test_postgresql_restarted_archives_within_its_archive_timeout_again(stage: Stage) -> None:
    """PostgreSQL's checkpointer honours archive_timeout only from its first wake-up after a start (it sleeps a whole
    checkpoint_timeout first: 5 min): without the scheduler's wake-up, nothing would be archived here within 30 s."""
    container = stage.setting("app.dbContainer")
    on_server(stage, f"docker restart {shlex.quote(container)}")
    deadline = time.monotonic() + 60
    # Until PostgreSQL is up again its socket is missing and psql fails: ask again, without raising.
    while stage.target.docker("exec", container, "pg_isready", "--quiet", check=False).returncode != 0:
        assert time.monotonic() < deadline, "PostgreSQL did not accept connections within 60 s of its restart"
        time.sleep(0.5)
    add_customer(stage, "after-a-restart")
    wait_archived_past(stage, utc_now(), timeout=30)


def test_a_release_with_a_migration_marks_a_restore_point_in_seconds_and_dumps_nothing(stage: Stage) -> None:
    add_customer(stage, "before-v2")
    result = stage.up("v2.0.0")
    assert result.ok, explain(result)
    backup = result.step("server-backup")
    assert "restore point kametrix-before-v2.0.0-" in backup.stdout, backup.stdout
    assert "backed up" not in backup.stdout, "a full dump was taken although the policy is restore-point"
    assert backup.seconds < 5, backup.seconds
    assert on_server(stage, f"ls -A {shlex.quote(stage.app_dir)}/backups 2>/dev/null || true").strip() == ""


def test_a_bad_migration_is_undone_by_restoring_to_just_before_it(stage: Stage) -> None:
    add_customer(stage, "after-v2")
    assert "email" in sql(stage, "select column_name from information_schema.columns where table_name = 'customers'")
    result = stage.run("restore", "--before-release", "v2.0.0", "--yes")
    assert result.ok, result.output
    assert "restore plan for" in result.output and "just before v2.0.0 migrated" in result.output
    assert "the app is out of traffic" in result.output and "restored;" in result.output
    names = customers(stage)
    assert "before-v2" in names and "after-v2" not in names, names
    columns = sql(stage, "select column_name from information_schema.columns where table_name = 'customers'")
    assert "email" not in columns, "the migration's column survived the restore"
    assert "its migrations ran after the restored point: roll back" in result.output
    assert app_get(stage, "/api/health")["status"] == "healthy"
    # The restored database's WAL goes on from a new timeline, archived within archive_timeout like before.
    assert "the restored database archives its WAL to the repository again" in result.output
    add_customer(stage, "after-the-restore")
    wait_archived_past(stage, utc_now(), timeout=30)
    # The schema is v1's again: back to v1, and v2 released later migrates again, since the server forgot it had.
    back = stage.run("rollback", "--yes")
    assert back.ok and served_version(stage) == "v1.0.0", explain(back)
    again = stage.up("v2.0.0")
    assert again.ok, explain(again)
    assert "migrations of v2.0.0 applied" in again.step("server-migrate").stdout
    assert served_version(stage) == "v2.0.0"


def test_a_lost_server_is_restored_to_a_noted_time_with_exactly_the_rows_written_before(stage: Stage) -> None:
    add_customer(stage, "kept-1")
    add_customer(stage, "kept-2")
    time.sleep(1.5)
    noted = utc_now()
    time.sleep(1.5)
    add_customer(stage, "lost-1")
    wait_archived_past(stage, utc_now())
    kept = [name for name in customers(stage) if name != "lost-1"]
    # The server loses its database volume and its backup folder.
    project, app_dir = shlex.quote(stage.project), shlex.quote(stage.app_dir)
    on_server(
        stage,
        f"cd {app_dir} && APP_IMAGE=none MIGRATE_IMAGE=none POSTGRES_IMAGE=none docker compose -p {project} "
        f"rm --stop --force postgres backup-scheduler && docker volume rm {project}_postgres-data && rm -rf backups",
    )
    result = stage.run("restore", "--time", noted, "--yes")
    assert result.ok, result.output
    assert customers(stage) == kept
    assert app_get(stage, "/api/health")["status"] == "healthy"


def test_a_wrong_key_or_an_unreachable_repository_is_a_clear_error_and_destroys_nothing(
    stage: Stage, repository: BackupRepository
) -> None:
    before = customers(stage)
    stage.set_secret("backupCipherPass", WRONG_CIPHER_PASS)
    assert stage.up().ok
    wrong = stage.run("restore", "--latest", "--yes")
    assert not wrong.ok and "the backup repository cannot be read" in wrong.output, wrong.output
    assert "nothing on the server changed" in wrong.output
    assert customers(stage) == before and served_version(stage) == "v2.0.0"
    stage.set_secret("backupCipherPass", CIPHER_PASS)
    assert stage.up().ok

    stop_backup_repository()
    try:
        unreachable = stage.run("restore", "--latest", "--yes")
        assert not unreachable.ok and "the backup repository cannot be read" in unreachable.output, unreachable.output
        migrating = stage.up("v4.0.0")
        assert not migrating.ok and migrating.failed is not None, explain(migrating)
        assert migrating.failed.name == "server-backup", explain(migrating)
        assert "could not take the WAL up to restore point" in migrating.failed.error
        assert "migrations do not run" in migrating.failed.error
        assert customers(stage) == before and served_version(stage) == "v2.0.0"
        # A release with nothing to migrate goes on past its backup (warned): v3.0.0 has v2's schema, and fails
        # only where it always does, never turning healthy.
        plain = stage.up("v3.0.0")
        assert plain.failed is not None and plain.failed.name == "server-up", explain(plain)
        assert plain.step("server-backup").ok and plain.step("server-migrate").ok, explain(plain)
        # The warning reaches the operator as the step's live output in the engine's log.
        logged = "".join(
            event["message"]
            for event in plain.events
            if event.get("event") == "diagnostic" and str(event.get("urn", "")).endswith("::server-backup")
        )
        assert "warning: the backup repository could not take the WAL up to restore point" in logged, logged
        assert "no migration of v3.0.0 is pending, so the release goes on" in logged, logged
        assert customers(stage) == before and served_version(stage) == "v2.0.0"
    finally:
        ensure_backup_repository(stage.target)
    back = stage.up("v2.0.0")
    assert back.ok, explain(back)
    # The repository answers again: the latest restore brings back every committed row.
    add_customer(stage, "latest-1")
    latest = stage.run("restore", "--latest", "--yes")
    assert latest.ok and "restored;" in latest.output, latest.output
    assert customers(stage) == [*before, "latest-1"]
    assert app_get(stage, "/api/health")["status"] == "healthy"


def test_the_drill_passes_and_then_fails_once_a_backup_is_corrupted(stage: Stage, repository: BackupRepository) -> None:
    asked_at = utc_now()
    backed_up = stage.run("backups", "--backup", "full")
    assert backed_up.ok and "a full backup was taken" in backed_up.output, backed_up.output
    newest = re.search(r"newest base  (\S+F) (\S+)", backed_up.output)
    recorded = re.search(r"last backup  full ok at (\S+)", backed_up.output)
    assert newest and recorded and newest[2] >= asked_at and recorded[1] >= asked_at, backed_up.output
    drilled = stage.run("backups", "--drill")
    assert drilled.ok and "last drill   passed" in drilled.output, drilled.output
    assert "good drill   20" in drilled.output

    # The drill restores the newest backup: one of its files is corrupted (the older backups stay intact).
    files = sorted(
        (path for path in repository.bucket_dir.rglob("*") if path.is_file() and f"/{newest[1]}/pg_data/" in str(path)),
        key=lambda path: path.stat().st_size,
    )
    assert files, f"no file of backup {newest[1]} in {repository.bucket_dir}"
    corrupted = files[-1]
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    failed = stage.run("backups", "--drill")
    assert not failed.ok and "last drill   FAILED" in failed.output, failed.output
    assert "backups --drill: it did not succeed" in failed.output, failed.output
    checked = stage.run("backups", "--check")
    assert not checked.ok and "the last restore drill failed" in checked.output, checked.output
    assert "last drill   FAILED" in stage.run("status").output


def base_backups(stage: Stage, repository: BackupRepository) -> list[str]:
    """The labels of the stage's base backups in the repository, oldest first (a full `…F`, a differential
    `…F_…D`): its folders, as pgBackRest keeps them."""
    stanza_dirs = repository.bucket_dir / stage.setting("backup.repository.path").strip("/") / "backup"
    return sorted(
        path.name
        for path in stanza_dirs.glob("*/*")
        if path.is_dir() and re.fullmatch(r"\d{8}-\d{6}F(_\d{8}-\d{6}D)?", path.name)
    )


def test_a_differential_backup_comes_when_due_and_the_retention_expires_the_oldest_full_with_it(
    stage: Stage, repository: BackupRepository
) -> None:
    """A day of the schedule without the day: the installed schedule asks for a differential backup at every tick
    (DIFF_EVERY_HOURS=0) until the scheduler took one, then is put back. Then full backups past the retention (the
    default: two fulls kept) expire the oldest full and the differential that depends on it."""
    container = stage.setting("app.dbContainer")
    schedule = f"{BACKUP_CONFIG_DIR}/schedule.env"
    hours = stage.target.docker("exec", container, "sed", "-n", "s/^DIFF_EVERY_HOURS=//p", schedule)
    before = base_backups(stage, repository)
    assert before and all(label.endswith("F") for label in before), before
    stage.target.docker("exec", container, "sed", "-i", "s/^DIFF_EVERY_HOURS=.*/DIFF_EVERY_HOURS=0/", schedule)
    try:
        deadline = time.monotonic() + 180
        while not (diffs := [label for label in base_backups(stage, repository) if label.endswith("D")]):
            assert time.monotonic() < deadline, f"no differential backup within 180 s: {backups_said(stage)}"
            time.sleep(3)
    finally:
        put_back = f"s/^DIFF_EVERY_HOURS=.*/DIFF_EVERY_HOURS={hours.stdout.decode().strip()}/"
        stage.target.docker("exec", container, "sed", "-i", put_back, schedule)
    assert diffs[0].startswith(f"{before[-1]}_"), f"{diffs} does not build on the newest full {before[-1]}"
    said = backups_said(stage)
    assert "last backup  diff ok at 20" in said, said

    fulls = list(before)
    for _ in range(2):
        taken = stage.run("backups", "--backup", "full")
        assert taken.ok and "a full backup was taken" in taken.output, taken.output
        newest = re.search(r"newest base  (\S+F) ", taken.output)
        assert newest, taken.output
        fulls.append(newest[1])
    assert base_backups(stage, repository) == fulls[-2:], "the retention (2 fulls) was not applied"
