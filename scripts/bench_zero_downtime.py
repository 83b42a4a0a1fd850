"""Prints ONE table, from one run on the local target: what constant load through a release sees.

Ours: the program's own steps (tests/e2e/engine.py's LocalStack, exactly as declared), with the load on the
stage's proxy. Baseline: the old pipeline's order on the single-container layout (tests/e2e/old_pipeline.sh:
stop the app, migrate, start, poll health, restart the previous image on failure) on its own compose
project, with the load on its app. For each: no release (steady state), a release (v1.0.0 -> v2.0.0, one
new migration), a release whose health check fails (v3.0.0), a rollback by config (back to v1.0.0); for ours
also a settings-only change (a rotated secret) and a settings change together with a release (v2.0.0 again).

Load: `hey` at a constant rate, one request per connection (tests/e2e/load.py), on GET /api/version,
starting a second before each release and ending with it. Failed = non-2xx answers + socket errors.
Goals for ours: 0 failed requests in every update; p99 during a release at most 2x steady state.

Loopback only; needs root (the target runs dockerd and sshd). Stops by itself, removes both stages, and
stops the target if it started it.
    .venv/bin/python scripts/bench_zero_downtime.py [--rate 200] [--steady-seconds 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

# The project root is on the path only now.
from tests.e2e.engine import LocalStack  # noqa: E402

from embedded_default.target import LocalTarget, running_target  # noqa: E402
from tests.e2e import old_layout  # noqa: E402
from tests.e2e.conftest import new_stage, remove_stage  # noqa: E402
from tests.e2e.load import Load, LoadResult  # noqa: E402

# scenario, version, whether the update is to succeed, whether it changes a setting too
RELEASES = (
    ("release", "v2.0.0", True, False),
    ("release, health check fails", "v3.0.0", False, False),
    ("rollback by config", "v1.0.0", True, False),
    ("settings only", "v1.0.0", True, True),
    ("settings + version", "v2.0.0", True, True),
)
LEAD_SECONDS = 1.0


def measure(url: str, rate: int, action: Callable[[], bool]) -> tuple[LoadResult, float, bool]:
    """The load `url` sees while `action` runs, the action's wall time, and whether it succeeded."""
    with Load(url, rate=rate) as load:
        time.sleep(LEAD_SECONDS)
        started = time.monotonic()
        succeeded = action()
        wall = time.monotonic() - started
    return load.result, wall, succeeded


def row(pipeline: str, scenario: str, result: LoadResult, wall: float) -> str:
    p50, p99 = (result.percentiles_ms.get(p) for p in (50, 99))
    latency = "".join(f"{value:>9.1f}" if value is not None else f"{'-':>9}" for value in (p50, p99))
    return f"{pipeline:<10}{scenario:<30}{result.requests:>9}{result.failed:>8}{latency}{wall:>9.1f}"


def steady(seconds: float) -> Callable[[], bool]:
    def no_release() -> bool:
        time.sleep(seconds)
        return True

    return no_release


def ours(stage: LocalStack, version: str, settings: bool) -> Callable[[], bool]:
    def update() -> bool:
        if settings:
            stage.secrets["smtpPass"] = f"BENCH-smtp-pass-{time.monotonic_ns()}"
        return stage.up(version).ok

    return update


def baseline(stage: LocalStack, version: str, settings: bool) -> Callable[[], bool]:
    return lambda: old_layout.release(stage, version).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=200, help="requests per second (default 200)")
    parser.add_argument("--steady-seconds", type=float, default=15, help="length of the steady-state rows")
    args = parser.parse_args()

    with running_target() as target:
        compare(target, args.rate, args.steady_seconds)


def compare(target: LocalTarget, rate: int, steady_seconds: float) -> None:
    stages: list[LocalStack] = []
    try:
        ours_stage = new_stage(target, app_port=13600, postgres_port=16000)
        baseline_stage = new_stage(target, app_port=13700, postgres_port=16100)
        stages += [ours_stage, baseline_stage]
        first = ours_stage.up("v1.0.0")
        installed = old_layout.install(baseline_stage, "v1.0.0")
        if not first.ok or installed.returncode != 0:
            raise SystemExit(f"first release failed: {first.runs} {installed.stderr.decode()[-2000:]}")

        lines = []
        for pipeline, stage, run in (("ours", ours_stage, ours), ("baseline", baseline_stage, baseline)):
            url = f"http://127.0.0.1:{stage.overrides['app.proxyPort']}/api/version"
            result, wall, _ = measure(url, rate, steady(steady_seconds))
            lines.append(row(pipeline, "steady state (no release)", result, wall))
            print(lines[-1], file=sys.stderr, flush=True)
            for scenario, version, expected, settings in RELEASES:
                if settings and pipeline == "baseline":
                    continue  # the old pipeline changed settings by hand on the server
                result, wall, succeeded = measure(url, rate, run(stage, version, settings))
                if succeeded != expected:
                    raise SystemExit(f"{pipeline}, {scenario}: expected {'success' if expected else 'a failure'}")
                lines.append(row(pipeline, scenario, result, wall))
                print(lines[-1], file=sys.stderr, flush=True)

        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        print(f"{when}, {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}; load: hey,")
        print(f"{rate} requests/s from 4 workers, one connection per request, GET /api/version")
        print(f"{'pipeline':<10}{'scenario':<30}{'requests':>9}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}{'wall s':>9}")
        print("\n".join(lines))
    finally:
        for stage in stages:
            remove_stage(stage)
            target.docker("image", "rm", f"{stage.overrides['app.composeProject']}-app:rollback", check=False)


if __name__ == "__main__":
    main()
