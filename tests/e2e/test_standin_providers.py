"""The stand-in plugins (embedded_default/providers) under the real Pulumi engine, against the local target.

Each test runs a small inline program through the Automation API, with the CLI of `scripts/install-engine`, a
file backend of its own and a Pulumi home where `plugins.install` put the stand-ins, and checks one behaviour of
the real providers on the engine's output, the stack's state and the files the commands leave on the server.
Marker files live below `<target>/standin-tests/<run>/<test>/` and are removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import asyncssh
import pulumi
import pulumi_docker as docker
import pytest
from pulumi import automation as auto
from pulumi_command import remote

from embedded_default.providers import plugins
from embedded_default.target import APP_REPOSITORY, APP_VERSIONS, LocalTarget, registry_digest
from tests.pulumi_cli import offline_env

PROJECT = "standin-test"
SECRET_STDIN = f"STANDIN-SECRET-STDIN-{uuid.uuid4().hex}"
SECRET_REGISTRY_PASSWORD = f"STANDIN-SECRET-REGISTRY-{uuid.uuid4().hex}"
RELEASED_TAG = f"{APP_REPOSITORY}:{next(iter(APP_VERSIONS))}"
MISSING_TAG = f"{APP_REPOSITORY}:no-such-tag"

Program = Callable[[], None]


@dataclass
class Run:
    """One engine operation: what it printed, its events, and its error ("" when it succeeded)."""

    output: str
    events: list[auto.EngineEvent]
    error: str
    outputs: dict[str, Any]

    def logged(self, name: str, severity: str = "info", ephemeral: bool | None = True) -> list[str]:
        """The engine's log messages about resource `name` (the command's live output is ephemeral info)."""
        messages = []
        for event in self.events:
            diagnostic = event.diagnostic_event
            if diagnostic is None or not (diagnostic.urn or "").endswith(f"::{name}"):
                continue
            if diagnostic.severity == severity and (ephemeral is None or bool(diagnostic.ephemeral) == ephemeral):
                messages.append(diagnostic.message.removesuffix("\n"))
        return messages

    def steps(self, name: str) -> list[str]:
        """The engine's steps for resource `name`, in order: create, same, update, create-replacement, ..."""
        return [
            event.resource_pre_event.metadata.op.value
            for event in self.events
            if event.resource_pre_event is not None and event.resource_pre_event.metadata.urn.endswith(f"::{name}")
        ]

    def everything(self) -> str:
        """The output and every event, serialised: all the engine showed."""
        return self.output + json.dumps(self.events, default=_serialisable)


def _serialisable(item: object) -> object:
    if isinstance(item, Enum):
        return item.value
    return vars(item) if hasattr(item, "__dict__") else str(item)


