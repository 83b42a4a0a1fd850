"""Prints, from one run on the local target, how long each kind of release takes, split by step.

A first release (v1.0.0 on an empty server), a release (v2.0.0, one new migration), an automatic
rollback (v3.0.0 never turns healthy) and a rollback by config (back to v1.0.0): the program's own
steps, run over real SSH on the loopback Docker host of the end-to-end tests. Needs root.
    .venv/bin/python scripts/bench_release.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from tests.e2e.engine import UpdateResult  # noqa: E402

from embedded_default.target import running_target  # noqa: E402
from tests.e2e.conftest import new_stage, remove_stage  # noqa: E402  - the project root is on the path only now

SCENARIOS = (
    ("first release", "v1.0.0", True),
    ("release", "v2.0.0", True),
    ("automatic rollback", "v3.0.0", False),
    ("rollback by config", "v1.0.0", True),
)
STEPS = ("server-files", "server-env", "server-backup", "server-migrate", "server-up")


def row(name: str, result: UpdateResult, wall: float) -> str:
    seconds = {run.name: run.seconds for run in result.runs}
    cells = "".join(f"{seconds[s]:>9.1f}" if s in seconds else f"{'-':>9}" for s in STEPS)
    outcome = "ok" if result.ok else f"failed in {result.failed.name if result.failed else '?'}"
    return f"{name:<20}{cells}{wall:>9.1f}   {outcome}"


def main() -> None:
    with running_target() as target:
        stage = new_stage(target, app_port=13100, postgres_port=15532)
        try:
            print(f"{'':<20}" + "".join(f"{s.removeprefix('server-'):>9}" for s in STEPS) + f"{'total s':>9}")
            for name, version, expected_ok in SCENARIOS:
                started = time.monotonic()
                result = stage.up(version)
                print(row(name, result, time.monotonic() - started), flush=True)
                if result.ok != expected_ok:
                    raise SystemExit(f"{name}: expected {'success' if expected_ok else 'failure'}: {result.runs}")
        finally:
            remove_stage(stage)


if __name__ == "__main__":
    main()
