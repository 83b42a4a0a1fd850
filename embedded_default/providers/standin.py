"""What the stand-in plugins share: the gRPC server the engine talks to, the engine's log, the guard that keeps
them to the `local` stack, property helpers, and Go's wording of a failed TCP dial.

The SDK's own `pulumi.provider.experimental.server` is not used: it appends a Python traceback to every error
(so no error could read as the real provider's), drops the URN from `Configure` (the guard needs it) and the old
inputs from `Diff` (what the real provider compares). This server passes the requests' fields through as they are.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
from google.protobuf import empty_pb2, struct_pb2  # type: ignore[import-untyped]
from pulumi.provider.experimental.property_value import Computed, PropertyValue
from pulumi.runtime.proto import engine_pb2, engine_pb2_grpc, plugin_pb2, provider_pb2, provider_pb2_grpc
from typing_extensions import override

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
"""The wire's sentinel for a value not known yet (preview). The SDK 3.272 server cannot marshal
`PropertyValue.computed()`, and the engine reads this string as unknown."""

LOCAL_STACK = "local"

# Pulumi's own limit for messages between engine and plugins (pulumi/runtime/_grpc_settings.py): a command's
# whole stdout travels in one Create response.
_MAX_MESSAGE_BYTES = 400 * 1024 * 1024

Properties = dict[str, PropertyValue]
_T = TypeVar("_T")


class ProviderError(Exception):
    """A failure the engine shows as the provider's answer, word for word."""


class DialError(Exception):
    """A connection that could not be made, worded as Go's net package words it."""


@dataclass(frozen=True)
class Failure:
    """An input the provider rejects, shown by the engine next to the property's path."""

    property: str
    reason: str


@dataclass(frozen=True)
class Checked:
    inputs: Properties
    failures: list[Failure] = field(default_factory=list)


@dataclass(frozen=True)
class Returned:
    """An invoke's answer: its values, or why its arguments were rejected."""

    values: Properties
    failures: list[Failure] = field(default_factory=list)


@dataclass(frozen=True)
class Diff:
    detailed: dict[str, provider_pb2.PropertyDiff.Kind.ValueType]
    """Changed top-level property -> what changed (added, deleted, updated; the replacing kind where it replaces)."""
    replaces: list[str]


# --- URNs: urn:pulumi:<stack>::<project>::<parent types$type>::<name> --------------------------------------------


def urn_stack(urn: str) -> str:
    return urn.split("::", 1)[0].removeprefix("urn:pulumi:")


def urn_type(urn: str) -> str:
    parts = urn.split("::")
    return parts[2].rsplit("$", 1)[-1] if len(parts) > 3 else ""


def urn_name(urn: str) -> str:
    return "::".join(urn.split("::")[3:])


# --- property values ---------------------------------------------------------------------------------------------


def plain(value: PropertyValue) -> object:
    """The value alone, without secretness or dependencies: what a diff compares."""
    inner = value.value
    if isinstance(inner, Computed):
        return UNKNOWN
    if isinstance(inner, Mapping):
        return {key: plain(item) for key, item in inner.items()}
    if isinstance(inner, Sequence) and not isinstance(inner, str):
        return [plain(item) for item in inner]
    return inner


def is_unknown(value: PropertyValue) -> bool:
    return isinstance(value.value, Computed) or value.value == UNKNOWN


def present(properties: Mapping[str, PropertyValue]) -> Properties:
    """Properties without null values: an input set to null is an input not given."""
    return {key: value for key, value in properties.items() if value.value is not None}


def diff_properties(olds: Mapping[str, PropertyValue], news: Mapping[str, PropertyValue], replace_on: set[str]) -> Diff:
    """Top-level properties whose values differ (secretness aside); those in `replace_on` replace the resource."""
    olds, news = present(olds), present(news)
    kinds = provider_pb2.PropertyDiff
    detailed: dict[str, provider_pb2.PropertyDiff.Kind.ValueType] = {}
    for key in sorted(olds.keys() | news.keys()):
        replaces = key in replace_on
        if key not in news:
            detailed[key] = kinds.DELETE_REPLACE if replaces else kinds.DELETE
        elif key not in olds:
            detailed[key] = kinds.ADD_REPLACE if replaces else kinds.ADD
        elif plain(olds[key]) != plain(news[key]):
            detailed[key] = kinds.UPDATE_REPLACE if replaces else kinds.UPDATE
    return Diff(detailed=detailed, replaces=[key for key in detailed if key in replace_on])


