"""Kill-anywhere: updates interrupted at a random moment, each followed by the next update through the runner,
after which the stage must be at rest in the state its stack declares (issue 22, outcome 4).

An *episode* is one operation — a release to the other good version, a rollback (`runner rollback`), a failed
release (v3.0.0 never turns healthy, v4.0.0's migration fails), a settings change (a secret or a plain app
setting) or, behind a flag, a database change — run through the runner and interrupted once by one *kind* of
interruption at a random *moment*, then one *recovery* update: forward (finish what the stack now pins) or back
(an operator going back to what served before). The episodes of a seed are reproducible: `plan(seed, number)`
depends on nothing else, so a failure names its seed and episode, and the same seed replays it.

The kinds:
- SIGKILL of the CLI: the runner with its CLI and plugins (`kill_session`), as when the runner's machine dies;
- a dropped SSH connection: the sshd session of the running step is killed (`drop_connection_of`);
- SIGKILL of the step on the server: every bash process of the stage's release steps at once, so no trap runs;
- the proxy refusing to reload: the idle colour's proxy config made invalid at a moment during the cutover
  step, as `test_releases.py`'s proxy test does, and put back once the update ends;
- dockerd restarting: a graceful restart (SIGTERM, then start again) of the dockerd the stage runs on.

A moment is a step and a random point inside it (a fraction of that step's shortest observed duration for the
same operation, so that it lands while the step runs; an operation not timed yet first runs once uninterrupted, and
back), read from the engine's events, so it keeps working when the server's scripts change; for the CLI and
dockerd, sometimes a time since the runner started instead (the engine's preview and refresh included).

After the recovery the stage is judged by what it serves and records, never by how the scripts work:
- the version that serves through the proxy (`/api/version`) is the stack's pinned version and `release.env`'s;
- the settings that serve (`/api/env-check`, SHA-256 of each) are the stack's (`Stage.stack_config()`, rendered
  as the program renders the `.env`);
- the release lock is free, one colour runs and it is the one the proxy names, no process of a release step is
  left on the server, the stack records no pending operation;
- every row a writer thread committed (the database acknowledged its id) is still there;
- no request of the constant load on the proxy (`GET /api/version`) failed, except in the stated, measured window
  of a dockerd restart (every container stops), and while the site stays down after one.
Also, after the interrupted update: when it failed saying which version keeps serving, that version serves; and
a dockerd restart brings back by itself what ran before it. The writes the database refused are counted per
episode: they measure the window in which PostgreSQL itself is replaced (a dockerd restart, a database change).

Every episode runs on a private target (`private_target`): a dockerd and an sshd of this harness's own, on their
own data root, exec root, socket, port and cache folder (`/var/tmp/kametrix-kill-target`), so that restarting
dockerd never touches the shared local target that other tests run on. Images come from the shared target's
registry on 127.0.0.1:5000. Everything started here is stopped again by its pid file, and the containers, networks
(their bridges, veths and network namespaces) and mounts removed, when the run ends however it ends: a reaper
process does it if the run was killed, and a new run does it first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from components import server_files
from components.config import APP_SECRET_KEYS
from components.shared_facts import SERVER_RELEASE, UP_STEP
from embedded_default.target import LocalTarget, TargetError, _connection_facts, registry_digest
from embedded_default.target.connection import docker_cli, docker_env
from embedded_default.target.daemons import _sshd_config, ensure_keys, start_dockerd, stop_dockerd
from embedded_default.target.layout import SSH_PORT, Layout, locked, unmount_under, write_if_changed
from embedded_default.target.processes import DAEMON_START_TIMEOUT, run, terminate, wait_until, which
from tests.e2e.load import Load
from tests.e2e.stage import (
    COMMAND,
    RAN,
    Stage,
    UpdateResult,
    drop_connection_of,
    explain,
    kill_session,
    processes_running,
    stages_on,
)
from tests.e2e.test_releases import app_get, app_url, live_colour, release_lock_held, running_colours, served_version
from tests.kit import PROJECT_DIR

KILL_TARGET_DIR = Path("/var/tmp/kametrix-kill-target")
# The shared target's sshd listens on 2222; the private one beside it, on loopback too.
KILL_SSH_PORT = 2232
# The harness's stage: its proxy and colours on the host's loopback (clear of the e2e tests' 13xxx ports).
PROXY_PORT = 14700
# A failed release's health gate runs out sooner than the local stack's 20 attempts; a stand-in colour turns healthy
# in one to three.
STAGE_SETTINGS = {"release.healthAttempts": 8}
# The stand-in app's versions (embedded_default/target/images.py).
GOOD_VERSIONS = ("v1.0.0", "v2.0.0")
NEVER_HEALTHY = "v3.0.0"
MIGRATION_FAILS = "v4.0.0"
# The steps the moments aim at, in the order an update runs them (docs/server-states.md), by the engine's names for
# them without the component's (server-up: up). The last is the cutover, where the proxy reloads. A moment aimed at a
# step the update does not run (a new version runs no stage step: files, env, database) hits the next one it runs; a
# step the program runs besides these is hit by a moment aimed at the step before it that ends first; a step renamed
# is never aimed at, and the episodes aimed at it are "missed" (the CI sample fails on that).
CUTOVER_STEP = UP_STEP.removeprefix(f"{SERVER_RELEASE}-")
UPDATE_STEPS = ("files", "env", "database", "backup", "migrate", CUTOVER_STEP)
LOAD_RATE = 40
# How long the shared target's registry may be away (another test run stopped it).
REGISTRY_BACK_SECONDS = 120
# How long the site may take to answer again by itself once dockerd is back.
SITE_BACK_SECONDS = 20.0
WRITE_INTERVAL_SECONDS = 0.5
# The writer's table in the stage's database; each acknowledged id must stay.
CREATE_ROWS = "create table if not exists kill_anywhere_rows (id bigserial primary key, at timestamptz default now())"
WRITE_ROW = "insert into kill_anywhere_rows default values returning id"
ROWS_WRITTEN = "select id from kill_anywhere_rows"
# A step's duration before this run has seen the step end in any operation.
DEFAULT_STEP_SECONDS = 2.0
# Of a step's duration as the engine reports it, what is not its script on the server: the SSH session opening before
# it and closing after it. A moment inside a step is a fraction of the script's run, which a kill must find running.
SESSION_OPENS_SECONDS = 0.1
SESSION_CLOSES_SECONDS = 0.05
# The moments of the CLI and dockerd kinds that are a time since the runner started, not a point in a step.
TIMED_MOMENT_SHARE = 0.2
TIMED_MOMENT_SECONDS = 6.0


class Operation(StrEnum):
    RELEASE = "release"
    ROLLBACK = "rollback"
    FAILED_RELEASE = "failed release"
    SETTINGS = "settings"
    DATABASE = "database change"


class Kind(StrEnum):
    KILL_CLI = "SIGKILL of the CLI"
    DROP_CONNECTION = "dropped SSH connection"
    KILL_STEP = "SIGKILL of the step"
    PROXY_REFUSES_RELOAD = "proxy refuses reload"
    DOCKERD_RESTART = "dockerd restart"


class Recovery(StrEnum):
    FORWARD = "forward"
    """The stack as the interrupted update left it pinned: the operator finishes the update."""
    BACK = "back"
    """The stack back to what served before: the operator reverts the change (a failed release's only way)."""


# Windows in which failed requests are measured and stated rather than counted as a violation.
DOCKERD_WINDOW = "dockerd restarting"
SITE_DOWN_WINDOW = "site down after dockerd restarted"
UPDATE_WINDOW = "interrupted update"
RECOVERY_WINDOW = "recovery update"
STATED_WINDOWS = (DOCKERD_WINDOW, SITE_DOWN_WINDOW)

VARIANTS: Mapping[Operation, tuple[str, ...]] = {
    Operation.RELEASE: ("",),
    Operation.ROLLBACK: ("",),
    Operation.FAILED_RELEASE: (NEVER_HEALTHY, MIGRATION_FAILS),
    # A secret of the app, and a plain app setting: both reach the app's .env.
    Operation.SETTINGS: ("smtpPass", "app.smtpUser"),
    # The PostgreSQL image pinned by digest instead of by tag (the same bytes), and a rotated database password.
    Operation.DATABASE: ("app.postgresImage", "postgresPassword"),
}
OPERATION_WEIGHTS: Mapping[Operation, int] = {
    Operation.RELEASE: 3,
    Operation.ROLLBACK: 2,
    Operation.FAILED_RELEASE: 2,
    Operation.SETTINGS: 3,
    Operation.DATABASE: 2,
}


@dataclass(frozen=True)
class Moment:
    step: str | None
    """The release step the interruption aims at (the first of it and the later ones the update runs); None: a
    time since the runner started."""
    at: float
    """Within the step, the fraction of its observed duration; for a time, seconds since the runner started."""

    def __str__(self) -> str:
        return f"{self.at:.1f}s after start" if self.step is None else f"{self.at:.0%} into {self.step}"


@dataclass(frozen=True)
class Episode:
    seed: int
    number: int
    operation: Operation
    variant: str
    kind: Kind
    moment: Moment
    recovery: Recovery
    planned_with: str = ""
    """The long run's flags that plan the same episodes (besides the seed and count)."""

    def __str__(self) -> str:
        what = f"{self.operation}{f' ({self.variant})' if self.variant else ''}"
        return f"seed {self.seed} episode {self.number}: {what}, {self.kind} at {self.moment}, recovery {self.recovery}"

    def replay(self) -> str:
        if self.number == 0:
            return "a fixed episode (number 0) of tests/e2e/test_kill_anywhere.py: run that test again"
        return f"python scripts/kill_anywhere.py --seed {self.seed} --episodes {self.number}{self.planned_with}"


def plan(
    seed: int, number: int, database_changes: bool = False, recoveries: tuple[Recovery, ...] = tuple(Recovery)
) -> Episode:
    """Episode `number` (from 1) of `seed`. The kinds go round in a shuffled order, so every stretch of five episodes
    has each kind once; everything else is drawn, the recovery among `recoveries` (a failed release's is back)."""
    kinds = list(Kind)
    round_of_kinds = random.Random(f"{seed}/kinds/{(number - 1) // len(kinds)}")  # noqa: S311 - replayable
    round_of_kinds.shuffle(kinds)
    kind = kinds[(number - 1) % len(kinds)]
    draw = random.Random(f"{seed}/{number}")  # noqa: S311 - replayable, not a secret
    operations = [op for op in Operation if database_changes or op is not Operation.DATABASE]
    operation = draw.choices(operations, [OPERATION_WEIGHTS[op] for op in operations])[0]
    variant = draw.choice(VARIANTS[operation])
    if kind in (Kind.KILL_CLI, Kind.DOCKERD_RESTART) and draw.random() < TIMED_MOMENT_SHARE:
        moment = Moment(None, round(draw.uniform(0, TIMED_MOMENT_SECONDS), 2))
    elif kind is Kind.PROXY_REFUSES_RELOAD:
        moment = Moment(CUTOVER_STEP, round(draw.random(), 2))
    else:
        moment = Moment(draw.choice(UPDATE_STEPS), round(draw.random(), 2))
    recovery = Recovery.BACK if operation is Operation.FAILED_RELEASE else draw.choice(recoveries)
    flags = [
        flag
        for flag, on in (("--database-changes", database_changes), ("--forward-only", Recovery.BACK not in recoveries))
        if on
    ]
    return Episode(seed, number, operation, variant, kind, moment, recovery, "".join(f" {flag}" for flag in flags))


def episodes(
    seed: int,
    count: int,
    first: int = 1,
    database_changes: bool = False,
    recoveries: tuple[Recovery, ...] = tuple(Recovery),
) -> list[Episode]:
    return [plan(seed, number, database_changes, recoveries) for number in range(first, first + count)]


# --- the private target ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrivateTarget:
    """A dockerd and an sshd of this harness's own: restarting this dockerd touches no one else's containers."""

    layout: Layout
    target: LocalTarget

    def restart_dockerd(self) -> None:
        """A graceful restart, as `systemctl restart docker` or a reboot does it: SIGTERM, dockerd stops every
        container with its stop signal and exits; then dockerd starts again and restarts the containers their
        restart policy names. The networks' bridges stay meanwhile (so no other dockerd takes their subnets)."""
        terminate(self.layout.docker_pid, "dockerd", timeout=60)
        start_dockerd(self.layout)


@contextlib.contextmanager
def private_target() -> Iterator[PrivateTarget]:
    """dockerd and sshd under KILL_TARGET_DIR, pulling from the shared target's registry (which must run). What an
    earlier run left is removed first, and all of it again afterwards, however this process ends (`reaper`)."""
    layout = Layout(KILL_TARGET_DIR)
    for folder in (layout.logs, layout.run):
        folder.mkdir(parents=True, exist_ok=True)
    with reaper(layout) as disarm:
        try:
            remove_private_target(layout)
            with locked(layout):
                ensure_keys(layout)
                start_dockerd(layout)
                # The shared target's connection facts (its registry and images), with this folder's keys and socket.
                facts = dataclasses.replace(_connection_facts(layout), ssh_port=KILL_SSH_PORT)
                _start_sshd(layout, facts)
            yield PrivateTarget(layout, facts)
        finally:
            remove_private_target(layout)
            disarm()


def remove_private_target(layout: Layout) -> None:
    """Everything of the private target gone: its containers, volumes and networks (with them their network
    namespaces, veths and bridges), then sshd and dockerd by pid and whatever stays mounted under its folder.
    dockerd alone knows which bridges are its networks', so one that is down (a run killed while it restarted) is
    started again to remove them."""
    with locked(layout):
        terminate(layout.sshd_pid, "sshd")
        try:
            start_dockerd(layout)
            docker = functools.partial(run, env=docker_env(layout.docker_host), timeout=120)
            leftover = docker([docker_cli(), "ps", "--all", "--quiet"]).split()
            if leftover:
                docker([docker_cli(), "rm", "--force", "--volumes", *leftover])
            volumes = docker([docker_cli(), "volume", "ls", "--quiet"]).split()
            if volumes:
                docker([docker_cli(), "volume", "rm", "--force", *volumes])
            docker([docker_cli(), "network", "prune", "--force"])
        finally:
            stop_dockerd(layout)
            unmount_under(layout.root)
            shutil.rmtree(layout.root / "stages", ignore_errors=True)


# What the harness tells its reaper once it removed the private target itself.
REMOVED = b"removed"


@contextlib.contextmanager
def reaper(layout: Layout) -> Iterator[Callable[[], object]]:
    """A process in a session of its own that removes the private target once this process ends, unless this
    process said it did (the callable yielded): it reads a pipe whose other end only this process holds, which the
    kernel closes however this process ends, a SIGKILL too."""
    readable, writable = os.pipe()
    with (layout.logs / "reaper.log").open("ab") as log:
        subprocess.Popen(
            [sys.executable, "-c", "from tests.e2e.kill_anywhere import reap; reap()"],
            stdin=readable, stdout=log, stderr=log, cwd=PROJECT_DIR, start_new_session=True,
        )  # fmt: skip
    os.close(readable)
    try:
        yield lambda: os.write(writable, REMOVED)
    finally:
        os.close(writable)


def reap() -> None:
    """The reaper: waits for the harness to end."""
    if sys.stdin.buffer.read() != REMOVED:
        remove_private_target(Layout(KILL_TARGET_DIR))


def _start_sshd(layout: Layout, facts: LocalTarget) -> None:
    """The shared target's sshd config (key only, loopback, DOCKER_HOST set by the server), on the private port."""
    shared_port = f"\nPort {SSH_PORT}\n"
    config = _sshd_config(layout)
    assert shared_port in config, "the target's sshd config no longer names its port as expected"
    write_if_changed(layout.sshd_config, config.replace(shared_port, f"\nPort {KILL_SSH_PORT}\n"), 0o600)
    terminate(layout.sshd_pid, "sshd")
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    sshd = which("sshd", "/usr/sbin/sshd")
    run([sshd, "-t", "-f", str(layout.sshd_config)])
    log = layout.logs / "sshd.log"
    run([sshd, "-f", str(layout.sshd_config), "-E", str(log)])
    wait_until("sshd", lambda: facts.ssh("true", timeout=10).returncode == 0, DAEMON_START_TIMEOUT, log)


# --- load, writes and the server -------------------------------------------------------------------------------


@dataclass
class WindowCount:
    requests: int = 0
    failed: int = 0


class WindowedLoad:
    """Constant load on the proxy (`hey`, tests/e2e/load.py), counted by window: each window is a `hey` of its own,
    started before the previous one stops, so no moment goes without load."""

    def __init__(self, url: str, rate: int) -> None:
        self.url = url
        self.rate = rate
        self.windows: dict[str, WindowCount] = {}
        self.window = ""
        self._load: Load | None = None

    def enter(self, window: str) -> None:
        if window == self.window and self._load is not None:
            return
        # A window lasts at most an update of the runner (stage.RUNNER_TIMEOUT) and the waits around it.
        load = Load(self.url, rate=self.rate, max_seconds=3600)
        # hey dies with this process, however it ends: a killed run leaves no load behind.
        load.argv = ["setpriv", "--pdeathsig", "KILL", *load.argv]
        started = load.__enter__()
        self.close()
        self.window, self._load = window, started

    def close(self) -> None:
        if self._load is None:
            return
        load, self._load = self._load, None
        load.__exit__(None, None, None)
        count = self.windows.setdefault(self.window, WindowCount())
        count.requests += load.result.requests
        count.failed += load.result.failed


class RowWriter:
    """Writes rows into the stage's database one at a time, as the app would, and keeps the id of each row the
    database acknowledged: psql printed it, so its transaction committed."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.acknowledged: set[int] = set()
        self.refused = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, name="row-writer", daemon=True)

    def psql(self, query: str, timeout: float = 10) -> list[str]:
        settings = self.stage.settings["app"]
        done = self.stage.target.docker(
            "exec", settings["dbContainer"], "psql", "-U", settings["postgresUser"], "-d", settings["postgresDb"],
            "-v", "ON_ERROR_STOP=1", "-qAtc", query,
            timeout=timeout,
        )  # fmt: skip
        return done.stdout.decode().split()

    def start(self) -> None:
        self.psql(CREATE_ROWS)
        self._thread.start()

    def stop(self) -> None:
        """Stops writing; nothing to stop when the stage never had a database to write to."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _write(self) -> None:
        while not self._stop.wait(WRITE_INTERVAL_SECONDS):
            try:
                written = int(self.psql(WRITE_ROW)[0])
            except (TargetError, subprocess.TimeoutExpired, IndexError, ValueError):
                with self._lock:
                    self.refused += 1
                continue
            with self._lock:
                self.acknowledged.add(written)

    def take_refused(self) -> int:
        with self._lock:
            refused, self.refused = self.refused, 0
        return refused

    def lost(self) -> list[int] | str:
        """Acknowledged rows the database no longer has; or, when it does not answer, why."""
        with self._lock:
            acknowledged = set(self.acknowledged)
        try:
            present = {int(found) for found in self.psql(ROWS_WRITTEN, timeout=60)}
        except (TargetError, subprocess.TimeoutExpired) as error:
            return _one_line(str(error).encode())
        return sorted(acknowledged - present)


def containers(stage: Stage, status: str) -> list[str]:
    """The stage's containers (its compose project's) in `status`, by name."""
    listed = stage.target.docker(
        "ps", "--all", "--filter", f"label=com.docker.compose.project={stage.project}", "--filter", f"status={status}",
        "--format", "{{.Names}}",
        check=False,
    )  # fmt: skip
    return sorted(listed.stdout.decode().split())


def kept_running(stage: Stage) -> set[str]:
    """The stage's running containers that no release stops on purpose: all but the colours, whose switch stops the
    old one (running_colours names them as the compose file does)."""
    colours = {f"{stage.setting('app.appContainer')}-{colour}" for colour in running_colours(stage)}
    return set(containers(stage, "running")) - colours


def served(stage: Stage) -> str | None:
    """The version the proxy serves, or None when nothing answers."""
    try:
        return served_version(stage)
    except (OSError, ValueError, KeyError):
        return None


def site_answers_within(stage: Stage, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while served(stage) is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def on_server(stage: Stage, command: str) -> str:
    """A command on the stage's server; its output, or what it said when it failed."""
    done = stage.target.ssh(command, timeout=60)
    return (done.stdout if done.returncode == 0 else done.stderr).decode()


def recorded_version(stage: Stage, key: str = "VERSION") -> str | None:
    """A version in the server's release record, `release.env`: the live one, or PREVIOUS_VERSION."""
    record = on_server(stage, f"cat {shlex.quote(stage.app_dir)}/release.env 2>/dev/null || true")
    versions = [line.partition("=")[2] for line in record.splitlines() if line.startswith(f"{key}=")]
    return versions[-1] if versions else None


def step_processes(stage: Stage) -> list[int]:
    """The bash processes of the stage's release steps on the server: the shell sshd started for the step, the
    step's script and any script it runs, all of which name the stage's folder."""
    found = []
    for pid in processes_running(stage.app_dir):
        with contextlib.suppress(OSError):
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "bash":
                found.append(pid)
    return found


def kill_step(stage: Stage) -> bool:
    """SIGKILL of every process of the running step at once, so that no trap of theirs runs; False when none runs."""
    pids = step_processes(stage)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return bool(pids)


def stage_processes(stage: Stage) -> list[str]:
    """Every process on the server that names the stage's folder (steps, their compose and docker commands)."""
    commands = []
    for pid in processes_running(stage.app_dir):
        with contextlib.suppress(OSError):
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return commands


def settings_served_apart(stage: Stage) -> list[str]:
    """The app settings whose value the live colour holds differs from the stack's, by name (never a value): each
    that the app reports and the stack's settings, rendered as the program renders the `.env`, name."""
    loaded = stage.stack_config()
    rendered = server_files.env_file(loaded.plain.app, loaded.secrets.app)
    expected: dict[str, str | None] = {}
    for line in rendered.splitlines():
        name, _, quoted = line.partition("=")
        value = quoted[1:-1]
        expected[name] = hashlib.sha256(value.encode()).hexdigest() if value else None
    reported: dict[str, dict[str, Any]] = app_get(stage, "/api/env-check")
    return sorted(name for name, seen in reported.items() if name in expected and expected[name] != seen["sha256"])


def pending_operations(stage: Stage) -> list[str]:
    state = json.loads(stage.state_file().read_text())
    pending = state.get("checkpoint", {}).get("latest", {}).get("pending_operations") or []
    return [f"{op['resource']['urn'].rpartition('::')[2]} ({op['type']})" for op in pending]


def claimed_to_keep_serving(result: UpdateResult) -> str | None:
    """The version a failed update said keeps serving, if it said one."""
    failed = result.failed
    claims = re.findall(r"(v\d+\.\d+\.\d+)[^;\n]*?keeps serving", failed.error if failed else "")
    return claims[-1] if claims else None


# --- episodes --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str
    item: str = ""
    """The issue item the violation shows, where the check itself says so."""

    def __str__(self) -> str:
        return f"{self.invariant}{f' ({self.item})' if self.item else ''}: {self.detail}"


@dataclass
class EpisodeResult:
    episode: Episode
    hit: str = "missed"
    """Where the interruption landed: the step that ran, or between, before or after the steps; missed: the update
    ended before the moment came."""
    interrupted: str = ""
    """How the interrupted update ended."""
    violations: list[Violation] = field(default_factory=list)
    windows: dict[str, WindowCount] = field(default_factory=dict)
    rows_lost: int = 0
    writes_refused: int = 0
    dockerd_seconds: float | None = None
    """From dockerd's SIGTERM until the site answered again."""
    awaited_back: list[str] = field(default_factory=list)
    """Containers a dockerd restart did not bring back because the database step was replacing them: that step's
    undo (or its success) must, by the end of the interrupted update."""
    updates: list[str] = field(default_factory=list)
    """Each update of the episode: its command, the steps it ran and how it ended."""
    server: str = ""
    """What the server held when an invariant did not: its files, records and containers."""
    repaired: list[str] = field(default_factory=list)
    """What it took to bring the stage back to rest when the recovery did not."""
    seconds: float = 0.0

    @property
    def converged(self) -> bool:
        return not self.violations

    @property
    def failed_requests(self) -> int:
        return sum(count.failed for window, count in self.windows.items() if window not in STATED_WINDOWS)

    def violate(self, invariant: str, detail: str, item: str = "") -> None:
        self.violations.append(Violation(invariant, detail, item))

    def report(self) -> str:
        lines = [f"{self.episode}: hit {self.hit}, the update {self.interrupted}"]
        lines += [f"  {violation}" for violation in self.violations]
        if self.violations:
            lines += [f"  {update}" for update in self.updates]
            lines.append(f"  the server then: {self.server}")
        if self.repaired:
            lines.append(f"  brought back to rest by: {'; '.join(self.repaired)}")
        lines.append(f"  replay: {self.episode.replay()}")
        return "\n".join(lines)


@dataclass
class Change:
    """What an episode does to the stack, and how each recovery goes on from the interrupted update."""

    update: tuple[str, ...]
    forward: tuple[str, ...] = ("up", "--yes")
    back: tuple[str, ...] = ("up", "--yes")
    apply: Callable[[], None] = lambda: None
    revert: Callable[[], None] = lambda: None


class StuckError(RuntimeError):
    """An episode left the stage in a state neither its recovery nor an operator's repair brought back to rest:
    later episodes would only measure the leftover."""


class KillAnywhere:
    """Runs episodes on one stage of the private target, with the writer running throughout and the load on the
    proxy during each episode's updates."""

    def __init__(self, stage: Stage, private: PrivateTarget, rate: int = LOAD_RATE) -> None:
        self.stage = stage
        self.private = private
        self.writer = RowWriter(stage)
        self.load = WindowedLoad(app_url(stage, "/api/version"), rate)
        """The load of the episode that runs (each episode starts a new one)."""
        self.step_seconds: dict[tuple[Operation, str], float] = {}

    def begin(self) -> None:
        """Both good versions released, so that each is recorded and a rollback has somewhere to go; the writer
        starts once the database exists."""
        first, *others = GOOD_VERSIONS
        self.release(first)
        self.writer.start()
        for version in others:
            self.release(version)

    def release(self, version: str) -> None:
        released = self.stage.up(version)
        assert released.ok, explain(released)
        self.learn(Operation.RELEASE, released)

    def end(self) -> None:
        self.writer.stop()

    # --- one episode

    def run(self, episode: Episode) -> EpisodeResult:
        started = time.monotonic()
        result = EpisodeResult(episode)
        if episode.moment.step is not None and not self.timed(episode.operation):
            self.rehearse(episode)
        before = recorded_version(self.stage) or ""
        change = self.change_for(episode, before)
        change.apply()
        interrupter = Interrupter(self, episode, result)
        self.writer.take_refused()
        self.load = WindowedLoad(self.load.url, self.load.rate)
        self.load.enter(UPDATE_WINDOW)
        try:
            interrupted = self.stage.run_interrupted(interrupter, *change.update)
            interrupter.put_back()
            result.interrupted = describe(interrupted)
            self.check_brought_back(result)
            result.updates.append(f"interrupted update, {' '.join(change.update)}: {steps_run(interrupted)}")
            self.learn(episode.operation, interrupted)
            self.check_claim(result, interrupted)
            self.load.enter(self.window(RECOVERY_WINDOW))
            if episode.recovery is Recovery.BACK:
                change.revert()
            recovery_command = change.back if episode.recovery is Recovery.BACK else change.forward
            recovery = self.stage.run(*recovery_command)
            result.updates.append(f"recovery update, {' '.join(recovery_command)}: {steps_run(recovery)}")
            self.learn(episode.operation, recovery)
        finally:
            self.load.close()
        result.windows = self.load.windows
        result.writes_refused = self.writer.take_refused()
        if not recovery.ok:
            failed = recovery.failed
            result.violate("the recovery update succeeds", (failed.error if failed else recovery.output)[-1500:])
        lost = self.writer.lost()
        result.rows_lost = len(lost) if isinstance(lost, list) else 0
        not_at_rest = self.at_rest(lost)
        result.violations += not_at_rest
        outside = {name: count.failed for name, count in result.windows.items() if name not in STATED_WINDOWS}
        if any(outside.values()):
            result.violate("no request fails outside the stated windows", f"failed requests by window: {outside}")
        if result.violations:
            result.server = server_snapshot(self.stage)
        if not recovery.ok or not_at_rest:
            self.repair(result, change, before)
        result.seconds = time.monotonic() - started
        return result

    def rehearse(self, episode: Episode) -> None:
        """The episode's operation once uninterrupted, and back, so that its steps are timed before a moment is aimed
        inside one: the same step can take a fraction of what any other operation took of it (a database change to
        the same bytes replaces nothing, where the first release created PostgreSQL), and a moment aimed past a
        step's end interrupts nothing."""
        change = self.change_for(episode, recorded_version(self.stage) or "")
        change.apply()
        self.learn(episode.operation, self.stage.run(*change.update))
        change.revert()
        back = self.stage.run(*change.back)
        assert back.ok, explain(back)
        self.learn(episode.operation, back)

    def change_for(self, episode: Episode, before: str) -> Change:
        stage = self.stage
        back_to_before = ("release", before, "--yes")
        if episode.operation is Operation.RELEASE:
            other = other_good_version(before)
            return Change(("release", other, "--yes"), forward=("release", other, "--yes"), back=back_to_before)
        if episode.operation is Operation.ROLLBACK:
            # Back to the previous release, or, once going back removed it from the server's record (previous never
            # toggles, docs/server-states.md), to the other good version by name, as the runner then asks.
            named = () if recorded_version(stage, "PREVIOUS_VERSION") else (other_good_version(before),)
            return Change(("rollback", *named, "--yes"), back=back_to_before)
        if episode.operation is Operation.FAILED_RELEASE:
            return Change(("release", episode.variant, "--yes"), forward=back_to_before, back=back_to_before)
        key, token = episode.variant, f"kill-{episode.seed}-{episode.number}"
        if key in APP_SECRET_KEYS:
            current_secret = stage.stack_config().secrets.app[APP_SECRET_KEYS[key]].get_secret_value()
            return Change(
                ("up", "--yes"),
                apply=lambda: stage.set_secret(key, f"TESTSECRET-{token}"),
                revert=lambda: stage.set_secret(key, current_secret),
            )
        current = str(stage.setting(key))
        if key == "app.postgresImage":
            # The same image by digest, or by its tag again: the same bytes, another definition of the service.
            tag = current.partition("@")[0]
            new = tag if "@" in current else f"{tag}@{digest_of(tag)}"
        else:
            new = token
        return Change(
            ("up", "--yes"),
            apply=lambda: stage.configure({key: new}),
            revert=lambda: stage.configure({key: current}),
        )

    def learn(self, operation: Operation, result: UpdateResult) -> None:
        """Each step's shortest duration, for the next moment aimed inside it."""
        for step in result.runs:
            if step.seconds > 0:
                key = (operation, step.name.rpartition("-")[2])
                self.step_seconds[key] = min(step.seconds, self.step_seconds.get(key, step.seconds))

    def timed(self, operation: Operation) -> bool:
        return any(timed == operation for timed, _ in self.step_seconds)

    def expected_seconds(self, operation: Operation, step: str) -> float:
        """As long as the step took in this operation; a step it has not run yet (its rehearsal did not reach it),
        as in any other: the same script runs."""
        learned = self.step_seconds.get((operation, step))
        if learned is not None:
            return learned
        elsewhere = [seconds for (_, name), seconds in self.step_seconds.items() if name == step]
        return min(elsewhere, default=DEFAULT_STEP_SECONDS)

    def window(self, name: str) -> str:
        """`name`, unless the site has not answered since dockerd restarted."""
        if self.load.window == SITE_DOWN_WINDOW and served(self.stage) is None:
            return SITE_DOWN_WINDOW
        return name

    def restart_dockerd(self, result: EpisodeResult, replacing_database: bool) -> None:
        """dockerd restarts under the running update. Its restart brings back what ran before (dockerd starts the
        containers its restart policies name before its API answers), and the site answers again. PostgreSQL, while
        the database step replaces it (`replacing_database`), is that step's to bring back (`check_brought_back`):
        dockerd starts no container that was being created when it stopped."""
        self.load.enter(DOCKERD_WINDOW)
        kept = kept_running(self.stage)
        stopped = time.monotonic()
        self.private.restart_dockerd()
        missing = sorted(kept - set(containers(self.stage, "running")))
        database = str(self.stage.setting("app.dbContainer"))
        if replacing_database and database in missing:
            missing.remove(database)
            result.awaited_back.append(database)
        if missing:
            result.violate(
                "dockerd brings back what ran before it restarted",
                f"{', '.join(missing)} not running ({', '.join(containers(self.stage, 'exited'))} exited)",
                "item 9",
            )
        if site_answers_within(self.stage, SITE_BACK_SECONDS):
            result.dockerd_seconds = time.monotonic() - stopped
            self.load.enter(UPDATE_WINDOW)
            return
        result.violate("the site answers again once dockerd is back", f"not within {SITE_BACK_SECONDS:.0f}s")
        self.load.enter(SITE_DOWN_WINDOW)

    # --- checks

    def check_brought_back(self, result: EpisodeResult) -> None:
        missing = sorted(set(result.awaited_back) - set(containers(self.stage, "running")))
        if missing:
            result.violate(
                "dockerd brings back what ran before it restarted",
                f"{', '.join(missing)} not running once the database step that was replacing it ended",
                "item 9",
            )

    def check_claim(self, result: EpisodeResult, update: UpdateResult) -> None:
        claimed, serving = claimed_to_keep_serving(update), served(self.stage)
        if claimed and serving and serving != claimed:
            result.violate(
                "a failed update says truly what keeps serving", f"it said {claimed}; {serving} serves", "item 2"
            )

    def at_rest(self, lost_rows: list[int] | str) -> list[Violation]:
        """The invariants the stage breaks once an update is over; `lost_rows`: the rows the writer committed that are
        gone (`RowWriter.lost`)."""
        stage, violations = self.stage, []
        serving, pinned, recorded = served(stage), str(stage.setting("version")), recorded_version(stage)
        if not serving == pinned == recorded:
            violations.append(
                Violation(
                    "what serves is what the stack pins and release.env records",
                    f"serves {serving or 'nothing'}, the stack pins {pinned}, release.env records {recorded}",
                )
            )
        if serving is not None:
            apart = settings_served_apart(stage)
            if apart:
                violations.append(
                    Violation("the settings that serve are the stack's", f"these differ: {', '.join(apart)}")
                )
            colours, named = running_colours(stage), live_colour(stage)
            if colours != [named]:
                violations.append(
                    Violation("one colour runs, the one that serves", f"running {colours}; the proxy names {named}")
                )
        if release_lock_held(stage):
            holder = on_server(stage, f"cat {shlex.quote(stage.app_dir)}/.release-lock")
            violations.append(Violation("the release lock is free", _one_line(holder.encode())))
        leftovers = stage_processes(stage)
        if leftovers:
            violations.append(Violation("no release step still runs on the server", "; ".join(leftovers)[:1000]))
        pending = pending_operations(stage)
        if pending:
            violations.append(Violation("the stack records no pending operation", ", ".join(pending)))
        if isinstance(lost_rows, str):
            violations.append(Violation("the database answers", lost_rows))
        elif lost_rows:
            gone = f"{len(lost_rows)} acknowledged rows are gone: {lost_rows[:20]}"
            violations.append(Violation("no committed row is lost", gone))
        return violations

    def repair(self, result: EpisodeResult, change: Change, before: str) -> None:
        """Back to rest as an operator would, so that the next episode starts from rest: the stack's change
        reverted, a release lock that no step holds freed (bin/release-lock.sh, README), the proxy started by hand
        if nothing answers, then the other good version released, and `before` again if that is not
        enough. Raises StuckError when the stage is still not at rest."""
        stage, repaired = self.stage, result.repaired
        change.revert()
        if release_lock_held(stage):
            freed = on_server(stage, f"bash {shlex.quote(stage.app_dir)}/bin/release-lock.sh --free")
            repaired.append(_one_line(freed.encode()))
        if served(stage) is None:
            stage.target.docker("start", f"{stage.project}-proxy", check=False)
            repaired.append("the proxy started by hand")
        # A release runs every step and cuts over with the stack's settings; a second one, back again, where the
        # first still left the stage apart from its stack.
        for version in [other_good_version(before), before]:
            released = stage.run("release", version, "--yes")
            repaired.append(f"release {version}: {steps_run(released)}")
            left = self.at_rest(self.writer.lost())
            if released.ok and not left:
                return
        raise StuckError("\n".join([result.report(), "still not at rest:", *map(str, left)]))


def digest_of(image: str) -> str:
    """The digest the shared target's registry serves for `image` (a tag), waited for: another run of the e2e tests
    may stop the registry for a while (test_rollback.py)."""
    deadline = time.monotonic() + REGISTRY_BACK_SECONDS
    while (digest := registry_digest(image)) is None:
        if time.monotonic() > deadline:
            raise TargetError(f"the registry on 127.0.0.1:5000 does not answer for {image}")
        time.sleep(1)
    return digest


def other_good_version(version: str) -> str:
    return next(other for other in GOOD_VERSIONS if other != version)


def describe(result: UpdateResult) -> str:
    if result.killed:
        return "was killed"
    if result.ok:
        return "succeeded"
    failed = result.failed
    if failed:
        return f"failed in {failed.name}"
    # No step failed: the runner refused, or the engine failed before any step; its last line says why.
    said = [line for line in result.output.splitlines() if line.strip()]
    return f"failed (exit {result.returncode}: {said[-1].strip() if said else 'said nothing'})"


def steps_run(result: UpdateResult) -> str:
    ran = ", ".join(f"{run.name.rpartition('-')[2]}{'' if run.ok else ' (failed)'}" for run in result.runs)
    why = f" (...{' | '.join(result.failed.error.splitlines())[-1200:]})" if result.failed else ""
    return f"ran {ran or 'no step'}; {describe(result)}{why}"


def server_snapshot(stage: Stage) -> str:
    """The stage's folder (names only: .env holds secrets), its release record and lock, and its containers."""
    folder = shlex.quote(stage.app_dir)
    files = on_server(
        stage,
        f"cd {folder} && ls -A | tr '\\n' ' '; for f in release.env .release-lock; do"
        f" [ -f $f ] && echo && echo $f: && cat $f; done",
    )
    listed = stage.target.docker("ps", "--all", "--format", "{{.Names}} {{.Status}}", check=False)
    return f"{_one_line(files.encode())} | containers: {_one_line(listed.stdout)}"


def _one_line(output: bytes) -> str:
    return " | ".join(output.decode(errors="replace").split("\n")).strip(" |")[:600]


class Interrupter:
    """Polled by `Stage.run_interrupted` while the update runs: waits for the episode's moment, then interrupts once.
    Which steps run is read from the engine's events as they come (`--events`)."""

    def __init__(self, harness: KillAnywhere, episode: Episode, result: EpisodeResult) -> None:
        self.harness = harness
        self.stage = harness.stage
        self.episode = episode
        self.result = result
        self.started: dict[str, float] = {}
        """Each step the engine started, when this process first saw it (monotonic)."""
        self.running: set[str] = set()
        self.due: float | None = None
        self.broken: str | None = None

    def __call__(self, process: subprocess.Popen[str]) -> bool:
        self.read_events()
        if self.due is None:
            self.due = self.moment()
        if self.due is None or time.monotonic() < self.due:
            return False
        return self.act(process)

    def read_events(self) -> None:
        events_file = self.stage.work_dir / "events.jsonl"
        if not events_file.exists():
            return
        for line in events_file.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if event.get("type") != COMMAND:
                    continue
                step = event["urn"].rpartition("::")[2].rpartition("-")[2]
                if event["event"] == "pre" and event["op"] in RAN and step not in self.started:
                    self.started[step] = time.monotonic()
                    self.running.add(step)
                elif event["event"] in ("done", "failed"):
                    self.running.discard(step)

    def moment(self) -> float | None:
        """When to interrupt, once the aimed step (or a later one) has started."""
        aimed = self.episode.moment
        if aimed.step is None:
            return self.stage.started_at + aimed.at
        later = UPDATE_STEPS[UPDATE_STEPS.index(aimed.step) :]
        step = next((name for name in later if name in self.started), None)
        if step is None:
            return None
        script = (
            self.harness.expected_seconds(self.episode.operation, step) - SESSION_OPENS_SECONDS - SESSION_CLOSES_SECONDS
        )
        return self.started[step] + SESSION_OPENS_SECONDS + aimed.at * max(script, 0.0)

    def where(self) -> str:
        if self.running:
            return ", ".join(sorted(self.running))
        return "between steps" if self.started else "before any step"

    def act(self, process: subprocess.Popen[str]) -> bool:
        kind = self.episode.kind
        where = self.where()
        if kind is Kind.KILL_CLI:
            kill_session(process)
        elif kind is Kind.DROP_CONNECTION:
            # Only while a step runs on the server: between steps there is no connection to drop.
            if not drop_connection_of(self.stage.app_dir):
                return False
        elif kind is Kind.KILL_STEP:
            if not kill_step(self.stage):
                return False
        elif kind is Kind.PROXY_REFUSES_RELOAD:
            self.break_idle_colour()
        else:
            self.harness.restart_dockerd(self.result, replacing_database="database" in self.running)
        self.result.hit = where
        return True

    def break_idle_colour(self) -> None:
        """The idle colour's config becomes one nginx refuses: a reload to it keeps the old config."""
        try:
            live = live_colour(self.stage)
        except OSError:
            live = "blue"
        idle = "green" if live == "blue" else "blue"
        self.broken = f"{shlex.quote(self.stage.app_dir)}/proxy/{idle}.conf"
        on_server(self.stage, f"cp {self.broken} {self.broken}.good && echo 'not nginx;' > {self.broken}")

    def put_back(self) -> None:
        if self.broken is not None:
            on_server(self.stage, f"mv -f {self.broken}.good {self.broken}")


@contextlib.contextmanager
def kill_anywhere(cli: Path, rate: int = LOAD_RATE) -> Iterator[KillAnywhere]:
    """A stage on a private target with both good versions released and the writer running; all of it removed and
    stopped afterwards. The shared local target must run: its registry serves the images."""
    with private_target() as private, stages_on(private.target, cli) as make:
        stage = make(PROXY_PORT, STAGE_SETTINGS)
        harness = KillAnywhere(stage, private, rate)
        try:
            harness.begin()
            yield harness
        finally:
            harness.end()
