"""A stage's server for the server scripts' unit tests (tests/test_server_scripts.py), in a folder of its own.

`Server` holds an app dir with the bundle the program renders installed (`server_files.server_files`: the scripts,
their libraries, `bin/lib/facts.sh` from `shared_facts.facts_sh()`, the compose file, the proxy's config and the
settings file) and the state of the stand-ins of tests/fake_server (a fake `docker`, `curl` and `sleep` first on
PATH; one file per fact). It runs each step with exactly the flags the program gives it (`shared_facts.SCRIPT_FLAGS`).
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from components import server_files, shared_facts
from components.config import AppSettings, ReleaseSettings
from components.shared_facts import SCRIPT_FLAGS, SETTINGS_FILE

FAKES = Path(__file__).parent / "fake_server"
OLD = "registry.example/kametrix@sha256:" + "a" * 64
NEW = "registry.example/kametrix@sha256:" + "b" * 64
NEWER = "registry.example/kametrix@sha256:" + "e" * 64
MIGRATE = "registry.example/kametrix@sha256:" + "c" * 64
# Who asked for the release, as a workflow records it in the stack.
REQUESTER = "https://github.com/kametrix/kametrix-deploy/actions/runs/42 (alice)"
PASSWORD = "TESTSECRET-database-password-51d0"
ROTATED_PASSWORD = "TESTSECRET-database-password-rotated-8e2f"
# The stage as the tests' bundle renders it: the fake curl answers the proxy on 3000 and the colours on 3001/3002.
APP = AppSettings.model_validate(
    {
        "url": "https://app.kametrix.test",
        "composeProject": "kametrix",
        "appContainer": "kametrix-app",
        "dbContainer": "kametrix-db",
        "proxyPort": 3000,
        "bluePort": 3001,
        "greenPort": 3002,
        "postgresUser": "kametrix",
        "postgresDb": "kametrix",
        "vapiPublicKey": "pk_test",
        "googleClientId": "000000000000-test.apps.googleusercontent.com",
        "smtpHost": "smtp.kametrix.test",
        "smtpUser": "notifications@kametrix.test",
        "smtpFrom": "Kametrix <notifications@kametrix.test>",
    }
)
RELEASE = ReleaseSettings.model_validate(
    {
        "healthAttempts": 5,
        "healthIntervalSeconds": 1,
        "drainSeconds": 3,
        "imagesToKeep": 3,
        "lockTimeoutMinutes": 30,
        "requestedBy": REQUESTER,
    }
)
STACK = shared_facts.stack_name("local", "3f1c2a9b-0d1e-4c5f-8a7b-6e5d4c3b2a19")
BUNDLE = server_files.server_files(STACK, APP, RELEASE)
PROJECT = APP.compose_project
POSTGRES = APP.postgres_image
ROLES = {role: f"{APP.postgres_user}_{role}" for role in server_files.LOGIN_ROLES}
release_of = shared_facts.release_name


def dot_env(password: str = PASSWORD, **extra: str) -> str:
    """The stage's `.env` as the program renders it, with extra KEY='value' lines."""
    rendered = server_files.env_file(APP, {"POSTGRES_PASSWORD": SecretStr(password)})
    return rendered + "".join(f"{key}='{value}'\n" for key, value in extra.items())


def install(folder: Path, files: server_files.ServerFiles) -> None:
    for path, (content, mode) in files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)


