"""Prints release and rollback side by side, by step, at 10 MB and 1 GB of incompressible data, and the
pg_dump settings measured at 1 GB (MB/s of database per second of backup).

On the loopback Docker host of the end-to-end tests (needs root): a fresh stage releases v1.0.0, gets its
database filled with random bytes, releases v2.0.0 (one new migration: backup, migrate, up) and rolls back to
v1.0.0 (a version this server already ran: no backup, no migration), each through the runner under the real
engine (wall time includes the engine's own).
    .venv/bin/python scripts/bench_rollback.py                 # both sizes, then the pg_dump settings
    .venv/bin/python scripts/bench_rollback.py --sizes-mb 10   # a quick run
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from embedded_default.target import running_target  # noqa: E402  - the project root is on the path only now
from runner.workspace import pulumi_cli  # noqa: E402
from tests.e2e.stage import Stage, UpdateResult, remove_stage, stages_on  # noqa: E402

STEPS = ("server-backup", "server-migrate", "server-up")
CHUNK_MB = 64
INSERT_RANDOM_ROWS = (
    "insert into filler (payload) select decode(string_agg(md5(random()::text || g), ''), 'hex') "
    "from generate_series(1, {hex_digits}) g group by g / 64"
)
# Each settings variant dumps the same database the way backup.sh does: through `docker exec` to a file on the host.
DUMP_SETTINGS = {
    "custom, gzip level 6 (pg_dump's default)": "--format=custom",
    "custom, gzip level 1 (chosen)": "--format=custom --compress=1",
    "custom, uncompressed": "--format=custom --compress=0",
    "directory, gzip level 1, 2 jobs": "--format=directory --compress=1 --jobs=2",
}


def psql(stage: Stage, query: str) -> str:
    container = stage.setting("app.dbContainer")
    done = stage.target.docker("exec", container, "psql", "-U", "kametrix", "-d", "kametrix_local", "-Atc", query)
    return done.stdout.decode().strip()


def database_size(stage: Stage) -> int:
    return int(psql(stage, "select pg_database_size(current_database())"))


def fill(stage: Stage, megabytes: int) -> int:
    """Random bytes in 1 KiB rows (below TOAST's threshold, so stored as they are) until the database holds about
    `megabytes`; returns its size."""
    psql(stage, "create table if not exists filler (id bigserial primary key, payload bytea not null)")
    left = megabytes - database_size(stage) // 1_000_000
    while left > 0:
        chunk = min(left, CHUNK_MB)
        hex_digits = chunk * 1024 * 64  # 64 md5 sums of 16 bytes make one 1 KiB row
        psql(stage, INSERT_RANDOM_ROWS.format(hex_digits=hex_digits))
        left -= chunk
    return database_size(stage)


def timed(stage: Stage, version: str) -> tuple[UpdateResult, float]:
    """One update through the runner (which records a version released for the first time)."""
    result = stage.up(version)
    if not result.ok:
        raise SystemExit(f"{version} failed:\n{result.output}")
    return result, result.wall


def row(label: str, result: UpdateResult, wall: float) -> tuple[str, dict[str, float]]:
    seconds = {run.name: run.seconds for run in result.runs}
    cells = "".join(f"{seconds[s]:>9.1f}" if s in seconds else f"{'-':>9}" for s in STEPS)
    return f"{label:<22}{cells}{sum(seconds.get(s, 0) for s in STEPS):>10.1f}{wall:>9.1f}", seconds


def measure_sizes(sizes_mb: list[int]) -> None:
    print(f"{'':<22}" + "".join(f"{s.removeprefix('server-'):>9}" for s in STEPS) + f"{'server s':>10}{'total s':>9}")
    with running_target() as target, stages_on(target, pulumi_cli()) as new_stage:
        for megabytes in sizes_mb:
            stage = new_stage(app_port=13800)
            try:
                timed(stage, "v1.0.0")
                size = fill(stage, megabytes)
                release, release_wall = timed(stage, "v2.0.0")
                rollback, rollback_wall = timed(stage, "v1.0.0")
                label = f"{size / 1e6:.0f} MB database"
                release_line, _ = row(f"release ({label})", release, release_wall)
                rollback_line, steps = row(f"rollback ({label})", rollback, rollback_wall)
                print(release_line, rollback_line, sep="\n")
                beyond_up = sum(steps.get(s, 0) for s in STEPS) - steps["server-up"]
                print(
                    f"  rollback / release: {rollback_wall / release_wall:.2f} of the whole update; rollback's server "
                    f"steps {beyond_up:.1f} s beyond up alone (goal: within 3 s, and at most 1/3 of a release)",
                    flush=True,
                )
                if megabytes == max(sizes_mb):
                    measure_dump_settings(stage, size)
            finally:
                remove_stage(stage)


def measure_dump_settings(stage: Stage, size: int) -> None:
    print(f"\npg_dump at {size / 1e6:.0f} MB of incompressible data, through docker exec as backup.sh runs it:")
    print(f"{'settings':<42}{'seconds':>9}{'dump MB':>9}{'MB/s':>7}")
    container = shlex.quote(stage.setting("app.dbContainer"))
    scratch = f"{stage.app_dir}/bench-dump"
    for name, options in DUMP_SETTINGS.items():
        if "directory" in options:
            # A directory dump cannot go to stdout: it is written inside the container, then measured there.
            command = (
                f"docker exec {container} sh -c 'rm -rf /tmp/d && pg_dump -U kametrix -d kametrix_local {options} "
                "-f /tmp/d && du -sb /tmp/d | cut -f1 && rm -rf /tmp/d'"
            )
        else:
            command = (
                f"docker exec {container} pg_dump -U kametrix -d kametrix_local {options} > {scratch} "
                f"&& stat -c %s {scratch} && rm -f {scratch}"
            )
        started = time.monotonic()
        done = stage.target.ssh(command, timeout=900)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"{name}: {done.stderr.decode()}")
        dumped = int(done.stdout.decode().split()[-1])
        print(f"{name:<42}{seconds:>9.1f}{dumped / 1e6:>9.0f}{size / 1e6 / seconds:>7.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="release and rollback by step, at each database size")
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[10, 1000])
    measure_sizes(parser.parse_args().sizes_mb)


if __name__ == "__main__":
    main()
