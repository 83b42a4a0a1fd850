"""The one place the tests rely on Pulumi's Python SDK beyond its public API.

Pulumi's documented way to unit-test a program (subclass ``pulumi.runtime.Mocks``, call
``pulumi.runtime.set_mocks``, import the program once) answers each resource registration but
shows neither what the engine receives nor the stack's outputs, and runs a program only once per
process. The test kit (tests/kit.py) needs to run ``__main__.py`` afresh for each stack and to see
every registration as the engine would: inputs with secrets still marked, the options (parent,
dependencies, protect, ...) and the outputs. For that this module relies on these internals of
the pinned ``pulumi`` (requirements.txt); when an upgrade breaks the kit, look here first:

- ``pulumi.runtime.mocks.MockMonitor``: subclassed to see the gRPC ``RegisterResource`` and
  ``RegisterResourceOutputs`` requests (their protobuf fields) before the mocks answer them.
- ``pulumi.runtime.rpc.deserialize_properties``: turns a request's protobuf ``Struct`` into Python
  values; ``is_rpc_secret``/``unwrap_rpc_secret`` recognise and open the secret wrapper in them.
- ``pulumi.runtime.settings.set_root_resource(None)``: forgets the previous run's Stack resource,
  so the next run gets a fresh one instead of parenting everything to the old one.
- ``pulumi.runtime.stack.run_in_stack``: what the language host does with a program: runs it
  inside a new Stack resource and waits for every outstanding registration.
- ``pulumi.runtime.sync_await._sync_await``: drives that coroutine to its end on the SDK's own
  event loop, as the SDK's mocks do for their calls.
"""

from __future__ import annotations

import asyncio
import runpy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks, rpc, settings
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await


def is_secret(value: Any) -> bool:
    """True for a value the engine would store as a secret."""
    return bool(rpc.is_rpc_secret(value))


def reveal(value: Any) -> Any:
    """The value inside one secret wrapper."""
    return rpc.unwrap_rpc_secret(value)


@dataclass
class Registration:
    """One resource as the program registered it with the engine."""

    urn: str
    type: str
    name: str
    inputs: dict[str, Any]
    """Inputs as the engine receives them: camelCase keys, secrets still wrapped."""
    parent: str
    dependencies: list[str]
    property_dependencies: dict[str, list[str]]
    provider: str
    protect: bool
    retain_on_delete: bool
    delete_before_replace: bool
    additional_secret_outputs: list[str]
    replace_on_changes: list[str]
    ignore_changes: list[str]
    custom: bool


@dataclass
class ProgramRun:
    """What one run of a program registered, and how it ended."""

    registrations: list[Registration]
    stack_outputs: dict[str, Any]
    error: BaseException | None


class _RecordingMonitor(mocks.MockMonitor):
    def __init__(self, mock: pulumi.runtime.Mocks) -> None:
        super().__init__(mock)
        self.registrations: list[Registration] = []
        self.stack_outputs: dict[str, Any] = {}

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - the gRPC method's name
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]  # untyped in the SDK
        if request.type != "pulumi:pulumi:Stack":
            self.registrations.append(
                Registration(
                    urn=response.urn,
                    type=request.type,
                    name=request.name,
                    inputs=rpc.deserialize_properties(request.object),
                    parent=request.parent,
                    dependencies=list(request.dependencies),
                    property_dependencies={k: list(v.urns) for k, v in request.propertyDependencies.items()},
                    provider=request.provider,
                    protect=request.protect,
                    retain_on_delete=request.retainOnDelete,
                    delete_before_replace=request.deleteBeforeReplace,
                    additional_secret_outputs=list(request.additionalSecretOutputs),
                    replace_on_changes=list(request.replaceOnChanges),
                    ignore_changes=list(request.ignoreChanges),
                    custom=request.custom,
                )
            )
        return response

    def RegisterResourceOutputs(self, request: Any) -> Any:  # noqa: N802 - the gRPC method's name
        if "::pulumi:pulumi:Stack::" in request.urn:
            self.stack_outputs = rpc.deserialize_properties(request.outputs)
        return super().RegisterResourceOutputs(request)  # type: ignore[no-untyped-call]  # untyped in the SDK


def run_program(
    program: Path,
    mock: pulumi.runtime.Mocks,
    *,
    project: str,
    stack: str,
    preview: bool,
    config: Mapping[str, str],
    secret_keys: list[str],
) -> ProgramRun:
    """Run the Python file ``program`` as ``__main__`` under ``mock``, as the engine would run it
    for ``project``/``stack`` with this config bag (full keys, values as the engine hands them)."""
    try:
        asyncio.get_event_loop()
    except RuntimeError:
        # A test that ran asyncio.run() left this thread without a current event loop; the SDK's mocks need one.
        asyncio.set_event_loop(asyncio.new_event_loop())
    monitor = _RecordingMonitor(mock)
    pulumi.runtime.set_mocks(mock, project=project, stack=stack, preview=preview, monitor=monitor)
    pulumi.runtime.set_all_config(dict(config), secret_keys)
    settings.set_root_resource(None)  # type: ignore[arg-type]  # None is how the SDK says "no root yet"

    def run_main() -> None:
        runpy.run_path(str(program), run_name="__main__")

    error: BaseException | None = None
    try:
        _sync_await(run_in_stack(run_main))
    except Exception as raised:
        error = raised
    return ProgramRun(monitor.registrations, monitor.stack_outputs, error)
