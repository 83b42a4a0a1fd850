"""The server scripts' own logic, run for real by bash against a stand-in docker and curl."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.config import VERSION_PATTERN
from components.config.fields import REQUESTER_PATTERN
from components.server_files import COLOURS, LIBRARY, SCRIPTS, SCRIPTS_DIR

FAKES = Path(__file__).parent / "fake_server"
OLD = "registry.example/kametrix@sha256:" + "a" * 64
NEW = "registry.example/kametrix@sha256:" + "b" * 64
MIGRATE = "registry.example/kametrix@sha256:" + "c" * 64
# Where the proxy names its colour, each colour's health endpoint (the fake curl's ports), the gate, the drain.
CUTOVER = [
    *("--colour-url", "http://127.0.0.1:3000/.kametrix/colour"),
    *("--blue-health-url", "http://127.0.0.1:3001/api/health?build=true"),
    *("--green-health-url", "http://127.0.0.1:3002/api/health?build=true"),
    *("--health-attempts", "5"),
    *("--health-interval-seconds", "1"),
    *("--drain-seconds", "3"),
]


# Who asked for the release, as a workflow records it in the stack.
REQUESTER = "https://github.com/kametrix/kametrix-deploy/actions/runs/42 (alice)"


def release_of(version: str, image: str) -> str:
    """The release a step names, as the program does: the version and the start of the image's digest."""
    return f"{version}@{image.rpartition(':')[2][:12]}"


