"""The releases' pg_dump backups stay restorable (issue 18): on a stage with no backup repository, the dump a release
took before it migrated is restored by one command, the runner's `restore --dump NAME`, which takes the release lock,
keeps the current database aside, swaps the restored one in while the app is out of traffic, and brings it back."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded_default.target import LocalTarget
from tests.e2e.stage import Stage, explain, staged
from tests.e2e.test_backups import add_customer, customers
from tests.e2e.test_releases import app_dir, app_get, on_server, served_version, sql


@pytest.fixture(scope="module")
def stage(target: LocalTarget, prepared_stack: Path, pulumi_cli: Path) -> Iterator[Stage]:
    with staged(target, prepared_stack, pulumi_cli, app_port=14300) as created:
        first = created.up("v1.0.0")
        assert first.ok, explain(first)
        yield created


def test_the_dump_a_release_took_before_migrating_restores_exactly_the_rows_it_held(stage: Stage) -> None:
    add_customer(stage, "written-before-the-release")
    before = customers(stage)
    released = stage.up("v2.0.0")
    assert released.ok, explain(released)
    (dump,) = re.findall(r"backup=\S+/(\S+\.dump)", released.step("server-backup").stdout)
    add_customer(stage, "written-after-the-release")

    status = stage.run("status")
    assert dump in status.output, status.output
    restored = stage.run("restore", "--dump", dump, "--yes")
    assert restored.ok, restored.output
    assert "restored; the app was out of traffic for" in restored.output, restored.output
    assert customers(stage) == before, "the restored database is not the one the dump holds"
    assert served_version(stage) == "v2.0.0" and app_get(stage, "/api/health?build=true")["status"] == "healthy"
    assert "v2.0.0 serves, but its migrations ran after the restored point" in restored.output
    (aside,) = re.findall(r"kept as the database (\S+):", restored.output)
    assert "written-after-the-release" in sql(stage, "select name from customers", database=aside)
    assert "is free" in on_server(stage, f"bash {app_dir(stage)}/bin/release-lock.sh")

    # What the warning says to do: v1.0.0's schema is the restored one.
    back = stage.run("rollback", "--yes")
    assert back.ok, explain(back)
    assert served_version(stage) == "v1.0.0" and customers(stage) == before


def test_a_name_that_is_not_a_dump_of_the_stage_is_refused_with_the_ones_there_are(stage: Stage) -> None:
    refused = stage.run("restore", "--dump", "20990101T000000Z-v9.9.9.dump", "--yes")
    assert not refused.ok
    assert "dump: allowed one of the dumps in" in refused.output and "-v2.0.0.dump" in refused.output, refused.output
    assert "is free" in on_server(stage, f"bash {app_dir(stage)}/bin/release-lock.sh")
