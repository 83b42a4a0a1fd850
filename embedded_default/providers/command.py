"""The stand-in for pulumi-command 1.2.1: `command:remote:Command` over real SSH (asyncssh).

Behaviour read from pulumi-command v1.2.1 (`provider/pkg/provider/remote/`, `common/`) and pulumi-go-provider v1.3.0
(`infer/resource.go`), which the real provider is built on:

- check: the connection's defaults (user "root", port 22, dialErrorLimit 10, perDialTimeout 15) are applied and
  the whole `connection` is a secret.
- diff: a change of `triggers` replaces, create-before-delete; any other input change is an update. Values are
  compared, not their secretness; `stdout`/`stderr` are outputs.
- create/update/delete: nothing runs in preview. Otherwise: dial (every failure retried, `dialErrorLimit` times,
  `perDialTimeout` seconds each, the host key pinned by `hostKey` or not checked), set the environment (a variable
  the server refuses is an error for `environment`, a warning for the previous outputs), write `stdin`, run the
  command, stream its output to the engine's log per `logging`, and keep stdout/stderr (one trailing newline
  trimmed). A failed command is `<exit error>: running "<command>":\\n<stdout and stderr>`, whatever `logging` says.
  A failed create keeps no state. `update` runs `update`, else `create`; `delete` runs `delete`, else nothing.
- read: the state as it is (infer's default), so a refresh keeps it.

Refused, with a clear error: any other type of the package, a proxy (bastion) connection, password or SSH agent
authentication, an encrypted private key. The stand-in authenticates with `connection.privateKey` only.
"""

from __future__ import annotations

import asyncio
import importlib
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from types import ModuleType
from typing import TYPE_CHECKING

from pulumi.provider.experimental.property_value import PropertyValue

from embedded_default.providers.standin import (
    UNKNOWN,
    Checked,
    DialError,
    Diff,
    EngineLog,
    Failure,
    Properties,
    ProviderError,
    StandinProvider,
    diff_properties,
    is_unknown,
    plain,
    present,
    serve,
    urn_name,
    urn_type,
)

if TYPE_CHECKING:
    import asyncssh

SSH_SESSION = "embedded_default.providers.ssh_session"

TYPE = "command:remote:Command"
OUTPUTS = ("stdout", "stderr")
INPUTS = (
    "triggers",
    "create",
    "update",
    "delete",
    "stdin",
    "logging",
    "connection",
    "environment",
    "addPreviousOutputInEnv",
)
LOGGING_MODES = ("stdout", "stderr", "stdoutAndStderr", "none")
CONNECTION_DEFAULTS: dict[str, str | float] = {
    "user": "root",
    "port": 22.0,
    "dialErrorLimit": 10.0,
    "perDialTimeout": 15.0,
}
CONNECTION_INPUTS = ("host", "user", "port", "privateKey", "hostKey", "dialErrorLimit", "perDialTimeout")
CONNECTION_NOT_IMPLEMENTED = {
    "proxy": "a bastion (proxy) connection",
    "password": "password authentication",
    "privateKeyPassword": "an encrypted private key",
    "agentSocketPath": "SSH agent authentication",
}
PREVIOUS_STDOUT = "PULUMI_COMMAND_STDOUT"
PREVIOUS_STDERR = "PULUMI_COMMAND_STDERR"

# x/crypto/ssh's exit status for a process killed by a signal: 128 + the signal's number, for the signals it knows.
_SIGNAL_NUMBERS = {
    "ABRT": 6,
    "ALRM": 14,
    "FPE": 8,
    "HUP": 1,
    "ILL": 4,
    "INT": 2,
    "KILL": 9,
    "PIPE": 13,
    "QUIT": 3,
    "SEGV": 11,
    "TERM": 15,
}
_SETENV_REFUSED = """Unable to set '{}'. This only works if your SSH server is configured to accept
	these variables via AcceptEnv. Alternatively, if a Bash-like shell runs the command on the remote host, you could
	prefix the command itself with the variables in the form 'VAR=value command'"""


@dataclass(frozen=True)
class Connection:
    host: str
    port: int
    user: str
    private_key: str = field(repr=False)
    host_key: str | None
    dial_error_limit: int
    per_dial_timeout: int


@dataclass(frozen=True)
class Step:
    """What running one of a Command's commands needs, read from its inputs (create, update) or state (delete)."""

    connection: Connection
    stdin: str = field(repr=False)
    logging: str
    environment: dict[str, str] = field(repr=False)
    add_previous_output_in_env: bool


