"""The server scripts' own logic, run for real by bash against a stand-in docker and curl."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.server_files import COLOURS, SCRIPTS, SCRIPTS_DIR

FAKES = Path(__file__).parent / "fake_server"
OLD = "registry.example/kametrix@sha256:" + "a" * 64
NEW = "registry.example/kametrix@sha256:" + "b" * 64
MIGRATE = "registry.example/kametrix@sha256:" + "c" * 64
# Where the proxy names its colour, each colour's health endpoint (the fake curl's ports), the gate, the drain.
CUTOVER = [
    "http://127.0.0.1:3000/.kametrix/colour",
    "http://127.0.0.1:3001/api/health?build=true",
    "http://127.0.0.1:3002/api/health?build=true",
    "5",
    "1",
    "3",
]


@dataclass
class Server:
    app_dir: Path
    state: Path

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
        self.fact(f"colour_{colour}", image)
        self.fact("proxy_colour", colour)

    def record(self) -> dict[str, str]:
        lines = (self.app_dir / "release.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)

    def up(self, version: str, image: str, keep: str = "3") -> subprocess.CompletedProcess[str]:
        return self.run(
            "up.sh", str(self.app_dir), "kametrix", f"{version}@x", "1800", version, image, MIGRATE, *CUTOVER, keep
        )

    def env(self, stdin: str, cutover: list[str] = CUTOVER) -> subprocess.CompletedProcess[str]:
        return self.run("env.sh", str(self.app_dir), "kametrix", "settings", "1800", *cutover, stdin=stdin)

    def backup(
        self,
        version: str = "v2",
        keep: str = "2",
        owner: str = "v2@x",
        mode: str = "always",
        on_rollback: str = "no",
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "backup.sh", str(self.app_dir), "kametrix", owner, "1800", version, keep, mode, on_rollback, NEW, MIGRATE
        )

    def migrate(self, version: str = "v2", migrate_image: str = MIGRATE) -> subprocess.CompletedProcess[str]:
        return self.run(
            "migrate.sh", str(self.app_dir), "kametrix", f"{version}@x", "1800", version, NEW, migrate_image
        )

    def ran_before(self, migrate_image: str = MIGRATE, version: str = "v2") -> None:
        """This server applied `migrate_image`'s migrations when it released `version` earlier."""
        with (self.app_dir / "migrations.log").open("a") as log:
            log.write(f"{migrate_image} {version} 2026-11-01T10:00:00Z\n")


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
        target.chmod(0o755)
    for colour in COLOURS:
        (app_dir / "proxy" / f"{colour}.conf").write_text(f"# traffic goes to {colour}\n")
    (app_dir / ".env").write_text("POSTGRES_USER='kametrix'\n")
    return Server(app_dir, state)


@pytest.mark.parametrize("script", ["up.sh", "backup.sh", "migrate.sh", "env.sh", "switch.sh", "switch-back.sh"])
def test_every_step_refuses_a_wrong_argument_count_with_its_usage(server: Server, script: str) -> None:
    result = server.run(script, "only-one")
    assert result.returncode == 1
    assert f"usage: {script}" in result.stderr and "received 1 arguments" in result.stderr


def test_up_refuses_an_image_that_is_not_pinned_by_digest(server: Server) -> None:
    result = server.up("v2", "registry.example/kametrix:latest")
    assert result.returncode == 1
    assert "APP_IMAGE: allowed an image pinned by digest" in result.stderr
    assert "received 'registry.example/kametrix:latest'" in result.stderr
    assert server.read("calls.log") == "", "docker was called before the arguments were checked"


def test_up_refuses_a_non_numeric_retention(server: Server) -> None:
    result = server.run("up.sh", str(server.app_dir), "kametrix", "v2@x", "1800", "v2", NEW, MIGRATE, *CUTOVER, "all")
    assert result.returncode == 1 and "IMAGES_TO_KEEP: allowed 2-100; received 'all'" in result.stderr


