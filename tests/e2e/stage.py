"""A stage of the local stack on the local target, updated through the runner: the real Pulumi engine (the CLI of
scripts/install-engine, the Automation API's inline program) with the embedded default's stand-in providers.

Each stage is a local stack folder of its own (`embedded_default.workspace`): its stack file is the committed
`Pulumi.local.yaml` with the stage's own names and ports, its own file backend and secrets. Every update is
`python -m runner --stack local --work-dir <folder> ...` in a process of its own, as an operator would type it;
what it did is read from the engine's events (`--events`), the stack's state and the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components import config
from components.config import NAMESPACE
from embedded_default import workspace as local_workspace
from embedded_default.target import LocalTarget, registry_digest
from runner import stack_file
from runner.workspace import file_checkpoint
from tests.kit import PROJECT_DIR

COMMAND = "command:remote:Command"
# The ops of a step that ran its command (a replacement runs the new one first, then the old one's delete).
RAN = ("create", "update", "create-replacement")
RUNNER_TIMEOUT = 900


@dataclass
class StepRun:
    """One release step of an update, as the engine reported it."""

    name: str
    op: str
    ok: bool
    stdout: str
    """The step's stdout output (`[secret]` where the engine keeps it secret)."""
    error: str
    """The engine's error for the step: for a failed command, its exit and its whole output."""
    seconds: float = 0.0
    """From the engine's start of the step to its end, as the runner saw the events."""


