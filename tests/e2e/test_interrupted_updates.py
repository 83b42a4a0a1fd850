"""An update whose runner dies (SIGKILL of the runner, its CLI and its plugins, as when the machine running it
dies) is finished by the next update through the runner: the state lock and the pending operations it left are
dealt with as Pulumi documents, the server's release lock passes to the same release, and the app serves
throughout."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded_default.target import LocalTarget
from tests.e2e.load import Load
from tests.e2e.stage import Stage, explain, kill_when, processes_running, staged
from tests.e2e.test_releases import app_url, release_lock_held, running_colours, served_version, sql


@pytest.fixture(scope="module")
def stage(target: LocalTarget, prepared_stack: Path, pulumi_cli: Path) -> Iterator[Stage]:
    with staged(target, prepared_stack, pulumi_cli, app_port=13400) as created:
        first = created.up("v1.0.0")
        assert first.ok, explain(first)
        yield created


def assert_recovered(stage: Stage, version: str) -> None:
    again = stage.up(version)
    assert again.ok, explain(again)
    assert "removing its lock (pulumi cancel)" in again.output, "the dead update's state lock was not dealt with"
    assert "pulumi refresh --clear-pending-creates" in again.output, "the pending operations were not cleared"
    assert served_version(stage) == version
    assert len(running_colours(stage)) == 1, "not exactly one colour runs"
    assert not release_lock_held(stage)
    assert "pending_operations" not in stage.pulumi("stack", "export", "--stack", "local"), "an operation is pending"


def test_a_runner_killed_while_migrate_runs_is_finished_by_the_next_update(stage: Stage) -> None:
    with Load(app_url(stage, "/api/version"), rate=50) as load:
        killed = stage.up_interrupted(
            "v2.0.0", kill_when(lambda: bool(processes_running(f"{stage.app_dir}/bin/migrate.sh")))
        )
        assert killed.killed, explain(killed)
        assert not killed.left_running, "a process of the runner (its CLI, a plugin) outlived it"
        assert served_version(stage) == "v1.0.0", "the old version stopped serving"
        assert_recovered(stage, "v2.0.0")
    assert load.result.failed == 0, load.result
    assert "003_add_customer_email" in sql(stage, "select migration_name from _prisma_migrations")


def test_a_runner_killed_while_up_switches_colours_is_finished_by_the_next_update(stage: Stage) -> None:
    serving = running_colours(stage)
    with Load(app_url(stage, "/api/version"), rate=50) as load:
        killed = stage.up_interrupted("v1.0.0", kill_when(lambda: running_colours(stage) != serving))
        assert killed.killed, explain(killed)
        assert_recovered(stage, "v1.0.0")
    assert load.result.failed == 0, load.result


def test_going_back_after_a_runner_killed_while_up_switches_runs_up_again(stage: Stage) -> None:
    # The killed `up` may run on on the server and finish its cutover, while the state keeps the inputs of `up`'s
    # last success: those of the version the stage goes back to. The next update replaces every step it
    # interrupted, so `up` runs again and the stage serves the version the stack pins.
    assert served_version(stage) == "v1.0.0"
    serving = running_colours(stage)
    with Load(app_url(stage, "/api/version"), rate=50) as load:
        killed = stage.up_interrupted("v2.0.0", kill_when(lambda: running_colours(stage) != serving))
        assert killed.killed, explain(killed)
        deadline = time.monotonic() + 120
        while processes_running(f"{stage.app_dir}/bin/up.sh") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not processes_running(f"{stage.app_dir}/bin/up.sh"), "the killed up step never ended on the server"
        assert_recovered(stage, "v1.0.0")
    assert load.result.failed == 0, load.result
