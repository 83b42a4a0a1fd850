"""The SSH side of the stand-in for pulumi-command (command.py): dial, open a session as x/crypto does, and keep
what the command writes. Its own module because asyncssh is a third of the plugin's start-up, which the engine
waits for at every update: command.py imports it only once a command is on its way, and a provider that runs no
command (the program's `state` marker) never does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import asyncssh

from embedded_default.providers.standin import DialError, ProviderError, dial_tcp

if TYPE_CHECKING:
    from embedded_default.providers.command import Connection

# asyncssh logs to Python's logging; a plugin's stderr reaches the engine's output, so it stays quiet.
logging.getLogger("asyncssh").disabled = True


def client_options(connection: Connection) -> asyncssh.SSHClientConnectionOptions:
    """The real provider's `SSHConfig`: the private key, and the host key pinned (`ssh.FixedHostKey`, only that
    key's algorithms offered) or not checked at all. Nothing else is read: no ~/.ssh/config, no agent."""
    try:
        key = asyncssh.import_private_key(connection.private_key)
    except asyncssh.KeyImportError as error:
        # x/crypto's wording; asyncssh's message holds nothing of the key.
        reason = "this private key is passphrase protected" if "assphrase" in str(error) else "no key found"
        raise ProviderError(f"ssh: {reason}") from None
    pinned = _host_key(connection.host_key) if connection.host_key is not None else None
    return asyncssh.SSHClientConnectionOptions(
        username=connection.user,
        client_keys=[key],
        known_hosts=None if pinned is None else ([pinned], [], [], [], [], [], []),
        server_host_key_algs="default" if pinned is None else [alg.decode() for alg in pinned.sig_algorithms],
        config=[],
        agent_path=None,
        password_auth=False,
        kbdint_auth=False,
        gss_auth=False,
        gss_kex=False,
        host_based_auth=False,
        x509_trusted_certs=None,
        # x/crypto has no time limit on the handshake: perDialTimeout bounds the TCP connect only.
        login_timeout=0,
    )


def _host_key(line: str) -> asyncssh.SSHKey:
    """`ssh.ParseAuthorizedKey`: an authorized_keys line, options and comment allowed."""
    tokens = line.split()
    for start in range(len(tokens) - 1):
        try:
            return asyncssh.import_public_key(f"{tokens[start]} {tokens[start + 1]}")
        except (asyncssh.KeyImportError, ValueError):
            continue
    raise ProviderError("failed to parse host key: ssh: no key found")


async def dial_once(
    connection: Connection, options: asyncssh.SSHClientConnectionOptions
) -> asyncssh.SSHClientConnection:
    timeout = connection.per_dial_timeout or None  # 0: no maximum
    sock = await asyncio.to_thread(dial_tcp, connection.host, connection.port, timeout)
    try:
        return await asyncssh.connect(sock=sock, host=connection.host, port=connection.port, options=options)
    except (asyncssh.Error, OSError) as error:
        sock.close()
        raise DialError(f"ssh: handshake failed: {_handshake_reason(error)}") from None


def _handshake_reason(error: Exception) -> str:
    """x/crypto's reason for a failed handshake."""
    if isinstance(error, asyncssh.HostKeyNotVerifiable):
        return "ssh: host key mismatch"
    if isinstance(error, asyncssh.PermissionDenied):
        return "ssh: unable to authenticate, attempted methods [none publickey], no supported methods remain"
    if isinstance(error, asyncssh.ConnectionLost | asyncssh.DisconnectError | ConnectionResetError):
        return "EOF"
    return str(error) or type(error).__name__


class _SessionChannel(asyncssh.SSHClientChannel[bytes]):
    """A session channel whose `env` requests want a reply, as x/crypto's `Session.Setenv` sends them (asyncssh
    sends them without), and that learns the replies before it sends `exec`: so a variable the server refuses
    (no `AcceptEnv`) is known before the command could start."""

    def __init__(
        self,
        client: asyncssh.SSHClientConnection,
        names: list[str],
        refused: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        options = client._options
        client._update_recv_pktlen(options.max_pktsize)
        super().__init__(
            client,
            asyncio.get_running_loop(),
            client._utf8_decode_errors,
            None,
            "strict",
            options.window,
            options.max_pktsize,
        )
        self._names = names
        self._refused = refused
        self._replies: list[asyncio.Future[bool]] = []

    def _send_request(self, request: bytes, *args: bytes, want_reply: bool = False) -> None:
        if request == b"env":
            reply: asyncio.Future[bool] = self._loop.create_future()
            self._request_waiters.append(reply)
            self._replies.append(reply)
            want_reply = True
        super()._send_request(request, *args, want_reply=want_reply)

    async def _make_request(self, request: bytes, *args: bytes) -> bool | None:
        if request == b"exec":
            accepted = [await reply for reply in self._replies]
            refused = [name for name, ok in zip(self._names, accepted, strict=True) if not ok]
            if refused:
                try:
                    await self._refused(refused)
                except ProviderError:
                    self.close()
                    raise
        return await super()._make_request(request, *args)


async def open_session(
    client: asyncssh.SSHClientConnection,
    command: str,
    variables: dict[str, str],
    refused: Callable[[list[str]], Awaitable[None]],
    output: Output,
) -> _SessionChannel:
    """What asyncssh's `create_session` does, with the channel above: env requests, then `exec` of the command."""
    channel = _SessionChannel(client, list(variables), refused)
    env = {name.encode(): value.encode() for name, value in variables.items()}
    await channel.create(lambda: output, command, None, env, False, None, None, {}, False, None, None, False, False)
    return channel


class Output(asyncssh.SSHClientSession[bytes]):
    """What the command writes, kept whole and handed to `feed` as it arrives (True: from stderr)."""

    def __init__(self, feed: Callable[[bytes, bool], None]) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.combined = bytearray()
        """stdout and stderr in the order they arrived: what a failed command's error shows."""
        self._feed = feed

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        from_stderr = datatype == asyncssh.EXTENDED_DATA_STDERR
        (self.stderr if from_stderr else self.stdout).extend(data)
        self.combined.extend(data)
        self._feed(data, from_stderr)
