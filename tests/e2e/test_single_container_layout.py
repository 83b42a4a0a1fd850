"""The first release on a server that runs the single-container layout moves it to the proxy and colours,
keeping the compose project, its `postgres-data` volume and every row in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded_default.target import LocalTarget
from tests.e2e import old_layout
from tests.e2e.stage import Stage, explain, staged
from tests.e2e.test_releases import ALL_STEPS, env_digest, row_counts, running_colours, served_version, sql


@pytest.fixture(scope="module")
def single(target: LocalTarget, prepared_stack: Path, pulumi_cli: Path) -> Iterator[Stage]:
    with staged(target, prepared_stack, pulumi_cli, app_port=13500) as created:
        yield created


def containers(stage: Stage) -> list[str]:
    project = stage.project
    done = stage.target.docker(
        "ps", "--format", "{{.Names}}", "--filter", f"label=com.docker.compose.project={project}"
    )
    return sorted(done.stdout.decode().split())


def volumes(stage: Stage) -> list[str]:
    project = stage.project
    done = stage.target.docker("volume", "ls", "--quiet", "--filter", f"label=com.docker.compose.project={project}")
    return done.stdout.decode().split()


def test_the_first_release_moves_the_single_container_layout_to_the_proxy_and_keeps_the_data(
    single: Stage,
) -> None:
    installed = old_layout.install(single, "v1.0.0")
    assert installed.returncode == 0, installed.stderr.decode()
    name = single.setting("app.appContainer")
    assert served_version(single) == "v1.0.0" and name in containers(single), "the single container does not serve"
    sql(single, "insert into customers (name, phone) values ('kept across layouts', '+4930111111')")
    before, volumes_before, settings = row_counts(single), volumes(single), env_digest(single)
    assert volumes_before == [f"{single.project}_postgres-data"]

    result = single.up("v2.0.0")
    assert result.ok, explain(result)
    assert result.ran() == ALL_STEPS
    assert env_digest(single) == settings, "the program's .env differs from the one the layout ran with"
    assert "backed up" in result.step("server-backup").stdout, "the old layout's database was not backed up"
    assert served_version(single) == "v2.0.0", "the proxy does not serve on the port the single container had"
    assert name not in containers(single), "the single-container app was left running"
    assert running_colours(single) == ["blue"]
    assert f"{single.project}-proxy" in containers(single)
    assert volumes(single) == volumes_before, "the database volume changed"
    assert row_counts(single) == before, "rows of the single-container layout were lost"
    assert sql(single, "select count(*) from customers where name = 'kept across layouts'") == ["1"]
