"""The stand-in plugins' logic that needs no target: their installation, the command stand-in's check, diff,
retries and wording, and the docker stand-in's registry lookup against a fake registry on loopback.
(tests/e2e/test_standin_providers.py runs them under the real engine against the local target.)"""

from __future__ import annotations

import asyncio
import http.server
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import asyncssh
import pytest
from pulumi.provider.experimental.property_value import PropertyValue
from pulumi.runtime.proto import provider_pb2

from embedded_default.providers import command, docker, plugins, standin
from embedded_default.providers.standin import UNKNOWN, EngineLog, ProviderError

PROJECT_DIR = Path(__file__).resolve().parents[1]
COMMAND_URN = "urn:pulumi:local::standin-test::command:remote:Command::step"


class RecordingLog(EngineLog):
    """The engine's log, kept in a list instead of sent."""

    def __init__(self) -> None:
        super().__init__("")
        self.messages: list[tuple[int, str, bool]] = []

    async def write(self, severity: Any, message: str, urn: str = "", ephemeral: bool = False) -> None:
        self.messages.append((severity, message, ephemeral))


def command_provider() -> tuple[command.CommandProvider, RecordingLog]:
    log = RecordingLog()
    return command.CommandProvider("1.2.1", log), log


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def inputs(connection: dict[str, Any] | None = None, **values: Any) -> dict[str, PropertyValue]:
    settings = {"host": "127.0.0.1", "privateKey": "KEY", **(connection or {})}
    properties = {"connection": PropertyValue({key: PropertyValue(value) for key, value in settings.items()})}
    return {**properties, **{key: PropertyValue(value) for key, value in values.items()}}


# --- plugins -----------------------------------------------------------------------------------------------------


def test_plugin_versions_are_the_sdk_packages_pinned_in_requirements() -> None:
    pins = dict(re.findall(r"^pulumi-(command|docker)==(\S+)$", (PROJECT_DIR / "requirements.txt").read_text(), re.M))
    assert plugins.PLUGINS == pins == {"command": "1.2.1", "docker": "5.2.0"}


def test_install_is_idempotent_and_reinstalls_a_changed_script(
    pulumi_cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins.install(pulumi_cli, tmp_path)
    installed = tmp_path / "plugins" / "resource-command-v1.2.1" / "pulumi-resource-command"
    assert installed.read_text() == plugins.wrapper_script("command")
    assert f"{plugins.CLONE}/.venv/bin/python -P -m embedded_default.providers.command" in installed.read_text()

    def no_cli(*args: object, **kwargs: object) -> None:
        raise AssertionError("the CLI ran although nothing changed")

    with monkeypatch.context() as patched:
        patched.setattr(subprocess, "run", no_cli)
        started = time.monotonic()
        plugins.install(pulumi_cli, tmp_path)
        assert time.monotonic() - started < 0.1

    installed.write_text("#!/bin/sh\n# from a clone that moved\n")
    plugins.install(pulumi_cli, tmp_path)
    assert installed.read_text() == plugins.wrapper_script("command")


# --- command: check ----------------------------------------------------------------------------------------------


def test_check_applies_the_connection_defaults_and_makes_it_secret() -> None:
    provider, _ = command_provider()
    checked = asyncio.run(provider.check(COMMAND_URN, {}, inputs(create="true")))
    assert checked.failures == []
    connection = checked.inputs["connection"]
    assert connection.is_secret
    assert standin.plain(connection) == {
        "host": "127.0.0.1",
        "privateKey": "KEY",
        "user": "root",
        "port": 22.0,
        "dialErrorLimit": 10.0,
        "perDialTimeout": 15.0,
    }
    given = asyncio.run(provider.check(COMMAND_URN, {}, inputs({"user": "deploy", "port": 2222.0})))
    assert standin.plain(given.inputs["connection"]) == {
        "host": "127.0.0.1",
        "privateKey": "KEY",
        "user": "deploy",
        "port": 2222.0,
        "dialErrorLimit": 10.0,
        "perDialTimeout": 15.0,
    }


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"proxy": {"host": "bastion"}}, "a bastion (proxy) connection"),
        ({"password": "hunter2"}, "password authentication"),
        ({"privateKeyPassword": "hunter2"}, "an encrypted private key"),
        ({"agentSocketPath": "/run/agent"}, "SSH agent authentication"),
    ],
)
def test_check_refuses_what_the_stand_in_does_not_implement(setting: dict[str, Any], named: str) -> None:
    provider, _ = command_provider()
    [(key, value)] = setting.items()
    nested = {name: PropertyValue(item) for name, item in value.items()} if isinstance(value, dict) else value
    properties = inputs({key: nested})
    checked = asyncio.run(provider.check(COMMAND_URN, {}, properties))
    assert [(failure.property, failure.reason) for failure in checked.failures] == [
        (f"connection.{key}", f"{provider.label} does not implement {named} (connection.{key})")
    ]
    assert "hunter2" not in repr(checked.failures)


