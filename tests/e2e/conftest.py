"""A fresh stage on the local target for each test module, released by the program's own commands."""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Iterator

import pytest

from embedded_default.target import APP_VERSIONS, LocalTarget, running_target
from tests.e2e.engine import LocalStack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def target() -> Iterator[LocalTarget]:
    """The local target for the whole run; stopped afterwards unless it was already running."""
    with running_target() as running:
        yield running


def new_stage(target: LocalTarget, app_port: int, postgres_port: int) -> LocalStack:
    """A stage of its own: its proxy serves the app on `app_port`, its colours answer on the next two ports."""
    name = f"kametrix-e2e-{uuid.uuid4().hex[:8]}"
    return LocalStack(
        target=target,
        overrides={
            "server.hostKey": target.ssh_host_key,
            "server.port": target.ssh_port,
            "server.appDir": f"{target.target_dir}/stages/{name}",
            "app.composeProject": name,
            "app.appContainer": f"{name}-app",
            "app.dbContainer": f"{name}-db",
            "app.proxyPort": app_port,
            "app.bluePort": app_port + 1,
            "app.greenPort": app_port + 2,
            "app.proxyImage": target.proxy_image,
            "app.url": f"http://127.0.0.1:{app_port}",
            "app.postgresPort": postgres_port,
            "app.postgresImage": target.postgres_image,
        },
        known_versions=list(APP_VERSIONS),
    )


def remove_stage(stage: LocalStack) -> None:
    app_dir = stage.overrides["server.appDir"]
    project = stage.overrides["app.composeProject"]
    quoted = shlex.quote(app_dir)
    stage.target.ssh(
        f"if [ -f {quoted}/docker-compose.yml ]; then APP_IMAGE=none MIGRATE_IMAGE=none docker compose"
        f" --project-name {shlex.quote(project)} --project-directory {quoted} --file {quoted}/docker-compose.yml"
        f" --env-file {quoted}/.env down --volumes --remove-orphans --timeout 5; fi; rm -rf {quoted}",
        timeout=120,
    )


@pytest.fixture(scope="module")
def stage(target: LocalTarget) -> Iterator[LocalStack]:
    created = new_stage(target, app_port=13000, postgres_port=15432)
    yield created
    remove_stage(created)
