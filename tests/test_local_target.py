"""The code of the local deploy target (embedded_default/target/), where it needs neither root nor Docker:
its CLI runs on the standard library alone, and its registry storage is keyed by every file that
decides what a revision builds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embedded_default.target import layout
from tests import kit


def test_the_target_cli_runs_on_the_standard_library_alone() -> None:
    # -S: no site-packages, as with the system's python3 before any .venv exists (scripts/remove-caches).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-S", "-m", "embedded_default.target", "--help"],
        cwd=kit.PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "{up,down,status}" in done.stdout


@pytest.fixture
def copied_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The target package and the stand-in copied under tmp_path, standing in for the real ones."""
    package = shutil.copytree(layout.PACKAGE_DIR, tmp_path / "target", ignore=shutil.ignore_patterns("__pycache__"))
    standin = shutil.copytree(layout.STANDIN_DIR, tmp_path / "standin_app")
    monkeypatch.setattr(layout, "PACKAGE_DIR", package)
    monkeypatch.setattr(layout, "STANDIN_DIR", standin)
    return sorted(p for p in [*package.rglob("*"), *standin.rglob("*")] if p.is_file())


def test_a_change_to_any_file_of_the_target_or_the_standin_moves_the_registry_storage(
    copied_sources: list[Path], tmp_path: Path
) -> None:
    modules = [p.name for p in copied_sources if p.parent.name == "target"]
    assert {"__init__.py", "__main__.py", "images.py", "layout.py", "daemons.py"} <= set(modules)
    before = layout.Layout(tmp_path).registry_data
    for source in copied_sources:
        original = source.read_bytes()
        source.write_bytes(original + b"\n")
        assert layout.Layout(tmp_path).registry_data != before, f"{source.relative_to(tmp_path)} is not in the key"
        source.write_bytes(original)
    assert layout.Layout(tmp_path).registry_data == before
