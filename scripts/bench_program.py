"""Prints how long the program takes to evaluate per stack under mocks, and the unit suite's wall time.

Goals on a 2-core machine: under 1 s per stack, unit suite under 20 s.
    .venv/bin/python scripts/bench_program.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from tests import kit  # noqa: E402  - the project root is on the path only now

STACKS = ("staging", "production", "local")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="evaluations per stack (default 10)")
    runs = parser.parse_args().runs

    print(f"{'stack':<12}{'resources':>10}{'median s':>10}{'max s':>10}   goal < 1 s")
    for stack in STACKS:
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            deployment = kit.run_stack(stack)
            timings.append(time.perf_counter() - started)
        print(f"{stack:<12}{len(deployment.resources):>10}{statistics.median(timings):>10.3f}{max(timings):>10.3f}")

    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "-m", "not e2e", "-p", "no:cacheprovider"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr.strip()
    print(f"unit suite (scripts/test runs it on two workers): {elapsed:.1f} s wall ({summary})   goal < 20 s")


if __name__ == "__main__":
    main()