def test_a_release_starts_on_the_idle_colour_and_takes_traffic_only_once_healthy(server: Server) -> None:
    server.live("v1", OLD)
    server.fact("healthy_after", f"{NEW} 3\n")
    result = server.up("v2", NEW)
    assert result.returncode == 0, result.stderr
    assert "healthy on green after 3 attempt(s)" in result.stdout
    assert "previous=v1" in result.stdout
    calls = server.calls()
    started, reloaded, stopped = index_of(calls, "up", "app-green"), index_of(calls, "kill"), index_of(calls, "stop")
    assert started < reloaded < stopped, calls
    assert "app-blue" in calls[stopped], "the old colour was not the one stopped"
    assert (server.read("proxy_colour"), server.read("colour_green"), server.read("colour_blue")) == ("green", NEW, "")
    assert (server.app_dir / "proxy" / "live.conf").read_text() == "# traffic goes to green\n"
    record = server.record()
    assert record["VERSION"] == "v2" and record["APP_IMAGE"] == NEW and record["PREVIOUS_IMAGE"] == OLD
    assert (record["LIVE_COLOUR"], record["GREEN_IMAGE"], record["BLUE_IMAGE"]) == ("green", NEW, OLD)
    assert not (server.app_dir / ".release-lock").exists(), "a finished release kept the lock"


def test_a_release_that_never_turns_healthy_is_never_switched_to(server: Server) -> None:
    server.live("v2", OLD, previous="v1")
    record = server.record()
    result = server.up("v3", NEW)
    assert result.returncode == 1
    assert "not healthy on green after 5 attempts" in result.stderr
    assert f"release v3 was not switched to (see above); v2 ({OLD}) keeps serving" in result.stderr
    assert not any(call.startswith("compose") and " kill " in call for call in server.calls()), "the proxy reloaded"
    assert server.read("proxy_colour") == "blue" and server.read("colour_blue") == OLD, "the live colour moved"
    assert server.read("colour_green") == "", "the unhealthy colour was left running"
    assert server.record() == record, "the failed release was recorded"
    assert not (server.app_dir / ".release-lock").exists(), "a failed release kept the lock"


def test_a_failed_first_release_says_nothing_serves_and_starts_no_proxy(server: Server) -> None:
    result = server.up("v1", NEW)
    assert result.returncode == 1
    assert "no earlier version is recorded, so nothing serves yet" in result.stderr
    assert server.read("colour_blue") == "" and server.read("proxy_colour") == ""


