"""Fixtures shared by the unit tests' subjects."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pulumi_cli() -> Path:
    """The real Pulumi CLI of `scripts/install-engine`; `scripts/test` installs it and sets
    KAMETRIX_PULUMI_CLI. Missing in CI is a failure, elsewhere a skip that says what to run."""
    path = os.environ.get("KAMETRIX_PULUMI_CLI")
    if not path:
        if os.environ.get("CI"):
            pytest.fail("KAMETRIX_PULUMI_CLI is unset: scripts/test installs the CLI and sets it")
        pytest.skip("no Pulumi CLI: set KAMETRIX_PULUMI_CLI=$(bash scripts/install-engine --print-path)")
    return Path(path)
