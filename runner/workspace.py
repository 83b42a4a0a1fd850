"""Which engine, folder, environment and plugins a stack runs with.

- `staging`, `production`: the project folder (its `Pulumi.yaml` and `Pulumi.<stack>.yaml`), the backend and
  passphrase of the operator's environment (`PULUMI_BACKEND_URL`, `PULUMI_CONFIG_PASSPHRASE`, cloud credentials),
  and Pulumi's real provider plugins, downloaded as Pulumi always does. A plugin found on `PATH` is ignored, so a
  stand-in can never answer for a real stage.
- `local`: a folder of this machine's own (`embedded_default.workspace`), with its file backend and passphrase, and
  the stand-in providers of the embedded default in a plugin home of the project's own.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

from pulumi import automation as auto
from pulumi.automation._stack import StackInitMode  # not exported; the SDK is pinned (requirements.txt)
from semver import VersionInfo

from components.config import NAMESPACE, STAGES
from embedded_default import workspace as local_workspace

# How `pulumi stack output` prints a secret output without --show-secrets.
SECRET_MASK = "[secret]"
PROJECT_DIR = Path(__file__).resolve().parent.parent
INSTALL_ENGINE = PROJECT_DIR / "scripts" / "install-engine"
# Where a caller names the CLI to use instead of the one scripts/install-engine provides.
CLI_VARIABLE = "KAMETRIX_PULUMI_CLI"
LOCAL = "local"


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

    @property
    def stack_file(self) -> Path:
        return self.work_dir / f"Pulumi.{self.stack_name}.yaml"

    @cached_property
    def pulumi_command(self) -> auto.PulumiCommand:
        """The CLI, made once: each one the Automation API makes runs `pulumi version` first, unless
        scripts/install-engine recorded the version of the CLI it installed."""
        recorded = self.cli.parent.parent / "VERSION"
        if recorded.is_file():
            return _InstalledCli(self.cli, VersionInfo.parse(recorded.read_text().strip()))
        return auto.PulumiCommand(root=str(self.cli.parent.parent), skip_version_check=True)

    def stack(self) -> auto.Stack:
        """The stack with the program as its inline program (selected once per workspace)."""
        return self._selected

    @cached_property
    def _selected(self) -> auto.Stack:
        """The local stack is created on first use; a real stage must exist already (`pulumi stack init`, README
        "One-time setup of a stage")."""
        workspace = _MaskedOutputsWorkspace(
            work_dir=str(self.work_dir),
            program=run_program,
            pulumi_command=self.pulumi_command,
            env_vars=dict(self.env),
            secrets_provider="passphrase" if self.stack_name == LOCAL else None,
        )
        workspace.checkpoint = file_checkpoint(self.env.get("PULUMI_BACKEND_URL", ""), self.stack_name)
        if self.stack_name == LOCAL:
            return _Stack(self.stack_name, workspace, StackInitMode.CREATE_OR_SELECT)
        try:
            return _Stack(self.stack_name, workspace, StackInitMode.SELECT)
        except auto.errors.StackNotFoundError:
            raise RunnerError(
                f"stack {self.stack_name!r} does not exist in the backend {self.backend()!r}; create it once (README, "
                f"One-time setup of a stage): pulumi stack init {self.stack_name} --secrets-provider passphrase"
            ) from None

    def state(self) -> dict[str, Any]:
        """The stack's deployment as `pulumi stack export` gives it, secrets left encrypted: nothing is decrypted
        (the passphrase's key derivation is the slowest part of a small command)."""
        done = self.pulumi_command.run(
            ["stack", "export", "--stack", self.stack_name], str(self.work_dir), dict(self.env)
        )
        deployment: dict[str, Any] = json.loads(done.stdout).get("deployment") or {}
        return deployment

    def backend(self) -> str:
        return self.env.get("PULUMI_BACKEND_URL") or os.environ.get("PULUMI_BACKEND_URL") or "(the CLI's login)"


def file_checkpoint(backend_url: str, stack_name: str) -> Path | None:
    """Where a file backend (`file://FOLDER[?options]`) keeps the stack's state: one file per stack under its project
    (the project's name is its config namespace). None for any other backend."""
    if not backend_url.startswith("file://"):
        return None
    folder = Path(backend_url.removeprefix("file://").partition("?")[0])
    return folder / ".pulumi" / "stacks" / NAMESPACE / f"{stack_name}.json"


PROGRAM_MODULE = "components.program"


def program_module() -> ModuleType:
    """The program's module, imported on first use: with the provider SDKs it imports it is a fifth of the runner's
    start-up, which an update spends instead beside its first reads."""
    return importlib.import_module(PROGRAM_MODULE)


def run_program() -> None:
    """The program, as `__main__.py` runs it."""
    program_module().program()


# The type of a program's root resource, whose outputs are the stack's.
STACK_TYPE = "pulumi:pulumi:Stack"
# How long an update's outputs may take to arrive on its event stream after the CLI exited.
EVENTS_SETTLE_SECONDS = 2.0


class _UpdateEvents:
    """What an update's own events say of its end: the stack's outputs (masked, as the engine streams them without
    --show-secrets) and its summary, the last event of an update that ran."""

    def __init__(self) -> None:
        self.stack_outputs: Mapping[str, Any] | None = None
        self.summary: auto.events.SummaryEvent | None = None
        self.ended = threading.Event()
        self.began = datetime.now(UTC)

    def seen(self, event: auto.EngineEvent) -> None:
        done = event.res_outputs_event
        if done is not None and done.metadata.type == STACK_TYPE and done.metadata.new is not None:
            self.stack_outputs = done.metadata.new.outputs or {}
        if event.summary_event is not None:
            self.summary = event.summary_event
            self.ended.set()


class _Stack(auto.Stack):
    """`Stack.up` reads the stack's outputs, then its last update (`pulumi stack history`), two CLI runs once the
    update is over; here an update that streams its events (`on_event`) takes both from them instead, and one that
    does not reads them side by side."""

    _update_shows_secrets: bool | None = None
    """While `up` runs: whether it shows secrets, as its read of the last update then does."""
    _last_update: Future[list[auto.UpdateSummary]] | None = None
    _events: _UpdateEvents | None = None

    def up(self, *args: Any, **kwargs: Any) -> auto.UpResult:
        self._update_shows_secrets = bool(kwargs.get("show_secrets", True))
        caller = kwargs.get("on_event")
        if caller is not None and not self._update_shows_secrets:
            events = self._events = _UpdateEvents()

            def on_event(event: auto.EngineEvent) -> None:
                events.seen(event)
                caller(event)

            kwargs["on_event"] = on_event
        try:
            return super().up(*args, **kwargs)
        finally:
            self._update_shows_secrets = None
            self._last_update = None
            self._events = None

    def outputs(self) -> auto.OutputMap:
        if self._update_shows_secrets is None:
            return super().outputs()
        events = self._events
        if events is not None and events.ended.wait(EVENTS_SETTLE_SECONDS) and events.stack_outputs is not None:
            return _masked_outputs(events.stack_outputs)
        self._events = None
        with ThreadPoolExecutor(max_workers=1) as reader:
            last_update = reader.submit(self.history, page_size=1, show_secrets=self._update_shows_secrets)
            outputs = super().outputs()
        self._last_update = last_update
        return outputs

    def info(self, show_secrets: bool = True) -> auto.UpdateSummary | None:
        events = self._events
        if events is not None and events.summary is not None and show_secrets == self._update_shows_secrets:
            return auto.UpdateSummary(
                kind="update",
                start_time=events.began,
                message="",
                environment={},
                config={},
                result="succeeded",
                end_time=datetime.now(UTC),
                resource_changes=events.summary.resource_changes,
            )
        if self._last_update is None or show_secrets != self._update_shows_secrets:
            return super().info(show_secrets)
        history = self._last_update.result()
        return history[0] if history else None


class _InstalledCli(auto.PulumiCommand):
    """The CLI scripts/install-engine installed, with the version it checked and recorded beside it."""

    def __init__(self, cli: Path, version: VersionInfo) -> None:
        # Not the base's constructor: it runs `pulumi version`.
        self.command = str(cli)
        self.version = version


class _MaskedOutputsWorkspace(auto.LocalWorkspace):
    """The stack's outputs as `pulumi stack output` prints them, secret ones masked. `Stack.up` reads them after
    every update; the runner uses only plain ones, so no secret output is decrypted into it (nor does it wait for
    the passphrase's key derivation that decrypting costs).

    A stack whose checkpoint is this file in a file backend is not selected: every command the Automation API runs
    names its stack (`--stack`), so `pulumi stack select` would only check that it exists, a CLI run of its own."""

    checkpoint: Path | None = None

    def select_stack(self, stack_name: str) -> None:
        if self.checkpoint is not None and self.checkpoint.is_file():
            return
        super().select_stack(stack_name)

    def stack_outputs(self, stack_name: str) -> auto.OutputMap:
        done = self.pulumi_command.run(
            ["stack", "output", "--json", "--stack", stack_name], self.work_dir, dict(self.env_vars)
        )
        return _masked_outputs(json.loads(done.stdout))


def _masked_outputs(masked: Mapping[str, Any]) -> auto.OutputMap:
    """Outputs as the engine prints them without --show-secrets: a secret one is its mask."""
    return {name: auto.OutputValue(value=value, secret=value == SECRET_MASK) for name, value in masked.items()}


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