@dataclass(frozen=True)
class Outputs:
    stdout: str
    stderr: str

    def properties(self) -> Properties:
        return {"stdout": PropertyValue(self.stdout), "stderr": PropertyValue(self.stderr)}


class CommandProvider(StandinProvider):
    package = "command"
    implements = f"{TYPE} (private-key SSH, no proxy)"
    _ssh_session: asyncio.Future[ModuleType] | None = None

    def ssh_session(self) -> asyncio.Future[ModuleType]:
        """ssh_session.py (asyncssh), imported in a thread from the first check of a command on, while the engine
        goes on to diff it: not before, so that it does not slow the plugin's start-up."""
        if self._ssh_session is None:
            self._ssh_session = asyncio.ensure_future(asyncio.to_thread(importlib.import_module, SSH_SESSION))
        return self._ssh_session

    async def check(self, urn: str, olds: Properties, news: Properties) -> Checked:
        self.require_local(urn)
        if urn_type(urn) != TYPE:
            raise self.refuse(f"the resource type {urn_type(urn)}")
        self.ssh_session()
        inputs = present(news)
        failures = [failure for key, value in inputs.items() for failure in self._input_failures(key, value)]
        connection = inputs.get("connection")
        if connection is None:
            failures.append(Failure("connection", "Missing required field 'connection'"))
        elif isinstance(connection.value, Mapping):
            given = present(connection.value)
            failures += self._connection_failures(given)
            defaults = {key: PropertyValue(value) for key, value in CONNECTION_DEFAULTS.items()}
            # The real provider declares the whole connection secret (`provider:"secret"`).
            inputs["connection"] = PropertyValue({**defaults, **given}, is_secret=True)
        elif is_unknown(connection):
            inputs["connection"] = connection.with_secret(True)
        else:
            failures.append(Failure("connection", "connection must be an object"))
        return Checked(inputs, failures)

    def _input_failures(self, key: str, value: PropertyValue) -> list[Failure]:
        if key.startswith("__") or is_unknown(value):
            return []
        if key not in INPUTS:
            return [Failure(key, f"{self.label} does not know the input {key!r} of {TYPE}")]
        if key in ("create", "update", "delete", "stdin") and not isinstance(value.value, str):
            return [Failure(key, f"{key} must be a string")]
        if key == "logging" and value.value not in LOGGING_MODES:
            return [Failure(key, f"logging must be one of {', '.join(LOGGING_MODES)}")]
        if key == "addPreviousOutputInEnv" and not isinstance(value.value, bool):
            return [Failure(key, "addPreviousOutputInEnv must be a boolean")]
        if key == "triggers" and not isinstance(plain(value), list):
            return [Failure(key, "triggers must be a list")]
        if key == "environment":
            variables = plain(value)
            if not isinstance(variables, dict) or not all(isinstance(item, str) for item in variables.values()):
                return [Failure(key, "environment must be a map of strings")]
        return []

    def _connection_failures(self, connection: Properties) -> list[Failure]:
        failures = [
            Failure(f"connection.{key}", f"{self.label} does not implement {what} (connection.{key})")
            for key, what in CONNECTION_NOT_IMPLEMENTED.items()
            if key in connection
        ]
        failures += [
            Failure(f"connection.{key}", f"{self.label} does not know the connection input {key!r}")
            for key in connection
            if key not in CONNECTION_INPUTS and key not in CONNECTION_NOT_IMPLEMENTED
        ]
        if "host" not in connection:
            failures.append(Failure("connection.host", "Missing required field 'host'"))
        if "privateKey" not in connection:
            failures.append(
                Failure("connection.privateKey", f"{self.label} authenticates with connection.privateKey only")
            )
        for key in ("host", "user", "privateKey", "hostKey"):
            if key in connection and not is_unknown(connection[key]) and not isinstance(connection[key].value, str):
                failures.append(Failure(f"connection.{key}", f"connection.{key} must be a string"))
        for key in ("port", "dialErrorLimit", "perDialTimeout"):
            if key in connection and not is_unknown(connection[key]) and not isinstance(connection[key].value, float):
                failures.append(Failure(f"connection.{key}", f"connection.{key} must be a number"))
        return failures

    async def diff(
        self, urn: str, old_inputs: Properties | None, state: Properties, news: Properties, ignore: Sequence[str]
    ) -> Diff:
        self.require_local(urn)
        news = dict(news)
        # infer's handling of ignoreChanges: top-level keys take the state's value.
        for key in ignore:
            if key in state:
                news[key] = state[key]
        # Without the old inputs (an engine that does not send them), infer rebuilds them from the state.
        olds = old_inputs if old_inputs is not None else {k: v for k, v in state.items() if k not in OUTPUTS}
        return diff_properties(_comparable(olds), _comparable(news), replace_on={"triggers"})

    async def create(self, urn: str, inputs: Properties, preview: bool) -> tuple[str, Properties]:
        self.require_local(urn)
        if preview:
            return "", {**inputs, **_unknown_outputs()}
        outputs = Outputs("", "")
        command = _string(inputs, "create")
        if command is not None:
            outputs = await self.run(urn, command, _step(inputs), previous=outputs)
        # resource.NewUniqueHex(name, 8, 0): the name and eight random hex digits.
        return f"{urn_name(urn)}{secrets.token_hex(4)}", {**inputs, **outputs.properties()}

    async def read(
        self, urn: str, resource_id: str, state: Properties, inputs: Properties
    ) -> tuple[str, Properties, Properties]:
        self.require_local(urn)
        return resource_id, state, inputs

    async def update(self, urn: str, state: Properties, news: Properties, preview: bool) -> Properties:
        self.require_local(urn)
        if preview:
            return {**news, **_unknown_outputs()}
        outputs = _outputs(state)
        command = _string(news, "update")
        if command is None:
            command = _string(news, "create")
        if command is not None:
            outputs = await self.run(urn, command, _step(news), previous=outputs)
        return {**news, **outputs.properties()}

    async def delete(self, urn: str, state: Properties) -> None:
        self.require_local(urn)
        command = _string(state, "delete")
        if command is not None:
            await self.run(urn, command, _step(state), previous=_outputs(state))

    async def run(self, urn: str, command: str, step: Step, previous: Outputs) -> Outputs:
        """Run `command` once, as the real provider's `CommandOutputs.run` does."""
        client = await self.dial(urn, step.connection)
        try:
            return await self._run_session(urn, client, command, step, previous)
        finally:
            client.close()

    async def dial(self, urn: str, connection: Connection) -> asyncssh.SSHClientConnection:
        """`dialWithRetry`: every failure is retried (host-key mismatch included) until `dialErrorLimit` failures
        (-1: no limit), waiting 0.1 s, then 1.5 times longer each time, at most 5 s."""
        await self.ssh_session()
        from embedded_default.providers import ssh_session

        options = ssh_session.client_options(connection)
        limit = connection.dial_error_limit
        failed = 0
        delay = 0.1
        while True:
            try:
                return await ssh_session.dial_once(connection, options)
            except DialError as failure:
                if limit > -1 and failed + 1 > limit:
                    raise ProviderError(f"after {failed} failed attempts: {failure}") from None
            shown_limit = "inf" if limit == -1 else str(limit)
            await self.log.info(f"Dial {failed + 1}/{shown_limit} failed: retrying", urn, ephemeral=True)
            if await _cancelled_within(self.cancelled, min(delay, 5.0)):
                # What the real provider answers once the engine cancels its context.
                raise ProviderError("context canceled")
            delay *= 1.5
            failed += 1

    async def _run_session(
        self, urn: str, client: asyncssh.SSHClientConnection, command: str, step: Step, previous: Outputs
    ) -> Outputs:
        variables = dict(step.environment)
        required = set(variables)
        if step.add_previous_output_in_env:
            # Sent optimistically: a server that refuses them only earns a warning.
            for name, value in ((PREVIOUS_STDOUT, previous.stdout), (PREVIOUS_STDERR, previous.stderr)):
                if value:
                    variables[name] = value

        async def refused(names: list[str]) -> None:
            for name in names:
                if name in required:
                    await self.log.error(_SETENV_REFUSED.format(name), urn)
                    raise ProviderError(f"could not set environment variable {go_quote(name)}: ssh: setenv failed")
                await self.log.warning(_SETENV_REFUSED.format(name), urn)

        live = _LiveLog(
            self.log,
            urn,
            stdout=step.logging in ("stdout", "stdoutAndStderr"),
            stderr=step.logging in ("stderr", "stdoutAndStderr"),
        )
        from embedded_default.providers import ssh_session

        output = ssh_session.Output(live.feed)
        try:
            channel = await ssh_session.open_session(client, command, variables, refused, output)
            if step.stdin:
                channel.write(step.stdin.encode())
            # x/crypto sends EOF once stdin is written, or at once without stdin: a command reading stdin never
            # waits for more.
            channel.write_eof()
            await channel.wait_closed()
        finally:
            await live.close()
        failure = _exit_error(channel.get_exit_status(), channel.get_exit_signal())
        if failure is not None:
            raise ProviderError(f"{failure}: running {go_quote(command)}:\n{_text(output.combined)}")
        return Outputs(_text(output.stdout).removesuffix("\n"), _text(output.stderr).removesuffix("\n"))