# --- the engine's log --------------------------------------------------------------------------------------------


class EngineLog:
    """Messages to the engine's `Log` service (at the address the engine passes a plugin as its first argument):
    they reach the engine's output, next to the resource whose URN they carry."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._stub: engine_pb2_grpc.EngineStub | None = None

    async def write(
        self, severity: engine_pb2.LogSeverity.ValueType, message: str, urn: str = "", ephemeral: bool = False
    ) -> None:
        if self._stub is None:
            channel = grpc.aio.insecure_channel(self._address)
            self._stub = engine_pb2_grpc.EngineStub(channel)
        request = engine_pb2.LogRequest(severity=severity, message=message, urn=urn, ephemeral=ephemeral)
        await self._stub.Log(request)

    async def info(self, message: str, urn: str = "", ephemeral: bool = False) -> None:
        await self.write(engine_pb2.INFO, message, urn, ephemeral)

    async def warning(self, message: str, urn: str = "") -> None:
        await self.write(engine_pb2.WARNING, message, urn)

    async def error(self, message: str, urn: str = "") -> None:
        await self.write(engine_pb2.ERROR, message, urn)


# --- the provider ------------------------------------------------------------------------------------------------


def standin_label(package: str, version: str) -> str:
    """How errors name a stand-in."""
    return f"the stand-in for pulumi-{package} {version} (embedded_default/providers)"


class StandinProvider:
    """One stand-in plugin. The base refuses every operation; a stand-in overrides what it implements."""

    package = ""
    """The real plugin's name: "command", "docker"."""
    implements = ""
    """What the stand-in implements, as its refusals name it."""

    def __init__(self, version: str, log: EngineLog) -> None:
        self.version = version
        self.log = log
        self.cancelled = asyncio.Event()
        """Set when the engine cancels (Cancel RPC, SIGINT): what waits for a retry gives up."""

    @property
    def label(self) -> str:
        return standin_label(self.package, self.version)

    @property
    def notice(self) -> str:
        return (
            f"stand-in for pulumi-{self.package} {self.version} (embedded_default/providers): a test double, "
            f"the {LOCAL_STACK} stack only; it implements {self.implements}"
        )

    def require_local(self, urn: str) -> None:
        stack = urn_stack(urn)
        if stack != LOCAL_STACK:
            raise ProviderError(
                f"{urn_type(urn)} {urn_name(urn)!r} of stack {stack!r} reached {self.label}: a test double that "
                f"never touches a real stage, for the {LOCAL_STACK!r} stack only. Staging and production run "
                f"Pulumi's real {self.package} plugin: give their update a PULUMI_HOME without the stand-ins "
                f"(`pulumi plugin install resource {self.package} {self.version}` installs the real one)."
            )

    def refuse(self, what: str) -> ProviderError:
        return ProviderError(f"{self.label} does not implement {what}; it implements {self.implements} only")

    async def check_config(self, urn: str, news: Properties) -> Checked:
        self.require_local(urn)
        return Checked(news)

    async def diff_config(self, olds: Properties, news: Properties) -> Diff:
        return diff_properties(olds, news, replace_on=set())

    async def configure(self, urn: str, args: Properties) -> None:
        self.require_local(urn)
        await self.log.info(self.notice, urn)

    async def check(self, urn: str, olds: Properties, news: Properties) -> Checked:
        self.require_local(urn)
        raise self.refuse(f"the resource type {urn_type(urn)}")

    async def diff(
        self, urn: str, old_inputs: Properties | None, state: Properties, news: Properties, ignore: Sequence[str]
    ) -> Diff:
        raise self.refuse(f"the resource type {urn_type(urn)}")

    async def create(self, urn: str, inputs: Properties, preview: bool) -> tuple[str, Properties]:
        raise self.refuse(f"the resource type {urn_type(urn)}")

    async def read(
        self, urn: str, resource_id: str, state: Properties, inputs: Properties
    ) -> tuple[str, Properties, Properties]:
        raise self.refuse(f"the resource type {urn_type(urn)}")

    async def update(self, urn: str, state: Properties, news: Properties, preview: bool) -> Properties:
        raise self.refuse(f"the resource type {urn_type(urn)}")

    async def delete(self, urn: str, state: Properties) -> None:
        raise self.refuse(f"the resource type {urn_type(urn)}")

    async def invoke(self, token: str, args: Properties) -> Returned:
        raise self.refuse(f"the function {token}")

    async def cancel(self) -> None:
        self.cancelled.set()


