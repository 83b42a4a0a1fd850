"""A fresh stage on the local target for each test module, released through the runner under the real engine."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedded_default import workspace as local_workspace
from embedded_default.target import LocalTarget, running_target
from tests.e2e.stage import Stage, staged


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


@pytest.fixture(scope="module")
def stage(target: LocalTarget, prepared_stack: Path, pulumi_cli: Path) -> Iterator[Stage]:
    with staged(target, prepared_stack, pulumi_cli, app_port=13010) as created:
        yield created


@pytest.fixture(scope="session", autouse=True)
def _runner_uses_this_cli(pulumi_cli: Path) -> None:
    os.environ.setdefault("KAMETRIX_PULUMI_CLI", str(pulumi_cli))
