"""Kill-anywhere, the short seeded sample that CI runs (issue 22, outcome 4; the long run: scripts/kill_anywhere.py).

Every update here goes through the runner and is interrupted once, at a random moment, by one kind of interruption;
then the next update runs, and the stage must be at rest as its stack declares: what serves, what the stack and
the server record, the release lock, the colours, the settings and every committed row (tests/e2e/kill_anywhere.py
says how each is read). Constant load runs on the proxy and a writer commits rows throughout.

The random part finishes each interrupted release, rollback and settings change (the stack as it now pins). Fixed
episodes below go back instead: after a dropped connection, after a step killed outright (item 1), after an update
killed between two steps, and after a database change whose step was killed outright.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded_default.target import LocalTarget
from tests.e2e.kill_anywhere import (
    CUTOVER_STEP,
    NEVER_HEALTHY,
    SITE_BACK_SECONDS,
    Episode,
    KillAnywhere,
    Kind,
    Moment,
    Operation,
    Recovery,
    containers,
    episodes,
    kept_running,
    kill_anywhere,
    site_answers_within,
)

SEED = 144
SAMPLE = [
    episode
    for episode in episodes(SEED, 8, recoveries=(Recovery.FORWARD,))
    if episode.operation is not Operation.FAILED_RELEASE
]


@pytest.fixture(scope="module")
def harness(target: LocalTarget, pulumi_cli: Path) -> Iterator[KillAnywhere]:
    """`target`: the shared local target, whose registry serves the images to the harness's private one."""
    with kill_anywhere(pulumi_cli) as running:
        yield running


def sampled(kind_is_dockerd: bool) -> list[Episode]:
    return [episode for episode in SAMPLE if (episode.kind is Kind.DOCKERD_RESTART) == kind_is_dockerd]


def fixed(operation: Operation, variant: str, kind: Kind, moment: Moment, recovery: Recovery) -> Episode:
    """An episode of this module's own, not drawn from a seed: number 0."""
    return Episode(SEED, 0, operation, variant, kind, moment, recovery)


def assert_at_rest(harness: KillAnywhere, episode: Episode) -> None:
    result = harness.run(episode)
    assert result.hit != "missed", f"the interruption never came: {result.report()}"
    assert result.converged, result.report()


@pytest.mark.parametrize("episode", sampled(kind_is_dockerd=False), ids=str)
def test_an_update_interrupted_anywhere_is_finished_by_the_next_one(harness: KillAnywhere, episode: Episode) -> None:
    assert_at_rest(harness, episode)


@pytest.mark.parametrize("episode", sampled(kind_is_dockerd=True), ids=str)
def test_an_update_under_which_dockerd_restarts_is_finished_by_the_next_one(
    harness: KillAnywhere, episode: Episode
) -> None:
    assert_at_rest(harness, episode)


@pytest.mark.parametrize(
    "episode",
    [
        # A dropped session's next write ends the step through its undo, which gives the lock back: the release's
        # first step (a new version runs no stage step).
        fixed(Operation.RELEASE, "", Kind.DROP_CONNECTION, Moment("backup", 0.0), Recovery.BACK),
        # A step killed outright (SIGKILL: no trap runs) leaves the lock marked running with no step holding its
        # mutex: the step back takes it over at once (item 1).
        fixed(Operation.FAILED_RELEASE, NEVER_HEALTHY, Kind.KILL_STEP, Moment("migrate", 0.5), Recovery.BACK),
        # The CLI killed as migrate starts: backup handed the lock on to a step that never comes. The update back's
        # first step takes it over at once, since Pulumi runs one update of the stack at a time (seed 25, 22).
        fixed(Operation.RELEASE, "", Kind.KILL_CLI, Moment("migrate", 0.0), Recovery.BACK),
        # The database step killed outright: the state keeps its inputs of before, so the update back would not run
        # it; the runner replaces it on the lock's word, and it gives the lock back (seed 24, episodes 29 and 40).
        fixed(Operation.DATABASE, "app.postgresImage", Kind.KILL_STEP, Moment("database", 0.5), Recovery.BACK),
    ],
    ids=str,
)
def test_going_back_after_a_release_interrupted_before_its_end_leaves_the_stage_at_rest(
    harness: KillAnywhere, episode: Episode
) -> None:
    assert_at_rest(harness, episode)


def test_settings_reverted_after_their_cutover_was_killed_leave_the_stage_at_rest(harness: KillAnywhere) -> None:
    # 60% into the cutover: the new colour, started with its own copy of the new settings, is starting or serving.
    assert_at_rest(
        harness, fixed(Operation.SETTINGS, "smtpPass", Kind.KILL_STEP, Moment(CUTOVER_STEP, 0.6), Recovery.BACK)
    )


def test_a_rotated_database_password_interrupted_anywhere_is_finished_by_the_next_update(
    harness: KillAnywhere,
) -> None:
    assert_at_rest(
        harness,
        fixed(Operation.DATABASE, "postgresPassword", Kind.KILL_CLI, Moment("env", 0.5), Recovery.FORWARD),
    )


def test_the_site_answers_by_itself_after_dockerd_restarts(harness: KillAnywhere) -> None:
    """What a reboot does, with no release running, after releases that reloaded the proxy (item 9: a reload by
    `docker kill --signal HUP` counted as a stop by hand, so the proxy stayed Exited): dockerd brings back what ran,
    and the site answers."""
    stage = harness.stage
    running = kept_running(stage)
    harness.private.restart_dockerd()
    assert running <= set(containers(stage, "running")), f"exited: {containers(stage, 'exited')}"
    assert site_answers_within(stage, SITE_BACK_SECONDS)