# --- the gRPC server ---------------------------------------------------------------------------------------------


def _failures(failures: list[Failure]) -> list[provider_pb2.CheckFailure]:
    return [provider_pb2.CheckFailure(property=failure.property, reason=failure.reason) for failure in failures]


def _diff_response(diff: Diff) -> provider_pb2.DiffResponse:
    return provider_pb2.DiffResponse(
        changes=provider_pb2.DiffResponse.DIFF_SOME if diff.detailed else provider_pb2.DiffResponse.DIFF_NONE,
        diffs=list(diff.detailed),
        replaces=diff.replaces,
        # Create-before-delete, as pulumi-go-provider's infer answers (it never sets deleteBeforeReplace).
        deleteBeforeReplace=False,
        detailedDiff={key: provider_pb2.PropertyDiff(kind=kind, inputDiff=True) for key, kind in diff.detailed.items()},
        hasDetailedDiff=True,
    )


def _unmarshal(properties: struct_pb2.Struct) -> Properties:
    return PropertyValue.unmarshal_map(properties)


class Servicer(provider_pb2_grpc.ResourceProviderServicer):
    """The engine's `ResourceProvider` service, answered by a `StandinProvider`. RPCs not defined here (Construct,
    Call, GetSchema, Handshake, ...) answer UNIMPLEMENTED, from the generated base class."""

    def __init__(self, provider: StandinProvider) -> None:
        self.provider = provider

    async def _answer(self, context: Any, work: Awaitable[_T]) -> _T:
        try:
            return await work
        except ProviderError as error:
            await _abort(context, grpc.StatusCode.UNKNOWN, str(error))
        except Exception as error:  # a defect of the stand-in itself: say so, without a traceback
            await _abort(
                context,
                grpc.StatusCode.INTERNAL,
                f"{self.provider.label} failed ({type(error).__name__}): {error}",
            )

    @override
    async def GetPluginInfo(self, request: empty_pb2.Empty, context: Any) -> plugin_pb2.PluginInfo:
        return plugin_pb2.PluginInfo(version=self.provider.version)

    @override
    async def CheckConfig(self, request: provider_pb2.CheckRequest, context: Any) -> provider_pb2.CheckResponse:
        checked = await self._answer(context, self.provider.check_config(request.urn, _unmarshal(request.news)))
        return provider_pb2.CheckResponse(
            inputs=PropertyValue.marshal_map(checked.inputs), failures=_failures(checked.failures)
        )

    @override
    async def DiffConfig(self, request: provider_pb2.DiffRequest, context: Any) -> provider_pb2.DiffResponse:
        olds = request.old_inputs if request.HasField("old_inputs") else request.olds
        diff = await self._answer(context, self.provider.diff_config(_unmarshal(olds), _unmarshal(request.news)))
        return _diff_response(diff)

    @override
    async def Configure(self, request: provider_pb2.ConfigureRequest, context: Any) -> provider_pb2.ConfigureResponse:
        await self._answer(context, self.provider.configure(request.urn, _unmarshal(request.args)))
        return provider_pb2.ConfigureResponse(acceptSecrets=True, supportsPreview=True)

    @override
    async def Check(self, request: provider_pb2.CheckRequest, context: Any) -> provider_pb2.CheckResponse:
        checked = await self._answer(
            context, self.provider.check(request.urn, _unmarshal(request.olds), _unmarshal(request.news))
        )
        return provider_pb2.CheckResponse(
            inputs=PropertyValue.marshal_map(checked.inputs), failures=_failures(checked.failures)
        )

    @override
    async def Diff(self, request: provider_pb2.DiffRequest, context: Any) -> provider_pb2.DiffResponse:
        old_inputs = _unmarshal(request.old_inputs) if request.HasField("old_inputs") else None
        diff = await self._answer(
            context,
            self.provider.diff(
                request.urn, old_inputs, _unmarshal(request.olds), _unmarshal(request.news), list(request.ignoreChanges)
            ),
        )
        return _diff_response(diff)

    @override
    async def Create(self, request: provider_pb2.CreateRequest, context: Any) -> provider_pb2.CreateResponse:
        resource_id, properties = await self._answer(
            context, self.provider.create(request.urn, _unmarshal(request.properties), request.preview)
        )
        return provider_pb2.CreateResponse(id=resource_id, properties=PropertyValue.marshal_map(properties))

    @override
    async def Read(self, request: provider_pb2.ReadRequest, context: Any) -> provider_pb2.ReadResponse:
        resource_id, properties, inputs = await self._answer(
            context,
            self.provider.read(request.urn, request.id, _unmarshal(request.properties), _unmarshal(request.inputs)),
        )
        return provider_pb2.ReadResponse(
            id=resource_id, properties=PropertyValue.marshal_map(properties), inputs=PropertyValue.marshal_map(inputs)
        )

    @override
    async def Update(self, request: provider_pb2.UpdateRequest, context: Any) -> provider_pb2.UpdateResponse:
        properties = await self._answer(
            context,
            self.provider.update(request.urn, _unmarshal(request.olds), _unmarshal(request.news), request.preview),
        )
        return provider_pb2.UpdateResponse(properties=PropertyValue.marshal_map(properties))

    @override
    async def Delete(self, request: provider_pb2.DeleteRequest, context: Any) -> empty_pb2.Empty:
        await self._answer(context, self.provider.delete(request.urn, _unmarshal(request.properties)))
        return empty_pb2.Empty()

    @override
    async def Invoke(self, request: provider_pb2.InvokeRequest, context: Any) -> provider_pb2.InvokeResponse:
        returned = await self._answer(context, self.provider.invoke(request.tok, _unmarshal(request.args)))
        response = provider_pb2.InvokeResponse(failures=_failures(returned.failures))
        if returned.values:
            # `return` is a Python keyword, so the field is set by name.
            getattr(response, "return").CopyFrom(PropertyValue.marshal_map(returned.values))
        return response

    @override
    async def Cancel(self, request: empty_pb2.Empty, context: Any) -> empty_pb2.Empty:
        await self.provider.cancel()
        return empty_pb2.Empty()


