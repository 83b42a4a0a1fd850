"""Prints what a release costs outside its server steps (the runner, the CLI, the engine, the providers), for this
clone against another checkout, from one run interleaved so that both see the same machine.

Each tree releases on a stage of its own on the loopback Docker host (needs root): v1.0.0 and v2.0.0 once, then
ROUNDS times v1.0.0 and v2.0.0 again (a version bump with the migrations already applied), one tree's release
after the other's. Each release is `python -m runner ... release VERSION --yes` run in its tree; its steps' seconds
run from the engine's start of each to its end, and "outside" is the rest of its wall time. The other checkout
needs its own `.venv` (a link to this clone's will do when the requirements are the same):
    git worktree add --detach ../baseline <commit> && ln -s "$PWD/.venv" ../baseline/.venv
    .venv/bin/python scripts/bench_overhead.py ../baseline --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from embedded_default.target import running_target  # noqa: E402  - the project root is on the path only now
from runner.workspace import pulumi_cli  # noqa: E402
from tests.e2e.stage import Stage, stages_on, steps_of  # noqa: E402

VERSIONS = ("v1.0.0", "v2.0.0")


def release(tree: Path, stage: Stage, version: str) -> tuple[float, float]:
    """Wall seconds and the seconds of its steps, of one release by the runner of `tree`."""
    events = stage.work_dir / "events.jsonl"
    events.unlink(missing_ok=True)
    began = time.monotonic()
    done = subprocess.run(
        [str(tree / ".venv" / "bin" / "python"), *stage.runner_argv("release", version, "--yes")[1:]],
        cwd=tree,
        env={**os.environ, "KAMETRIX_PULUMI_CLI": str(stage.cli)},
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - began
    if done.returncode != 0:
        raise SystemExit(f"{tree}: release {version} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    runs = steps_of([json.loads(line) for line in events.read_text().splitlines()])
    return wall, sum(run.seconds for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description="a release's time outside its steps: this clone against another")
    parser.add_argument("baseline", type=Path, help="another checkout of the project, with its own .venv")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    trees = {"baseline": args.baseline.resolve(), "this clone": PROJECT_DIR}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    with running_target() as target, stages_on(target, pulumi_cli()) as new_stage:
        stages = {name: new_stage(app_port=port) for name, port in zip(trees, (14300, 14400), strict=True)}
        for version in VERSIONS:
            for name, tree in trees.items():
                release(tree, stages[name], version)
        print(f"{'tree':<12}{'version':>9}{'wall s':>9}{'steps s':>9}{'outside s':>11}")
        for _ in range(args.rounds):
            for version in VERSIONS:
                for name, tree in trees.items():
                    wall, steps = release(tree, stages[name], version)
                    figures[name].append((wall, steps))
                    print(f"{name:<12}{version:>9}{wall:>9.2f}{steps:>9.2f}{wall - steps:>11.2f}", flush=True)
    medians = {
        name: (statistics.median(w for w, _ in rows), statistics.median(w - s for w, s in rows))
        for name, rows in figures.items()
    }
    for name, (wall, outside) in medians.items():
        print(f"{name:<12}{'median':>9}{wall:>9.2f}{'':>9}{outside:>11.2f}")
    ratio = medians["this clone"][1] / medians["baseline"][1]
    print(f"outside the steps, this clone / baseline: {ratio:.2f} (medians of {2 * args.rounds} releases each)")


if __name__ == "__main__":
    main()