def test_check_refuses_a_connection_without_private_key_and_unknown_inputs() -> None:
    provider, _ = command_provider()
    properties = inputs(colour="blue")
    properties["connection"] = PropertyValue({"host": PropertyValue("127.0.0.1")})
    checked = asyncio.run(provider.check(COMMAND_URN, {}, properties))
    assert sorted(failure.property for failure in checked.failures) == ["colour", "connection.privateKey"]


def test_check_passes_an_unknown_connection_through_as_a_secret() -> None:
    provider, _ = command_provider()
    checked = asyncio.run(
        provider.check(COMMAND_URN, {}, {"connection": PropertyValue(UNKNOWN), "create": PropertyValue(UNKNOWN)})
    )
    assert checked.failures == []
    assert checked.inputs["connection"] == PropertyValue(UNKNOWN, is_secret=True)


def test_check_refuses_other_types_of_the_package_and_other_stacks() -> None:
    provider, _ = command_provider()
    local_command = "urn:pulumi:local::standin-test::command:local:Command::step"
    with pytest.raises(
        ProviderError,
        match="does not implement the resource type command:local:Command; it implements command:remote:Command",
    ):
        asyncio.run(provider.check(local_command, {}, inputs()))
    with pytest.raises(ProviderError, match=re.escape("of stack 'production' reached the stand-in for pulumi-command")):
        asyncio.run(provider.check(COMMAND_URN.replace(":local::", ":production::"), {}, inputs()))


# --- command: diff -----------------------------------------------------------------------------------------------


def diff(
    old: dict[str, PropertyValue], new: dict[str, PropertyValue], state: dict[str, PropertyValue] | None = None
) -> provider_pb2.DiffResponse:
    provider, _ = command_provider()
    found = asyncio.run(provider.diff(COMMAND_URN, old if state is None else None, state or old, new, []))
    return standin._diff_response(found)


def test_diff_a_triggers_change_replaces_create_before_delete() -> None:
    answer = diff(inputs(triggers=[PropertyValue("a")]), inputs(triggers=[PropertyValue("b")]))
    assert answer.changes == provider_pb2.DiffResponse.DIFF_SOME
    assert list(answer.replaces) == ["triggers"]
    assert answer.deleteBeforeReplace is False
    assert answer.detailedDiff["triggers"].kind == provider_pb2.PropertyDiff.UPDATE_REPLACE


def test_diff_any_other_change_is_an_update() -> None:
    answer = diff(inputs(create="echo 1"), inputs(create="echo 2", logging="none"))
    assert list(answer.replaces) == []
    assert {key: value.kind for key, value in answer.detailedDiff.items()} == {
        "create": provider_pb2.PropertyDiff.UPDATE,
        "logging": provider_pb2.PropertyDiff.ADD,
    }


