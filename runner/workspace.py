"""Which engine, folder, environment and plugins a stack runs with.

- `staging`, `production`: the project folder (its `Pulumi.yaml` and `Pulumi.<stack>.yaml`), the backend and
  passphrase of the operator's environment (`PULUMI_BACKEND_URL`, `PULUMI_CONFIG_PASSPHRASE`, cloud credentials),
  and Pulumi's real provider plugins, downloaded as Pulumi always does. A plugin found on `PATH` is ignored, so a
  stand-in can never answer for a real stage.
- `local`: a folder of this machine's own (`embedded_default.workspace`), with its file backend and passphrase, and
  the stand-in providers of the embedded default in a plugin home of the project's own.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import NAMESPACE, STAGES
from embedded_default import workspace as local_workspace

if TYPE_CHECKING:
    from pulumi import automation as auto

PROJECT_DIR = Path(__file__).resolve().parent.parent
INSTALL_ENGINE = PROJECT_DIR / "scripts" / "install-engine"
# Where a caller names the CLI to use instead of the one scripts/install-engine provides.
CLI_VARIABLE = "KAMETRIX_PULUMI_CLI"
LOCAL = "local"
# The CLI's reads an update begins with: the stack's state and its config (Workspace.begin_reads).
_STATE_READ = ("stack", "export")
_CONFIG_READ = ("config", "--show-secrets", "--json")


class RunnerError(Exception):
    """Something the operator must fix before the runner can go on; the message says what."""


def pulumi_cli() -> Path:
    """The Pulumi CLI: `$KAMETRIX_PULUMI_CLI`, else the one `scripts/install-engine` provides (cached)."""
    named = os.environ.get(CLI_VARIABLE)
    if named:
        return Path(named)
    done = subprocess.run(
        ["bash", str(INSTALL_ENGINE), "--print-path"], capture_output=True, text=True, check=False, timeout=3600
    )
    if done.returncode != 0:
        raise RunnerError(f"scripts/install-engine could not provide the Pulumi CLI:\n{done.stderr.strip()}")
    return Path(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Workspace:
    """One stack of the project, ready to run."""

    stack_name: str
    work_dir: Path
    cli: Path
    env: Mapping[str, str] = field(default_factory=dict)
    _reads: dict[tuple[str, ...], Future[str]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def stack_file(self) -> Path:
        return self.work_dir / f"Pulumi.{self.stack_name}.yaml"

    @cached_property
    def pulumi_command(self) -> auto.PulumiCommand:
        """The CLI, made once (runner/engine.py)."""
        from runner import engine  # imported on first use: see begin_reads

        return engine.pulumi_command(self.cli)

    def stack(self) -> auto.Stack:
        """The stack with the program as its inline program (selected once per workspace)."""
        return self._selected

    @cached_property
    def _selected(self) -> auto.Stack:
        from runner import engine  # imported on first use: see begin_reads

        return engine.selected_stack(self)

    def begin_reads(self) -> None:
        """Start reading the stack's state and its config, each with the CLI in a process of its own, while the runner
        imports the Pulumi SDK (a third of its start-up): an update needs both before it begins. Only for a stack that
        exists: the local stack is created by its first update (`stack`)."""
        checkpoint = file_checkpoint(self.env.get("PULUMI_BACKEND_URL", ""), self.stack_name)
        if checkpoint is not None and not checkpoint.is_file():
            return
        reader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="first-reads")
        for read in (_STATE_READ, _CONFIG_READ):
            self._reads[read] = reader.submit(self._cli, *read)
        reader.shutdown(wait=False)

    def state(self) -> dict[str, Any]:
        """The stack's deployment as `pulumi stack export` gives it, secrets left encrypted: nothing is decrypted
        (the passphrase's key derivation is the slowest part of a small command)."""
        deployment: dict[str, Any] = json.loads(self._read(_STATE_READ)).get("deployment") or {}
        return deployment

    def config(self) -> dict[str, tuple[Any, bool]]:
        """The stack's config as `pulumi config --show-secrets --json` gives it: each key's value and whether it is
        secret."""
        return {key: (found["value"], found["secret"]) for key, found in json.loads(self._read(_CONFIG_READ)).items()}

    def _read(self, read: tuple[str, ...]) -> str:
        """What the CLI printed for `read` on the selected stack: the read begun with the runner the first time, else a
        new one."""
        self.stack()
        begun = self._reads.pop(read, None)
        return begun.result() if begun is not None else self._cli(*read)

    def _cli(self, *args: str) -> str:
        """The stdout of `pulumi ARGS --stack STACK` in the work dir, as the Automation API runs the CLI."""
        done = subprocess.run(
            [str(self.cli), "--non-interactive", *args, "--stack", self.stack_name],
            cwd=self.work_dir,
            env={**os.environ, **self.env, "PULUMI_AUTOMATION_API": "true"},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RunnerError(f"`pulumi {' '.join(args)}` failed (exit {done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def backend(self) -> str:
        return self.env.get("PULUMI_BACKEND_URL") or os.environ.get("PULUMI_BACKEND_URL") or "(the CLI's login)"


def file_checkpoint(backend_url: str, stack_name: str) -> Path | None:
    """Where a file backend (`file://FOLDER[?options]`) keeps the stack's state: one file per stack under its project
    (the project's name is its config namespace). None for any other backend."""
    if not backend_url.startswith("file://"):
        return None
    folder = Path(backend_url.removeprefix("file://").partition("?")[0])
    return folder / ".pulumi" / "stacks" / NAMESPACE / f"{stack_name}.json"


def open_workspace(stack_name: str, work_dir: Path | None = None) -> Workspace:
    """The workspace of `stack_name`: a real stage in the project folder, or the local stack's own folder."""
    if stack_name not in STAGES:
        raise RunnerError(f"--stack: allowed {', '.join(STAGES)}; received {stack_name!r}")
    cli = pulumi_cli()
    if stack_name == LOCAL:
        folder = work_dir or local_workspace.DEFAULT_DIR
        if not (folder / f"Pulumi.{LOCAL}.yaml").is_file():
            raise RunnerError(
                f"{folder} holds no local stack yet; the main job prepares it: bash scripts/release-local"
            )
        return Workspace(LOCAL, folder, cli, local_workspace.engine_environment(folder, cli))
    plugin_home = os.environ.get("PULUMI_HOME")
    if plugin_home and Path(plugin_home).resolve() == local_workspace.PLUGIN_HOME.resolve():
        raise RunnerError(
            f"PULUMI_HOME is {plugin_home}, the stand-in providers' home of the local stack; {stack_name} runs only "
            "with Pulumi's real provider plugins: unset PULUMI_HOME"
        )
    return Workspace(stack_name, work_dir or PROJECT_DIR, cli, {"PULUMI_IGNORE_AMBIENT_PLUGINS": "true"})
