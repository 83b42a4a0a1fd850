"""The first release on a server that runs the single-container layout moves it to the proxy and colours,
keeping the compose project, its `postgres-data` volume and every row in it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from embedded_default.target import LocalTarget
from tests.e2e import old_layout
from tests.e2e.conftest import new_stage, remove_stage
from tests.e2e.engine import LocalStack
from tests.e2e.test_releases import ALL_STEPS, explain, row_counts, running_colours, served_version, sql


@pytest.fixture(scope="module")
def single(target: LocalTarget) -> Iterator[LocalStack]:
    created = new_stage(target, app_port=13500, postgres_port=15900)
    yield created
    remove_stage(created)


def containers(stage: LocalStack) -> list[str]:
    project = stage.overrides["app.composeProject"]
    done = stage.target.docker(
        "ps", "--format", "{{.Names}}", "--filter", f"label=com.docker.compose.project={project}"
    )
    return sorted(done.stdout.decode().split())


def volumes(stage: LocalStack) -> list[str]:
    project = stage.overrides["app.composeProject"]
    done = stage.target.docker("volume", "ls", "--quiet", "--filter", f"label=com.docker.compose.project={project}")
    return done.stdout.decode().split()


def test_the_first_release_moves_the_single_container_layout_to_the_proxy_and_keeps_the_data(
    single: LocalStack,
) -> None:
    installed = old_layout.install(single, "v1.0.0")
    assert installed.returncode == 0, installed.stderr.decode()
    name = single.overrides["app.appContainer"]
    assert served_version(single) == "v1.0.0" and name in containers(single), "the single container does not serve"
    sql(single, "insert into customers (name, phone) values ('kept across layouts', '+4930111111')")
    before, volumes_before = row_counts(single), volumes(single)
    assert volumes_before == [f"{single.overrides['app.composeProject']}_postgres-data"]

    result = single.up("v2.0.0")
    assert result.ok, explain(result)
    assert result.ran() == ALL_STEPS
    assert ".env unchanged" in result.runs[1].stdout, "the program's .env differs from the one the layout ran with"
    assert "backed up" in result.runs[2].stdout, "the database of the single-container layout was not backed up"
    assert served_version(single) == "v2.0.0", "the proxy does not serve on the port the single container had"
    assert name not in containers(single), "the single-container app was left running"
    assert running_colours(single) == ["blue"]
    assert f"{single.overrides['app.composeProject']}-proxy" in containers(single)
    assert volumes(single) == volumes_before, "the database volume changed"
    assert row_counts(single) == before, "rows of the single-container layout were lost"
    assert sql(single, "select count(*) from customers where name = 'kept across layouts'") == ["1"]