def test_diff_compares_values_not_secretness_and_ignores_outputs_in_the_state() -> None:
    old = inputs(create="echo 1", stdin="x")
    new = {**old, "stdin": PropertyValue("x", is_secret=True)}
    assert diff(old, new).changes == provider_pb2.DiffResponse.DIFF_NONE
    state = {**old, "stdout": PropertyValue("printed"), "stderr": PropertyValue("")}
    assert diff(old, new, state=state).changes == provider_pb2.DiffResponse.DIFF_NONE


# --- command: dialing, wording -----------------------------------------------------------------------------------


def connection_to(port: int, limit: int) -> command.Connection:
    key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    return command.Connection("127.0.0.1", port, "root", key, None, limit, 15)


def test_dial_retries_until_the_limit_and_words_the_failure_as_go() -> None:
    provider, log = command_provider()
    port = closed_port()
    with pytest.raises(ProviderError) as failure:
        asyncio.run(provider.dial(COMMAND_URN, connection_to(port, limit=2)))
    assert str(failure.value) == f"after 2 failed attempts: dial tcp 127.0.0.1:{port}: connect: connection refused"
    assert [message for _, message, ephemeral in log.messages if ephemeral] == [
        "Dial 1/2 failed: retrying",
        "Dial 2/2 failed: retrying",
    ]


def test_cancel_stops_the_retries() -> None:
    provider, _ = command_provider()

    async def dial_then_cancel() -> float:
        dialing = asyncio.create_task(provider.dial(COMMAND_URN, connection_to(closed_port(), limit=-1)))
        await asyncio.sleep(0.5)
        await provider.cancel()
        cancelled = time.monotonic()
        with pytest.raises(ProviderError) as failure:
            await asyncio.wait_for(dialing, timeout=5)
        assert str(failure.value) == "context canceled"
        return time.monotonic() - cancelled

    assert asyncio.run(dial_then_cancel()) < 0.5


@pytest.mark.parametrize(
    ("status", "signal", "wording"),
    [
        (0, None, None),
        (3, None, "Process exited with status 3"),
        (-1, ("KILL", False, "", ""), "Process exited with status 137 from signal KILL"),
        (-1, ("TERM", False, "stopped", ""), "Process exited with status 143 from signal TERM. Reason was: stopped"),
        (None, None, "wait: remote command exited without exit status or exit signal"),
    ],
)
def test_exit_error_is_x_crypto_s(
    status: int | None, signal: tuple[str, bool, str, str] | None, wording: str | None
) -> None:
    assert command._exit_error(status, signal) == wording


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("echo hi", '"echo hi"'),
        ('say "x"', '"say \\"x\\""'),
        ("a\\b\tc\nd", '"a\\\\b\\tc\\nd"'),
        ("\x01\x7f", '"\\x01\\x7f"'),
        ("é\u00a0", '"é\\u00a0"'),
    ],
)
def test_go_quote_is_go_s_percent_q(text: str, quoted: str) -> None:
    assert command.go_quote(text) == quoted


# --- docker ------------------------------------------------------------------------------------------------------


class FakeRegistry(http.server.BaseHTTPRequestHandler):
    """Answers every HEAD with the class's `answer` and records the requests' headers."""

    answer: ClassVar[tuple[int, dict[str, str]]] = (200, {})
    requests: ClassVar[list[list[tuple[str, str]]]] = []

    def do_HEAD(self) -> None:
        FakeRegistry.requests.append(list(self.headers.items()))
        status, headers = FakeRegistry.answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_registry() -> Iterator[str]:
    FakeRegistry.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def auths(address: str) -> dict[str, docker.RegistryAuth]:
    entries = f'[{{"address": "{address}", "username": "reader", "password": "s3cret"}}]'
    return docker.registry_auths(PropertyValue(entries, is_secret=True))


def test_registry_lookup_sends_the_real_headers_and_returns_the_digest(fake_registry: str) -> None:
    FakeRegistry.answer = (200, {"Docker-Content-Digest": "sha256:abc"})
    digest = docker.registry_image_digest(f"{fake_registry}/team/app:v1", False, auths(f"http://{fake_registry}"))
    assert digest == "sha256:abc"
    [headers] = FakeRegistry.requests
    assert [value for name, value in headers if name == "Accept"] == list(docker.MANIFEST_TYPES)
    assert ("Authorization", "Basic cmVhZGVyOnMzY3JldA==") in headers  # reader:s3cret