def test_the_first_release_on_the_single_container_layout_replaces_its_app_once_the_new_colour_is_healthy(
    server: Server,
) -> None:
    (server.app_dir / "release.env").write_text(f"VERSION=v1\nAPP_IMAGE={OLD}\nMIGRATE_IMAGE={MIGRATE}\n")
    server.fact("single_container_app", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    result = server.up("v2", NEW)
    assert result.returncode == 0, result.stderr
    calls = server.calls()
    assert index_of(calls, "up", "app-blue") < index_of(calls, "up", "--remove-orphans", "proxy"), calls
    assert server.read("single_container_app") == "", "the single-container app was left behind"
    assert (server.read("proxy_colour"), server.read("colour_blue")) == ("blue", NEW)
    assert server.record()["PREVIOUS_VERSION"] == "v1"


def test_a_proxy_that_does_not_answer_leaves_the_recorded_live_colour_alone(server: Server) -> None:
    server.live("v1", OLD)
    server.fact("proxy_slow", "yes")
    server.fact("healthy_after", f"{NEW} 1\n")
    server.up("v2", NEW)
    assert server.read("colour_blue") == OLD and server.read("colour_green") == NEW, server.calls()


@pytest.mark.parametrize(("draining", "checks"), [(2, 3), (99, 3)])
def test_the_old_colour_stops_once_the_proxy_has_drained_it_or_the_drain_time_is_up(
    server: Server, draining: int, checks: int
) -> None:
    server.live("v1", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    server.fact("draining", str(draining))
    result = server.up("v2", NEW)
    assert result.returncode == 0, result.stderr
    calls = server.calls()
    drain_checks = [i for i, call in enumerate(calls) if "shutting" in call]
    assert len(drain_checks) == checks, calls
    assert drain_checks[-1] < index_of(calls, "stop", "app-blue"), "the old colour stopped before the drain"


def test_a_proxy_that_does_not_take_the_new_colour_leaves_both_colours_running(server: Server) -> None:
    server.live("v1", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    server.fact("reload_ignored", "yes")
    result = server.up("v2", NEW)
    assert result.returncode == 1
    assert "the proxy did not switch to green within 10s; both colours keep running" in result.stderr
    assert "a reason the proxy logged" in result.stderr
    assert (server.read("colour_blue"), server.read("colour_green")) == (OLD, NEW)
    assert server.record()["APP_IMAGE"] == OLD


def test_a_rollback_to_an_image_still_on_the_host_pulls_nothing(server: Server) -> None:
    server.live("v2", NEW, previous="v1", previous_image=OLD)
    server.fact("images_present", f"{OLD}\n{NEW}\n")
    server.fact("healthy_after", f"{OLD} 1\n")
    result = server.up("v1", OLD)
    assert result.returncode == 0, result.stderr
    assert not any(call.startswith("pull") for call in server.calls()), server.calls()
    assert server.read("proxy_colour") == "green" and server.read("colour_green") == OLD


def test_an_image_missing_from_the_host_is_pulled_before_anything_starts(server: Server) -> None:
    server.live("v1", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    result = server.up("v2", NEW)
    assert result.returncode == 0, result.stderr
    calls = server.calls()
    assert index_of(calls, "pull", NEW) < index_of(calls, "up", "app-green"), calls


def test_rerunning_a_live_release_converges_and_keeps_its_previous_version(server: Server) -> None:
    server.live("v2", NEW, previous="v1", previous_image=OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    result = server.up("v2", NEW)
    assert result.returncode == 0, result.stderr
    assert "previous=v1" in result.stdout
    assert server.read("proxy_colour") == "green" and server.read("colour_green") == NEW


def test_pruning_keeps_the_newest_images_and_never_the_live_or_previous_one(server: Server) -> None:
    server.live("v5", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    listed = [NEW, MIGRATE, *(f"registry.example/kametrix@sha256:{str(i) * 64}" for i in range(1, 6)), OLD]
    server.fact("images", "".join(f"{image}\n" for image in listed))
    result = server.up("v6", NEW, keep="3")
    assert result.returncode == 0, result.stderr
    removed = server.read("removed_images").split()
    assert removed == [f"registry.example/kametrix@sha256:{str(i) * 64}" for i in range(2, 6)]
    assert OLD not in removed and NEW not in removed


def test_pruning_never_removes_the_previous_versions_migrate_image(server: Server) -> None:
    previous_migrate = "registry.example/kametrix@sha256:" + "d" * 64
    server.live("v5", OLD)
    with (server.app_dir / "release.env").open("a") as record:
        record.write(f"MIGRATE_IMAGE={previous_migrate}\n")
    server.fact("healthy_after", f"{NEW} 1\n")
    server.fact("images", "".join(f"{image}\n" for image in (NEW, MIGRATE, OLD, previous_migrate)))
    result = server.up("v6", NEW, keep="2")
    assert result.returncode == 0, result.stderr
    assert server.read("removed_images") == "", "an image of the previous version was pruned"
    assert server.record()["PREVIOUS_MIGRATE_IMAGE"] == previous_migrate


def test_backup_dumps_verifies_and_keeps_the_newest(server: Server) -> None:
    backups = server.app_dir / "backups"
    backups.mkdir()
    for stamp in ("20260101T000000Z", "20260102T000000Z", "20260103T000000Z"):
        (backups / f"{stamp}-v1.dump").write_text("old")
    result = server.backup(keep="2")
    assert result.returncode == 0, result.stderr
    kept = sorted(p.name for p in backups.glob("*.dump"))
    assert len(kept) == 2 and kept[0] == "20260103T000000Z-v1.dump" and kept[1].endswith("-v2.dump")
    path = result.stdout.split("backup=")[1].strip()
    assert Path(path).read_text() == "PGDMP-custom-format-dump"
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert (server.app_dir / ".release-lock").read_text().startswith("v2@x "), "backup must hold the release lock"


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


def test_another_release_in_progress_is_refused_with_a_clear_message(server: Server) -> None:
    (server.app_dir / ".release-lock").write_text(f"v7@other {int(time.time())}\n")
    result = server.backup(owner="v8@mine")
    assert result.returncode == 1
    assert (
        "release v7@other of kametrix is in progress" in result.stderr and "refusing to start v8@mine" in result.stderr
    )
    assert (server.app_dir / ".release-lock").read_text().startswith("v7@other"), "the other release lost its lock"


def test_a_stale_lock_is_taken_over_and_the_same_release_may_continue(server: Server) -> None:
    (server.app_dir / ".release-lock").write_text(f"v7@other {int(time.time()) - 7200}\n")
    assert server.backup(owner="v8@mine").returncode == 0
    assert server.backup(owner="v8@mine").returncode == 0, "the release's own next step was refused"


def test_a_failed_migration_stops_the_release_with_the_live_version_serving(server: Server) -> None:
    server.live("v2", OLD)
    server.fact("migrate_status", "1")
    result = server.migrate("v4", migrate_image="registry.example/kametrix@sha256:" + "4" * 64)
    assert result.returncode == 1
    assert "migrations of v4 failed; the live version (v2) keeps serving" in result.stderr
    assert server.read("colour_blue") == OLD and server.read("proxy_colour") == "blue"
    assert not (server.app_dir / "migrations.log").exists(), "a failed migration was recorded as applied"


def test_a_version_that_already_ran_here_runs_no_migration_and_pulls_nothing(server: Server) -> None:
    server.ran_before(version="v2")
    result = server.migrate("v2")
    assert result.returncode == 0, result.stderr
    assert "no migration: v2 already ran on this server" in result.stdout
    assert "its schema is already there" in result.stdout
    assert server.calls() == [], "a rollback's migrate step touched docker"


def test_applied_migrations_are_recorded_so_a_later_rollback_skips_them(server: Server) -> None:
    assert server.migrate("v2").returncode == 0
    assert server.read("calls.log").count("pull") == 1
    log = (server.app_dir / "migrations.log").read_text().split()
    assert log[:2] == [MIGRATE, "v2"], log
    again = server.migrate("v2")
    assert "no migration" in again.stdout and server.read("calls.log").count("pull") == 1


def test_a_rollback_to_a_version_that_ran_here_takes_no_backup_unless_asked(server: Server) -> None:
    server.ran_before(version="v2")
    result = server.backup(mode="always")
    assert result.returncode == 0, result.stderr
    assert "no backup: v2 already ran on this server" in result.stdout and "backup=\n" in result.stdout
    assert "release.backupOnRollback" in result.stdout
    assert not any("pg_dump" in call for call in server.calls()), server.calls()
    asked = server.backup(mode="before-migrations", on_rollback="yes")
    assert asked.returncode == 0, asked.stderr
    assert "backing up: release.backupOnRollback asks for one" in asked.stdout
    assert any("pg_dump" in call for call in server.calls())


@pytest.mark.parametrize(
    ("mode", "pending_status", "says", "dumps"),
    [
        ("before-migrations", "0", "no backup: no migration of v2 is pending", False),
        ("before-migrations", "1", "backing up: v2 has migrations to apply", True),
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


def test_new_settings_start_on_the_idle_colour_and_take_over_from_the_live_one(server: Server) -> None:
    server.live("v2", OLD)
    server.fact("healthy_after", f"{OLD} 1\n")
    result = server.env("A='2'\n")
    assert result.returncode == 0, result.stderr
    env = server.app_dir / ".env"
    assert env.read_text() == "A='2'\n" and stat.S_IMODE(env.stat().st_mode) == 0o600
    assert server.read("env_green") == "A='2'\n", "the idle colour did not start with the new settings"
    assert (server.read("proxy_colour"), server.read("colour_green"), server.read("colour_blue")) == ("green", OLD, "")
    assert stat.S_IMODE((server.app_dir / "proxy" / "live.conf").stat().st_mode) == 0o644, "nginx cannot read it"


def test_an_unchanged_env_restarts_nothing(server: Server) -> None:
    server.live("v2", OLD)
    result = server.env("POSTGRES_USER='kametrix'\n")
    assert result.returncode == 0 and ".env unchanged" in result.stdout
    assert "up" not in server.read("calls.log")


def test_settings_that_break_the_app_are_never_switched_to_and_the_previous_env_is_restored(server: Server) -> None:
    server.live("v2", OLD)
    result = server.env("B='broken'\n")
    assert result.returncode == 1
    assert "the previous .env is restored and v2 keeps serving with it" in result.stderr
    assert (server.app_dir / ".env").read_text() == "POSTGRES_USER='kametrix'\n", "the broken .env stayed"
    assert (server.read("proxy_colour"), server.read("colour_blue"), server.read("colour_green")) == ("blue", OLD, "")


def test_an_empty_env_on_stdin_changes_nothing(server: Server) -> None:
    result = server.env("")
    assert result.returncode == 1 and "empty .env" in result.stderr
    assert (server.app_dir / ".env").read_text() == "POSTGRES_USER='kametrix'\n"
    assert [p.name for p in server.app_dir.iterdir() if p.name.startswith(".env.")] == []


def recorded_for_switch_back(server: Server, previous_migrate: str = MIGRATE) -> None:
    """What up.sh records beside the release: the stage's project, cutover and lock settings."""
    with (server.app_dir / "release.env").open("a") as record:
        record.write(
            f"PREVIOUS_MIGRATE_IMAGE={previous_migrate}\nPROJECT=kametrix\nCUTOVER={' '.join(CUTOVER)}\n"
            "STALE_SECONDS=1800\n"
        )


def test_break_glass_switches_back_to_the_previous_version_through_the_health_gate(server: Server) -> None:
    server.live("v2", NEW, previous="v1", previous_image=OLD)
    recorded_for_switch_back(server)
    server.fact("images_present", f"{OLD}\n{NEW}\n")
    server.fact("healthy_after", f"{OLD} 1\n")
    result = server.run("switch-back.sh")
    assert result.returncode == 0, result.stderr
    assert (server.read("proxy_colour"), server.read("colour_green"), server.read("colour_blue")) == ("green", OLD, "")
    record = server.record()
    assert (record["VERSION"], record["APP_IMAGE"], record["PREVIOUS_VERSION"]) == ("v1", OLD, "v2")
    assert "pulumi config set version v1" in result.stdout
    assert not any(call.startswith("pull") for call in server.calls()), "break-glass pulled an image"
    assert not (server.app_dir / ".release-lock").exists()


def test_break_glass_never_switches_to_a_previous_version_that_does_not_turn_healthy(server: Server) -> None:
    server.live("v2", NEW, previous="v1", previous_image=OLD)
    recorded_for_switch_back(server)
    server.fact("images_present", f"{OLD}\n{NEW}\n")
    before = (server.app_dir / "release.env").read_text()
    result = server.run("switch-back.sh")
    assert result.returncode == 1
    assert "v1 was not switched back to (see above); v2" in result.stderr and "keeps serving" in result.stderr
    assert (server.read("proxy_colour"), server.read("colour_blue")) == ("blue", NEW)
    assert (server.app_dir / "release.env").read_text() == before


def test_break_glass_without_a_recorded_previous_version_changes_nothing(server: Server) -> None:
    server.live("v1", OLD)
    recorded_for_switch_back(server, previous_migrate="")
    result = server.run("switch-back.sh")
    assert result.returncode == 1 and "no previous version with both its images is recorded" in result.stderr
    assert server.calls() == []
