"""Prints, from one run on the local target, how long the runner's updates take, split into the server steps and the
engine's own time.

A first release (v1.0.0 on an empty server), a no-op (the same stack again), a release (v2.0.0, one new
migration), an automatic rollback (v3.0.0 never turns healthy) and a rollback (`runner rollback`: back to the
version that served before), each `python -m runner ... --yes` under the real engine with the stand-in providers, on
the loopback Docker host (needs root). A step's seconds run from the engine's start of it to its end; the engine's
time is the rest of the wall time: Python's start, the program, the CLI, state and plugins.
    .venv/bin/python scripts/bench_release.py
Goals: a no-op under 5 s; a rollback within 3 s of its up step alone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from embedded_default.target import running_target  # noqa: E402  - the project root is on the path only now
from runner.workspace import pulumi_cli  # noqa: E402
from tests.e2e.stage import Stage, UpdateResult, stages_on  # noqa: E402

STEPS = ("server-files", "server-env", "server-database", "server-backup", "server-migrate", "server-up")
SCENARIOS: tuple[tuple[str, Callable[[Stage], UpdateResult], bool], ...] = (
    ("first release", lambda stage: stage.up("v1.0.0"), True),
    ("no-op", lambda stage: stage.up(), True),
    ("release", lambda stage: stage.up("v2.0.0"), True),
    ("automatic rollback", lambda stage: stage.up("v3.0.0"), False),
    ("rollback", lambda stage: stage.run("rollback", "v1.0.0", "--yes"), True),
)


def row(name: str, result: UpdateResult) -> str:
    seconds = {run.name: run.seconds for run in result.runs}
    server = sum(seconds.values())
    cells = "".join(f"{seconds[s]:>8.1f}" if s in seconds else f"{'-':>8}" for s in STEPS)
    outcome = "ok" if result.ok else f"failed in {result.failed.name if result.failed else '?'}"
    return f"{name:<20}{cells}{server:>10.1f}{result.wall - server:>10.1f}{result.wall:>9.1f}   {outcome}"


def main() -> None:
    with running_target() as target, stages_on(target, pulumi_cli()) as new_stage:
        stage = new_stage(app_port=13100)
        header = "".join(f"{s.removeprefix('server-'):>8}" for s in STEPS)
        print(f"{'':<20}{header}{'server s':>10}{'engine s':>10}{'total s':>9}")
        for name, update, expected_ok in SCENARIOS:
            result = update(stage)
            print(row(name, result), flush=True)
            if result.ok != expected_ok:
                raise SystemExit(f"{name}: expected {'success' if expected_ok else 'failure'}:\n{result.output}")
            if name == "rollback":
                up = result.step("server-up").seconds
                print(f"  rollback: {result.wall - up:.1f} s beyond its up step (goal: within 3 s)")


if __name__ == "__main__":
    main()
