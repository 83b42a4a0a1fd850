"""The Automation API as the runner uses it: the CLI of scripts/install-engine, the stack with the program as its
inline program, and an update's outputs taken from its own events.

A module of its own, imported once the runner has begun its first reads (`Workspace.begin_reads`): the Pulumi SDK is
a third of the runner's start-up.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pulumi import automation as auto
from pulumi.automation._stack import StackInitMode  # not exported; the SDK is pinned (requirements.txt)
from semver import VersionInfo

from runner.workspace import LOCAL, RunnerError, file_checkpoint

if TYPE_CHECKING:
    from runner.workspace import Workspace

# How `pulumi stack output` prints a secret output without --show-secrets.
SECRET_MASK = "[secret]"


def pulumi_command(cli: Path) -> auto.PulumiCommand:
    """The CLI: each one the Automation API makes runs `pulumi version` first, unless scripts/install-engine recorded
    the version of the CLI it installed."""
    recorded = cli.parent.parent / "VERSION"
    if recorded.is_file():
        return _InstalledCli(cli, VersionInfo.parse(recorded.read_text().strip()))
    return auto.PulumiCommand(root=str(cli.parent.parent), skip_version_check=True)


def selected_stack(workspace: Workspace) -> auto.Stack:
    """The stack with the program as its inline program. The local stack is created on first use; a real stage must
    exist already (`pulumi stack init`, README "One-time setup of a stage")."""
    automation = _MaskedOutputsWorkspace(
        work_dir=str(workspace.work_dir),
        program=run_program,
        pulumi_command=workspace.pulumi_command,
        env_vars=dict(workspace.env),
        secrets_provider="passphrase" if workspace.stack_name == LOCAL else None,
    )
    automation.checkpoint = file_checkpoint(workspace.env.get("PULUMI_BACKEND_URL", ""), workspace.stack_name)
    if workspace.stack_name == LOCAL:
        return _Stack(workspace.stack_name, automation, StackInitMode.CREATE_OR_SELECT)
    try:
        return _Stack(workspace.stack_name, automation, StackInitMode.SELECT)
    except auto.errors.StackNotFoundError:
        raise RunnerError(
            f"stack {workspace.stack_name!r} does not exist in the backend {workspace.backend()!r}; create it once "
            f"(README, One-time setup of a stage): pulumi stack init {workspace.stack_name} --secrets-provider "
            "passphrase"
        ) from None


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
