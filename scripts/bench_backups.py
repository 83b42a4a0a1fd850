"""Prints what the off-site backups (issue 18) change, by database size: a release's backup step before (a
`pg_dump` of the whole database) and after (a named restore point and the WAL up to it archived), the time a
restore takes (RTO) and how much a lost server loses (RPO), and the whole release with a migration before and after.

On the loopback Docker host of the end-to-end tests with its backup repository (S3Proxy; needs root). For each
size, two fresh stages release v1.0.0, get their database filled with random bytes and release v2.0.0 (one new
migration): one without a backup section (its release dumps), and `--releases` stages archiving to the repository
(each release marks a restore point; the table gives their median, as the time of one release on this shared
machine varies by a second or more from run to run). The first of them then measures
  RPO  a row is written and the seconds until PostgreSQL archived the WAL that holds it are timed: what a server
       lost at that moment would lose (archive_timeout bounds it);
  RTO  `restore --latest --yes` through the runner: its whole wall time, and how long the app was out of traffic.
    .venv/bin/python scripts/bench_backups.py                  # 12 MB and 1.2 GB
    .venv/bin/python scripts/bench_backups.py --sizes-mb 10 --releases 1   # a quick run
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from bench_rollback import fill, psql  # noqa: E402  - this folder is on the path as the script runs

from embedded_default.backups import (  # noqa: E402  - the project root is on the path only now
    BackupRepository,
    ensure_backup_repository,
    remove_backup_repository,
    repository_pid,
)
from embedded_default.target import running_target  # noqa: E402
from runner.workspace import pulumi_cli  # noqa: E402
from tests.e2e.stage import Stage, UpdateResult, remove_stage  # noqa: E402
from tests.e2e.stage import stages_on as stages  # noqa: E402

ARCHIVE_TIMEOUT_SECONDS = 60  # the default of backup.archiveTimeoutSeconds: the RPO goal
RESTORE_GOAL_SECONDS = 120


def released(stage: Stage, version: str) -> UpdateResult:
    result = stage.up(version)
    if not result.ok:
        raise SystemExit(f"{version} failed:\n{result.output}")
    return result


def backup_stage(new_stage: Callable[..., Stage], repository: BackupRepository, app_port: int = 14400) -> Stage:
    overrides = {
        **repository.stack_settings(f"/bench-{uuid.uuid4().hex[:8]}"),
        "backup.archiveTimeoutSeconds": ARCHIVE_TIMEOUT_SECONDS,
        "release.backup": None,
    }
    stage = new_stage(app_port=app_port, overrides=overrides)
    stage.set_secret("backupCipherPass", uuid.uuid4().hex * 2)
    stage.set_secret("backupRepositoryKey", repository.access_key)
    stage.set_secret("backupRepositorySecret", repository.secret_key)
    return stage


def archived_release(stage: Stage, megabytes: int) -> UpdateResult:
    """v2.0.0 (one migration) on a stage archiving to the repository, filled to `megabytes` with a full backup."""
    released(stage, "v1.0.0")
    fill(stage, megabytes)
    full_backup(stage)
    return released(stage, "v2.0.0")


def full_backup(stage: Stage) -> None:
    """A full base backup of the filled database, so that a restore replays little WAL. The scheduler may be taking
    its first one (or a drill) at the same moment: pgBackRest's lock refuses a second, so this tries again."""
    for _ in range(12):
        said = stage.run("backups", "--backup", "full").output
        if "a full backup was taken" in said:
            return
        time.sleep(10)
    raise SystemExit(f"no full backup within two minutes:\n{said}")


def rpo_seconds(stage: Stage) -> float:
    """Seconds from a committed row to the archived WAL holding it (polled every 0.2 s)."""
    psql(stage, "create table if not exists rpo_probe (at timestamptz not null default clock_timestamp())")
    written = psql(stage, "with probe as (insert into rpo_probe default values returning at) select at from probe")
    started = time.monotonic()
    query = f"select last_archived_time >= timestamptz '{written}' from pg_stat_archiver"  # noqa: S608 - our own
    while psql(stage, query) != "t":
        if time.monotonic() - started > 3 * ARCHIVE_TIMEOUT_SECONDS:
            raise SystemExit("nothing archived within three archive_timeouts")
        time.sleep(0.2)
    return time.monotonic() - started


def measure(sizes_mb: list[int], releases: int) -> None:
    print(
        f"{'database':>9}{'dump s':>9}{'point s':>9}{'ratio':>8}{'release before s':>18}{'after s':>9}{'RPO s':>8}"
        f"{'restore s':>11}{'down s':>8}"
    )
    with running_target() as target:
        started_here = repository_pid() is None
        try:
            repository = ensure_backup_repository(target)
            for megabytes in sizes_mb:
                with stages(target, pulumi_cli()) as new_stage:
                    dumping = new_stage(app_port=14300)
                    released(dumping, "v1.0.0")
                    size = fill(dumping, megabytes)
                    before = released(dumping, "v2.0.0")
                    dump = before.step("server-backup").seconds

                    archiving = backup_stage(new_stage, repository)
                    after = [archived_release(archiving, megabytes)]
                    point = after[0].step("server-backup").seconds
                    rpo = rpo_seconds(archiving)
                    rows = psql(archiving, "select count(*) from filler")
                    began = time.monotonic()
                    restore = archiving.run("restore", "--latest", "--yes")
                    restore_wall = time.monotonic() - began
                    down = re.search(r"out of traffic for ([0-9.]+) s", restore.output)
                    if not restore.ok or down is None or psql(archiving, "select count(*) from filler") != rows:
                        raise SystemExit(f"the restore failed or lost rows:\n{restore.output}")
                    # Each further sample on a stage of its own (a version migrates once per database), removed
                    # once measured: its disk and its backup scheduler are gone before the next one.
                    for sample in range(1, releases):
                        more = backup_stage(new_stage, repository, app_port=14400 + 10 * sample)
                        after.append(archived_release(more, megabytes))
                        remove_stage(more)
                typical = sorted(after, key=lambda result: result.wall)[(len(after) - 1) // 2]
                print(
                    f"{size / 1e6:>6.0f} MB{dump:>9.1f}{point:>9.1f}{point / dump:>8.2f}{before.wall:>18.1f}"
                    f"{statistics.median(result.wall for result in after):>9.1f}{rpo:>8.1f}"
                    f"{restore_wall:>11.1f}{float(down.group(1)):>8.1f}",
                    flush=True,
                )
                walls = ", ".join(f"{result.wall:.1f}" for result in after)
                steps = "  ".join(f"{run.name.rpartition('-')[2]} {run.seconds:.1f}" for run in typical.runs)
                outside = typical.wall - sum(run.seconds for run in typical.runs)
                print(f"          release after, each (s): {walls}", flush=True)
                print(
                    f"          its median release, by step (s): {steps}; outside the steps {outside:.1f}", flush=True
                )
        finally:
            if started_here:
                remove_backup_repository(target)
    print(
        f"goals: RPO at most {ARCHIVE_TIMEOUT_SECONDS} s (archive_timeout), a restore of 1.2 GB within "
        f"{RESTORE_GOAL_SECONDS} s; ratio: the release's backup step after / before; release: the whole update "
        "with one migration through the runner, before (pg_dump) and after (restore point; the median of "
        "--releases), wall seconds"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="release backup step, RPO and RTO with off-site backups, by size")
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--releases", type=int, default=3, help="releases after, each on a stage of its own")
    args = parser.parse_args()
    measure(args.sizes_mb, args.releases)


if __name__ == "__main__":
    main()
