"""The server scripts' own logic, run for real by bash against a stand-in docker and curl."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.server_files import SCRIPTS, SCRIPTS_DIR

FAKES = Path(__file__).parent / "fake_server"
OLD = "registry.example/kametrix@sha256:" + "a" * 64
NEW = "registry.example/kametrix@sha256:" + "b" * 64
MIGRATE = "registry.example/kametrix@sha256:" + "c" * 64
HEALTH = ["http://127.0.0.1:3000/api/health?build=true", "5", "1"]


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

    def live(self, version: str, image: str, previous: str = "", previous_image: str = "") -> None:
        (self.app_dir / "release.env").write_text(
            f"VERSION={version}\nAPP_IMAGE={image}\nMIGRATE_IMAGE={MIGRATE}\n"
            f"PREVIOUS_VERSION={previous}\nPREVIOUS_IMAGE={previous_image}\n"
        )
        self.fact("app_image", image)

    def up(self, version: str, image: str, keep: str = "3") -> subprocess.CompletedProcess[str]:
        return self.run(
            "up.sh", str(self.app_dir), "kametrix", f"{version}@x", "1800", version, image, MIGRATE, *HEALTH, keep
        )

    def backup(self, version: str = "v2", keep: str = "2", owner: str = "v2@x") -> subprocess.CompletedProcess[str]:
        return self.run("backup.sh", str(self.app_dir), "kametrix", owner, "1800", version, keep, NEW, MIGRATE)


@pytest.fixture
def server(tmp_path: Path) -> Server:
    app_dir, state = tmp_path / "opt" / "kametrix", tmp_path / "state"
    (app_dir / "bin").mkdir(parents=True)
    state.mkdir()
    for name in SCRIPTS:
        target = app_dir / "bin" / name
        target.write_bytes((SCRIPTS_DIR / name).read_bytes())
        target.chmod(0o755)
    (app_dir / ".env").write_text("POSTGRES_USER='kametrix'\n")
    return Server(app_dir, state)


@pytest.mark.parametrize("script", ["up.sh", "backup.sh", "migrate.sh", "env.sh", "switch.sh"])
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
    result = server.run("up.sh", str(server.app_dir), "kametrix", "v2@x", "1800", "v2", NEW, MIGRATE, *HEALTH, "all")
    assert result.returncode == 1 and "IMAGES_TO_KEEP: allowed 2-100; received 'all'" in result.stderr


def test_health_is_polled_until_the_build_reports_valid(server: Server) -> None:
    server.live("v1", OLD)
    server.fact("healthy_after", f"{NEW} 3\n{OLD} 1\n")
    result = server.up("v2", NEW)
    assert result.returncode == 0, result.stderr
    assert "healthy after 3 attempt(s)" in result.stdout
    assert "previous=v1" in result.stdout
    record = (server.app_dir / "release.env").read_text()
    assert f"APP_IMAGE={NEW}" in record and "VERSION=v2" in record and f"PREVIOUS_IMAGE={OLD}" in record
    assert not (server.app_dir / ".release-lock").exists(), "a finished release kept the lock"


def test_a_release_that_never_turns_healthy_is_rolled_back_to_the_previous_image(server: Server) -> None:
    server.live("v2", OLD, previous="v1")
    server.fact("healthy_after", f"{OLD} 1\n")
    result = server.up("v3", NEW)
    assert result.returncode == 1
    assert "release v3 failed its health check; restored v2" in result.stderr
    assert server.read("app_image") == OLD, "the previous image is not serving again"
    assert f"APP_IMAGE={OLD}" in (server.app_dir / "release.env").read_text(), "the failed release was recorded live"
    assert not (server.app_dir / ".release-lock").exists(), "a failed release kept the lock"


def test_a_failed_first_release_stops_the_app_and_says_nothing_could_be_restored(server: Server) -> None:
    result = server.up("v1", NEW)
    assert result.returncode == 1
    assert "no earlier version is recorded to restore" in result.stderr
    assert server.read("app_image") == ""


def test_rerunning_a_live_release_converges_and_keeps_its_previous_version(server: Server) -> None:
    server.live("v2", NEW, previous="v1", previous_image=OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    result = server.up("v2", NEW)
    assert result.returncode == 0, result.stderr
    assert "previous=v1" in result.stdout


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
    result = server.run("migrate.sh", str(server.app_dir), "kametrix", "v4@x", "1800", "v4", NEW, MIGRATE)
    assert result.returncode == 1
    assert "migrations of v4 failed; the live version (v2) keeps serving" in result.stderr
    assert server.read("app_image") == OLD


def test_env_is_written_from_stdin_with_mode_600_and_restarts_a_live_app(server: Server) -> None:
    server.live("v2", OLD)
    server.fact("healthy_after", f"{OLD} 1\n")
    result = server.run("env.sh", str(server.app_dir), "kametrix", "settings", "1800", *HEALTH, stdin="A='2'\n")
    assert result.returncode == 0, result.stderr
    env = server.app_dir / ".env"
    assert env.read_text() == "A='2'\n" and stat.S_IMODE(env.stat().st_mode) == 0o600
    assert server.read("app_env") == "A='2'\n", "the app was not restarted with the new settings"


def test_an_unchanged_env_restarts_nothing(server: Server) -> None:
    server.live("v2", OLD)
    result = server.run(
        "env.sh", str(server.app_dir), "kametrix", "settings", "1800", *HEALTH, stdin="POSTGRES_USER='kametrix'\n"
    )
    assert result.returncode == 0 and ".env unchanged" in result.stdout
    assert "up" not in server.read("calls.log")


def test_settings_that_break_the_app_are_rolled_back(server: Server) -> None:
    server.live("v2", OLD)
    server.fact("healthy_after", f"{OLD} 99\n")
    result = server.run(
        "env.sh", str(server.app_dir), "kametrix", "settings", "1800", "http://x", "1", "1", stdin="B='broken'\n"
    )
    assert result.returncode == 1
    assert (server.app_dir / ".env").read_text() == "POSTGRES_USER='kametrix'\n", "the broken .env stayed"


def test_an_empty_env_on_stdin_changes_nothing(server: Server) -> None:
    result = server.run("env.sh", str(server.app_dir), "kametrix", "settings", "1800", *HEALTH, stdin="")
    assert result.returncode == 1 and "empty .env" in result.stderr
    assert (server.app_dir / ".env").read_text() == "POSTGRES_USER='kametrix'\n"
    assert [p.name for p in server.app_dir.iterdir() if p.name.startswith(".env.")] == []