class Engine:
    """A project with one stack in a file backend under `root`, run by the real CLI with the stand-ins."""

    def __init__(self, cli: Path, pulumi_home: Path, root: Path, stack_name: str = "local") -> None:
        self.root = root
        self.stack_name = stack_name
        self.command = auto.PulumiCommand(root=str(cli.parent.parent), skip_version_check=True)
        self.env = {**offline_env(root), "PULUMI_HOME": str(pulumi_home)}
        (root / "state").mkdir(parents=True, exist_ok=True)
        (root / "Pulumi.yaml").write_text(f"name: {PROJECT}\nruntime: python\n")

    def stack(self, program: Program) -> auto.Stack:
        return auto.create_or_select_stack(
            stack_name=self.stack_name,
            project_name=PROJECT,
            program=program,
            opts=auto.LocalWorkspaceOptions(
                work_dir=str(self.root), pulumi_command=self.command, env_vars=self.env, secrets_provider="passphrase"
            ),
        )

    def _run(self, operation: Callable[..., Any]) -> Run:
        lines: list[str] = []
        events: list[auto.EngineEvent] = []
        try:
            result = operation(on_output=lines.append, on_event=events.append)
        except auto.CommandError as error:
            return Run("\n".join(lines), events, str(error), {})
        outputs = getattr(result, "outputs", {}) or {}
        return Run("\n".join(lines), events, "", {key: value.value for key, value in outputs.items()})

    def up(self, program: Program) -> Run:
        return self._run(self.stack(program).up)

    def preview(self, program: Program) -> Run:
        return self._run(self.stack(program).preview)

    def refresh(self, program: Program) -> Run:
        return self._run(self.stack(program).refresh)

    def destroy(self, program: Program) -> Run:
        return self._run(self.stack(program).destroy)

    def commands(self, program: Program) -> dict[str, dict[str, Any]]:
        """The Commands in the stack's state: name -> outputs (decrypted)."""
        deployment = self.stack(program).export_stack().deployment or {}
        resources = deployment.get("resources", [])
        return {
            resource["urn"].rsplit("::", 1)[1]: resource.get("outputs", {})
            for resource in resources
            if resource["type"] == "command:remote:Command"
        }

    def state_text(self) -> str:
        """The backend's files as stored: what `pulumi stack export` without --show-secrets would show."""
        return "".join(path.read_text() for path in (self.root / "state").rglob("*.json*") if path.is_file())


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pulumi_home(pulumi_cli: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("pulumi-home")
    plugins.install(pulumi_cli, home)
    return home


@pytest.fixture(scope="module")
def server_root(target: LocalTarget) -> Iterator[Path]:
    root = Path(target.target_dir, "standin-tests", uuid.uuid4().hex[:8])
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root)
    with contextlib.suppress(OSError):  # the shared parent goes too once no run uses it
        root.parent.rmdir()


@pytest.fixture
def server_dir(server_root: Path, request: pytest.FixtureRequest) -> Path:
    """A folder of this test's own on the server (the target runs on this machine, so it is read directly)."""
    name: str = request.node.name
    folder = server_root / name.replace("[", "-").replace("]", "")
    folder.mkdir()
    return folder


@pytest.fixture
def engine(pulumi_cli: Path, pulumi_home: Path, tmp_path: Path) -> Engine:
    return Engine(pulumi_cli, pulumi_home, tmp_path)


def connection(target: LocalTarget, host_key: str | None = None, **settings: Any) -> remote.ConnectionArgs:
    """The target's SSH connection, its key a secret; `host_key` pinned when given."""
    return remote.ConnectionArgs(
        host=target.ssh_host,
        port=target.ssh_port,
        user=target.ssh_user,
        private_key=pulumi.Output.secret(target.ssh_private_key),
        host_key=host_key,
        **settings,
    )


def wait_for_registry(seconds: float = 60.0) -> None:
    """The target is shared: another module may have stopped its registry for a moment (`stopped_registry`)."""
    deadline = time.monotonic() + seconds
    while registry_digest(RELEASED_TAG) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"the target's registry does not serve {RELEASED_TAG}")
        time.sleep(0.5)


def assert_succeeded(run: Run) -> None:
    assert not run.error, run.error


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --- one update with a step of each kind, shared by the tests that read it --------------------------------------


@dataclass
class Basic:
    run: Run
    engine: Engine
    folder: Path


