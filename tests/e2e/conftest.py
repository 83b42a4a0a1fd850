"""A fresh stage on the local target for each test module, released through the runner under the real engine."""

from __future__ import annotations

import os
import shlex
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from embedded_default import workspace as local_workspace
from embedded_default.target import LocalTarget, running_target
from tests.e2e.stage import Stage


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def target() -> Iterator[LocalTarget]:
    """The local target for the whole run; stopped afterwards unless it was already running."""
    with running_target() as running:
        yield running


@pytest.fixture(scope="session")
def prepared_stack(target: LocalTarget, pulumi_cli: Path) -> Iterator[Path]:
    """One local stack folder with its secrets set, which every stage copies (setting each secret through the CLI
    once per run, not once per stage)."""
    with tempfile.TemporaryDirectory(prefix="kametrix-stacks-") as root:
        folder = Path(root, "prepared")
        local_workspace.prepare(folder, pulumi_cli, target.ssh_host_key, target.ssh_private_key)
        yield folder


def new_stage(
    target: LocalTarget,
    prepared: Path,
    cli: Path,
    app_port: int,
    postgres_port: int,
    overrides: dict[str, Any] | None = None,
) -> Stage:
    """A stage of its own: its proxy serves the app on `app_port`, its colours answer on the next two ports."""
    name = f"kametrix-e2e-{uuid.uuid4().hex[:8]}"
    folder = prepared.parent / name
    local_workspace.copy_prepared(
        prepared,
        folder,
        cli,
        {
            "server.hostKey": target.ssh_host_key,
            "server.port": target.ssh_port,
            "server.appDir": f"{target.target_dir}/stages/{name}",
            "app.composeProject": name,
            "app.appContainer": f"{name}-app",
            "app.dbContainer": f"{name}-db",
            "app.proxyPort": app_port,
            "app.bluePort": app_port + 1,
            "app.greenPort": app_port + 2,
            "app.url": f"http://127.0.0.1:{app_port}",
            "app.postgresPort": postgres_port,
            **(overrides or {}),
        },
    )
    return Stage(target, folder, cli)


def remove_stage(stage: Stage) -> None:
    quoted = shlex.quote(stage.app_dir)
    stage.target.ssh(
        f"if [ -f {quoted}/docker-compose.yml ]; then APP_IMAGE=none MIGRATE_IMAGE=none docker compose"
        f" --project-name {shlex.quote(stage.project)} --project-directory {quoted} --file {quoted}/docker-compose.yml"
        f" --env-file {quoted}/.env down --volumes --remove-orphans --timeout 5; fi; rm -rf {quoted}",
        timeout=120,
    )


@pytest.fixture(scope="module")
def stage(target: LocalTarget, prepared_stack: Path, pulumi_cli: Path) -> Iterator[Stage]:
    created = new_stage(target, prepared_stack, pulumi_cli, app_port=13000, postgres_port=15432)
    yield created
    remove_stage(created)


@pytest.fixture(scope="session", autouse=True)
def _runner_uses_this_cli(pulumi_cli: Path) -> None:
    os.environ.setdefault("KAMETRIX_PULUMI_CLI", str(pulumi_cli))
