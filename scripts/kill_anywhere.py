"""Kill-anywhere, the long run (issue 22, outcome 4): episodes of tests/e2e/kill_anywhere.py, each an update through
the runner interrupted at a random moment by one kind of interruption, then the next update, then every invariant
checked; with `hey` on the stage's proxy and a writer committing rows throughout. Prints a line per episode as it
goes, the table so far every 50 episodes, then one table by kind of interruption and operation, and every violation
with its seed and episode.

    sudo .venv/bin/python scripts/kill_anywhere.py --episodes 1000 --seed 22
    sudo .venv/bin/python scripts/kill_anywhere.py --episodes 30 --seed 22 --first 71   # episodes 71..100 of seed 22

Episode N of a seed is always the same operation, kind, moment and recovery (`plan`); replaying from episode 1
replays the state each episode started from too. `--database-changes` adds PostgreSQL changes: a rotated
password, and the image pinned by digest instead of by tag (the same bytes: the database step leaves it running).

Loopback only; needs root. Runs on a private dockerd and sshd (/var/tmp/kametrix-kill-target) that it starts and
stops by pid, pulling from the shared local target's registry (started, and stopped again, if it is not running).
SIGTERM stops it once the running episode ends: it prints the figures and removes what it made.
"""

from __future__ import annotations

import argparse
import platform
import signal
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
TABLE_EVERY = 50
sys.path.insert(0, str(PROJECT_DIR))

# The project root is on the path only now.
from embedded_default.target import running_target  # noqa: E402
from runner.workspace import pulumi_cli  # noqa: E402
from tests.e2e.kill_anywhere import (  # noqa: E402
    LOAD_RATE,
    STATED_WINDOWS,
    EpisodeResult,
    Kind,
    Operation,
    Recovery,
    episodes,
    kill_anywhere,
)


def table(results: list[EpisodeResult]) -> str:
    """Interruptions by kind and operation: how many landed, converged, failed requests (outside and inside the
    stated windows), rows lost, writes refused, seconds per episode."""
    header = (
        f"{'kind':<24}{'operation':<16}{'episodes':>9}{'landed':>8}{'converged':>10}{'failed req':>11}"
        f"{'in windows':>11}{'rows lost':>10}{'refused':>8}{'s/episode':>10}"
    )
    groups: dict[tuple[str, str], list[EpisodeResult]] = defaultdict(list)
    for result in results:
        groups[(result.episode.kind, result.episode.operation)].append(result)
        groups[(result.episode.kind, "all")].append(result)
        groups[("all", "all")].append(result)
    order = [(kind, op) for kind in [*Kind, "all"] for op in [*Operation, "all"] if (kind, op) in groups]
    return "\n".join([header, *(row(kind, op, groups[(kind, op)]) for kind, op in order)])


def row(kind: str, operation: str, results: list[EpisodeResult]) -> str:
    landed = sum(result.hit != "missed" for result in results)
    converged = sum(result.converged for result in results)
    failed = sum(result.failed_requests for result in results)
    in_windows = sum(
        count.failed for result in results for name, count in result.windows.items() if name in STATED_WINDOWS
    )
    lost = sum(result.rows_lost for result in results)
    refused = sum(result.writes_refused for result in results)
    seconds = statistics.mean(result.seconds for result in results)
    return (
        f"{kind:<24}{operation:<16}{len(results):>9}{landed:>8}{converged:>10}{failed:>11}{in_windows:>11}"
        f"{lost:>10}{refused:>8}{seconds:>10.1f}"
    )


def where_landed(results: Iterable[EpisodeResult]) -> str:
    counts: dict[str, int] = defaultdict(int)
    for result in results:
        counts[result.hit] += 1
    return ", ".join(f"{hit} {count}" for hit, count in sorted(counts.items(), key=lambda item: -item[1]))


def dockerd_windows(results: list[EpisodeResult]) -> str:
    seconds = [result.dockerd_seconds for result in results if result.dockerd_seconds is not None]
    restarts = sum(result.episode.kind is Kind.DOCKERD_RESTART and result.hit != "missed" for result in results)
    if not seconds:
        return f"dockerd restarts: {restarts}, the site answered again by itself after none of them"
    return (
        f"dockerd restarts: {restarts}; the site answered again by itself after {len(seconds)}, "
        f"{statistics.mean(seconds):.1f} s on average (max {max(seconds):.1f} s) from SIGTERM to the first answer"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--first", type=int, default=1, help="the first episode's number (the stage starts afresh)")
    parser.add_argument("--database-changes", action="store_true", help="include PostgreSQL changes")
    parser.add_argument(
        "--forward-only", action="store_true", help="every recovery finishes the update (as the CI sample does)"
    )
    parser.add_argument("--rate", type=int, default=LOAD_RATE, help="requests per second on the proxy")
    args = parser.parse_args()

    recoveries = (Recovery.FORWARD,) if args.forward_only else tuple(Recovery)
    planned = episodes(args.seed, args.episodes, args.first, args.database_changes, recoveries)
    results: list[EpisodeResult] = []
    began = time.monotonic()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, Linux {platform.release()}; seed {args.seed}, "
        f"episodes {args.first}..{args.first + args.episodes - 1}; load: hey, {args.rate} requests/s on the proxy, "
        "one connection per request, GET /api/version; a writer commits a row every 0.5 s",
        flush=True,
    )
    # SIGTERM ends the run between episodes, never inside one (an update, its stage and the harness's removal).
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, _frame: stopping.append(number))
    with running_target(), kill_anywhere(pulumi_cli(), args.rate) as harness:
        for episode in planned:
            if stopping:
                print(f"stopped by SIGTERM after {len(results)} of {len(planned)} episodes", flush=True)
                break
            result = harness.run(episode)
            results.append(result)
            verdict = "converged" if result.converged else f"{len(result.violations)} VIOLATIONS"
            print(f"{result.seconds:6.1f}s {verdict:<14} {result.report()}", flush=True)
            # A run the machine stops (no SIGTERM first) still leaves its figures, up to the last table.
            if len(results) % TABLE_EVERY == 0:
                print(f"\nafter {len(results)} episodes:\n{table(results)}\n", flush=True)
    if not results:
        return
    print()
    print(table(results))
    print()
    print(f"where the interruptions landed: {where_landed(results)}")
    print(dockerd_windows(results))
    print(f"wall: {time.monotonic() - began:.0f} s for {len(results)} episodes, with the stage's set-up")
    violated = [result for result in results if not result.converged]
    if violated:
        print(f"\n{len(violated)} episodes violated an invariant:")
        for result in violated:
            print(result.report())


if __name__ == "__main__":
    main()