@pytest.fixture(scope="module")
def basic(
    target: LocalTarget,
    pulumi_cli: Path,
    pulumi_home: Path,
    server_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Basic:
    folder = server_root / "basic"
    folder.mkdir()
    engine = Engine(pulumi_cli, pulumi_home, tmp_path_factory.mktemp("basic"))

    def program() -> None:
        pinned = connection(target, host_key=target.ssh_host_key)
        for mode in ("stdoutAndStderr", "stdout", "stderr", "none"):
            remote.Command(
                f"log-{mode}",
                connection=pinned,
                create=f"echo OUT-{mode}.; echo ERR-{mode}. >&2",
                logging=remote.Logging(mode),
                add_previous_output_in_env=False,
            )
        outputs = remote.Command(
            "outputs",
            connection=pinned,
            create="printf 'first\\nlast\\n\\n'; printf 'warned\\n' >&2",
            add_previous_output_in_env=False,
        )
        remote.Command(
            "stdin",
            connection=pinned,
            create=f"cat > {folder}/stdin",
            stdin="line one\nline two\n",
            add_previous_output_in_env=False,
        )
        remote.Command(
            "secret",
            connection=pinned,
            create="cat",
            stdin=pulumi.Output.secret(SECRET_STDIN),
            logging=remote.Logging.NONE,
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(additional_secret_outputs=["stdout", "stderr"]),
        )
        remote.Command(
            "unpinned",
            connection=connection(target, host_key=None),
            create=f"touch {folder}/unpinned",
            add_previous_output_in_env=False,
        )
        pulumi.export("stdout", outputs.stdout)
        pulumi.export("stderr", outputs.stderr)

    return Basic(engine.up(program), engine, folder)


def test_stand_in_says_so_in_the_engine_output(basic: Basic) -> None:
    assert_succeeded(basic.run)
    notice = "stand-in for pulumi-command 1.2.1 (embedded_default/providers): a test double, the local stack only"
    assert notice in basic.run.output
    assert any(notice in message for message in basic.run.logged("default_1_2_1", ephemeral=False))


def test_stdout_and_stderr_are_outputs_with_one_trailing_newline_trimmed(basic: Basic) -> None:
    assert basic.run.outputs == {"stdout": "first\nlast\n", "stderr": "warned"}


def test_stdin_is_written_to_the_command(basic: Basic) -> None:
    assert (basic.folder / "stdin").read_text() == "line one\nline two\n"


@pytest.mark.parametrize(
    ("mode", "shown"),
    [
        ("stdoutAndStderr", {"OUT-stdoutAndStderr.", "ERR-stdoutAndStderr."}),
        ("stdout", {"OUT-stdout."}),
        ("stderr", {"ERR-stderr."}),
        ("none", set()),
    ],
)
def test_logging_mode_decides_what_the_engine_log_shows(basic: Basic, mode: str, shown: set[str]) -> None:
    assert set(basic.run.logged(f"log-{mode}")) == shown
    hidden = {f"OUT-{mode}.", f"ERR-{mode}."} - shown
    # Only the log: stdout and stderr are outputs, which the engine's events carry whatever `logging` says.
    assert not any(line in basic.run.output for line in hidden)


def test_unset_host_key_is_not_checked(basic: Basic) -> None:
    assert (basic.folder / "unpinned").exists()


def test_no_secret_of_the_commands_in_state_or_engine_output(basic: Basic, target: LocalTarget) -> None:
    state = basic.engine.state_text()
    assert "ciphertext" in state
    key_lines = [line for line in target.ssh_private_key.splitlines() if line and not line.startswith("-----")]
    for secret in [SECRET_STDIN, *key_lines]:
        assert secret not in state
        assert secret not in basic.run.everything()


# --- lifecycle ---------------------------------------------------------------------------------------------------


def one_command(target: LocalTarget, name: str = "step", **command: Any) -> Program:
    """A program of one remote command on the target, its host key pinned; the previous output is not offered to
    the server unless `add_previous_output_in_env` says so."""

    def run() -> None:
        remote.Command(
            name,
            connection=connection(target, host_key=target.ssh_host_key),
            **{"add_previous_output_in_env": False, **command},
        )

    return run


def test_preview_runs_nothing(engine: Engine, target: LocalTarget, server_dir: Path) -> None:
    log = server_dir / "log"

    def program(stdin: str) -> Program:
        return one_command(target, create=f"echo ran >> {log}", stdin=stdin)

    created = engine.preview(program("a"))
    assert_succeeded(created)
    assert created.steps("step") == ["create"]
    assert lines(log) == []
    assert_succeeded(engine.up(program("a")))
    updated = engine.preview(program("b"))
    assert_succeeded(updated)
    assert updated.steps("step") == ["update"]
    assert lines(log) == ["ran"]


def test_triggers_change_replaces_create_before_delete(engine: Engine, target: LocalTarget, server_dir: Path) -> None:
    order = server_dir / "order"

    def release(number: int) -> Program:
        return one_command(
            target,
            "release",
            triggers=[number],
            create=f"echo create-{number} >> {order}",
            delete=f"echo delete-{number} >> {order}",
        )

    assert_succeeded(engine.up(release(1)))
    replaced = engine.up(release(2))
    assert_succeeded(replaced)
    assert replaced.steps("release") == ["create-replacement", "replace", "delete-replaced"]
    assert lines(order) == ["create-1", "create-2", "delete-1"]


def test_no_change_runs_nothing(engine: Engine, target: LocalTarget, server_dir: Path) -> None:
    log = server_dir / "log"
    program = one_command(target, create=f"echo ran >> {log}")

    assert_succeeded(engine.up(program))
    again = engine.up(program)
    assert_succeeded(again)
    assert again.steps("step") == ["same"]
    assert lines(log) == ["ran"]


def test_other_change_is_an_update_that_reruns_create(engine: Engine, target: LocalTarget, server_dir: Path) -> None:
    log = server_dir / "log"

    def program(stdin: str, secret: bool = True) -> Program:
        def run() -> None:
            # An output belongs to the run that made it: made here, inside the program.
            one_command(
                target,
                create=f"echo create >> {log}; cat >> {log}",
                delete=f"echo delete >> {log}",
                stdin=pulumi.Output.secret(stdin) if secret else stdin,
            )()

        return run

    assert_succeeded(engine.up(program("first\n")))
    # The value is compared, not its secretness.
    assert engine.up(program("first\n", secret=False)).steps("step") == ["same"]
    updated = engine.up(program("second\n"))
    assert_succeeded(updated)
    assert updated.steps("step") == ["update"]
    assert lines(log) == ["create", "first", "create", "second"]


def test_update_command_runs_instead_of_create(engine: Engine, target: LocalTarget, server_dir: Path) -> None:
    log = server_dir / "log"

    def program(version: str) -> Program:
        return one_command(target, create=f"echo create-{version} >> {log}", update=f"echo update-{version} >> {log}")

    assert_succeeded(engine.up(program("1")))
    updated = engine.up(program("2"))
    assert_succeeded(updated)
    assert updated.steps("step") == ["update"]
    assert lines(log) == ["create-1", "update-2"]


def test_failed_create_keeps_no_state_and_the_next_up_retries(
    engine: Engine, target: LocalTarget, server_dir: Path
) -> None:
    gate, log = server_dir / "gate", server_dir / "log"
    program = one_command(target, "gated", create=f"test -f {gate} || exit 9; echo ran >> {log}")

    failed = engine.up(program)
    assert "Process exited with status 9" in failed.error
    assert "gated" not in engine.commands(program)
    gate.touch()
    retried = engine.up(program)
    assert_succeeded(retried)
    assert retried.steps("gated") == ["create"]
    assert lines(log) == ["ran"]


def test_failed_command_error_is_worded_as_the_real_provider_whatever_logging_says(
    engine: Engine, target: LocalTarget
) -> None:
    failing = 'echo "to stdout"; echo to-stderr >&2; exit 3'

    def program() -> None:
        pinned = connection(target, host_key=target.ssh_host_key)
        for name, script in (("exits", failing), ("killed", "kill -KILL $$")):
            remote.Command(
                name, connection=pinned, create=script, logging=remote.Logging.NONE, add_previous_output_in_env=False
            )

    run = engine.up(program)
    assert run.logged("exits", "error", ephemeral=None) == [
        'Process exited with status 3: running "echo \\"to stdout\\"; echo to-stderr >&2; exit 3":\n'
        "to stdout\nto-stderr\n"
    ]
    assert run.logged("killed", "error", ephemeral=None) == [
        'Process exited with status 137 from signal KILL: running "kill -KILL $$":\n'
    ]
    assert run.logged("exits") == []


def test_delete_runs_the_delete_command(engine: Engine, target: LocalTarget, server_dir: Path) -> None:
    log = server_dir / "log"
    program = one_command(target, create=f"echo create >> {log}", delete=f"echo delete >> {log}")

    assert_succeeded(engine.up(program))
    destroyed = engine.destroy(program)
    assert_succeeded(destroyed)
    assert destroyed.steps("step") == ["delete"]
    assert lines(log) == ["create", "delete"]


def test_refresh_keeps_the_state(engine: Engine, target: LocalTarget, server_dir: Path) -> None:
    log = server_dir / "log"
    program = one_command(target, create=f"echo ran >> {log}; echo printed")

    assert_succeeded(engine.up(program))
    before = engine.commands(program)
    refreshed = engine.refresh(program)
    assert_succeeded(refreshed)
    assert engine.commands(program) == before
    assert before["step"]["stdout"] == "printed"
    assert engine.up(program).steps("step") == ["same"]
    assert lines(log) == ["ran"]


# --- connection --------------------------------------------------------------------------------------------------


def test_host_key_mismatch_fails_after_the_retries_and_runs_nothing(
    engine: Engine, target: LocalTarget, server_dir: Path
) -> None:
    marker = server_dir / "marker"
    other_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()

    def program() -> None:
        remote.Command(
            "step",
            connection=connection(target, host_key=other_key, dial_error_limit=1),
            create=f"touch {marker}",
            add_previous_output_in_env=False,
        )

    run = engine.up(program)
    assert run.logged("step", "error", ephemeral=None) == [
        "after 1 failed attempts: ssh: handshake failed: ssh: host key mismatch"
    ]
    assert run.logged("step") == ["Dial 1/1 failed: retrying"]
    assert not marker.exists()


def test_environment_the_server_refuses_fails_before_the_command_runs(
    engine: Engine, target: LocalTarget, server_dir: Path
) -> None:
    marker = server_dir / "marker"

    run = engine.up(one_command(target, create=f"touch {marker}", environment={"KAMETRIX_STANDIN": "1"}))
    assert run.logged("step", "error", ephemeral=None) == [
        "Unable to set 'KAMETRIX_STANDIN'. This only works if your SSH server is configured to accept\n"
        "\tthese variables via AcceptEnv. Alternatively, if a Bash-like shell runs the command on the remote host, "
        "you could\n\tprefix the command itself with the variables in the form 'VAR=value command'",
        'could not set environment variable "KAMETRIX_STANDIN": ssh: setenv failed',
    ]
    assert not marker.exists()


def test_refused_previous_output_variables_are_only_a_warning(
    engine: Engine, target: LocalTarget, server_dir: Path
) -> None:
    log = server_dir / "log"

    def program(stdin: str) -> Program:
        # addPreviousOutputInEnv unset: the previous stdout/stderr are offered to the server as variables.
        return one_command(
            target, create=f"cat >> {log}; echo out; echo err >&2", stdin=stdin, add_previous_output_in_env=None
        )

    assert_succeeded(engine.up(program("first\n")))
    updated = engine.up(program("second\n"))
    assert_succeeded(updated)
    warnings = updated.logged("step", "warning", ephemeral=False)
    assert [warning.split(".")[0] for warning in warnings] == [
        "Unable to set 'PULUMI_COMMAND_STDOUT'",
        "Unable to set 'PULUMI_COMMAND_STDERR'",
    ]
    assert lines(log) == ["first", "second"]


# --- never a real stage ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("package", sorted(plugins.PLUGINS))
def test_a_stack_other_than_local_is_refused_and_nothing_runs(
    package: str, pulumi_cli: Path, pulumi_home: Path, tmp_path: Path, target: LocalTarget, server_dir: Path
) -> None:
    marker = server_dir / "marker"
    staging = Engine(pulumi_cli, pulumi_home, tmp_path, stack_name="staging")

    def program() -> None:
        if package == "command":
            one_command(target, create=f"touch {marker}")()
        else:
            registry = docker.Provider(
                "registry", registry_auth=[docker.ProviderRegistryAuthArgs(address="http://127.0.0.1:5000")]
            )
            # An output-returning invoke: the synchronous one would wait forever on a provider that failed.
            docker.get_registry_image_output(name=RELEASED_TAG, opts=pulumi.InvokeOptions(provider=registry))

    run = staging.up(program)
    assert (
        f"of stack 'staging' reached the stand-in for pulumi-{package} {plugins.PLUGINS[package]} "
        "(embedded_default/providers): a test double that never touches a real stage, for the 'local' stack only. "
        f"Staging and production run Pulumi's real {package} plugin"
    ) in run.error
    assert not marker.exists()


# --- docker: one update asks the registry each question ----------------------------------------------------------


@dataclass
class Registry:
    """One update that asked the target's registry each question, and the answers it exported."""

    run: Run
    engine: Engine
    answers: dict[str, Any]
    closed_port: int


@pytest.fixture(scope="module")
def registry(
    target: LocalTarget, pulumi_cli: Path, pulumi_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Registry:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    engine = Engine(pulumi_cli, pulumi_home, tmp_path_factory.mktemp("docker"))
    wait_for_registry()

    def lookup(question: str, address: str, name: str) -> dict[str, Any]:
        provider = docker.Provider(
            question,
            registry_auth=[
                docker.ProviderRegistryAuthArgs(
                    address=address, username="local", password=pulumi.Output.secret(SECRET_REGISTRY_PASSWORD)
                )
            ],
        )
        try:
            found = docker.get_registry_image(name=name, opts=pulumi.InvokeOptions(provider=provider))
        except Exception as error:  # the program records the invoke's failure as its answer
            return {"error": str(error)}
        return {
            "id": found.id,
            "name": found.name,
            "digest": found.sha256_digest,
            "insecure": found.insecure_skip_verify,
        }

    def program() -> None:
        questions = {
            "released": ("http://127.0.0.1:5000", RELEASED_TAG),
            "missing": ("http://127.0.0.1:5000", MISSING_TAG),
            "https": ("127.0.0.1:5000", RELEASED_TAG),
            "unreachable": (f"http://127.0.0.1:{closed_port}", f"127.0.0.1:{closed_port}/kametrix/kametrix:v1"),
        }
        for question, (address, name) in questions.items():
            pulumi.export(question, lookup(question, address, name))

    run = engine.up(program)
    assert_succeeded(run)
    return Registry(run, engine, run.outputs, closed_port)


def test_a_tag_resolves_to_the_registrys_digest(registry: Registry) -> None:
    digest = registry_digest(RELEASED_TAG)
    assert digest is not None
    assert registry.answers["released"] == {"id": digest, "name": RELEASED_TAG, "digest": digest, "insecure": False}


def test_a_missing_tag_fails_with_the_real_wording(registry: Registry) -> None:
    assert (
        "invoking docker:index/getRegistryImage:getRegistryImage: 1 error occurred:\n\t* Got error when attempting "
        "to fetch image version kametrix/kametrix:no-such-tag from registry: got bad response from registry: "
        "404 Not Found"
    ) in registry.answers["missing"]["error"]


def test_an_unreachable_registry_fails_with_the_real_wording(registry: Registry) -> None:
    port = registry.closed_port
    assert (
        f"from registry: Error during registry request: Head "
        f'"http://127.0.0.1:{port}/v2/kametrix/kametrix/manifests/v1": '
        f"dial tcp 127.0.0.1:{port}: connect: connection refused"
    ) in registry.answers["unreachable"]["error"]


def test_a_registry_address_without_http_scheme_is_asked_over_https(registry: Registry) -> None:
    assert (
        'Error during registry request: Head "https://127.0.0.1:5000/v2/kametrix/kametrix/manifests/v1.0.0": '
        "http: server gave HTTP response to HTTPS client"
    ) in registry.answers["https"]["error"]


def test_docker_stand_in_says_so_in_the_engine_output(registry: Registry) -> None:
    notice = "stand-in for pulumi-docker 5.2.0 (embedded_default/providers): a test double, the local stack only"
    assert notice in registry.run.output


def test_the_registry_password_stays_secret(registry: Registry) -> None:
    state = registry.engine.state_text()
    assert "ciphertext" in state
    assert SECRET_REGISTRY_PASSWORD not in state
    assert SECRET_REGISTRY_PASSWORD not in registry.run.everything()