def test_bad_credentials_are_worded_as_the_real_provider_after_its_second_try(fake_registry: str) -> None:
    FakeRegistry.answer = (401, {"WWW-Authenticate": 'Basic realm="registry"'})
    with pytest.raises(ProviderError) as failure:
        docker.registry_image_digest(f"{fake_registry}/team/app:v1", False, auths(f"http://{fake_registry}"))
    assert str(failure.value) == (
        "invoking docker:index/getRegistryImage:getRegistryImage: 1 error occurred:\n\t* Got error when attempting "
        "to fetch image version team/app:v1 from registry: bad credentials: 401 Unauthorized\n\n"
    )
    assert [[value for name, value in headers if name == "Accept"] for headers in FakeRegistry.requests] == [
        list(docker.MANIFEST_TYPES),
        [docker.FALLBACK_MANIFEST_TYPE],
    ]
    assert "s3cret" not in str(failure.value)


def test_a_token_challenge_is_refused_as_not_implemented(fake_registry: str) -> None:
    FakeRegistry.answer = (401, {"WWW-Authenticate": 'Bearer realm="https://auth.example/token"'})
    with pytest.raises(ProviderError, match="does not implement the registry token flow"):
        docker.registry_image_digest(f"{fake_registry}/team/app:v1", False, auths(f"http://{fake_registry}"))


def test_registry_auth_addresses_are_https_unless_they_say_http() -> None:
    assert auths("127.0.0.1:5000")["127.0.0.1:5000"].server_address == "https://127.0.0.1:5000"
    assert auths("https://ghcr.io/")["ghcr.io"].server_address == "https://ghcr.io"
    assert auths("http://127.0.0.1:5000/v2/")["127.0.0.1:5000"].server_address == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ('{"address": "r.example", "username": "u", "configFile": "/c.json"}', "registryAuth.configFile"),
        ('{"address": "r.example", "username": "u", "authDisabled": true}', "registryAuth.authDisabled"),
        ('{"address": "r.example"}', "has no username"),
    ],
)
def test_registry_auth_that_reads_a_docker_config_is_refused(
    entry: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_REGISTRY_USER", raising=False)
    with pytest.raises(ProviderError, match=re.escape(reason)):
        docker.registry_auths(PropertyValue(f"[{entry}]"))


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("127.0.0.1:5000/kametrix/kametrix:v1.0.0", docker.Image("127.0.0.1:5000", "kametrix/kametrix", "v1.0.0")),
        ("ghcr.io/org/app", docker.Image("ghcr.io", "org/app", "latest")),
        ("localhost/app:1@sha256:abc", docker.Image("localhost", "app", "sha256:abc")),
        ("postgres:15", docker.Image("registry-1.docker.io", "library/postgres", "15")),
    ],
)
def test_image_names_are_parsed_as_the_real_provider_parses_them(name: str, image: docker.Image) -> None:
    assert docker.parse_image(name) == image


def test_docker_resources_and_other_functions_are_refused() -> None:
    provider = docker.DockerProvider("5.2.0", RecordingLog())
    image_urn = "urn:pulumi:local::standin-test::docker:index/image:Image::app"
    with pytest.raises(
        ProviderError,
        match="does not implement the resource type docker:index/image:Image: the local stack never builds",
    ):
        asyncio.run(provider.check(image_urn, {}, {}))
    with pytest.raises(ProviderError, match="does not implement the function docker:index/getNetwork:getNetwork"):
        asyncio.run(provider.invoke("docker:index/getNetwork:getNetwork", {}))
    with pytest.raises(ProviderError, match="was not configured for the local stack"):
        asyncio.run(provider.invoke(docker.GET_REGISTRY_IMAGE, {"name": PropertyValue("r.example/app:v1")}))