@dataclass
class Server:
    app_dir: Path
    state: Path
    path: list[Path] = field(default_factory=list)
    """Stand-ins a test adds, first on PATH."""

    def environment(self) -> dict[str, str]:
        folders = [*self.path, FAKES]
        return {
            "PATH": ":".join([*map(str, folders), os.environ["PATH"]]),
            "FAKE_SERVER": str(self.state),
            "FAKE_APP_DIR": str(self.app_dir),
            "LOCK_WAIT_SECONDS": "1",
        }

    def run(self, script: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(self.app_dir / "bin" / script), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.environment(),
            timeout=60,
            check=False,
        )

    def arguments(self, script: str, release: str | None, flags: dict[str, str]) -> list[str]:
        """`--name value` for exactly the flags `script` takes, in their order, as the program writes them (a stage
        step's, `release` None, name no release)."""
        values = {"app-dir": str(self.app_dir), "project": PROJECT}
        values |= {} if release is None else {"release": release}
        values |= {name.replace("_", "-"): value for name, value in flags.items()}
        names = SCRIPT_FLAGS[script]
        assert set(values) == set(names), f"{script} takes {names}; the test gives {tuple(values)}"
        return [part for name in names for part in (f"--{name}", values[name])]

    def step(self, script: str, release: str | None, stdin: str = "", **flags: str) -> subprocess.CompletedProcess[str]:
        return self.run(script, *self.arguments(script, release, flags), stdin=stdin)

    def files(self, note: str = "", **settings: str) -> subprocess.CompletedProcess[str]:
        """The files step as the program runs it: the bundle unpacked into a folder of its own, then files.sh."""
        staged = self.app_dir / ".files.test"
        install(staged, BUNDLE)
        edit_settings(staged / SETTINGS_FILE, settings)
        if note:
            with (staged / server_files.COMPOSE_FILE).open("a") as compose:
                compose.write(f"# {note}\n")
        return self.step("files.sh", None, **{"from": str(staged)})

    def env(self, stdin: str) -> subprocess.CompletedProcess[str]:
        return self.step("env.sh", None, stdin=stdin)

    def database(self, image: str = POSTGRES) -> subprocess.CompletedProcess[str]:
        return self.step("database.sh", None, postgres_image=image, backups="none")

    def backup(
        self,
        version: str = "v2.0.0",
        keep: str = "2",
        release: str = release_of("v2.0.0", NEW),
        mode: str = "always",
        on_rollback: str = "no",
        image: str = NEW,
    ) -> subprocess.CompletedProcess[str]:
        return self.step(
            "backup.sh",
            release,
            version=version,
            app_image=image,
            migrate_image=MIGRATE,
            backups_to_keep=keep,
            backup=mode,
            backup_on_rollback=on_rollback,
            backups="none",
        )

    def migrate(
        self, version: str = "v2.0.0", image: str = NEW, migrate_image: str = MIGRATE
    ) -> subprocess.CompletedProcess[str]:
        refs = {"version": version, "app_image": image, "migrate_image": migrate_image}
        return self.step("migrate.sh", release_of(version, image), **refs)

    def up(self, version: str, image: str, release: str | None = None) -> subprocess.CompletedProcess[str]:
        refs = {"version": version, "app_image": image, "migrate_image": MIGRATE}
        return self.step("up.sh", release or release_of(version, image), **refs)

    def switch_back(self) -> subprocess.CompletedProcess[str]:
        return self.run("switch-back.sh")

    def start_up(self, version: str, image: str, stdout: int, stderr: int) -> subprocess.Popen[bytes]:
        """up.sh started in the background, in a session of its own as sshd starts a step, its output going to `stdout`
        and `stderr`."""
        refs = {"version": version, "app_image": image, "migrate_image": MIGRATE}
        arguments = self.arguments("up.sh", release_of(version, image), refs)
        return subprocess.Popen(
            ["bash", str(self.app_dir / "bin" / "up.sh"), *arguments],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=self.environment(),
            start_new_session=True,
        )

    # --- the fake server's facts and the app dir's files ---

    def fact(self, name: str, value: str) -> None:
        (self.state / name).write_text(value)

    def forget(self, name: str) -> None:
        (self.state / name).unlink(missing_ok=True)

    def read(self, name: str) -> str:
        path = self.state / name
        return path.read_text() if path.exists() else ""

    def calls(self) -> list[str]:
        return self.read("calls.log").splitlines()

    def logins(self) -> dict[str, str]:
        """Each role that may log in, with its password."""
        return {path.name.removeprefix("login_"): path.read_text() for path in self.state.glob("login_*")}

    def file(self, name: str) -> str:
        path = self.app_dir / name
        return path.read_text() if path.exists() else ""

    def mode(self, name: str) -> int:
        return stat.S_IMODE((self.app_dir / name).stat().st_mode)

    def setting(self, key: str, value: str) -> None:
        edit_settings(self.app_dir / SETTINGS_FILE, {key: value})

    def record(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.file("release.env").splitlines())

    def history(self) -> list[str]:
        """The releases that served, oldest first: their versions."""
        return [line.split()[0] for line in self.file("releases.log").splitlines()]

    def lock(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.file(".release-lock").splitlines())

    def locked(self) -> bool:
        return (self.app_dir / ".release-lock").exists()

    def live(
        self,
        version: str,
        image: str,
        previous: str = "",
        previous_image: str = "",
        colour: str = "blue",
        previous_migrate: str = MIGRATE,
        migrate: str = MIGRATE,
    ) -> None:
        """A live release, as a switch leaves it: `image` serves on `colour` behind the proxy, started with a copy of
        `.env` and logged in to the database with its password; `previous` served before it."""
        record = {"VERSION": version, "APP_IMAGE": image, "MIGRATE_IMAGE": migrate, "LIVE_COLOUR": colour}
        record[f"{colour.upper()}_IMAGE"] = image
        history = [f"{version} {image} {migrate}\n"]
        if previous:
            record |= {"PREVIOUS_VERSION": previous, "PREVIOUS_IMAGE": previous_image}
            record["PREVIOUS_MIGRATE_IMAGE"] = previous_migrate
            history.insert(0, f"{previous} {previous_image} {previous_migrate}\n")
        (self.app_dir / "release.env").write_text("".join(f"{key}={record[key]}\n" for key in sorted(record)))
        (self.app_dir / "releases.log").write_text("".join(history))
        settings = self.file(".env")
        copy = self.app_dir / f".env.{colour}"
        copy.write_text(settings)
        copy.chmod(0o600)
        (self.app_dir / "proxy" / "live.conf").write_text(self.file(f"proxy/{colour}.conf"))
        self.fact(f"colour_{colour}", image)
        self.fact(f"env_{colour}", settings)
        self.fact("proxy_colour", colour)
        self.fact(f"login_{ROLES[colour]}", password_of(settings))

    def ran_before(self, migrate_image: str = MIGRATE, version: str = "v2.0.0") -> None:
        """This server applied `migrate_image`'s migrations when it released `version` earlier."""
        with (self.app_dir / "migrations.log").open("a") as log:
            log.write(f"{migrate_image} {version} 2026-11-01T10:00:00Z\n")

    @contextmanager
    def step_running(self) -> Iterator[None]:
        """A step of a release runs meanwhile: it holds the lock's mutex, as every step does."""
        holder = subprocess.Popen(
            ["flock", str(self.app_dir / ".release-lock.mutex"), "sleep", "30"], start_new_session=True
        )
        try:
            time.sleep(0.3)
            yield
        finally:
            os.killpg(holder.pid, signal.SIGTERM)
            holder.wait()


def edit_settings(path: Path, changes: dict[str, str]) -> None:
    """Sets KEY=VALUE lines of a settings file (`None`-like empty values stay, as an empty setting)."""
    lines = dict(line.split("=", 1) for line in path.read_text().splitlines())
    path.write_text("".join(f"{key}={value}\n" for key, value in (lines | changes).items()))


def password_of(settings: str) -> str:
    found = re.search(r"^POSTGRES_PASSWORD='(.*)'$", settings, re.MULTILINE)
    return found[1] if found else ""


def index_of(calls: list[str], *words: str) -> int:
    """Where the first call holding all `words` is in the call log."""
    return next(i for i, call in enumerate(calls) if all(word in call.split() for word in words))


def last_index_of(calls: list[str], *words: str) -> int:
    return max(i for i, call in enumerate(calls) if all(word in call.split() for word in words))


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)