# --- reading inputs ----------------------------------------------------------------------------------------------


def _comparable(properties: Properties) -> Properties:
    # infer leaves out the engine's `version` and internal `__` keys before diffing.
    return {key: value for key, value in properties.items() if key != "version" and not key.startswith("__")}


def _unknown_outputs() -> Properties:
    return {key: PropertyValue(UNKNOWN) for key in OUTPUTS}


def _string(properties: Properties, key: str) -> str | None:
    value = properties.get(key)
    return value.value if value is not None and isinstance(value.value, str) else None


def _outputs(state: Properties) -> Outputs:
    return Outputs(_string(state, "stdout") or "", _string(state, "stderr") or "")


def _step(properties: Properties) -> Step:
    """The run's settings; `check` has validated their types and applied the connection's defaults."""
    raw = plain(properties["connection"])
    environment = plain(properties["environment"]) if "environment" in properties else {}
    if not isinstance(raw, dict) or not isinstance(environment, dict):
        # The engine runs nothing with inputs unknown; check rejected anything else.
        raise ProviderError("connection and environment must be known to run a command")
    connection = Connection(
        host=str(raw["host"]),
        port=int(raw["port"]),
        user=str(raw["user"]),
        private_key=str(raw["privateKey"]),
        host_key=str(raw["hostKey"]) if raw.get("hostKey") is not None else None,
        dial_error_limit=int(raw["dialErrorLimit"]),
        per_dial_timeout=int(raw["perDialTimeout"]),
    )
    add_previous = properties.get("addPreviousOutputInEnv")
    return Step(
        connection=connection,
        stdin=_string(properties, "stdin") or "",
        logging=_string(properties, "logging") or "stdoutAndStderr",
        environment={str(key): str(value) for key, value in environment.items()},
        add_previous_output_in_env=add_previous is None or add_previous.value is not False,
    )