@dataclass
class Server:
    app_dir: Path
    state: Path
    requested_by: str = REQUESTER

    def run(self, script: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{FAKES}:{os.environ['PATH']}",
            "FAKE_SERVER": str(self.state),
            "LOCK_WAIT_SECONDS": "2",
        }
        return subprocess.run(
            ["bash", str(self.app_dir / "bin" / script), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    def common(self, release: str) -> list[str]:
        """The flags every step takes: where, which stage, and the release lock's."""
        return [
            *("--app-dir", str(self.app_dir), "--project", "kametrix", "--release", release),
            *("--lock-timeout-seconds", "1800", "--requested-by", self.requested_by),
        ]

    def step(self, script: str, release: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """A release step, with the flags every step takes."""
        return self.run(script, *self.common(release), *args, stdin=stdin)

    def fact(self, name: str, value: str) -> None:
        (self.state / name).write_text(value)

    def read(self, name: str) -> str:
        path = self.state / name
        return path.read_text() if path.exists() else ""

    def calls(self) -> list[str]:
        return self.read("calls.log").splitlines()

    def live(
        self, version: str, image: str, previous: str = "", previous_image: str = "", colour: str = "blue"
    ) -> None:
        """A live release: `image` serves on `colour` behind the proxy."""
        (self.app_dir / "release.env").write_text(
            f"VERSION={version}\nAPP_IMAGE={image}\nMIGRATE_IMAGE={MIGRATE}\n"
            f"PREVIOUS_VERSION={previous}\nPREVIOUS_IMAGE={previous_image}\n"
            f"LIVE_COLOUR={colour}\n{colour.upper()}_IMAGE={image}\n"
        )
        (self.app_dir / "proxy" / "live.conf").write_text(f"# traffic goes to {colour}\n")
        self.fact(f"colour_{colour}", image)
        self.fact(f"env_{colour}", (self.app_dir / ".env").read_text())
        self.fact("proxy_colour", colour)

    def record(self) -> dict[str, str]:
        lines = (self.app_dir / "release.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)

    def file(self, name: str) -> str:
        path = self.app_dir / name
        return path.read_text() if path.exists() else ""

    def up(
        self, version: str, image: str, keep: str = "3", release: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.step(
            "up.sh",
            release or release_of(version, image),
            *("--version", version, "--app-image", image, "--migrate-image", MIGRATE),
            *("--images-to-keep", keep),
            *CUTOVER,
        )

    def env(self, stdin: str, release: str = release_of("v2.0.0", OLD)) -> subprocess.CompletedProcess[str]:
        return self.step("env.sh", release, stdin=stdin)

    def backup(
        self,
        version: str = "v2.0.0",
        keep: str = "2",
        release: str = release_of("v2.0.0", NEW),
        mode: str = "always",
        on_rollback: str = "no",
    ) -> subprocess.CompletedProcess[str]:
        return self.step(
            "backup.sh",
            release,
            *("--version", version, "--backups-to-keep", keep, "--backup", mode, "--backup-on-rollback", on_rollback),
            *("--app-image", NEW, "--migrate-image", MIGRATE),
        )

    def migrate(
        self, version: str = "v2.0.0", image: str = NEW, migrate_image: str = MIGRATE
    ) -> subprocess.CompletedProcess[str]:
        return self.step(
            "migrate.sh",
            release_of(version, image),
            *("--version", version, "--app-image", image, "--migrate-image", migrate_image),
        )

    def ran_before(self, migrate_image: str = MIGRATE, version: str = "v2.0.0") -> None:
        """This server applied `migrate_image`'s migrations when it released `version` earlier."""
        with (self.app_dir / "migrations.log").open("a") as log:
            log.write(f"{migrate_image} {version} 2026-11-01T10:00:00Z\n")

    def lock(self) -> dict[str, str]:
        lines = (self.app_dir / ".release-lock").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)

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


def index_of(calls: list[str], *words: str) -> int:
    """Where the first call holding all `words` is in the call log."""
    return next(i for i, call in enumerate(calls) if all(word in call.split() for word in words))


@pytest.fixture
def server(tmp_path: Path) -> Server:
    app_dir, state = tmp_path / "opt" / "kametrix", tmp_path / "state"
    (app_dir / "bin").mkdir(parents=True)
    (app_dir / "proxy").mkdir()
    state.mkdir()
    for name in SCRIPTS:
        target = app_dir / "bin" / name
        target.write_bytes((SCRIPTS_DIR / name).read_bytes())
        target.chmod(0o644 if name == LIBRARY else 0o755)
    for colour in COLOURS:
        (app_dir / "proxy" / f"{colour}.conf").write_text(f"# traffic goes to {colour}\n")
    (app_dir / ".env").write_text("POSTGRES_USER='kametrix'\n")
    return Server(app_dir, state)


STEP_SCRIPTS = ["files.sh", "env.sh", "backup.sh", "migrate.sh", "up.sh", "switch.sh"]


# --- scripts an operator can read -----------------------------------------------------------------------


@pytest.mark.parametrize("script", STEP_SCRIPTS)
def test_every_step_takes_named_flags_and_refuses_anything_else_with_its_usage(server: Server, script: str) -> None:
    result = server.run(script, "only-one")
    assert result.returncode == 1
    assert f"usage: {script} --app-dir VALUE --project VALUE" in result.stderr
    assert "unknown argument 'only-one'" in result.stderr
    missing = server.run(script, "--app-dir", str(server.app_dir))
    assert missing.returncode == 1 and "(missing --project)" in missing.stderr
    assert server.read("calls.log") == "", "docker was called before the flags were checked"


def test_the_library_does_nothing_when_sourced_and_is_not_executable() -> None:
    assert not os.access(SCRIPTS_DIR / LIBRARY, os.X_OK), "lib.sh is executable"
    variables = "compgen -v | grep -vxE 'PIPESTATUS|_|BASH_.*|before|after'"
    compare = f'before="$({variables})"; source "$1"; after="$({variables})"; trap -p; diff <(echo "$before") -'
    compare += f' <<<"$({variables})"'
    sourced = subprocess.run(
        ["bash", "-c", compare, "bash", str(SCRIPTS_DIR / LIBRARY)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (sourced.returncode, sourced.stdout, sourced.stderr) == (0, "", ""), (
        "sourcing lib.sh set, trapped or printed"
    )


@pytest.mark.parametrize(
    "version",
    ["v1.2.3", "v2026.11.28-3f9c2a1", "staging-3f9c2a1", "latest", "v1.2", "v1.2.3; rm -rf /", "staging-XYZ1234"],
)
def test_the_server_accepts_exactly_the_versions_the_stack_accepts(version: str) -> None:
    checked = subprocess.run(
        ["bash", "-c", f'source {SCRIPTS_DIR / LIBRARY}; require_version VERSION "$1"', "bash", version],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (checked.returncode == 0) == bool(VERSION_PATTERN.fullmatch(version)), checked.stderr


@pytest.mark.parametrize(
    "requester",
    [REQUESTER, "dependabot[bot]", "alice, incident 123", "x" * 300, "x" * 301, "a\nb", "alice'; rm -rf /", "$(id)"],
)
def test_the_server_accepts_exactly_the_requesters_the_stack_accepts(requester: str) -> None:
    checked = subprocess.run(
        ["bash", "-c", f'source {SCRIPTS_DIR / LIBRARY}; require_requester "$1"', "bash", requester],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (checked.returncode == 0) == bool(re.fullmatch(REQUESTER_PATTERN, requester)), checked.stderr


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("VERSION=latest", "VERSION: allowed v1.2.3"),
        (f"APP_IMAGE={NEW[:-1]}", "APP_IMAGE: allowed an image pinned by digest"),
        ("LIVE_COLOUR=red", "LIVE_COLOUR: allowed blue or green"),
        ("PREVIOUS_MIGRATE_IMAGE=kametrix:latest", "PREVIOUS_MIGRATE_IMAGE: allowed an image pinned by digest"),
        ("PROJECT=Kametrix;rm", "project: allowed a compose project name"),
        ("LOCK_TIMEOUT_SECONDS=5", "LOCK_TIMEOUT_SECONDS: allowed 60-86400"),
        ("COLOUR_URL=http://203.0.113.9/x", "COLOUR_URL: allowed an http URL on 127.0.0.1"),
        ("DRAIN_SECONDS=0", "DRAIN_SECONDS: allowed 1-3600"),
        ("SOMETHING=else", "unknown key 'SOMETHING'"),
    ],
)
def test_nothing_unchecked_is_written_to_the_release_record(server: Server, pair: str, message: str) -> None:
    server.live("v1.0.0", OLD)
    before = server.file("release.env")
    write = f'source {SCRIPTS_DIR / LIBRARY}; LIVE_RELEASE="$1/release.env"; record "$2"'
    recorded = subprocess.run(
        ["bash", "-c", write, "bash", str(server.app_dir), pair],
        capture_output=True,
        text=True,
        check=False,
    )
    assert recorded.returncode == 1 and message in recorded.stderr, recorded.stderr
    assert server.file("release.env") == before


def test_up_refuses_an_unchecked_version_before_touching_anything(server: Server) -> None:
    server.live("v1.0.0", OLD)
    before = server.file("release.env")
    result = server.up("v2.0.0;reboot", NEW, release=release_of("v2.0.0", NEW))
    assert result.returncode == 1 and "VERSION: allowed v1.2.3" in result.stderr
    assert "received 'v2.0.0;reboot'" in result.stderr
    assert server.read("calls.log") == "" and server.file("release.env") == before
    assert not (server.app_dir / ".release-lock").exists()


def test_up_refuses_an_image_that_is_not_pinned_by_digest(server: Server) -> None:
    result = server.up("v2.0.0", "registry.example/kametrix:latest", release=release_of("v2.0.0", NEW))
    assert result.returncode == 1
    assert "APP_IMAGE: allowed an image pinned by digest" in result.stderr
    assert "received 'registry.example/kametrix:latest'" in result.stderr
    assert server.read("calls.log") == "", "docker was called before the arguments were checked"


def test_up_refuses_a_non_numeric_retention(server: Server) -> None:
    result = server.up("v2.0.0", NEW, keep="all")
    assert result.returncode == 1 and "IMAGES_TO_KEEP: allowed 2-100; received 'all'" in result.stderr


# --- releases and the switch ------------------------------------------------------------------------------


def test_a_release_starts_on_the_idle_colour_and_takes_traffic_only_once_healthy(server: Server) -> None:
    server.live("v1.0.0", OLD)
    server.fact("healthy_after", f"{NEW} 3\n")
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 0, result.stderr
    assert "healthy on green after 3 attempt(s)" in result.stdout
    assert "previous=v1.0.0" in result.stdout
    calls = server.calls()
    started, reloaded, stopped = index_of(calls, "up", "app-green"), index_of(calls, "kill"), index_of(calls, "stop")
    assert started < reloaded < stopped, calls
    assert "app-blue" in calls[stopped], "the old colour was not the one stopped"
    assert (server.read("proxy_colour"), server.read("colour_green"), server.read("colour_blue")) == ("green", NEW, "")
    assert server.file("proxy/live.conf") == "# traffic goes to green\n"
    record = server.record()
    assert record["VERSION"] == "v2.0.0" and record["APP_IMAGE"] == NEW and record["PREVIOUS_IMAGE"] == OLD
    assert (record["LIVE_COLOUR"], record["GREEN_IMAGE"], record["BLUE_IMAGE"]) == ("green", NEW, OLD)
    assert not (server.app_dir / ".release-lock").exists(), "a finished release kept the lock"


def test_a_release_that_never_turns_healthy_is_never_switched_to(server: Server) -> None:
    server.live("v2.0.0", OLD, previous="v1.0.0")
    record = server.record()
    result = server.up("v3.0.0", NEW)
    assert result.returncode == 1
    assert "not healthy on green after 5 attempts" in result.stderr
    assert f"release v3.0.0 was not switched to (see above); v2.0.0 ({OLD}) keeps serving" in result.stderr
    assert not any(call.startswith("compose") and " kill " in call for call in server.calls()), "the proxy reloaded"
    assert server.read("proxy_colour") == "blue" and server.read("colour_blue") == OLD, "the live colour moved"
    assert server.read("colour_green") == "", "the unhealthy colour was left running"
    assert server.record() == record, "the failed release was recorded"
    assert not (server.app_dir / ".release-lock").exists(), "a failed release kept the lock"


def test_a_failed_first_release_says_nothing_serves_and_starts_no_proxy(server: Server) -> None:
    result = server.up("v1.0.0", NEW)
    assert result.returncode == 1
    assert "no earlier version is recorded, so nothing serves yet" in result.stderr
    assert server.read("colour_blue") == "" and server.read("proxy_colour") == ""


def test_the_first_release_on_the_single_container_layout_replaces_its_app_once_the_new_colour_is_healthy(
    server: Server,
) -> None:
    (server.app_dir / "release.env").write_text(f"VERSION=v1.0.0\nAPP_IMAGE={OLD}\nMIGRATE_IMAGE={MIGRATE}\n")
    server.fact("single_container_app", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 0, result.stderr
    calls = server.calls()
    assert index_of(calls, "up", "app-blue") < index_of(calls, "up", "--remove-orphans", "proxy"), calls
    assert server.read("single_container_app") == "", "the single-container app was left behind"
    assert (server.read("proxy_colour"), server.read("colour_blue")) == ("blue", NEW)
    assert server.record()["PREVIOUS_VERSION"] == "v1.0.0"


def test_a_proxy_that_does_not_answer_leaves_the_recorded_live_colour_alone(server: Server) -> None:
    server.live("v1.0.0", OLD)
    server.fact("proxy_slow", "yes")
    server.fact("healthy_after", f"{NEW} 1\n")
    server.up("v2.0.0", NEW)
    assert server.read("colour_blue") == OLD, server.calls()
    assert index_of(server.calls(), "up", "app-green") < index_of(server.calls(), "stop", "app-green")


@pytest.mark.parametrize(("draining", "checks"), [(2, 3), (99, 3)])
def test_the_old_colour_stops_once_the_proxy_has_drained_it_or_the_drain_time_is_up(
    server: Server, draining: int, checks: int
) -> None:
    server.live("v1.0.0", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    server.fact("draining", str(draining))
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 0, result.stderr
    calls = server.calls()
    drain_checks = [i for i, call in enumerate(calls) if "shutting" in call]
    assert len(drain_checks) == checks, calls
    assert drain_checks[-1] < index_of(calls, "stop", "app-blue"), "the old colour stopped before the drain"


def test_a_switch_whose_proxy_reload_fails_is_undone_completely(server: Server) -> None:
    server.live("v1.0.0", OLD)
    (server.app_dir / ".env.next").write_text("A='new'\n")
    record = server.record()
    server.fact("healthy_after", f"{NEW} 1\n")
    server.fact("reload_ignored", "yes")
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 1
    assert "the proxy did not switch to green within 10s; the switch is undone" in result.stderr
    assert "a reason the proxy logged" in result.stderr
    assert f"release v2.0.0 was not switched to (see above); v1.0.0 ({OLD}) keeps serving" in result.stderr
    # Proxy config, record and running colours all name the version that kept serving: a restart of the
    # proxy, which reads live.conf, still sends traffic to it.
    assert server.file("proxy/live.conf") == "# traffic goes to blue\n"
    assert not (server.app_dir / "proxy" / "live.conf.previous").exists()
    assert server.record() == record
    assert (server.read("proxy_colour"), server.read("colour_blue"), server.read("colour_green")) == ("blue", OLD, "")
    assert server.file(".env") == "POSTGRES_USER='kametrix'\n", "the live colour's settings were not put back"
    assert server.file(".env.next") == "A='new'\n", "the declared settings are no longer staged for the next run"
    assert not (server.app_dir / ".release-lock").exists()


def test_a_switch_cut_off_midway_is_put_back_in_line_with_the_proxy_by_the_next_run(server: Server) -> None:
    server.live("v1.0.0", OLD)
    # What a switch killed outright (no undo) between installing live.conf and reloading leaves behind.
    (server.app_dir / "proxy" / "live.conf").write_text("# traffic goes to green\n")
    (server.app_dir / ".env.previous").write_text("POSTGRES_USER='kametrix'\n")
    (server.app_dir / ".env").write_text("A='new'\n")
    server.fact("reload_ignored", "yes")
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 1, result.stderr
    assert server.file("proxy/live.conf") == "# traffic goes to blue\n"
    assert server.file(".env") == "POSTGRES_USER='kametrix'\n" and server.file(".env.next") == "A='new'\n"
    assert server.read("env_green") == "A='new'\n", "the next run did not start with the staged settings"


def test_a_rollback_to_an_image_still_on_the_host_pulls_nothing(server: Server) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    server.fact("images_present", f"{OLD}\n{NEW}\n")
    server.fact("healthy_after", f"{OLD} 1\n")
    result = server.up("v1.0.0", OLD)
    assert result.returncode == 0, result.stderr
    assert not any(call.startswith("pull") for call in server.calls()), server.calls()
    assert server.read("proxy_colour") == "green" and server.read("colour_green") == OLD


def test_an_image_missing_from_the_host_is_pulled_before_anything_starts(server: Server) -> None:
    server.live("v1.0.0", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 0, result.stderr
    calls = server.calls()
    assert index_of(calls, "pull", NEW) < index_of(calls, "up", "app-green"), calls


def test_rerunning_a_live_release_converges_and_keeps_its_previous_version(server: Server) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 0, result.stderr
    assert "previous=v1.0.0" in result.stdout
    assert server.read("proxy_colour") == "green" and server.read("colour_green") == NEW


def test_pruning_keeps_the_newest_images_and_never_the_live_or_previous_one(server: Server) -> None:
    server.live("v5.0.0", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    listed = [NEW, MIGRATE, *(f"registry.example/kametrix@sha256:{str(i) * 64}" for i in range(1, 6)), OLD]
    server.fact("images", "".join(f"{image}\n" for image in listed))
    result = server.up("v6.0.0", NEW, keep="3")
    assert result.returncode == 0, result.stderr
    removed = server.read("removed_images").split()
    assert removed == [f"registry.example/kametrix@sha256:{str(i) * 64}" for i in range(2, 6)]
    assert OLD not in removed and NEW not in removed


def test_pruning_never_removes_the_previous_versions_migrate_image(server: Server) -> None:
    previous_migrate = "registry.example/kametrix@sha256:" + "d" * 64
    server.live("v5.0.0", OLD)
    with (server.app_dir / "release.env").open("a") as record:
        record.write(f"MIGRATE_IMAGE={previous_migrate}\n")
    server.fact("healthy_after", f"{NEW} 1\n")
    server.fact("images", "".join(f"{image}\n" for image in (NEW, MIGRATE, OLD, previous_migrate)))
    result = server.up("v6.0.0", NEW, keep="2")
    assert result.returncode == 0, result.stderr
    assert server.read("removed_images") == "", "an image of the previous version was pruned"
    assert server.record()["PREVIOUS_MIGRATE_IMAGE"] == previous_migrate


# --- settings: one cutover per update ---------------------------------------------------------------------


def test_new_settings_are_staged_and_never_move_traffic_by_themselves(server: Server) -> None:
    server.live("v2.0.0", OLD)
    result = server.env("A='2'\n")
    assert result.returncode == 0, result.stderr
    assert "new settings staged" in result.stdout
    staged = server.app_dir / ".env.next"
    assert staged.read_text() == "A='2'\n" and stat.S_IMODE(staged.stat().st_mode) == 0o600
    assert server.file(".env") == "POSTGRES_USER='kametrix'\n", "the live colour's settings changed under it"
    assert server.read("calls.log") == "", "env.sh moved traffic"
    assert server.lock()["RELEASE"] == release_of("v2.0.0", OLD), "the lock does not pass on to the update's up"


def test_a_settings_only_change_moves_colours_behind_the_gate_once(server: Server) -> None:
    server.live("v2.0.0", OLD)
    server.fact("healthy_after", f"{OLD} 1\n")
    assert server.env("A='2'\n").returncode == 0
    result = server.up("v2.0.0", OLD)
    assert result.returncode == 0, result.stderr
    assert server.read("env_green") == "A='2'\n", "the idle colour did not start with the new settings"
    assert (server.read("proxy_colour"), server.read("colour_green"), server.read("colour_blue")) == ("green", OLD, "")
    env = server.app_dir / ".env"
    assert env.read_text() == "A='2'\n" and stat.S_IMODE(env.stat().st_mode) == 0o600
    assert not (server.app_dir / ".env.next").exists() and not (server.app_dir / ".env.previous").exists()
    assert stat.S_IMODE((server.app_dir / "proxy" / "live.conf").stat().st_mode) == 0o644, "nginx cannot read it"
    assert not (server.app_dir / ".release-lock").exists()


def test_settings_only_the_new_version_accepts_start_with_it_in_one_cutover(server: Server) -> None:
    server.live("v1.0.0", OLD)
    server.fact("healthy_after", f"{OLD} 1\n{NEW} 1\n")
    server.fact("rejects", f"{OLD} FEATURE=\n")
    assert server.env("FEATURE='on'\n", release=release_of("v2.0.0", NEW)).returncode == 0
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 0, result.stderr
    calls = server.calls()
    starts = [call for call in calls if re.search(r" up .*app-(blue|green) ", call)]
    reloads = [call for call in calls if " kill " in call]
    drains = [call for call in calls if " stop " in call]
    assert (len(starts), len(reloads), len(drains)) == (1, 1, 1), calls
    assert (server.read("colour_green"), server.read("env_green")) == (NEW, "FEATURE='on'\n")
    assert server.file(".env") == "FEATURE='on'\n"


def test_settings_that_break_the_live_version_switch_nothing_and_the_previous_env_stays(server: Server) -> None:
    server.live("v2.0.0", OLD)
    server.fact("healthy_after", f"{OLD} 1\n")
    server.fact("rejects", f"{OLD} broken\n")
    assert server.env("B='broken'\n").returncode == 0
    result = server.up("v2.0.0", OLD)
    assert result.returncode == 1
    assert f"v2.0.0 ({OLD}) keeps serving" in result.stderr
    assert server.file(".env") == "POSTGRES_USER='kametrix'\n", "the broken .env stayed"
    assert (server.read("proxy_colour"), server.read("colour_blue"), server.read("colour_green")) == ("blue", OLD, "")
    assert not any(" kill " in call for call in server.calls()), "the proxy was reloaded"


def test_an_unchanged_env_restarts_nothing_and_drops_settings_staged_earlier(server: Server) -> None:
    server.live("v2.0.0", OLD)
    (server.app_dir / ".env.next").write_text("A='reverted since'\n")
    result = server.env("POSTGRES_USER='kametrix'\n")
    assert result.returncode == 0 and ".env unchanged" in result.stdout
    assert server.read("calls.log") == "" and not (server.app_dir / ".env.next").exists()


def test_before_the_first_release_the_env_is_installed_at_once(server: Server) -> None:
    (server.app_dir / ".env").unlink()
    result = server.env("A='1'\n", release=release_of("v1.0.0", NEW))
    assert result.returncode == 0 and ".env installed" in result.stdout
    assert stat.S_IMODE((server.app_dir / ".env").stat().st_mode) == 0o600


@pytest.mark.parametrize("stdin", ["", "A='1'\nnot a setting TESTSECRET-x\nB=unquoted\n"])
def test_an_empty_or_malformed_env_changes_nothing_and_is_never_echoed(server: Server, stdin: str) -> None:
    result = server.env(stdin)
    assert result.returncode == 1
    assert ("empty .env" if not stdin else "received other lines (2,3)") in result.stderr
    assert "TESTSECRET" not in result.stderr + result.stdout
    assert server.file(".env") == "POSTGRES_USER='kametrix'\n"
    assert [p.name for p in server.app_dir.iterdir() if p.name.startswith(".env.")] == []


# --- backup and migrate -----------------------------------------------------------------------------------


def test_backup_dumps_verifies_and_keeps_the_newest(server: Server) -> None:
    backups = server.app_dir / "backups"
    backups.mkdir()
    for stamp in ("20260101T000000Z", "20260102T000000Z", "20260103T000000Z"):
        (backups / f"{stamp}-v1.0.0.dump").write_text("old")
    result = server.backup(keep="2")
    assert result.returncode == 0, result.stderr
    kept = sorted(p.name for p in backups.glob("*.dump"))
    assert len(kept) == 2 and kept[0] == "20260103T000000Z-v1.0.0.dump" and kept[1].endswith("-v2.0.0.dump")
    path = result.stdout.split("backup=")[1].strip()
    assert Path(path).read_text() == "PGDMP-custom-format-dump"
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert server.lock()["RELEASE"] == release_of("v2.0.0", NEW), "backup must hold the release lock"


def test_an_empty_database_has_nothing_to_back_up(server: Server) -> None:
    server.fact("table_count", "0")
    result = server.backup()
    assert result.returncode == 0, result.stderr
    assert "nothing to back up" in result.stdout and "backup=\n" in result.stdout


@pytest.mark.parametrize(
    ("fact", "value", "message"),
    [("dump", "", "pg_dump wrote an empty backup"), ("restore_list", "", "lists no tables")],
)
def test_a_failed_backup_stops_the_release_and_leaves_no_partial_file(
    server: Server, fact: str, value: str, message: str
) -> None:
    server.fact(fact, value)
    result = server.backup()
    assert result.returncode == 1 and message in result.stderr
    assert list((server.app_dir / "backups").iterdir()) == []
    assert not (server.app_dir / ".release-lock").exists(), "a failed step kept the release lock"


def test_a_failed_migration_stops_the_release_with_the_live_version_serving(server: Server) -> None:
    server.live("v2.0.0", OLD)
    server.fact("migrate_status", "1")
    result = server.migrate("v4.0.0", NEW, migrate_image="registry.example/kametrix@sha256:" + "4" * 64)
    assert result.returncode == 1
    assert "migrations of v4.0.0 failed; the live version (v2.0.0) keeps serving" in result.stderr
    assert server.read("colour_blue") == OLD and server.read("proxy_colour") == "blue"
    assert not (server.app_dir / "migrations.log").exists(), "a failed migration was recorded as applied"


def test_a_version_that_already_ran_here_runs_no_migration_and_pulls_nothing(server: Server) -> None:
    server.ran_before(version="v2.0.0")
    result = server.migrate("v2.0.0")
    assert result.returncode == 0, result.stderr
    assert "no migration: v2.0.0 already ran on this server" in result.stdout
    assert "its schema is already there" in result.stdout
    assert server.calls() == [], "a rollback's migrate step touched docker"


def test_applied_migrations_are_recorded_so_a_later_rollback_skips_them(server: Server) -> None:
    assert server.migrate("v2.0.0").returncode == 0
    assert server.read("calls.log").count("pull") == 1
    log = (server.app_dir / "migrations.log").read_text().split()
    assert log[:2] == [MIGRATE, "v2.0.0"], log
    again = server.migrate("v2.0.0")
    assert "no migration" in again.stdout and server.read("calls.log").count("pull") == 1


def test_a_rollback_to_a_version_that_ran_here_takes_no_backup_unless_asked(server: Server) -> None:
    server.ran_before(version="v2.0.0")
    result = server.backup(mode="always")
    assert result.returncode == 0, result.stderr
    assert "no backup: v2.0.0 already ran on this server" in result.stdout and "backup=\n" in result.stdout
    assert "release.backupOnRollback" in result.stdout
    assert not any("pg_dump" in call for call in server.calls()), server.calls()
    asked = server.backup(mode="before-migrations", on_rollback="yes")
    assert asked.returncode == 0, asked.stderr
    assert "backing up: release.backupOnRollback asks for one" in asked.stdout
    assert any("pg_dump" in call for call in server.calls())


@pytest.mark.parametrize(
    ("mode", "pending_status", "says", "dumps"),
    [
        ("before-migrations", "0", "no backup: no migration of v2.0.0 is pending", False),
        ("before-migrations", "1", "backing up: v2.0.0 has migrations to apply", True),
        ("always", "0", "backing up: release.backup is always", True),
    ],
)
def test_a_release_backs_up_before_migrations_or_always_as_the_stage_chooses(
    server: Server, mode: str, pending_status: str, says: str, dumps: bool
) -> None:
    server.fact("pending_status", pending_status)
    result = server.backup(mode=mode)
    assert result.returncode == 0, result.stderr
    assert says in result.stdout, result.stdout
    assert any("pg_dump" in call for call in server.calls()) == dumps, server.calls()
    if mode == "always":
        assert not any("status" in call for call in server.calls()), "always needs no migration status"


def test_a_backup_says_how_big_and_how_fast_it_was_and_uses_the_measured_dump_settings(server: Server) -> None:
    result = server.backup()
    assert result.returncode == 0, result.stderr
    assert " MB/s)" in result.stdout, result.stdout
    dump = next(call for call in server.calls() if "pg_dump" in call)
    assert "--format=custom" in dump.split() and "--compress=1" in dump.split(), dump


@pytest.mark.parametrize(("mode", "on_rollback"), [("sometimes", "no"), ("always", "maybe")])
def test_backup_refuses_an_unknown_policy(server: Server, mode: str, on_rollback: str) -> None:
    result = server.backup(mode=mode, on_rollback=on_rollback)
    assert result.returncode == 1 and "allowed" in result.stderr and "received" in result.stderr
    assert server.calls() == []


# --- the release lock -------------------------------------------------------------------------------------


def files_step(server: Server, release: str) -> subprocess.CompletedProcess[str]:
    """The files step as the program runs it: the bundle unpacked into a folder of its own, then files.sh."""
    staged = server.app_dir / ".files.test"
    (staged / "bin").mkdir(parents=True, exist_ok=True)
    for name in SCRIPTS:
        (staged / "bin" / name).write_bytes((SCRIPTS_DIR / name).read_bytes())
    (staged / "docker-compose.yml").write_text(f"# rendered for {release}\n")
    return server.run("files.sh", *server.common(release), "--from", str(staged))


def test_the_lock_passes_through_every_step_of_one_update_and_ends_with_up(server: Server) -> None:
    release = release_of("v2.0.0", NEW)
    server.live("v1.0.0", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    holders = []
    assert files_step(server, release).returncode == 0
    holders.append(server.lock())
    assert server.env("A='2'\n", release=release).returncode == 0
    holders.append(server.lock())
    assert server.backup(release=release).returncode == 0
    holders.append(server.lock())
    assert server.migrate("v2.0.0", NEW).returncode == 0
    holders.append(server.lock())
    assert [holder["STEP"] for holder in holders] == ["files", "env", "backup", "migrate"]
    assert {holder["RELEASE"] for holder in holders} == {release}
    assert len({holder["SINCE"] for holder in holders}) == 1, "the lock's start moved between steps"
    assert server.up("v2.0.0", NEW).returncode == 0
    assert not (server.app_dir / ".release-lock").exists()
    assert server.file("docker-compose.yml") == f"# rendered for {release}\n"
    assert not (server.app_dir / ".files.test").exists(), "the unpacked bundle was left behind"


def test_the_lock_says_which_release_holds_it_which_step_who_runs_it_and_since_when(server: Server) -> None:
    assert server.backup().returncode == 0
    holder = server.lock()
    assert holder["RELEASE"] == release_of("v2.0.0", NEW) and holder["STEP"] == "backup"
    assert re.fullmatch(r"\d+", holder["PID"]) and abs(int(holder["SINCE"]) - time.time()) < 30
    assert holder["BY"].startswith(subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip())
    assert holder["REQUESTED_BY"] == REQUESTER


def test_who_asked_for_a_release_is_checked_before_the_lock_is_touched(server: Server) -> None:
    server.requested_by = "alice'; rm -rf /"
    result = server.backup()
    assert result.returncode == 1 and "requested-by: allowed a run URL" in result.stderr
    assert not (server.app_dir / ".release-lock").exists()


@pytest.mark.parametrize("script", ["files", "backup"])
def test_another_release_in_progress_is_refused_even_by_the_files_step(server: Server, script: str) -> None:
    assert server.backup(release=release_of("v7.0.0", OLD)).returncode == 0
    mine = release_of("v8.0.0", NEW)
    result = files_step(server, mine) if script == "files" else server.backup(release=mine)
    assert result.returncode == 1
    assert f"release {release_of('v7.0.0', OLD)} requested by {REQUESTER}, step backup (pid " in result.stderr
    assert f"of kametrix is in progress; refusing to start {mine}" in result.stderr
    assert "bin/release-lock.sh" in result.stderr, "the message does not say how to see or free the lock"
    assert server.lock()["RELEASE"] == release_of("v7.0.0", OLD), "the other release lost its lock"
    assert server.file("docker-compose.yml") == "", "files were installed under another release's lock"


def test_a_step_of_another_release_waits_for_a_running_step_and_is_refused(server: Server) -> None:
    assert server.backup(release=release_of("v7.0.0", OLD)).returncode == 0
    with server.step_running():
        result = files_step(server, release_of("v8.0.0", NEW))
    assert result.returncode == 1 and "another step has been running for over 2s" in result.stderr
    assert server.file("docker-compose.yml") == ""


def test_a_stale_lock_is_taken_over_and_the_same_release_may_continue(server: Server) -> None:
    assert server.backup(release=release_of("v7.0.0", OLD)).returncode == 0
    two_hours_ago = time.time() - 7200
    os.utime(server.app_dir / ".release-lock", (two_hours_ago, two_hours_ago))
    taken = server.backup()
    assert taken.returncode == 0 and "taking over the stale release lock" in taken.stderr
    assert server.backup().returncode == 0, "the release's own next step was refused"


def test_the_lock_command_shows_the_holder_and_frees_it_only_once_no_step_runs(server: Server) -> None:
    assert server.run("release-lock.sh").stdout == f"the release lock of {server.app_dir} is free\n"
    assert server.backup(release=release_of("v7.0.0", OLD)).returncode == 0
    shown = server.run("release-lock.sh")
    assert shown.returncode == 0 and "no step of that release runs" in shown.stdout
    assert f"held by release {release_of('v7.0.0', OLD)} requested by {REQUESTER}, step backup" in shown.stdout
    assert (server.app_dir / ".release-lock").exists(), "showing the lock freed it"
    with server.step_running():
        refused = server.run("release-lock.sh", "--free")
    assert refused.returncode == 1 and "a step runs now (backup" in refused.stderr
    assert (server.app_dir / ".release-lock").exists(), "a lock was freed while a step ran"
    freed = server.run("release-lock.sh", "--free")
    assert freed.returncode == 0 and "freed" in freed.stdout
    assert not (server.app_dir / ".release-lock").exists()
    assert server.backup().returncode == 0, "another release cannot start after the lock was freed"


@pytest.mark.parametrize(
    ("release", "staged_settings", "held"),
    [
        (release_of("v1.0.0", OLD), False, False),
        (release_of("v1.0.0", OLD), True, True),
        (release_of("v2.0.0", NEW), False, True),
    ],
)
def test_a_step_keeps_the_lock_for_up_only_when_up_has_something_to_do(
    server: Server, release: str, staged_settings: bool, held: bool
) -> None:
    """Going back to the live release after an update that stopped before `up` runs every step but `up`,
    which has nothing to do: the last step that runs gives the lock back."""
    server.live("v1.0.0", OLD)
    if staged_settings:
        (server.app_dir / ".env.next").write_text("A='2'\n")
    assert server.backup(release=release).returncode == 0
    assert (server.app_dir / ".release-lock").exists() == held


# --- break-glass switch-back -------------------------------------------------------------------------


def recorded_for_switch_back(server: Server, previous_migrate: str = MIGRATE) -> None:
    """What up.sh records beside the release: the stage's project, cutover and lock settings."""
    settings = dict(zip(CUTOVER[::2], CUTOVER[1::2], strict=True))
    with (server.app_dir / "release.env").open("a") as record:
        record.write(f"PREVIOUS_MIGRATE_IMAGE={previous_migrate}\nPROJECT=kametrix\nLOCK_TIMEOUT_SECONDS=1800\n")
        record.writelines(f"{flag[2:].replace('-', '_').upper()}={value}\n" for flag, value in settings.items())


def test_break_glass_switches_back_to_the_previous_version_through_the_health_gate(server: Server) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    recorded_for_switch_back(server)
    server.fact("images_present", f"{OLD}\n{NEW}\n")
    server.fact("healthy_after", f"{OLD} 1\n")
    result = server.run("switch-back.sh")
    assert result.returncode == 0, result.stderr
    assert (server.read("proxy_colour"), server.read("colour_green"), server.read("colour_blue")) == ("green", OLD, "")
    record = server.record()
    assert (record["VERSION"], record["APP_IMAGE"], record["PREVIOUS_VERSION"]) == ("v1.0.0", OLD, "v2.0.0")
    assert "pulumi config set version v1.0.0" in result.stdout
    assert not any(call.startswith("pull") for call in server.calls()), "break-glass pulled an image"
    assert not (server.app_dir / ".release-lock").exists()


def test_break_glass_never_switches_to_a_previous_version_that_does_not_turn_healthy(server: Server) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    recorded_for_switch_back(server)
    server.fact("images_present", f"{OLD}\n{NEW}\n")
    (server.app_dir / ".env.next").write_text("A='2'\n")
    before = (server.app_dir / "release.env").read_text()
    result = server.run("switch-back.sh")
    assert result.returncode == 1
    assert "v1.0.0 was not switched back to (see above); v2.0.0" in result.stderr and "keeps serving" in result.stderr
    assert (server.read("proxy_colour"), server.read("colour_blue")) == ("blue", NEW)
    assert (server.app_dir / "release.env").read_text() == before
    assert server.file(".env.next") == "A='2'\n", "settings staged for the next update were lost"
    assert not (server.app_dir / ".release-lock").exists(), "a failed switch-back kept the release lock"


def test_break_glass_after_a_release_switches_back_with_what_up_recorded(server: Server) -> None:
    server.live("v1.0.0", OLD)
    server.fact("healthy_after", f"{NEW} 1\n{OLD} 1\n")
    assert server.up("v2.0.0", NEW).returncode == 0
    result = server.run("switch-back.sh")
    assert result.returncode == 0, result.stderr
    record = server.record()
    assert (record["VERSION"], record["APP_IMAGE"], record["MIGRATE_IMAGE"]) == ("v1.0.0", OLD, MIGRATE)
    assert (record["PREVIOUS_VERSION"], record["PREVIOUS_IMAGE"]) == ("v2.0.0", NEW)
    assert (server.read("proxy_colour"), server.read("colour_blue")) == ("blue", OLD), "v1.0.0 does not serve"
    again = server.run("switch-back.sh")
    assert again.returncode == 0 and server.record()["VERSION"] == "v2.0.0", "switching back again goes forward"


def test_break_glass_waits_for_no_release_and_is_refused_while_another_holds_the_lock(server: Server) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    recorded_for_switch_back(server)
    server.fact("healthy_after", f"{OLD} 1\n")
    assert server.backup(release=release_of("v3.0.0", NEW)).returncode == 0
    result = server.run("switch-back.sh")
    assert result.returncode == 1
    assert f"release {release_of('v3.0.0', NEW)} requested by {REQUESTER}, step backup" in result.stderr, result.stderr
    assert f"refusing to start {release_of('v1.0.0', OLD)}" in result.stderr
    assert server.record()["VERSION"] == "v2.0.0" and server.read("proxy_colour") == "blue"
    assert server.lock()["RELEASE"] == release_of("v3.0.0", NEW), "the other release lost its lock"


def test_break_glass_starts_the_previous_version_with_the_live_settings_and_keeps_staged_ones_staged(
    server: Server,
) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    recorded_for_switch_back(server)
    server.fact("healthy_after", f"{OLD} 1\n")
    (server.app_dir / ".env.next").write_text("A='staged by an update that stopped before up'\n")
    result = server.run("switch-back.sh")
    assert result.returncode == 0, result.stderr
    assert server.read("env_green") == "POSTGRES_USER='kametrix'\n", "the previous version started with new settings"
    assert server.file(".env.next") == "A='staged by an update that stopped before up'\n", "staged settings lost"
    assert not (server.app_dir / ".env.next.held").exists()


def test_break_glass_takes_no_arguments(server: Server) -> None:
    result = server.run("switch-back.sh", "--app-dir", str(server.app_dir))
    assert result.returncode == 1 and "usage: switch-back.sh (unknown argument '--app-dir')" in result.stderr
    assert server.calls() == []


def test_break_glass_without_a_recorded_previous_version_changes_nothing(server: Server) -> None:
    server.live("v1.0.0", OLD)
    recorded_for_switch_back(server, previous_migrate="")
    result = server.run("switch-back.sh")
    assert result.returncode == 1 and "no previous version with both its images is recorded" in result.stderr
    assert server.calls() == []