@dataclass
class UpdateResult:
    returncode: int
    output: str
    """What the runner printed: the engine's own output, then its error, if any."""
    events: list[dict[str, Any]]
    runs: list[StepRun] = field(default_factory=list)
    killed: bool = False
    wall: float = 0.0
    """From starting the runner to its exit."""
    left_running: list[int] = field(default_factory=list)
    """Processes of the runner's session still alive once it ended (its CLI, its plugins)."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def failed(self) -> StepRun | None:
        return next((run for run in self.runs if not run.ok), None)

    def ran(self) -> list[str]:
        return [run.name for run in self.runs]

    def step(self, name: str) -> StepRun:
        return next(run for run in self.runs if run.name == name)


def steps_of(events: list[dict[str, Any]]) -> list[StepRun]:
    """The release steps that ran a command, in the order they started, with how each ended."""
    runs: dict[str, StepRun] = {}
    for event in events:
        if event.get("type") != COMMAND:
            continue
        name = event["urn"].rpartition("::")[2]
        if event["event"] == "pre" and event["op"] in RAN:
            runs[name] = StepRun(name, event["op"], ok=False, stdout="", error="", seconds=-event["at"])
        elif event["event"] in ("done", "failed") and name in runs and event["op"] == runs[name].op:
            runs[name].ok = event["event"] == "done"
            runs[name].stdout = str((event.get("outputs") or {}).get("stdout", ""))
            runs[name].seconds += event["at"]
    for event in events:
        if event.get("event") == "diagnostic" and event.get("severity") == "error" and event.get("urn"):
            name = event["urn"].rpartition("::")[2]
            if name in runs:
                runs[name].error += event["message"]
    return list(runs.values())


def explain(result: UpdateResult) -> str:
    lines = [f"runner exited {result.returncode}{' (killed)' if result.killed else ''}", result.output[-6000:]]
    for run in result.runs:
        lines.append(f"{run.name} ({run.op}): {'ok' if run.ok else 'FAILED'}\n{run.stdout}\n{run.error}")
    return "\n".join(lines)


@dataclass
class Stage:
    """One local stack folder, released on the local target through the runner."""

    target: LocalTarget
    work_dir: Path
    cli: Path
    started_at: float = 0.0

    @property
    def stack_file(self) -> Path:
        return self.work_dir / local_workspace.STACK_FILE_NAME

    @property
    def settings(self) -> dict[str, Any]:
        """The stack file's plain config, by key without the namespace."""
        loaded = yaml.safe_load(self.stack_file.read_text())["config"]
        return {key.partition(":")[2]: value for key, value in loaded.items() if key.startswith(f"{NAMESPACE}:")}

    def setting(self, path: str) -> Any:
        node: Any = self.settings
        for part in path.split("."):
            node = node[part]
        return node

    @property
    def app_dir(self) -> str:
        return str(self.setting("server.appDir"))

    @property
    def project(self) -> str:
        return str(self.setting("app.composeProject"))

    @property
    def repository(self) -> str:
        """Where the stage's images live: `registry/repository`."""
        return f"{self.setting('image.registry')}/{self.setting('image.repository')}"

    def configure(self, values: Mapping[str, Any]) -> None:
        """Set plain keys of the stack file (dotted paths without the namespace; None removes a key), as an
        operator edits it."""
        document = yaml.safe_load(self.stack_file.read_text())
        for path, value in values.items():
            top, *rest = path.split(".")
            node = document["config"]
            key = f"{NAMESPACE}:{top}"
            for part in rest:
                node = node.setdefault(key, {})
                key = part
            if value is None:
                node.pop(key, None)
            else:
                node[key] = value
        self.stack_file.write_text(yaml.safe_dump(document, sort_keys=False))

    def set_secret(self, name: str, value: str) -> None:
        """`pulumi config set --secret NAME` with the value on stdin."""
        self.pulumi("config", "set", "--secret", "--stack", "local", name, stdin=value)

    def pulumi(self, *args: str, stdin: str | None = None) -> str:
        env = {**os.environ, **local_workspace.engine_environment(self.work_dir, self.cli)}
        done = subprocess.run(
            [str(self.cli), *args], cwd=self.work_dir, env=env, input=stdin, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"pulumi {args[0]}: {done.stderr}"
        return done.stdout

    def stack_config(self) -> config.StackConfig:
        """The stack's config as the program reads it, secrets decrypted (in memory only)."""
        raw = json.loads(self.pulumi("config", "--show-secrets", "--json", "--stack", "local"))
        values = {key: entry["value"] for key, entry in raw.items() if "value" in entry}
        return config.load("local", values, {key for key, entry in raw.items() if entry.get("secret")})

    def outputs(self) -> dict[str, Any]:
        return dict(json.loads(self.pulumi("stack", "output", "--json", "--stack", "local")))

    def state_file(self) -> Path:
        checkpoint = file_checkpoint(local_workspace.file_backend_url(self.work_dir / "state"), "local")
        assert checkpoint is not None
        return checkpoint

    # --- updates through the runner ---------------------------------------------------------------------------

    def runner_argv(self, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "runner", "--stack", "local", "--work-dir", str(self.work_dir),
            "--events", str(self.work_dir / "events.jsonl"), *args,
        ]  # fmt: skip

    def start(self, *args: str) -> subprocess.Popen[str]:
        """The runner in a process group of its own (so that a test can kill it with its CLI and plugins)."""
        (self.work_dir / "events.jsonl").unlink(missing_ok=True)
        self.started_at = time.monotonic()
        return subprocess.Popen(
            self.runner_argv(*args),
            cwd=PROJECT_DIR,
            env={**os.environ, "KAMETRIX_PULUMI_CLI": str(self.cli)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def finish(self, process: subprocess.Popen[str], killed: bool = False) -> UpdateResult:
        output, _ = process.communicate(timeout=RUNNER_TIMEOUT)
        wall = time.monotonic() - self.started_at
        events_file = self.work_dir / "events.jsonl"
        events = [json.loads(line) for line in events_file.read_text().splitlines()] if events_file.exists() else []
        return UpdateResult(process.returncode, output, events, steps_of(events), killed, wall)

    def run(self, *args: str) -> UpdateResult:
        return self.finish(self.start(*args))

    def up(self, version: str | None = None, *extra: str) -> UpdateResult:
        """An update with `version` pinned (release VERSION), or of the stack file as it is."""
        if version is None:
            return self.run("up", "--yes", *extra)
        return self.run("release", version, "--yes", *extra)

    def up_interrupted(self, version: str, interrupt: Interruption, *extra: str) -> UpdateResult:
        """`release VERSION`, interrupted as `run_interrupted` says."""
        return self.run_interrupted(interrupt, "release", version, "--yes", *extra)

    def run_interrupted(self, interrupt: Interruption, *args: str) -> UpdateResult:
        """A runner command while `interrupt(process)` is polled; it returns True once it has interrupted the
        update (killed the runner, dropped a connection, ...). The update then runs to its end or death."""
        process = self.start(*args)
        interrupted = False
        while process.poll() is None and not interrupted:
            interrupted = interrupt(process)
            time.sleep(0.05)
        result = self.finish(process, killed=interrupted and process.returncode in (-signal.SIGKILL, 128 + 9))
        result.left_running = session_processes(process.pid)
        return result

    def record(self, version: str) -> None:
        """Record `version`'s digests as the registry names them now, as a workflow does once it is built."""
        app, migrate = (registry_digest(f"{self.repository}:{tag}") for tag in (version, f"{version}-migrate"))
        assert app and migrate, f"{version} is not in the registry"
        stack_file.record(self.stack_file, version, app, migrate)

    def digests(self, version: str) -> dict[str, str]:
        return dict(self.setting("image.digests")[version])


def session_processes(session: int) -> list[int]:
    """Pids of the live processes of a session (a zombie nobody reaped is not one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            found.append(int(entry.name))
    return found


def kill_session(process: subprocess.Popen[str]) -> None:
    """SIGKILL the runner, the CLI it started and every plugin of theirs (each plugin in a process group of its
    own, all in the runner's session): what a runner machine that dies leaves behind, nothing."""
    for pid in session_processes(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


Interruption = Callable[[subprocess.Popen[str]], bool]


def kill_when(condition: Callable[[], bool]) -> Interruption:
    """An interruption: the runner dies with its CLI and plugins once `condition` holds."""

    def interrupt(process: subprocess.Popen[str]) -> bool:
        if not condition():
            return False
        kill_session(process)
        return True

    return interrupt


def drop_when(stage: Stage, script: str, condition: Callable[[], bool]) -> Interruption:
    """An interruption: the SSH connection of the step running `script` drops once `condition` holds."""
    return lambda _: condition() and drop_connection_of(f"{stage.app_dir}/bin/{script}")


def processes_running(pattern: str) -> list[int]:
    """Pids of processes whose command line contains `pattern`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern in command:
            found.append(int(entry.name))
    return found


def drop_connection_of(pattern: str) -> bool:
    """Kill the sshd session that runs a process whose command line contains `pattern`: the connection drops the
    way a network fault drops it, and the step on the server is left with no one reading its output (no SIGHUP:
    there is no terminal). True when one was dropped."""
    for pid in processes_running(pattern):
        session = _sshd_ancestor(pid)
        if session is not None:
            os.kill(session, signal.SIGKILL)
            return True
    return False


def _sshd_ancestor(pid: int) -> int | None:
    current = pid
    while current > 1:
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            exe = os.readlink(f"/proc/{current}/exe")
        except OSError:
            return None
        if os.path.basename(exe) == "sshd" and current != pid:
            return current
        current = int(stat.rpartition(")")[2].split()[1])
    return None


def new_stage(
    target: LocalTarget,
    prepared: Path,
    cli: Path,
    app_port: int,
    overrides: dict[str, Any] | None = None,
) -> Stage:
    """A stage of its own: its proxy serves the app on `app_port`, its colours answer on the next two ports."""
    name = f"kametrix-e2e-{uuid.uuid4().hex[:8]}"
    folder = prepared.parent / name
    local_workspace.copy_prepared(
        prepared,
        folder,
        cli,
        {
            "server.hostKey": target.ssh_host_key,
            "server.port": target.ssh_port,
            "server.appDir": f"{target.target_dir}/stages/{name}",
            "app.composeProject": name,
            "app.appContainer": f"{name}-app",
            "app.dbContainer": f"{name}-db",
            "app.proxyPort": app_port,
            "app.bluePort": app_port + 1,
            "app.greenPort": app_port + 2,
            "app.url": f"http://127.0.0.1:{app_port}",
            **(overrides or {}),
        },
    )
    return Stage(target, folder, cli)


@contextlib.contextmanager
def staged(
    target: LocalTarget, prepared: Path, cli: Path, app_port: int, overrides: dict[str, Any] | None = None
) -> Iterator[Stage]:
    """`new_stage`, removed from the target afterwards whatever happened (a fixture's first release failing too)."""
    stage = new_stage(target, prepared, cli, app_port, overrides)
    try:
        yield stage
    finally:
        remove_stage(stage)


def remove_stage(stage: Stage) -> None:
    remove_project(stage.target, stage.app_dir, stage.project)


def remove_project(target: LocalTarget, app_dir: str, project: str) -> None:
    """Takes a stage's compose project down with its volumes and network, then removes its folder. Compose finds
    the project's containers by their labels, so no compose file or setting is needed."""
    done = target.ssh(
        f"docker compose --project-name {shlex.quote(project)} down --volumes --remove-orphans --timeout 5"
        f" && rm -rf {shlex.quote(app_dir)}",
        timeout=120,
    )
    assert done.returncode == 0, f"removing {project}: {done.stderr.decode(errors='replace')}"


@contextlib.contextmanager
def stages_on(target: LocalTarget, cli: Path) -> Iterator[Callable[..., Stage]]:
    """`new_stage` for a script (the benchmarks): one prepared stack to copy, every stage removed afterwards."""
    created: list[Stage] = []
    with tempfile.TemporaryDirectory(prefix="kametrix-stacks-") as root:
        prepared = Path(root, "prepared")
        local_workspace.prepare(prepared, cli, target.ssh_host_key, target.ssh_private_key)

        def make(app_port: int, overrides: dict[str, Any] | None = None) -> Stage:
            created.append(new_stage(target, prepared, cli, app_port, overrides))
            return created[-1]

        try:
            yield make
        finally:
            for stage in created:
                remove_stage(stage)