# --- SSH ---------------------------------------------------------------------------------------------------------


async def _cancelled_within(cancelled: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(cancelled.wait(), seconds)
    except TimeoutError:
        return False
    return True


class _LiveLog:
    """The command's output, line by line, to the engine's log while it runs (the real provider's `LogOutput`:
    ephemeral info messages on the resource)."""

    def __init__(self, log: EngineLog, urn: str, stdout: bool, stderr: bool) -> None:
        self._wanted = {False: stdout, True: stderr}
        self._log = log
        self._urn = urn
        self._pending = b""
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._pump = asyncio.create_task(self._send())

    def feed(self, data: bytes, from_stderr: bool) -> None:
        if not self._wanted[from_stderr]:
            return
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self._lines.put_nowait(line)

    async def close(self) -> None:
        if self._pending:
            self._lines.put_nowait(self._pending)
        self._lines.put_nowait(None)
        await self._pump

    async def _send(self) -> None:
        while (line := await self._lines.get()) is not None:
            # bufio.ScanLines drops a trailing carriage return.
            await self._log.info(_text(line).removesuffix("\r"), self._urn, ephemeral=True)


def _exit_error(status: int | None, signal: tuple[str, bool, str, str] | None) -> str | None:
    """x/crypto's `Session.Wait` error: None for exit status 0, else `ExitError` or `ExitMissingError` text."""
    code = -1 if status is None else status
    if code == 0:
        return None
    name, message = (signal[0], signal[2]) if signal is not None else ("", "")
    if code == -1:
        if not name:
            return "wait: remote command exited without exit status or exit signal"
        code = 128 + _SIGNAL_NUMBERS.get(name, 0)
    text = f"Process exited with status {code}"
    if name:
        text += f" from signal {name}"
    if message:
        text += f". Reason was: {message}"
    return text


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def go_quote(text: str) -> str:
    """Go's `%q` (strconv.Quote): double quotes, Go's escapes, printable characters as they are."""
    escapes = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    quoted = []
    for char in text:
        if char in ('"', "\\"):
            quoted.append("\\" + char)
        elif char in escapes:
            quoted.append(escapes[char])
        elif char.isprintable():
            quoted.append(char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            quoted.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            quoted.append(f"\\u{ord(char):04x}")
        else:
            quoted.append(f"\\U{ord(char):08x}")
    return '"' + "".join(quoted) + '"'


def main() -> None:
    serve(lambda log: CommandProvider(version("pulumi-command"), log), sys.argv[1:])


if __name__ == "__main__":
    main()