async def _abort(context: Any, code: Any, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("grpc's abort raises")  # pragma: no cover - abort never returns


def serve(make_provider: Callable[[EngineLog], StandinProvider], argv: Sequence[str]) -> None:
    """A plugin's main: serve the provider on a loopback port and print the port, as the engine expects; stop on
    SIGINT or SIGTERM (the engine ends a plugin with SIGINT to its process group)."""
    parser = argparse.ArgumentParser(description="a stand-in Pulumi provider plugin (embedded_default/providers)")
    parser.add_argument("engine", help="the engine's address, for its Log service")
    # The engine may add --logtostderr, -v=N, --logflow or --tracing: none of them changes what a stand-in does.
    known, _ = parser.parse_known_args(argv)
    provider = make_provider(EngineLog(known.engine))
    asyncio.run(_serve(provider))


async def _serve(provider: StandinProvider) -> None:
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES), ("grpc.max_send_message_length", -1)]
    )
    provider_pb2_grpc.add_ResourceProviderServicer_to_server(Servicer(provider), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    await stop.wait()
    await provider.cancel()
    await server.stop(grace=1)


# --- Go's wording of a TCP dial ----------------------------------------------------------------------------------


def join_host_port(host: str, port: int) -> str:
    """Go's net.JoinHostPort: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def dial_tcp(host: str, port: int, timeout: float | None) -> socket.socket:
    """A connected socket, as Go's `net.DialTimeout("tcp", ...)` gives one; fails with a DialError worded as Go's
    (`dial tcp 127.0.0.1:1: connect: connection refused`, `...: i/o timeout`). None: no timeout."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise DialError(f"dial tcp: lookup {host}: no such host") from None
    first_failure = ""
    for family, kind, protocol, _, address in addresses:
        sock = socket.socket(family, kind, protocol)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError as error:
            sock.close()
            # Go reports the first address's failure when every address fails.
            first_failure = first_failure or f"dial tcp {join_host_port(str(address[0]), port)}: {_go_reason(error)}"
            continue
        sock.settimeout(None)
        return sock
    raise DialError(first_failure or f"dial tcp {join_host_port(host, port)}: no address")


def _go_reason(error: OSError) -> str:
    if isinstance(error, TimeoutError):
        return "i/o timeout"
    if error.errno is not None:
        # Go prints the system's message in lower case: "connect: connection refused".
        return f"connect: {os.strerror(error.errno).lower()}"
    return str(error)
