"""The server scripts' own logic, run for real by bash against a stand-in docker, curl and sleep (tests/fake_server).

Each test installs the bundle the program renders into a fresh app dir (tests/server_bundle.py), arranges the fake
server's state and runs steps with exactly the flags the program gives them. Each test reads as the policy it keeps.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components import server_files, shared_facts
from components.config import VERSION_PATTERN, ReleaseSettings
from components.config.fields import REQUESTER_PATTERN
from components.shared_facts import SCRIPT_FLAGS, SETTINGS_FILE
from tests import kit
from tests.server_bundle import (
    BUNDLE,
    MIGRATE,
    NEW,
    NEWER,
    OLD,
    PASSWORD,
    POSTGRES,
    PROJECT,
    REQUESTER,
    ROLES,
    ROTATED_PASSWORD,
    STACK,
    Server,
    dot_env,
    index_of,
    install,
    last_index_of,
    release_of,
    wait_for,
)

SHELLCHECK = Path(sys.executable).parent / "shellcheck"


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle's scripts and libraries, installed as the files step installs them."""
    folder = tmp_path_factory.mktemp("bundle")
    install(folder, BUNDLE)
    return folder / "bin"


@pytest.fixture
def server(tmp_path: Path) -> Server:
    app_dir, state = tmp_path / "opt" / "kametrix", tmp_path / "state"
    install(app_dir, BUNDLE)
    (app_dir / ".env").write_text(dot_env())
    (app_dir / ".env").chmod(0o600)
    state.mkdir()
    server = Server(app_dir, state)
    # The database step ran: PostgreSQL runs the declared image, with the login roles, none able to log in yet.
    server.fact("postgres_image", POSTGRES)
    server.fact("roles", "".join(f"{role}\n" for role in ROLES.values()))
    return server


def bash(bin_dir: Path, script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`script` run by bash with the bundle's step library sourced, `$1`... being `args` (and `env` its environment:
    a server's, for its fakes)."""
    return subprocess.run(
        ["bash", "-c", f"source {bin_dir}/lib/step.sh; {script}", "bash", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


# --- scripts an operator can read -----------------------------------------------------------------------


@pytest.mark.parametrize("script", list(SCRIPT_FLAGS))
def test_every_step_takes_exactly_its_flags_and_refuses_anything_else_with_its_usage(
    server: Server, script: str
) -> None:
    names = SCRIPT_FLAGS[script]
    usage = f"usage: {script} " + " ".join(f"--{name} VALUE" for name in names)
    result = server.run(script, "only-one")
    assert result.returncode == 1
    assert f"{usage} (unknown argument 'only-one')" in result.stderr, result.stderr
    given = [part for name in names[:-1] for part in (f"--{name}", "x")]
    missing = server.run(script, *given)
    assert missing.returncode == 1 and f"(missing --{names[-1]})" in missing.stderr, missing.stderr
    # What moved to the settings file is refused as a flag.
    moved = server.run(script, *given, f"--{names[-1]}", "x", "--lock-timeout-seconds", "1800")
    assert moved.returncode == 1 and "(unknown argument '--lock-timeout-seconds')" in moved.stderr, moved.stderr
    assert server.calls() == [], "docker was called before the flags were checked"
    assert not server.locked()


def test_the_programs_command_lines_give_each_script_exactly_its_flags_and_release_a_fresh_server(
    tmp_path: Path,
) -> None:
    """Production's steps as the program declares them (`create`, `stdin`), run in order on a server that has
    nothing yet: each command line gives its script exactly the flags it takes, in their order (parse_flags accepts
    it), and the release serves. Its backup section aside, with a dump instead: this server has no pgBackRest
    (tests/e2e/test_backups.py runs those steps on the local target)."""
    app_dir, state = tmp_path / "opt" / "kametrix", tmp_path / "state"
    state.mkdir()
    deployment = kit.run_stack(
        "production", overrides={"server.appDir": str(app_dir), "backup": kit.DELETE, "release.backup": "always"}
    )
    steps = {step.name.removeprefix("server-"): step for step in deployment.of_type("command:remote:Command")}
    assert list(steps) == ["files", "env", "database", "backup", "migrate", "up"]
    server = Server(app_dir, state)
    flags = {}
    for name, step in steps.items():
        line = step.plain("create")
        # `bash <appDir>/bin/<script> --flag value ...`; the files step runs the script it has just unpacked.
        found = re.search(r'bash "?(?:\$staged|[^ "]+)/bin/([a-z]+\.sh)"? (.*)$', line)
        assert found and found[1] == f"{name}.sh", line
        words = shlex.split(found[2])
        assert [word.removeprefix("--") for word in words[::2]] == list(SCRIPT_FLAGS[found[1]]), line
        flags[name] = dict(zip(words[::2], words[1::2], strict=True))
    server.fact("healthy_after", f"{flags['up']['--app-image']} 1\n")
    for name, step in steps.items():
        ran = subprocess.run(
            ["bash", "-c", step.plain("create")],
            input=step.plain("stdin") or "",
            capture_output=True,
            text=True,
            env=server.environment(),
            timeout=60,
            check=False,
        )
        assert ran.returncode == 0, f"{name}: {ran.stderr}"
    record = server.record()
    assert (record["VERSION"], record["APP_IMAGE"]) == (flags["up"]["--version"], flags["up"]["--app-image"])
    assert server.read("proxy_colour") == record["LIVE_COLOUR"] == "blue" and not server.locked()
    assert server.read("postgres_image") == flags["database"]["--postgres-image"]
    assert server.logins() == {"kametrix_blue": kit.TEST_SECRETS["postgresPassword"]}
    assert len(list((app_dir / "backups").glob("*.dump"))) == 1 and (app_dir / "migrations.log").exists()


@pytest.mark.parametrize("library", [*server_files.LIBRARIES, server_files.FACTS])
def test_a_library_only_defines_functions_and_the_facts_when_sourced_and_is_not_executable(
    bin_dir: Path, library: str
) -> None:
    assert BUNDLE[f"bin/{library}"][1] == 0o644 and not os.access(bin_dir / library, os.X_OK)
    facts = {line.split("=", 1)[0] for line in shared_facts.facts_sh().splitlines() if not line.startswith("#")}
    # lib/step.sh sources the facts; lib/dump.sh names the dump settings measured (README).
    allowed = {
        "lib/step.sh": facts,
        "lib/backup-job.sh": facts,
        server_files.FACTS: facts,
        "lib/dump.sh": {"DUMP_OPTIONS"},
    }.get(library, set())
    # Traps are compared too: a shell started under nohup, or in the background without job control, inherits
    # ignored signals that `trap -p` prints before anything is sourced.
    compare = (
        'before="$(compgen -v)"; traps="$(trap -p)"; source "$1"; [[ "$(trap -p)" == "$traps" ]] || trap -p; '
        'comm -13 <(sort <<<"$before") <(compgen -v | sort)'
    )
    sourced = subprocess.run(
        ["bash", "-c", compare, "bash", str(bin_dir / library)], capture_output=True, text=True, check=False
    )
    assert (sourced.returncode, sourced.stderr) == (0, ""), sourced.stderr
    # What bash itself sets as it runs: the exit statuses of the last pipeline, and its own BASH_ variables.
    defined = {name for name in sourced.stdout.split() if name not in {"before", "traps", "PIPESTATUS", "_"}}
    defined -= {name for name in defined if name.startswith("BASH_")}
    assert defined == allowed, f"sourcing {library} set, trapped or printed: {defined ^ allowed}"


def test_the_rendered_facts_pass_shellcheck_and_are_what_the_bundle_installs(tmp_path: Path) -> None:
    facts = tmp_path / "facts.sh"
    facts.write_text(shared_facts.facts_sh())
    assert BUNDLE[f"bin/{server_files.FACTS}"][0].decode() == facts.read_text()
    checked = subprocess.run([str(SHELLCHECK), str(facts)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    "version",
    ["v1.2.3", "v2026.11.28-3f9c2a1", "staging-3f9c2a1", "latest", "v1.2", "v1.2.3; rm -rf /", "staging-XYZ1234"],
)
def test_the_server_accepts_exactly_the_versions_the_stack_accepts(bin_dir: Path, version: str) -> None:
    checked = bash(bin_dir, 'require_version VERSION "$1"', version)
    assert (checked.returncode == 0) == bool(VERSION_PATTERN.fullmatch(version)), checked.stderr


@pytest.mark.parametrize(
    "requester",
    [REQUESTER, "", "dependabot[bot]", "alice, incident 123", "x" * 300, "x" * 301, "a\nb", "alice'; rm", "$(id)"],
)
def test_the_server_accepts_exactly_the_requesters_the_stack_accepts(bin_dir: Path, requester: str) -> None:
    checked = bash(bin_dir, 'require_setting REQUESTED_BY "$1"', requester)
    accepted = requester == "" or bool(re.fullmatch(REQUESTER_PATTERN, requester))
    assert (checked.returncode == 0) == accepted, checked.stderr


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("VERSION=latest", "VERSION: allowed v1.2.3"),
        (f"APP_IMAGE={NEW[:-1]}", "APP_IMAGE: allowed an image pinned by digest"),
        ("LIVE_COLOUR=red", "LIVE_COLOUR: allowed blue, green; received 'red'"),
        ("PREVIOUS_MIGRATE_IMAGE=kametrix:latest", "PREVIOUS_MIGRATE_IMAGE: allowed an image pinned by digest"),
        ("FILES_DIGEST=123", "FILES_DIGEST: allowed a sha256 digest"),
        ("PROJECT=kametrix", "live release: unknown key 'PROJECT'"),
    ],
)
def test_nothing_unchecked_is_written_to_the_live_release(
    server: Server, bin_dir: Path, pair: str, message: str
) -> None:
    server.live("v1.0.0", OLD)
    before = server.file("release.env")
    written = bash(bin_dir, f'source {bin_dir}/lib/live.sh; use_app_dir "$1"; set_live "$2"', str(server.app_dir), pair)
    assert written.returncode == 1 and message in written.stderr, written.stderr
    assert server.file("release.env") == before


def lock_timeout_range() -> str:
    low, high = shared_facts.range_of(ReleaseSettings, "lock_timeout_minutes")
    return f"{low * 60}-{high * 60}"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("LOCK_TIMEOUT_SECONDS", "5", f"LOCK_TIMEOUT_SECONDS: allowed {lock_timeout_range()}; received '5'"),
        ("IMAGES_TO_KEEP", "all", "IMAGES_TO_KEEP: allowed {}-{}; received 'all'"),
        ("HEALTH_ATTEMPTS", "", "HEALTH_ATTEMPTS: allowed {}-{}; received ''"),
        ("DRAIN_SECONDS", "0", "DRAIN_SECONDS: allowed {}-{}; received '0'"),
        ("COLOUR_URL", "http://203.0.113.9/x", "COLOUR_URL: allowed an http URL on 127.0.0.1"),
        ("PROJECT", "Kametrix;rm", "PROJECT: allowed a compose project name"),
        ("DATABASE_USER", "kametrix; DROP", "DATABASE_USER: allowed a PostgreSQL name"),
        ("REQUESTED_BY", "alice'; rm -rf /", "REQUESTED_BY: allowed a run URL and who started it"),
    ],
)
def test_every_setting_a_step_reads_is_checked_before_anything_is_touched(
    server: Server, key: str, value: str, message: str
) -> None:
    field_name = shared_facts.SETTINGS[key][0]
    if field_name:
        message = message.format(*shared_facts.range_of(ReleaseSettings, field_name))
    server.live("v1.0.0", OLD)
    before = server.file("release.env")
    server.setting(key, value)
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert server.calls() == [] and server.file("release.env") == before and not server.locked()


def test_a_step_without_the_settings_file_says_which_step_installs_it(server: Server) -> None:
    (server.app_dir / SETTINGS_FILE).unlink()
    result = server.backup()
    assert result.returncode == 1
    assert f"{server.app_dir}/{SETTINGS_FILE} is missing: the files step installs it" in result.stderr
    assert server.calls() == [] and not server.locked()


def test_up_refuses_an_unchecked_version_before_touching_anything(server: Server) -> None:
    server.live("v1.0.0", OLD)
    before = server.file("release.env")
    result = server.up("v2.0.0;reboot", NEW, release=release_of("v2.0.0", NEW))
    assert result.returncode == 1 and "VERSION: allowed v1.2.3" in result.stderr
    assert "received 'v2.0.0;reboot'" in result.stderr
    assert server.calls() == [] and server.file("release.env") == before and not server.locked()


def test_up_refuses_an_image_that_is_not_pinned_by_digest(server: Server) -> None:
    result = server.up("v2.0.0", "registry.example/kametrix:latest", release=release_of("v2.0.0", NEW))
    assert result.returncode == 1
    assert "APP_IMAGE: allowed an image pinned by digest" in result.stderr
    assert "received 'registry.example/kametrix:latest'" in result.stderr
    assert server.calls() == [], "docker was called before the arguments were checked"


def test_the_database_step_refuses_an_image_reference_it_could_not_pass_on_safely(server: Server) -> None:
    result = server.database("postgres:16; rm -rf /")
    assert result.returncode == 1 and "postgres-image: allowed an image reference" in result.stderr
    assert server.calls() == [] and not server.locked()


# --- the database step --------------------------------------------------------------------------------------


def test_the_database_step_starts_postgresql_when_there_is_none_and_creates_login_roles_that_cannot_log_in(
    server: Server,
) -> None:
    server.forget("postgres_image")
    server.forget("roles")
    result = server.database()
    assert result.returncode == 0, result.stderr
    assert f"PostgreSQL {POSTGRES} started" in result.stdout
    calls = server.calls()
    started = index_of(calls, "up", "--wait", "postgres", f"[POSTGRES_IMAGE={POSTGRES}]")
    assert "--force-recreate" not in calls[started] and not any("pg_dump" in call for call in calls), calls
    assert server.read("postgres_image") == POSTGRES
    assert server.read("roles").split() == list(ROLES.values())
    assert all(index_of(calls, "psql:", "create", role) > started for role in ROLES.values())
    assert server.logins() == {}, "a login role was created able to log in"


def test_the_database_step_leaves_a_running_postgresql_of_the_declared_image_and_the_live_login_alone(
    server: Server,
) -> None:
    server.live("v1.0.0", OLD)
    result = server.database()
    assert result.returncode == 0, result.stderr
    assert f"PostgreSQL {POSTGRES} runs" in result.stdout
    calls = server.calls()
    assert not any(" up " in call and "--no-recreate" not in call.split() for call in calls), calls
    assert not any("pg_dump" in call for call in calls), calls
    assert server.read("roles").split() == list(ROLES.values()), "a login role was created twice"
    assert server.logins() == {ROLES["blue"]: PASSWORD}, "the live colour can no longer log in"


def test_the_database_step_starts_a_stopped_postgresql_as_it_was_without_recreating_it(server: Server) -> None:
    server.fact("postgres_stopped", "")
    result = server.database()
    assert result.returncode == 0, result.stderr
    calls = server.calls()
    started = index_of(calls, "up", "--no-recreate", "postgres", f"[POSTGRES_IMAGE={POSTGRES}]")
    assert started < index_of(calls, "psql:", "create"), calls
    assert not any("--force-recreate" in call or "pg_dump" in call for call in calls), calls
    assert not (server.state / "postgres_stopped").exists()


def test_the_same_postgresql_bytes_under_another_name_are_no_change(server: Server) -> None:
    pinned = f"{POSTGRES}@sha256:{'f' * 64}"
    server.fact("image_ids", f"{POSTGRES} sha256:{'1' * 64}\n{pinned} sha256:{'1' * 64}\n")
    result = server.database(pinned)
    assert result.returncode == 0, result.stderr
    assert f"PostgreSQL {pinned} runs" in result.stdout
    assert not any("--force-recreate" in call or "pg_dump" in call for call in server.calls()), server.calls()


def test_other_postgresql_bytes_under_the_same_name_are_a_change(server: Server) -> None:
    # The tag was pulled again and names other bytes than those the container runs.
    server.fact("image_ids", f"{POSTGRES} sha256:{'2' * 64}\n")
    server.fact("postgres_image_id", f"sha256:{'1' * 64}")
    result = server.database()
    assert result.returncode == 0, result.stderr
    assert f"PostgreSQL changes from {POSTGRES} to {POSTGRES}: backing up first" in result.stdout
    assert server.read("postgres_image_id") == f"sha256:{'2' * 64}"


def test_a_new_postgresql_image_replaces_the_old_one_only_after_a_backup_and_the_step_says_how_long_it_was_down(
    server: Server,
) -> None:
    server.fact("postgres_image", "postgres:15-alpine")
    result = server.database()
    assert result.returncode == 0, result.stderr
    assert f"PostgreSQL changes from postgres:15-alpine to {POSTGRES}: backing up first" in result.stdout
    assert re.search(rf"PostgreSQL {POSTGRES} serves; the database was down for \d+\.\d s", result.stdout)
    backup = Path(result.stdout.split("backup=")[1].split()[0])
    assert backup.name.endswith("-before-postgres-change.dump") and backup.read_text() == "PGDMP-custom-format-dump"
    calls = server.calls()
    replaced = index_of(calls, "up", "--force-recreate", "postgres", f"[POSTGRES_IMAGE={POSTGRES}]")
    assert index_of(calls, "pg_restore") < replaced < index_of(calls, "psql:", "create"), calls
    assert server.read("postgres_image") == POSTGRES


def test_a_new_postgresql_image_that_never_turns_healthy_is_replaced_by_the_old_one_again(server: Server) -> None:
    server.fact("postgres_unhealthy", "postgres:17-alpine\n")
    result = server.database("postgres:17-alpine")
    assert result.returncode == 1
    assert f"PostgreSQL postgres:17-alpine was not installed; putting {POSTGRES} back" in result.stderr
    assert f"PostgreSQL {POSTGRES} serves again; postgres:17-alpine was not installed" in result.stderr
    assert server.read("postgres_image") == POSTGRES
    calls = server.calls()
    put_back = last_index_of(calls, "up", "--force-recreate", "postgres", f"[POSTGRES_IMAGE={POSTGRES}]")
    assert index_of(calls, "up", "postgres", "[POSTGRES_IMAGE=postgres:17-alpine]") < put_back, calls
    assert list((server.app_dir / "backups").glob("*-before-postgres-change.dump")), "no backup was taken first"
    assert not server.locked(), "a failed database step kept the release lock"


def test_a_postgresql_change_cut_off_by_dockerd_restarting_puts_the_old_one_back_once_dockerd_answers(
    server: Server,
) -> None:
    # dockerd starts again no container it was replacing when it went down: the new one stays created, never run.
    server.fact("dockerd_restarts_on", "postgres:17-alpine")
    result = server.database("postgres:17-alpine")
    assert result.returncode == 1
    assert f"PostgreSQL {POSTGRES} serves again; postgres:17-alpine was not installed" in result.stderr
    assert server.read("postgres_image") == POSTGRES and not (server.state / "postgres_stopped").exists()
    calls = server.calls()
    put_back = last_index_of(calls, "up", "--force-recreate", "postgres", f"[POSTGRES_IMAGE={POSTGRES}]")
    assert sum(call.startswith("info") for call in calls[:put_back]) == 3, "it did not wait for dockerd"
    assert not server.locked()


def test_a_stopped_postgresql_is_started_as_it_was_so_that_a_change_is_backed_up_first(server: Server) -> None:
    server.fact("postgres_stopped", "")
    result = server.database("postgres:17-alpine")
    assert result.returncode == 0, result.stderr
    assert f"PostgreSQL {POSTGRES} did not run: started it as it was" in result.stdout
    calls = server.calls()
    started = index_of(calls, "up", "--no-recreate", "postgres", f"[POSTGRES_IMAGE={POSTGRES}]")
    assert started < index_of(calls, "pg_restore") < index_of(calls, "up", "--force-recreate", "postgres"), calls
    assert server.read("postgres_image") == "postgres:17-alpine"


def test_a_postgresql_a_replace_left_created_from_another_image_is_started_with_the_one_last_installed(
    server: Server,
) -> None:
    # A replace cut off (dockerd restarted, or the step was killed) before its undo: the container is the new one,
    # created and never started, while postgres.env names the one the step last installed.
    server.fact("postgres_image", "postgres:17-alpine")
    server.fact("postgres_stopped", "")
    (server.app_dir / "postgres.env").write_text(f"POSTGRES_IMAGE={POSTGRES}\n")
    result = server.database()
    assert result.returncode == 0, result.stderr
    assert f"started {POSTGRES}, the image last installed" in result.stdout
    assert f"PostgreSQL {POSTGRES} runs" in result.stdout
    assert server.read("postgres_image") == POSTGRES and not (server.state / "postgres_stopped").exists()
    assert not any("pg_dump" in call for call in server.calls()), "the image last installed needs no backup first"


FINGERPRINT = "0123456789abcdef"


def database_with_backups(server: Server, image: str = POSTGRES) -> subprocess.CompletedProcess[str]:
    """The database step of a stage that declares backups, with its pgBackRest config bundle on stdin."""
    bundle = server.state / "bundle"
    if not bundle.exists():
        bundle.mkdir()
        for name in ("pgbackrest.conf", "schedule.env"):
            (bundle / name).write_text(f"{name}\n")
    tarred = subprocess.run(["tar", "-c", "-C", str(bundle), "."], capture_output=True, check=True).stdout
    config = base64.b64encode(tarred).decode()
    return server.step("database.sh", None, stdin=config, postgres_image=image, backups=FINGERPRINT)


def backup_calls(server: Server) -> list[str]:
    return [call for call in server.calls() if call.startswith(("backup config:", "pgbackrest:", "scheduler:", "run "))]


def test_archiving_is_installed_and_checked_once_then_a_release_that_changes_none_of_it_skips_both(
    server: Server,
) -> None:
    """Installing pgBackRest's config and checking the repository cost seconds; what was checked needs no check."""
    server.fact("postgres_label", FINGERPRINT)
    first = database_with_backups(server)
    assert first.returncode == 0, first.stderr
    assert "every WAL segment is archived to the backup repository" in first.stdout
    installed = backup_calls(server)
    assert [call for call in installed if call.startswith("pgbackrest:")] == [
        "pgbackrest: stanza-create",
        "pgbackrest: check",
    ]
    assert not any(call.startswith("run ") for call in installed), "the running image was checked for pgBackRest again"
    assert stat.S_IMODE((server.app_dir / ".backups-checked").stat().st_mode) == 0o600
    (server.state / "calls.log").write_text("")
    again = database_with_backups(server)
    assert again.returncode == 0, again.stderr
    assert f"with the config last checked (stanza {PROJECT}); not checked again" in again.stdout
    assert backup_calls(server) == []
    # A scheduler that does not run (stopped by hand) is started again.
    (server.state / "scheduler_runs").unlink()
    assert database_with_backups(server).returncode == 0
    assert backup_calls(server) == ["scheduler: started"]


def test_a_new_compose_file_or_postgresql_is_installed_and_checked_again(server: Server) -> None:
    server.fact("postgres_label", FINGERPRINT)
    assert database_with_backups(server).returncode == 0
    with (server.app_dir / "docker-compose.yml").open("a") as compose:
        compose.write("# the scheduler's definition changed\n")
    (server.state / "calls.log").write_text("")
    again = database_with_backups(server)
    assert again.returncode == 0, again.stderr
    assert "pgbackrest: check" in backup_calls(server) and "not checked again" not in again.stdout
    # Not yet archiving as declared: PostgreSQL is recreated, from an image checked for pgBackRest first.
    server.fact("postgres_label", "")
    (server.state / "calls.log").write_text("")
    recreated = database_with_backups(server)
    assert recreated.returncode == 0, recreated.stderr
    calls = backup_calls(server)
    assert calls[0].startswith("run --rm --entrypoint pgbackrest") and "pgbackrest: check" in calls, calls


def scanned(tmp_path: Path, bin_dir: Path, info: str, status: str = "") -> str:
    """The scheduler's status file after `scan` read a repository whose `pgbackrest info` says `info`."""
    (tmp_path / "status.env").write_text(status)
    script = (
        f"set -euo pipefail; source {bin_dir}/lib/backup-job.sh; BACKUP_STATUS_DIR=$1 listed=$2; "
        'job_pgbackrest() { printf "%s" "$listed"; }; scan; echo "FULL_AT=$FULL_AT NEWEST_AT=$NEWEST_AT"'
    )
    done = bash(bin_dir, script, str(tmp_path), info)
    assert done.returncode == 0, done.stderr
    return done.stdout + (tmp_path / "status.env").read_text()


def test_the_scheduler_says_no_base_backup_until_the_first_one_has_ended(tmp_path: Path, bin_dir: Path) -> None:
    """Before the first full backup ends, `pgbackrest info` lists none: the status said a blank newest backup, which
    `status` printed as one (stop 28's fresh run)."""
    empty = "stanza: kametrix\n    status: error (no valid backups)\n"
    said = scanned(tmp_path, bin_dir, empty, status="NEWEST_BACKUP=20261201-010000F 2026-12-01T01:00:00Z\n")
    assert "FULL_AT=0 NEWEST_AT=0" in said and "NEWEST_BACKUP=\n" in said, said
    listed = (
        "stanza: kametrix\n    status: ok\n\n        full backup: 20261203-185900F\n"
        "            timestamp start/stop: 2026-12-03 18:59:00+00 / 2026-12-03 18:59:30+00\n"
    )
    said = scanned(tmp_path, bin_dir, listed)
    assert "NEWEST_BACKUP=20261203-185900F 2026-12-03T18:59:30Z" in said and "NEWEST_AT=0" not in said, said


def test_an_image_without_pgbackrest_is_refused_before_anything_changes(server: Server) -> None:
    server.fact("postgres_label", FINGERPRINT)
    server.fact("no_pgbackrest", "postgres:17-alpine\n")
    refused = database_with_backups(server, "postgres:17-alpine")
    assert refused.returncode == 1 and "has no pgBackRest" in refused.stderr, refused.stderr
    assert server.read("postgres_image") == POSTGRES and not any(" up " in call for call in server.calls())


def test_a_postgresql_change_whose_backup_fails_changes_nothing(server: Server) -> None:
    server.fact("dump", "")
    result = server.database("postgres:17-alpine")
    assert result.returncode == 1 and "pg_dump wrote an empty backup" in result.stderr
    assert not any(" up " in call for call in server.calls()), server.calls()
    assert server.read("postgres_image") == POSTGRES and not server.locked()


@pytest.mark.parametrize("step", ["backup", "migrate"])
def test_backup_and_migrate_wait_for_postgresql_and_never_start_or_recreate_it(server: Server, step: str) -> None:
    server.fact("postgres_ready_after", "3")
    server.fact("pending_status", "0")
    result = server.backup(mode="before-migrations") if step == "backup" else server.migrate()
    assert result.returncode == 0, result.stderr
    calls = server.calls()
    assert sum("pg_isready" in call for call in calls) == 4, calls
    assert not any(" up " in call or " stop " in call for call in calls), calls


def test_migrations_never_run_while_postgresql_is_not_there_and_the_step_says_which_step_starts_it(
    server: Server,
) -> None:
    server.forget("postgres_image")
    result = server.migrate()
    assert result.returncode == 1
    assert "PostgreSQL of kametrix does not accept connections (the database step starts it" in result.stderr
    calls = server.calls()
    assert not any(" up " in call or " run " in call for call in calls), calls
    assert not (server.app_dir / "migrations.log").exists() and not server.locked()


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
    assert server.file("proxy/live.conf") == server.file("proxy/green.conf")
    assert server.mode("proxy/live.conf") == 0o644, "nginx cannot read it"
    record = server.record()
    assert record["VERSION"] == "v2.0.0" and record["APP_IMAGE"] == NEW and record["PREVIOUS_IMAGE"] == OLD
    assert (record["LIVE_COLOUR"], record["GREEN_IMAGE"], record["BLUE_IMAGE"]) == ("green", NEW, OLD)
    assert server.history() == ["v1.0.0", "v2.0.0"]
    assert not server.locked(), "a finished release kept the lock"


def test_a_booting_colour_is_asked_again_without_spending_the_gates_attempts(server: Server) -> None:
    """Five attempts are the gate (server_bundle); a colour that does not answer yet has used none of them."""
    server.live("v1.0.0", OLD)
    server.fact("listening_after", f"{NEW} 8\n")
    server.fact("healthy_after", f"{NEW} 1\n")
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 0, result.stderr
    assert "healthy on green after 1 attempt(s)" in result.stdout
    assert server.read("proxy_colour") == "green"


def test_a_colour_that_never_answers_fails_the_gate_within_its_attempts_time(server: Server) -> None:
    server.live("v1.0.0", OLD)
    server.fact("listening_after", f"{NEW} 1000000\n")
    server.fact("healthy_after", f"{NEW} 1\n")
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 1
    assert "green did not answer within 5s" in result.stderr, result.stderr
    assert server.read("proxy_colour") == "blue" and server.read("colour_green") == "", "the colour was left running"


def test_a_release_that_never_turns_healthy_is_never_switched_to_and_its_colour_cannot_log_in(server: Server) -> None:
    server.live("v2.0.0", OLD, previous="v1.0.0", previous_image=NEWER)
    record, history = server.record(), server.history()
    result = server.up("v3.0.0", NEW)
    assert result.returncode == 1
    assert "not healthy on green after 5 attempts" in result.stderr
    assert f"release v3.0.0 was not switched to (see above); v2.0.0 ({OLD}) keeps serving" in result.stderr
    calls = server.calls()
    assert "proxy: names green" not in calls, "the proxy sent traffic to the unhealthy colour"
    assert server.read("proxy_colour") == "blue" and server.read("colour_blue") == OLD, "the live colour moved"
    assert server.file("proxy/live.conf") == server.file("proxy/blue.conf")
    assert server.read("colour_green") == "", "the unhealthy colour was left running"
    assert index_of(calls, "stop", "app-green") < index_of(calls, "psql:", "nologin", ROLES["green"]), calls
    assert server.logins() == {ROLES["blue"]: PASSWORD}
    assert (server.record(), server.history()) == (record, history), "the failed release was recorded"
    assert not server.locked(), "a failed release kept the lock"


def test_a_failed_first_release_says_nothing_serves_and_starts_no_proxy(server: Server) -> None:
    result = server.up("v1.0.0", NEW)
    assert result.returncode == 1
    assert "no earlier version is recorded, so nothing serves yet" in result.stderr
    assert server.read("colour_blue") == "" and server.read("proxy_colour") == ""
    assert not any("proxy" in call.split() for call in server.calls() if " up " in call), server.calls()
    assert server.logins() == {} and not server.locked()


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
    assert server.record()["PREVIOUS_VERSION"] == "v1.0.0" and server.history() == ["v1.0.0", "v2.0.0"]


def switch_behind_a_proxy_that_does_not_answer(server: Server) -> subprocess.CompletedProcess[str]:
    server.live("v1.0.0", OLD)
    server.fact("proxy_slow", "yes")
    server.fact("healthy_after", f"{NEW} 1\n")
    return server.up("v2.0.0", NEW)


def test_a_proxy_that_does_not_answer_leaves_the_recorded_live_colour_running_and_live(server: Server) -> None:
    result = switch_behind_a_proxy_that_does_not_answer(server)
    assert result.returncode == 1, result.stdout
    assert "the proxy did not switch to green within 10s; the switch is undone" in result.stderr
    calls = server.calls()
    assert server.read("colour_blue") == OLD, calls
    assert (server.record()["VERSION"], server.record()["LIVE_COLOUR"]) == ("v1.0.0", "blue")
    assert index_of(calls, "up", "app-green") < index_of(calls, "stop", "app-green")
    assert server.logins() == {ROLES["blue"]: PASSWORD} and not server.locked()


def test_a_proxy_that_does_not_answer_keeps_sending_traffic_to_the_recorded_live_colour(server: Server) -> None:
    assert switch_behind_a_proxy_that_does_not_answer(server).returncode == 1
    assert server.file("proxy/live.conf") == server.file("proxy/blue.conf"), "live.conf no longer names blue"
    assert server.read("proxy_colour") == "blue", "the proxy in front of the live colour was stopped"


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


def test_a_proxy_slow_to_answer_as_a_switch_starts_still_lets_the_old_colour_drain(server: Server) -> None:
    server.live("v1.0.0", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    server.fact("proxy_slow", "1")
    server.fact("draining", "1")
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 0, result.stderr
    calls = server.calls()
    drain_checks = [i for i, call in enumerate(calls) if "shutting" in call]
    assert drain_checks and drain_checks[-1] < index_of(calls, "stop", "app-blue"), "the old colour was not drained"
    assert "did not finish" not in result.stderr, result.stderr


def test_after_a_switch_killed_past_its_reload_a_slow_proxy_is_asked_again_and_its_colour_is_never_recreated(
    server: Server,
) -> None:
    """A switch to v2.0.0 on green was killed outright after the proxy reloaded, before the record said so: green
    serves, the record says blue. Going back to v1.0.0 while the proxy is slow to answer must not take the record's
    word and recreate green under the traffic it takes (issue 22, kill-anywhere seed 23 episode 3)."""
    server.live("v1.0.0", OLD)
    server.fact("colour_green", NEW)
    (server.app_dir / ".env.green").write_text(server.file(".env"))
    (server.app_dir / "proxy" / "live.conf").write_text(server.file("proxy/green.conf"))
    server.fact("proxy_colour", "green")
    server.fact("healthy_after", f"{OLD} 1\n")
    # up.sh asks once whether v1.0.0 is already live; the switch's first two asks time out too.
    server.fact("proxy_slow", "3")
    result = server.up("v1.0.0", OLD)
    assert result.returncode == 0, result.stderr
    calls = server.calls()
    assert not [call for call in calls if {"up", "app-green"} <= set(call.split())], "green was recreated"
    assert index_of(calls, "up", "app-blue") < index_of(calls, "stop", "app-green"), calls
    assert server.read("proxy_colour") == "blue" and server.record()["LIVE_COLOUR"] == "blue"
    assert server.read("colour_blue") == OLD and server.read("colour_green") == ""


def test_a_switch_whose_proxy_reload_fails_is_undone_completely(server: Server) -> None:
    server.live("v1.0.0", OLD)
    (server.app_dir / ".env").write_text(dot_env(FEATURE="on"))
    record, history = server.record(), server.history()
    server.fact("healthy_after", f"{NEW} 1\n")
    server.fact("reload_ignored", "yes")
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 1
    assert "the proxy did not switch to green within 10s; the switch is undone" in result.stderr
    assert "a reason the proxy logged" in result.stderr
    assert f"release v2.0.0 was not switched to (see above); v1.0.0 ({OLD}) keeps serving" in result.stderr
    # Proxy config, live release and running colours all name the version that kept serving: a restart of the
    # proxy, which reads live.conf, still sends traffic to it.
    assert server.file("proxy/live.conf") == server.file("proxy/blue.conf")
    assert sorted(path.name for path in (server.app_dir / "proxy").iterdir()) == [
        "blue.conf",
        "green.conf",
        "live.conf",
        "maintenance.conf",
        "nginx.conf",
    ]
    assert (server.record(), server.history()) == (record, history)
    assert (server.read("proxy_colour"), server.read("colour_blue"), server.read("colour_green")) == ("blue", OLD, "")
    assert server.logins() == {ROLES["blue"]: PASSWORD}, "the new colour may still log in"
    assert server.file(".env.blue") == dot_env(), "the live colour's settings changed"
    assert server.file(".env") == dot_env(FEATURE="on"), "the declared settings are lost for the next run"
    assert not server.locked()


def test_a_switch_killed_outright_is_put_back_in_line_with_the_proxy_before_the_next_one_starts_a_colour(
    server: Server,
) -> None:
    server.live("v1.0.0", OLD)
    # What a switch killed outright (no undo ran) between installing live.conf and reloading leaves behind.
    (server.app_dir / "proxy" / "live.conf").write_text(server.file("proxy/green.conf"))
    server.fact("healthy_after", f"{NEW} 1\n")
    server.fact("hold_start", "yes")
    step = server.start_up("v2.0.0", NEW, subprocess.DEVNULL, subprocess.DEVNULL)
    try:
        wait_for(server.state / "held")
        assert server.file("proxy/live.conf") == server.file("proxy/blue.conf"), (
            "a proxy restarted now would send traffic to a colour that is not healthy yet"
        )
    finally:
        server.fact("resume", "")
        assert step.wait(timeout=60) == 0
    assert server.read("proxy_colour") == "green"


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


def test_pruning_keeps_the_newest_images_and_never_the_live_or_previous_one(server: Server) -> None:
    server.live("v5.0.0", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    listed = [NEW, MIGRATE, *(f"registry.example/kametrix@sha256:{str(i) * 64}" for i in range(1, 6)), OLD]
    server.fact("images", "".join(f"{image}\n" for image in listed))
    result = server.up("v6.0.0", NEW)
    assert result.returncode == 0, result.stderr
    removed = server.read("removed_images").split()
    assert removed == [f"registry.example/kametrix@sha256:{str(i) * 64}" for i in range(2, 6)]
    assert OLD not in removed and NEW not in removed


def test_pruning_never_removes_the_previous_versions_migrate_image(server: Server) -> None:
    previous_migrate = "registry.example/kametrix@sha256:" + "d" * 64
    server.live("v5.0.0", OLD, migrate=previous_migrate)
    server.setting("IMAGES_TO_KEEP", "2")
    server.fact("healthy_after", f"{NEW} 1\n")
    server.fact("images", "".join(f"{image}\n" for image in (NEW, MIGRATE, OLD, previous_migrate)))
    result = server.up("v6.0.0", NEW)
    assert result.returncode == 0, result.stderr
    assert server.read("removed_images") == "", "an image of the previous version was pruned"
    assert server.record()["PREVIOUS_MIGRATE_IMAGE"] == previous_migrate


# --- the point of no return, and an update run again ----------------------------------------------------------


def test_a_switch_that_fails_after_the_proxy_named_the_new_colour_leaves_it_live_and_says_so(server: Server) -> None:
    server.live("v1.0.0", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    server.fact("fail_stop", "app-blue\n")
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 1
    assert f"release v2.0.0 serves, but its switch did not finish (see above): v2.0.0 ({NEW}) is live" in result.stderr
    assert "keeps serving" not in result.stderr and "undoing" not in result.stderr
    record = server.record()
    assert (record["VERSION"], record["LIVE_COLOUR"], record["PREVIOUS_VERSION"]) == ("v2.0.0", "green", "v1.0.0")
    assert server.history() == ["v1.0.0", "v2.0.0"]
    assert server.file("proxy/live.conf") == server.file("proxy/green.conf")
    assert (server.read("proxy_colour"), server.read("colour_green")) == ("green", NEW)
    assert ROLES["green"] in server.logins(), "the colour that serves cannot log in"
    assert not server.locked()
    # Run again, the update has nothing to switch: it stops what the switch left running.
    server.forget("fail_stop")
    again = server.up("v2.0.0", NEW)
    assert again.returncode == 0 and "nothing to switch" in again.stdout, again.stderr
    assert server.read("colour_blue") == "" and server.logins() == {ROLES["green"]: PASSWORD}


def test_an_update_run_again_after_its_switch_has_nothing_to_switch_and_only_ends_the_release(server: Server) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    # A colour a killed switch left running, able to log in.
    server.fact("colour_green", OLD)
    server.fact(f"login_{ROLES['green']}", PASSWORD)
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 0, result.stderr
    assert "v2.0.0 is live on blue with the current settings and files: nothing to switch" in result.stdout
    calls = server.calls()
    assert not any(" kill " in call or re.search(r" up .*app-", call) for call in calls), calls
    assert "stopping app-green: a switch that did not finish left it running" in result.stderr
    assert server.read("colour_green") == "" and server.logins() == {ROLES["blue"]: PASSWORD}
    assert "previous=v1.0.0" in result.stdout and server.history() == ["v1.0.0", "v2.0.0"]
    assert not server.locked()


@pytest.mark.parametrize("change", ["settings", "files", "its colour stopped", "the proxy names the other colour"])
def test_a_live_release_is_switched_again_unless_it_runs_as_declared(server: Server, change: str) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    if change == "settings":
        (server.app_dir / ".env").write_text(dot_env(FEATURE="on"))
    elif change == "files":
        (server.app_dir / ".files-digest").write_text("d" * 64 + "\n")
    elif change == "its colour stopped":
        server.fact("colour_blue", "")
    else:
        server.fact("proxy_colour", "green")
        server.fact("colour_green", OLD)
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 0, result.stderr
    assert "nothing to switch" not in result.stdout and "switched to" in result.stdout, result.stdout
    live = server.record()["LIVE_COLOUR"]
    assert server.read("proxy_colour") == live and server.read(f"colour_{live}") == NEW
    assert server.record().get("FILES_DIGEST", "") == server.file(".files-digest").strip()
    assert server.history() == ["v1.0.0", "v2.0.0"]
    assert "nothing to switch" in server.up("v2.0.0", NEW).stdout, "the update does not converge"


# --- what served before: the history ------------------------------------------------------------------------


def test_a_rollback_leaves_no_previous_version_so_previous_never_toggles(server: Server) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    server.fact("healthy_after", f"{OLD} 1\n")
    result = server.up("v1.0.0", OLD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("previous=\n"), result.stdout
    assert "PREVIOUS_VERSION" not in server.record() and server.history() == ["v1.0.0"]
    back = server.switch_back()
    assert back.returncode == 1 and "no previous version with both its images is recorded" in back.stderr
    assert server.record()["VERSION"] == "v1.0.0", "switching back after a rollback went forward again"


def test_switch_back_run_again_goes_further_back_and_never_forward(server: Server) -> None:
    server.live("v3.0.0", NEWER, previous="v2.0.0", previous_image=NEW)
    (server.app_dir / "releases.log").write_text(
        "".join(
            f"{version} {image} {MIGRATE}\n" for version, image in (("v1.0.0", OLD), ("v2.0.0", NEW), ("v3.0.0", NEWER))
        )
    )
    server.fact("images_present", f"{OLD}\n{NEW}\n{NEWER}\n")
    server.fact("healthy_after", f"{OLD} 1\n{NEW} 1\n")
    first = server.switch_back()
    assert first.returncode == 0, first.stderr
    assert (server.record()["VERSION"], server.record()["PREVIOUS_VERSION"]) == ("v2.0.0", "v1.0.0")
    assert server.history() == ["v1.0.0", "v2.0.0"]
    second = server.switch_back()
    assert second.returncode == 0, second.stderr
    assert server.record()["VERSION"] == "v1.0.0" and "PREVIOUS_VERSION" not in server.record()
    assert server.history() == ["v1.0.0"] and server.read(f"colour_{server.record()['LIVE_COLOUR']}") == OLD
    third = server.switch_back()
    assert third.returncode == 1 and "v1.0.0 keeps serving" in third.stderr


def test_a_server_released_before_the_history_existed_starts_it_from_its_live_release(server: Server) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    (server.app_dir / "releases.log").unlink()
    server.fact("healthy_after", f"{NEWER} 1\n")
    result = server.up("v3.0.0", NEWER)
    assert result.returncode == 0, result.stderr
    assert server.history() == ["v1.0.0", "v2.0.0", "v3.0.0"] and "previous=v2.0.0" in result.stdout


# --- login roles ----------------------------------------------------------------------------------------------


def test_a_colour_may_log_in_only_while_it_runs_and_with_the_password_of_its_own_settings(server: Server) -> None:
    server.live("v1.0.0", OLD)
    (server.app_dir / ".env").write_text(dot_env(ROTATED_PASSWORD))
    server.fact("healthy_after", f"{NEW} 1\n")
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 0, result.stderr
    calls = server.calls()
    assert index_of(calls, "psql:", "login", ROLES["green"]) < index_of(calls, "up", "app-green"), calls
    assert index_of(calls, "stop", "app-blue") < index_of(calls, "psql:", "nologin", ROLES["blue"]), calls
    assert server.logins() == {ROLES["green"]: ROTATED_PASSWORD}
    assert server.file(".env.green") == dot_env(ROTATED_PASSWORD) and server.mode(".env.green") == 0o600
    assert server.read("env_green") == dot_env(ROTATED_PASSWORD), "green did not start with its own copy"


def test_a_login_password_never_appears_on_a_command_line_or_in_a_steps_output(server: Server) -> None:
    server.fact("healthy_after", f"{NEW} 1\n")
    steps = [server.backup(mode="before-migrations"), server.migrate(), server.up("v2.0.0", NEW)]
    assert [step.returncode for step in steps] == [0, 0, 0], [step.stderr for step in steps]
    assert server.logins() == {ROLES["blue"]: PASSWORD}, "the password did not reach the database"
    calls = server.read("calls.log")
    assert PASSWORD not in calls, "a password was on docker's command line"
    passed = re.findall(r" --env (\S+) ", calls)
    assert passed == ["KAMETRIX_LOGIN_PASSWORD"] * 3, passed
    assert not any(PASSWORD in step.stdout + step.stderr for step in steps), "a step printed the password"


@pytest.mark.parametrize("run", ["migrations applied", "migrations failed", "the backup's migrate status"])
def test_the_migrations_role_may_log_in_only_while_migrations_run(server: Server, run: str) -> None:
    server.fact("migrate_status", "1" if run == "migrations failed" else "0")
    result = server.backup(mode="before-migrations") if "backup" in run else server.migrate()
    assert result.returncode == (1 if run == "migrations failed" else 0), result.stderr
    calls = server.calls()
    allowed, retired = (
        index_of(calls, "psql:", "login", ROLES["migrate"]),
        index_of(calls, "psql:", "nologin", ROLES["migrate"]),
    )
    assert allowed < index_of(calls, "run", "migrate") < retired, calls
    assert server.logins() == {}, "the migrations' role may still log in"


# --- settings: one cutover per update, each colour with its own copy ---------------------------------------


def test_env_installs_the_settings_whole_while_the_live_colour_keeps_its_own_copy_and_nothing_moves(
    server: Server,
) -> None:
    server.live("v2.0.0", OLD)
    result = server.env(dot_env(FEATURE="on"))
    assert result.returncode == 0, result.stderr
    assert ".env installed: the next cutover starts the app with it" in result.stdout
    assert server.file(".env") == dot_env(FEATURE="on") and server.mode(".env") == 0o600
    assert server.file(".env.blue") == dot_env() and server.mode(".env.blue") == 0o600
    assert sorted(path.name for path in server.app_dir.glob(".env*")) == [".env", ".env.blue"]
    assert server.calls() == [], "env.sh moved traffic"
    assert server.lock()["STEP_STATE"] == "handed-on", "the lock does not pass on to the update's up"


def test_a_settings_only_change_moves_colours_behind_the_gate_once(server: Server) -> None:
    server.live("v2.0.0", OLD)
    server.fact("healthy_after", f"{OLD} 1\n")
    assert server.env(dot_env(FEATURE="on")).returncode == 0
    result = server.up("v2.0.0", OLD)
    assert result.returncode == 0, result.stderr
    assert server.read("env_green") == dot_env(FEATURE="on"), "the idle colour did not start with the new settings"
    assert server.file(".env.green") == dot_env(FEATURE="on") and server.mode(".env.green") == 0o600
    assert (server.read("proxy_colour"), server.read("colour_green"), server.read("colour_blue")) == ("green", OLD, "")
    assert server.file(".env") == dot_env(FEATURE="on") and server.mode(".env") == 0o600
    assert not any(path.name.startswith((".env.next", ".env.previous")) for path in server.app_dir.iterdir())
    assert not server.locked()


def test_settings_only_the_new_version_accepts_start_with_it_in_one_cutover(server: Server) -> None:
    server.live("v1.0.0", OLD)
    server.fact("healthy_after", f"{OLD} 1\n{NEW} 1\n")
    server.fact("rejects", f"{OLD} FEATURE=\n")
    assert server.env(dot_env(FEATURE="on")).returncode == 0
    result = server.up("v2.0.0", NEW)
    assert result.returncode == 0, result.stderr
    calls = server.calls()
    starts = [call for call in calls if re.search(r" up .*app-(blue|green) ", call)]
    reloads = [call for call in calls if " kill " in call]
    drains = [call for call in calls if " stop " in call]
    assert (len(starts), len(reloads), len(drains)) == (1, 1, 1), calls
    assert (server.read("colour_green"), server.read("env_green")) == (NEW, dot_env(FEATURE="on"))


def test_settings_that_break_the_live_version_switch_nothing_and_the_live_colour_keeps_its_own(server: Server) -> None:
    server.live("v2.0.0", OLD)
    server.fact("healthy_after", f"{OLD} 1\n")
    server.fact("rejects", f"{OLD} broken\n")
    assert server.env(dot_env(B="broken")).returncode == 0
    result = server.up("v2.0.0", OLD)
    assert result.returncode == 1
    assert (
        "not healthy on green" in result.stderr and "undoing the switch to green: blue keeps serving" in result.stderr
    )
    assert (server.read("proxy_colour"), server.read("colour_blue"), server.read("colour_green")) == ("blue", OLD, "")
    assert server.file(".env.blue") == dot_env() and server.read("env_blue") == dot_env()
    assert "proxy: names green" not in server.calls(), "the proxy sent traffic to the broken settings"
    assert server.logins() == {ROLES["blue"]: PASSWORD} and not server.locked()
    # The stack still declares the new settings: the update's next run tries them again.
    assert server.file(".env") == dot_env(B="broken")


def test_a_failed_switch_of_the_live_release_for_new_settings_says_the_live_colour_keeps_serving(
    server: Server,
) -> None:
    server.live("v2.0.0", OLD)
    (server.app_dir / ".env").write_text(dot_env(FEATURE="on"))
    result = server.up("v2.0.0", OLD)
    assert result.returncode == 1 and "undoing the switch to green: blue keeps serving" in result.stderr
    assert "serves, but its switch did not finish" not in result.stderr, result.stderr
    assert f"v2.0.0 ({OLD}) keeps serving" in result.stderr


def test_an_unchanged_env_restarts_nothing_and_removes_what_the_staging_steps_left(server: Server) -> None:
    server.live("v2.0.0", OLD)
    for leftover in (".env.next", ".env.previous", ".env.next.held"):
        (server.app_dir / leftover).write_text("A='left by the steps before each colour had its own copy'\n")
    result = server.env(dot_env())
    assert result.returncode == 0 and ".env unchanged" in result.stdout
    # Up has nothing to do: the step ends the update, and finds no colour to stop.
    assert [call.split()[:2] for call in server.calls()] == [["ps", "--quiet"]], server.calls()
    assert not server.locked()
    assert sorted(path.name for path in server.app_dir.glob(".env*")) == [".env", ".env.blue"]


def test_before_the_first_release_the_env_is_installed_at_once(server: Server) -> None:
    (server.app_dir / ".env").unlink()
    result = server.env(dot_env())
    assert result.returncode == 0 and ".env installed" in result.stdout
    assert server.file(".env") == dot_env() and server.mode(".env") == 0o600


@pytest.mark.parametrize("stdin", ["", "A='1'\nnot a setting TESTSECRET-x\nB=unquoted\n"])
def test_an_empty_or_malformed_env_changes_nothing_and_is_never_echoed(server: Server, stdin: str) -> None:
    result = server.env(stdin)
    assert result.returncode == 1
    assert ("empty .env" if not stdin else "received other lines (2,3)") in result.stderr
    assert "TESTSECRET" not in result.stderr + result.stdout
    assert server.file(".env") == dot_env()
    assert [path.name for path in server.app_dir.glob(".env*")] == [".env"]
    assert not server.locked()


# --- the end of an update: stray colours, the handover, a dropped connection ----------------------------------


def test_a_step_that_ends_an_update_without_up_stops_a_colour_a_killed_switch_left_running(server: Server) -> None:
    server.live("v1.0.0", OLD)
    server.fact("colour_green", NEW)
    server.fact(f"login_{ROLES['green']}", PASSWORD)
    # The update back to the live release after one killed mid-switch: up has nothing to do, backup ends it.
    result = server.backup(version="v1.0.0", image=OLD, release=release_of("v1.0.0", OLD))
    assert result.returncode == 0, result.stderr
    assert "stopping app-green: a switch that did not finish left it running" in result.stderr
    assert server.read("colour_green") == "" and server.logins() == {ROLES["blue"]: PASSWORD}
    assert (server.read("proxy_colour"), server.read("colour_blue")) == ("blue", OLD)
    assert not server.locked()


def killed_past_its_reload(server: Server) -> str:
    """What a switch of the live release (v1.0.0 on blue) to new settings on green leaves when it is killed outright
    after the proxy's reload, before the record: green serves with the new settings, the record says blue. The
    stack's settings are the old ones again (an update going back); returns them."""
    server.live("v1.0.0", OLD)
    new_settings = dot_env(FEATURE="on")
    (server.app_dir / ".env.green").write_text(new_settings)
    server.fact("colour_green", OLD)
    server.fact("env_green", new_settings)
    server.fact(f"login_{ROLES['green']}", PASSWORD)
    (server.app_dir / "proxy" / "live.conf").write_text(server.file("proxy/green.conf"))
    server.fact("proxy_colour", "green")
    return server.file(".env")


def test_a_step_that_ends_an_update_without_up_never_stops_the_colour_the_proxy_serves_and_hands_on_to_up(
    server: Server,
) -> None:
    """The update going back to the old settings: its env step changes nothing the record knows of, but the proxy
    serves another colour than the record says, so `up` has work; stopping green here failed every request until
    `up` had started blue (kill-anywhere, stop 28's CI)."""
    settings = killed_past_its_reload(server)
    ended = server.env(settings)
    assert ended.returncode == 0, ended.stderr
    assert server.read("colour_green") == OLD, "the colour taking traffic was stopped"
    assert server.lock()["STEP_STATE"] == "handed-on"
    awaited = server.run("release-lock.sh", "--end-update", STACK)
    reason = "the proxy sends traffic to green, not to the live colour blue: a switch did not finish"
    assert f"its last step awaited an up that did not come: {reason}" in awaited.stdout, awaited.stdout


def test_up_after_a_switch_killed_past_its_reload_lets_the_proxy_drain_the_colour_it_recreates(server: Server) -> None:
    """The proxy's old workers may still hold requests on blue, which the killed switch moved traffic away from:
    they end before blue is recreated with the settings going back."""
    settings = killed_past_its_reload(server)
    assert server.env(settings).returncode == 0
    server.fact("healthy_after", f"{OLD} 1\n")
    server.fact("draining", "1")
    result = server.up("v1.0.0", OLD)
    assert result.returncode == 0, result.stderr
    calls = server.calls()
    drain_checks = [i for i, call in enumerate(calls) if "shutting" in call]
    assert drain_checks and drain_checks[0] < index_of(calls, "up", "app-blue"), "blue was recreated undrained"
    assert (server.read("proxy_colour"), server.read("colour_blue"), server.read("colour_green")) == ("blue", OLD, "")
    assert server.record()["LIVE_COLOUR"] == "blue" and server.file(".env.blue") == settings
    assert not server.locked()


def test_a_stray_colour_the_proxy_serves_is_left_running_whatever_the_record_says(server: Server) -> None:
    server.live("v1.0.0", OLD)
    server.fact("colour_green", NEW)
    server.fact("proxy_colour", "green")
    (server.app_dir / "proxy" / "live.conf").write_text(server.file("proxy/green.conf"))
    # Reached by a step's end only when the proxy's answer changes between `up_follows` and this: called directly.
    bin_dir = server.app_dir / "bin"
    libraries = " ".join(f"source {bin_dir}/lib/{name}.sh;" for name in ("live", "compose"))
    script = f"set -euo pipefail; {libraries} use_app_dir {server.app_dir}; read_settings; stop_stray_colours"
    ended = bash(bin_dir, script, env=server.environment())
    assert ended.returncode == 0, ended.stderr
    assert "the proxy sends traffic to it: left running" in ended.stderr and server.read("colour_green") == NEW


def test_a_handover_that_fails_gives_the_lock_back_and_fails_the_step(server: Server, tmp_path: Path) -> None:
    failing = tmp_path / "failing"
    failing.mkdir()
    # The handover rewrites the lock file, and that move alone fails (a full or read-only disk).
    (failing / "mv").write_text(
        '#!/bin/bash\nif [[ "${*: -1}" == */.release-lock ]] && grep -q "^STEP_STATE=handed-on" "${*: -2:1}"; then\n'
        '  echo "mv: Read-only file system" >&2\n  exit 1\nfi\nexec /bin/mv "$@"\n'
    )
    (failing / "mv").chmod(0o755)
    server.path.append(failing)
    result = server.backup()
    assert result.returncode == 1, "a step whose lock could not pass on to up passed for a success"
    assert result.stdout.rstrip().endswith("-v2.0.0.dump"), f"it failed before its handover: {result.stdout}"
    assert not server.locked(), "a failed handover kept the lock"


def test_a_step_that_cannot_stop_a_stray_colour_fails_and_gives_the_lock_back(server: Server) -> None:
    server.live("v1.0.0", OLD)
    server.fact("colour_green", NEW)
    server.fact("fail_stop", "app-green\n")
    result = server.backup(version="v1.0.0", image=OLD, release=release_of("v1.0.0", OLD))
    assert not server.locked()
    assert result.returncode == 1, "the update ended as a success with a colour of an unfinished switch running"


def test_a_step_whose_connection_drops_while_the_new_colour_starts_undoes_the_switch_and_fails(
    server: Server, tmp_path: Path
) -> None:
    """Issue 22, item 1: a dropped SSH session sends no signal; a step only learns of it when it next writes. Were
    SIGPIPE not ignored, that write would kill bash outright: no exit trap, so no undo (the new colour left running,
    able to log in). Now the write fails (EPIPE), `set -e` ends the step, and its exit trap undoes."""
    server.live("v1.0.0", OLD)
    record = server.record()
    server.fact("healthy_after", f"{NEW} 1\n")
    server.fact("hold_start", "yes")
    with (tmp_path / "stderr").open("w") as stderr:
        step = server.start_up("v2.0.0", NEW, subprocess.PIPE, stderr.fileno())
        assert step.stdout is not None
        wait_for(server.state / "held")
        step.stdout.close()  # the session drops: nothing reads what the step writes any more
        server.fact("resume", "")
        status = step.wait(timeout=60)
    errors = (tmp_path / "stderr").read_text()
    assert status == 1, f"exit status {status}: {errors}"
    assert "Broken pipe" in errors and "undoing the switch to green: blue keeps serving" in errors, errors
    assert (server.read("colour_green"), server.read("colour_blue"), server.read("proxy_colour")) == ("", OLD, "blue")
    assert server.logins() == {ROLES["blue"]: PASSWORD}, "the undone colour may still log in"
    assert server.record() == record and not server.locked()


def test_a_step_whose_connection_dropped_before_it_wrote_anything_fails_and_gives_the_lock_back(
    server: Server,
) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    read_end, write_end = os.pipe()
    os.close(read_end)  # nothing reads the step's output: the session is gone
    try:
        step = server.start_up("v2.0.0", NEW, write_end, subprocess.PIPE)
    finally:
        os.close(write_end)
    _, errors = step.communicate(timeout=60)
    assert step.returncode == 1, f"exit status {step.returncode} (141: killed by SIGPIPE, no exit trap ran)"
    assert b"Broken pipe" in errors, errors
    assert not server.locked(), "the release lock outlived the step"


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
    path = Path(result.stdout.split("backup=")[1].strip())
    assert path.read_text() == "PGDMP-custom-format-dump"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(backups.stat().st_mode) == 0o700
    assert server.lock()["RELEASE"] == release_of("v2.0.0", NEW), "backup must hold the release lock"


def test_a_partial_dump_a_killed_backup_left_is_never_kept_as_a_backup(server: Server) -> None:
    backups = server.app_dir / "backups"
    backups.mkdir()
    (backups / "20260101T000000Z-v1.0.0.dump.partial").write_text("PGDMP-cut-off")
    result = server.backup(keep="5")
    assert result.returncode == 0, result.stderr
    assert [path.suffix for path in backups.iterdir()] == [".dump"], list(backups.iterdir())


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
    assert not server.locked(), "a failed step kept the release lock"


def test_a_failed_migration_stops_the_release_with_the_live_version_serving(server: Server) -> None:
    server.live("v2.0.0", OLD)
    server.fact("migrate_status", "1")
    result = server.migrate("v4.0.0", NEW, migrate_image="registry.example/kametrix@sha256:" + "4" * 64)
    assert result.returncode == 1
    assert "migrations of v4.0.0 failed; the live version (v2.0.0) keeps serving" in result.stderr
    assert server.read("colour_blue") == OLD and server.read("proxy_colour") == "blue"
    assert server.logins() == {ROLES["blue"]: PASSWORD}
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
    assert server.calls() == [], server.calls()
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
    assert re.search(r"backed up 1 tables: 52 MB database, 0 MB dump in \d+\.\d s \(\d+ MB/s\)", result.stdout)
    dump = next(call for call in server.calls() if "pg_dump" in call)
    assert "--format=custom" in dump.split() and "--compress=1" in dump.split(), dump


@pytest.mark.parametrize(("mode", "on_rollback"), [("sometimes", "no"), ("always", "maybe")])
def test_backup_refuses_an_unknown_policy(server: Server, mode: str, on_rollback: str) -> None:
    result = server.backup(mode=mode, on_rollback=on_rollback)
    assert result.returncode == 1 and "allowed" in result.stderr and "received" in result.stderr
    assert server.calls() == [] and not server.locked()


# --- the release lock -------------------------------------------------------------------------------------


def test_the_lock_passes_through_every_step_of_one_update_and_ends_with_up(server: Server) -> None:
    """The stage steps name no release (a new version alone runs none of them); the release's first step continues
    the lock they handed on, silently, as the next step of the same update."""
    release = release_of("v2.0.0", NEW)
    server.live("v1.0.0", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    holders = []
    for step in (
        lambda: server.files(note="rendered for v2.0.0"),
        lambda: server.env(dot_env(FEATURE="on")),
        lambda: server.database(),
        lambda: server.backup(release=release),
        lambda: server.migrate("v2.0.0", NEW),
    ):
        result = step()
        assert result.returncode == 0 and "taking over" not in result.stderr, result.stderr
        holders.append(server.lock())
    assert [holder["STEP"] for holder in holders] == ["files", "env", "database", "backup", "migrate"]
    assert [holder["RELEASE"] for holder in holders] == ["", "", "", release, release]
    assert {holder["STACK"] for holder in holders} == {STACK}
    assert len({holder["SINCE"] for holder in holders}) == 1, "the lock's start moved between steps"
    up = server.up("v2.0.0", NEW)
    assert up.returncode == 0, up.stderr
    assert not server.locked()
    assert server.file("docker-compose.yml").endswith("# rendered for v2.0.0\n")
    assert not (server.app_dir / ".files.test").exists(), "the unpacked bundle was left behind"
    assert server.record()["FILES_DIGEST"] == server.file(".files-digest").strip(), "up did not record its files"


def test_a_stage_step_takes_over_a_lock_an_earlier_update_of_its_stack_handed_on_and_says_so(server: Server) -> None:
    """A stage step comes first in an update: a lock a release's step of its stack handed on was left by an earlier
    update, which is over (Pulumi runs one update of a state at a time)."""
    server.live("v1.0.0", OLD)
    assert server.backup(release=release_of("v2.0.0", NEW)).returncode == 0
    files = server.files(note="the next update's files")
    assert files.returncode == 0, files.stderr
    assert f"taking over the release lock of release {release_of('v2.0.0', NEW)}" in files.stderr
    assert "this step comes from a later update of" in files.stderr
    assert server.lock()["RELEASE"] == "" and server.lock()["STEP"] == "files"


def test_a_stage_step_of_another_state_is_refused_a_stage_lock_and_a_failed_one_leaves_it(server: Server) -> None:
    server.live("v1.0.0", OLD)
    assert server.files(note="the other state's files", STACK=ANOTHER_STACK).returncode == 0
    server.setting("STACK", STACK)
    held = server.lock()
    assert held["STACK"] == ANOTHER_STACK and held["STEP_STATE"] == "handed-on"
    refused = server.env(dot_env(FEATURE="on"))
    assert refused.returncode == 1 and "refusing to start the stage step env" in refused.stderr, refused.stderr
    assert f"the stage steps (an update of {ANOTHER_STACK})" in refused.stderr
    assert server.lock() == held, "the other state's lock was touched"


def test_the_files_step_installs_each_file_whole_with_its_mode_and_removes_what_killed_steps_left(
    server: Server,
) -> None:
    leftovers = ["release.env.partial.a1B2c3", ".env.partial.d4E5f6", "proxy/live.conf.partial.g7H8i9"]
    for leftover in leftovers:
        (server.app_dir / leftover).write_text("half-written by a step killed outright\n")
    unpacked = server.app_dir / ".files.k1LLed"
    unpacked.mkdir()
    two_days_ago = time.time() - 2 * 86400
    os.utime(unpacked, (two_days_ago, two_days_ago))
    result = server.files(note="new")
    assert result.returncode == 0, result.stderr
    assert f"installed {len(BUNDLE)} files" in result.stdout
    for path, (content, mode) in BUNDLE.items():
        if path != server_files.COMPOSE_FILE:
            assert (server.app_dir / path).read_bytes() == content, path
        assert server.mode(path) == mode, path
    assert not any((server.app_dir / leftover).exists() for leftover in leftovers), "a partial file was left"
    assert not unpacked.exists() and not (server.app_dir / ".files.test").exists()


def test_the_files_step_leaves_the_files_installed_already_and_puts_back_one_changed_by_hand(server: Server) -> None:
    """The server's files are what counts, not a record of them: one edited or chmodded by hand is installed again."""
    assert server.files().returncode == 0
    script = server.app_dir / "bin" / "up.sh"
    script.write_text("# edited by hand\n")
    settings = server.app_dir / SETTINGS_FILE
    settings.chmod(0o666)
    again = server.files()
    assert again.returncode == 0, again.stderr
    assert f"installed {len(BUNDLE)} files (2 changed)" in again.stdout
    assert script.read_bytes() == BUNDLE["bin/up.sh"][0] and server.mode(SETTINGS_FILE) == 0o644
    assert f"installed {len(BUNDLE)} files (0 changed)" in server.files().stdout


def test_run_time_settings_alone_change_nothing_up_switches_with(server: Server) -> None:
    server.live("v1.0.0", OLD)
    assert server.files().returncode == 0
    digest = server.file(".files-digest").strip()
    assert server.locked(), "the live release never switched with these files, yet the lock did not wait for up"
    # What up then records, as it gives the lock back.
    with (server.app_dir / "release.env").open("a") as record:
        record.write(f"FILES_DIGEST={digest}\n")
    (server.app_dir / ".release-lock").unlink()
    settings = server.files(DRAIN_SECONDS="60", HEALTH_ATTEMPTS="9")
    assert settings.returncode == 0, settings.stderr
    assert "DRAIN_SECONDS=60\n" in server.file(SETTINGS_FILE) and server.file(".files-digest").strip() == digest
    assert not server.locked(), "a change of the run-time settings alone waits for a cutover"
    files = server.files(note="a new compose file")
    assert files.returncode == 0 and server.file(".files-digest").strip() != digest
    assert server.locked(), "new files do not wait for up's cutover"


def test_the_lock_says_which_release_holds_it_which_step_who_runs_it_and_since_when(server: Server) -> None:
    assert server.backup().returncode == 0
    holder = server.lock()
    assert holder["RELEASE"] == release_of("v2.0.0", NEW) and holder["STEP"] == "backup"
    assert re.fullmatch(r"\d+", holder["PID"]) and abs(int(holder["SINCE"]) - time.time()) < 30
    assert holder["BY"].startswith(subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip())
    assert holder["REQUESTED_BY"] == REQUESTER


def test_who_asked_for_a_release_is_checked_before_the_lock_is_touched_even_by_the_files_step(server: Server) -> None:
    compose = server.file("docker-compose.yml")
    result = server.files(note="not to be installed", REQUESTED_BY="alice'; rm -rf /")
    assert result.returncode == 1 and "REQUESTED_BY: allowed a run URL" in result.stderr, result.stderr
    assert not server.locked() and server.file("docker-compose.yml") == compose


# The stage's stack in another state (another backend, a break-glass copy): Pulumi's lock on one state does not
# serialize its updates with those of ours.
ANOTHER_STACK = STACK.replace("@3f1c2a9b0d1e", "@9e8d7c6b5a49")


def hand_on_from_another_stack(server: Server, release: str) -> None:
    """A step of `release` sent by an update of the stack in another state ends well, handing the lock on to its next
    step."""
    server.setting("STACK", ANOTHER_STACK)
    assert server.backup(release=release).returncode == 0
    server.setting("STACK", STACK)
    assert server.lock()["STACK"] == ANOTHER_STACK and server.lock()["STEP_STATE"] == "handed-on"


@pytest.mark.parametrize("script", ["files", "backup"])
def test_another_release_in_progress_is_refused_even_by_the_files_step(server: Server, script: str) -> None:
    hand_on_from_another_stack(server, release_of("v7.0.0", OLD))
    compose = server.file("docker-compose.yml")
    mine = release_of("v8.0.0", NEW)
    result = server.files(note="not to be installed") if script == "files" else server.backup(release=mine)
    assert result.returncode == 1
    holder = f"release {release_of('v7.0.0', OLD)} (an update of {ANOTHER_STACK}) requested by {REQUESTER}"
    assert f"{holder}, step backup (pid " in result.stderr
    refused = "the stage step files" if script == "files" else mine
    assert f"of kametrix is in progress; refusing to start {refused}" in result.stderr
    assert "bin/release-lock.sh" in result.stderr, "the message does not say how to see or free the lock"
    assert server.lock()["RELEASE"] == release_of("v7.0.0", OLD), "the other release lost its lock"
    assert server.file("docker-compose.yml") == compose, "files were installed under another release's lock"


def test_a_step_of_another_release_waits_for_a_running_step_and_is_refused(server: Server) -> None:
    hand_on_from_another_stack(server, release_of("v7.0.0", OLD))
    compose = server.file("docker-compose.yml")
    with server.step_running():
        result = server.files(note="not to be installed")
    assert result.returncode == 1 and "another step has been running for over 1s" in result.stderr
    assert server.file("docker-compose.yml") == compose


def test_a_stale_lock_is_taken_over_and_the_same_release_may_continue(server: Server) -> None:
    hand_on_from_another_stack(server, release_of("v7.0.0", OLD))
    two_hours_ago = time.time() - 7200
    os.utime(server.app_dir / ".release-lock", (two_hours_ago, two_hours_ago))
    taken = server.backup()
    assert taken.returncode == 0 and "taking over the stale release lock" in taken.stderr
    assert server.backup().returncode == 0, "the release's own next step was refused"


def test_a_lock_whose_step_was_killed_outright_is_taken_over_by_the_next_release_at_once(server: Server) -> None:
    """SIGKILL runs no trap: the lock stays in the name of a release whose update got that step's failure and sends
    no further step (issue 22, item 1). The next release, going back, need not wait for the lock to time out."""
    server.live("v1.0.0", OLD)
    server.fact("healthy_after", f"{NEW} 1\n")
    server.fact("hold_start", "yes")
    killed = server.start_up("v2.0.0", NEW, subprocess.DEVNULL, subprocess.DEVNULL)
    wait_for(server.state / "held")
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert server.lock()["STEP_STATE"] == "running" and server.lock()["RELEASE"] == release_of("v2.0.0", NEW)
    shown = server.run("release-lock.sh")
    assert "its step up died without ending, so the next release's step takes the lock over" in shown.stdout
    server.forget("hold_start")
    back = server.backup(version="v1.0.0", release=release_of("v1.0.0", OLD), image=OLD)
    assert back.returncode == 0, back.stderr
    assert f"taking over the release lock of release {release_of('v2.0.0', NEW)}" in back.stderr
    assert "that step died without ending" in back.stderr
    assert not server.locked(), "v1.0.0 still serves: its step had nothing for up to do and gave the lock back"


def test_a_restore_killed_outright_keeps_every_release_out_until_an_operator_frees_the_lock(server: Server) -> None:
    """A restore that died may have left the database half-restored: unlike a release step, its lock is not taken
    over at once, nor continued by a step of the release it was named after."""
    server.live("v1.0.0", OLD)
    live = release_of("v1.0.0", OLD)
    lib = server.app_dir / "bin" / "lib"
    # restore.sh's own acquire, then SIGKILL: no trap runs.
    restore = (
        f"source {lib}/step.sh && source {lib}/lock.sh && source {lib}/live.sh && use_app_dir {server.app_dir} && "
        f"read_settings && PROJECT=kametrix && acquire_release_lock {live} restore restoring && kill -KILL $$"
    )
    killed = subprocess.run(["bash", "-c", restore], env=server.environment(), capture_output=True, check=False)
    assert killed.returncode == -signal.SIGKILL and server.lock()["STEP_STATE"] == "restoring", killed.stderr
    shown = server.run("release-lock.sh")
    assert "no restore runs: one died without ending, and the database may be half-restored" in shown.stdout
    for release, version, image in [(live, "v1.0.0", OLD), (release_of("v2.0.0", NEW), "v2.0.0", NEW)]:
        refused = server.backup(version=version, release=release, image=image)
        assert refused.returncode == 1, refused.stdout
        assert "a restore of kametrix did not end, so the database may be half-restored" in refused.stderr
    assert server.lock()["STEP"] == "restore"
    assert server.run("release-lock.sh", "--free").returncode == 0
    assert server.backup().returncode == 0


def test_a_step_that_fails_before_taking_the_lock_ends_its_release_s_lock_for_the_update_going_back(
    server: Server,
) -> None:
    """The env step took the lock on from files; the database step, declared with backups, finds no pgBackRest
    config on stdin (a connection dropped before it arrived) and fails before it takes the lock. Its update sends no
    further step, so the lock ends with it, and going back to the live release is not refused for
    lockTimeoutMinutes."""
    server.live("v1.0.0", OLD)
    assert server.files(note="v2.0.0's files").returncode == 0
    assert server.env(dot_env()).returncode == 0
    assert server.lock()["STEP_STATE"] == "handed-on"
    refused = server.step("database.sh", None, postgres_image=POSTGRES, backups="0123456789abcdef")
    assert refused.returncode == 1 and "no pgBackRest config came on stdin" in refused.stderr, refused.stderr
    assert not server.locked(), "the failed update's lock was kept"
    back = server.files(note="v1.0.0's files again")
    assert back.returncode == 0, back.stderr


def test_a_step_of_another_release_that_fails_leaves_the_lock_it_never_held(server: Server) -> None:
    held = release_of("v7.0.0", OLD)
    hand_on_from_another_stack(server, held)
    refused = server.env("")
    assert refused.returncode == 1 and server.lock()["RELEASE"] == held


def test_a_lock_another_state_handed_on_to_its_next_step_is_not_taken_over(server: Server) -> None:
    """A step that ended well hands the lock on: its release's next step may still come (its runner works on). A step
    from another state of the stack cannot know that runner is gone, so it is refused until the lock times out."""
    hand_on_from_another_stack(server, release_of("v7.0.0", OLD))
    refused = server.backup(release=release_of("v8.0.0", NEW))
    assert refused.returncode == 1 and "step backup (pid " in refused.stderr and ", handed-on)" in refused.stderr
    assert server.lock()["RELEASE"] == release_of("v7.0.0", OLD)


def test_a_lock_the_stack_handed_on_is_taken_over_at_once_by_its_next_update(server: Server) -> None:
    """An update that dies between two steps (its CLI killed, a step killed before it took the lock, a connection
    dropped after a step's last write) leaves the lock handed on to a step that never comes (issue 22). A step of the
    next update of the same stack and state proves that update over: Pulumi runs one update of a state at a time. So
    going back is not refused for lockTimeoutMinutes, and nothing but that state's next update may take the lock."""
    server.live("v1.0.0", OLD)
    killed = release_of("v2.0.0", NEW)
    assert server.backup(version="v2.0.0", release=killed, image=NEW).returncode == 0
    held = {key: server.lock()[key] for key in ("RELEASE", "STACK", "STEP", "STEP_STATE")}
    assert held == {"RELEASE": killed, "STACK": STACK, "STEP": "backup", "STEP_STATE": "handed-on"}
    shown = server.run("release-lock.sh")
    assert f"a step of the next update of {STACK} takes the lock over" in shown.stdout
    back = server.backup(version="v1.0.0", release=release_of("v1.0.0", OLD), image=OLD)
    assert back.returncode == 0, back.stderr
    assert f"taking over the release lock of release {killed} (an update of {STACK})" in back.stderr
    assert f"this step comes from a later update of {STACK}" in back.stderr
    assert not server.locked(), "v1.0.0 still serves: its step had nothing for up to do and gave the lock back"


def test_the_runner_reads_the_lock_as_fields_and_whether_a_step_runs(server: Server) -> None:
    (server.app_dir / SETTINGS_FILE).rename(server.state / "settings")
    assert server.run("release-lock.sh", "--fields").stdout.splitlines() == [
        "RELEASE=", "STACK=", "STEP=", "STEP_STATE=", "STEP_RUNS=no", "LIVE_RELEASE=", "DATABASE_RUNS="
    ]  # fmt: skip
    (server.state / "settings").rename(server.app_dir / SETTINGS_FILE)
    server.live("v1.0.0", OLD)
    assert server.backup(release=release_of("v7.0.0", OLD)).returncode == 0
    with server.step_running():
        fields = dict(line.split("=", 1) for line in server.run("release-lock.sh", "--fields").stdout.splitlines())
    assert fields == {
        "RELEASE": release_of("v7.0.0", OLD), "STACK": STACK, "STEP": "backup", "STEP_STATE": "handed-on",
        "STEP_RUNS": "yes", "LIVE_RELEASE": release_of("v1.0.0", OLD), "DATABASE_RUNS": "yes",
    }  # fmt: skip


def test_the_runner_learns_that_postgresql_does_not_run_which_only_the_database_step_starts(server: Server) -> None:
    """A release runs no stage step: the runner asks whether PostgreSQL runs, to run the database step again."""
    server.fact("postgres_stopped", "")
    fields = dict(line.split("=", 1) for line in server.run("release-lock.sh", "--fields").stdout.splitlines())
    assert fields["DATABASE_RUNS"] == "no"
    server.setting("PROJECT", "Not A Project")
    fields = dict(line.split("=", 1) for line in server.run("release-lock.sh", "--fields").stdout.splitlines())
    assert fields["DATABASE_RUNS"] == "" and fields["STEP_RUNS"] == "no", "bad settings hid the lock"


def test_an_update_over_gives_back_the_lock_it_left_and_says_why_up_was_awaited(server: Server) -> None:
    """An update whose last step handed the lock on to an `up` that the stack did not run (the server saw work for
    `up` that the stack's inputs did not) leaves it held at rest: the runner, once the update is over, gives it back.
    Never a lock of another state, a restore's, or one a running step holds."""
    server.live("v1.0.0", OLD)
    assert server.backup(version="v2.0.0", release=release_of("v2.0.0", NEW), image=NEW).returncode == 0
    assert server.run("release-lock.sh", "--end-update", ANOTHER_STACK).stdout == ""
    with server.step_running():
        assert server.run("release-lock.sh", "--end-update", STACK).stdout == ""
    assert server.locked(), "a lock was given back while a step ran, or for another stack"
    ended = server.run("release-lock.sh", "--end-update", STACK)
    assert ended.returncode == 0 and f"the update of {STACK} is over; giving back the release lock" in ended.stdout
    awaited = f"{release_of('v2.0.0', NEW)} is not the live release ({release_of('v1.0.0', OLD)})"
    assert f"its last step awaited an up that did not come: {awaited}" in ended.stdout
    assert not server.locked()
    refused = server.run("release-lock.sh", "--end-update", "not a stack")
    allowed = "stack: allowed <project>/<stack>@<12 hex of its state>; received 'not a stack'"
    assert refused.returncode == 1 and allowed in refused.stderr


def test_the_lock_command_shows_the_holder_and_frees_it_only_once_no_step_runs(server: Server) -> None:
    assert server.run("release-lock.sh").stdout == f"the release lock of {server.app_dir} is free\n"
    assert server.backup(release=release_of("v7.0.0", OLD)).returncode == 0
    shown = server.run("release-lock.sh")
    assert shown.returncode == 0 and "no step of that release runs" in shown.stdout
    holder = f"release {release_of('v7.0.0', OLD)} (an update of {STACK}) requested by {REQUESTER}, step backup"
    assert f"held by {holder}" in shown.stdout
    assert server.locked(), "showing the lock freed it"
    with server.step_running():
        refused = server.run("release-lock.sh", "--free")
    assert refused.returncode == 1 and "a step runs now (backup" in refused.stderr
    assert server.locked(), "a lock was freed while a step ran"
    freed = server.run("release-lock.sh", "--free")
    assert freed.returncode == 0 and "freed" in freed.stdout
    assert not server.locked()
    assert server.backup().returncode == 0, "another release cannot start after the lock was freed"


@pytest.mark.parametrize(
    ("update", "held"),
    [
        ("the live release, as it runs", False),
        ("the live release with new settings", True),
        ("the live release with new files", True),
        ("another release", True),
    ],
)
def test_a_step_keeps_the_lock_for_up_only_when_up_has_something_to_do(server: Server, update: str, held: bool) -> None:
    """Going back to the live release after an update that stopped before `up` runs every step but `up`, which has
    nothing to do: the last step that runs gives the lock back."""
    server.live("v1.0.0", OLD)
    if update.endswith("new settings"):
        (server.app_dir / ".env").write_text(dot_env(FEATURE="on"))
    if update.endswith("new files"):
        (server.app_dir / ".files-digest").write_text("d" * 64 + "\n")
    version, image = ("v2.0.0", NEW) if update == "another release" else ("v1.0.0", OLD)
    assert server.backup(version=version, image=image, release=release_of(version, image)).returncode == 0
    assert server.locked() == held


# --- break-glass switch-back -------------------------------------------------------------------------


def test_break_glass_switches_back_to_the_previous_version_through_the_health_gate(server: Server) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    server.fact("images_present", f"{OLD}\n{NEW}\n")
    server.fact("healthy_after", f"{OLD} 1\n")
    result = server.switch_back()
    assert result.returncode == 0, result.stderr
    assert (server.read("proxy_colour"), server.read("colour_green"), server.read("colour_blue")) == ("green", OLD, "")
    record = server.record()
    assert (record["VERSION"], record["APP_IMAGE"], record["MIGRATE_IMAGE"]) == ("v1.0.0", OLD, MIGRATE)
    assert f"switched back to v1.0.0 ({OLD}); v2.0.0 no longer serves" in result.stdout
    assert "pulumi config set version v1.0.0" in result.stdout
    assert not any(call.startswith("pull") for call in server.calls()), "break-glass pulled an image"
    assert not server.locked()


def test_break_glass_never_switches_to_a_previous_version_that_does_not_turn_healthy(server: Server) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    server.fact("images_present", f"{OLD}\n{NEW}\n")
    (server.app_dir / ".env").write_text(dot_env(FEATURE="on"))
    before = server.file("release.env")
    result = server.switch_back()
    assert result.returncode == 1
    assert f"v1.0.0 was not switched back to (see above); v2.0.0 ({NEW}) keeps serving" in result.stderr
    assert (server.read("proxy_colour"), server.read("colour_blue"), server.read("colour_green")) == ("blue", NEW, "")
    assert server.file("release.env") == before and server.logins() == {ROLES["blue"]: PASSWORD}
    assert server.file(".env") == dot_env(FEATURE="on"), "the declared settings were lost"
    assert not server.locked(), "a failed switch-back kept the release lock"


def test_break_glass_after_a_release_switches_back_with_what_up_recorded(server: Server) -> None:
    server.live("v1.0.0", OLD)
    server.fact("healthy_after", f"{NEW} 1\n{OLD} 1\n")
    assert server.up("v2.0.0", NEW).returncode == 0
    result = server.switch_back()
    assert result.returncode == 0, result.stderr
    record = server.record()
    assert (record["VERSION"], record["APP_IMAGE"], record["MIGRATE_IMAGE"]) == ("v1.0.0", OLD, MIGRATE)
    assert (server.read("proxy_colour"), server.read("colour_blue")) == ("blue", OLD), "v1.0.0 does not serve"


def test_break_glass_waits_for_no_release_and_is_refused_while_another_holds_the_lock(server: Server) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    server.fact("healthy_after", f"{OLD} 1\n")
    assert server.backup(release=release_of("v3.0.0", NEW)).returncode == 0
    result = server.switch_back()
    assert result.returncode == 1
    holder = f"release {release_of('v3.0.0', NEW)} (an update of {STACK}) requested by {REQUESTER}, step backup"
    assert holder in result.stderr, result.stderr
    assert f"refusing to start {release_of('v1.0.0', OLD)}" in result.stderr
    assert server.record()["VERSION"] == "v2.0.0" and server.read("proxy_colour") == "blue"
    assert server.lock()["RELEASE"] == release_of("v3.0.0", NEW), "the other release lost its lock"


def test_break_glass_starts_the_previous_version_with_the_live_colours_settings_and_leaves_the_declared_ones(
    server: Server,
) -> None:
    server.live("v2.0.0", NEW, previous="v1.0.0", previous_image=OLD)
    declared = dot_env(ROTATED_PASSWORD, FEATURE="declared by an update that stopped before up")
    (server.app_dir / ".env").write_text(declared)
    server.fact("healthy_after", f"{OLD} 1\n")
    result = server.switch_back()
    assert result.returncode == 0, result.stderr
    assert server.read("env_green") == dot_env(), "the previous version started with settings that never served"
    assert server.file(".env.green") == dot_env() and server.mode(".env.green") == 0o600
    assert server.logins() == {ROLES["green"]: PASSWORD}
    assert server.file(".env") == declared, "the declared settings were lost"


def test_break_glass_takes_no_arguments(server: Server) -> None:
    result = server.run("switch-back.sh", "--app-dir", str(server.app_dir))
    assert result.returncode == 1 and "usage: switch-back.sh (unknown argument '--app-dir')" in result.stderr
    assert server.calls() == []


def test_break_glass_without_a_recorded_previous_version_changes_nothing(server: Server) -> None:
    server.live("v1.0.0", OLD)
    before = server.file("release.env")
    result = server.switch_back()
    assert result.returncode == 1 and "no previous version with both its images is recorded" in result.stderr
    assert server.calls() == [] and server.file("release.env") == before and not server.locked()


# --- restoring a release's pg_dump (bin/restore-dump.sh) ---------------------------------------------------------

DUMP = "20261101T100000Z-v2.0.0.dump"


def starting(calls: list[str], start: str, last: bool = False) -> int:
    """Where the first (or last) line of the call log that starts with `start` is."""
    found = [i for i, call in enumerate(calls) if call.startswith(start)]
    assert found, f"no call starts with {start!r}: {calls}"
    return found[-1] if last else found[0]


def with_dump(server: Server, name: str = DUMP) -> None:
    """v2.0.0 serves on blue with PostgreSQL running; the backups folder holds `name`; migrations ran before and
    after the dump was taken."""
    server.live("v2.0.0", NEW)
    server.fact("postgres_image", POSTGRES)
    backups = server.app_dir / "backups"
    backups.mkdir(mode=0o700, exist_ok=True)
    (backups / name).write_text("PGDMP-custom-format-dump")
    (server.app_dir / "migrations.log").write_text(
        f"{MIGRATE}-old v1.0.0 2026-10-01T10:00:00Z\n{MIGRATE} v2.0.0 2026-11-02T10:00:00Z\n"
    )


def test_a_dump_is_restored_beside_the_live_database_then_swapped_in_while_the_app_is_out_of_traffic(
    server: Server,
) -> None:
    with_dump(server)
    restored = server.run("restore-dump.sh", "--dump", DUMP, "--yes")
    assert restored.returncode == 0, restored.stderr
    calls = server.calls()
    created = starting(calls, "psql: create database kametrix_restore_")
    filled = starting(calls, "pg_restore: into kametrix_restore_")
    out_of_traffic = starting(calls, "psql: nologin kametrix_blue")
    swapped = starting(calls, "psql: rename kametrix->kametrix_aside_")
    back = starting(calls, "psql: login kametrix_blue", last=True)
    assert created < filled < out_of_traffic < swapped < back, calls
    assert "restore the database as it was at 2026-11-01T10:00:00Z, from the dump " in restored.stdout
    assert "public.customers" in restored.stdout and "restored; the app was out of traffic for" in restored.stdout
    assert server.read("proxy_colour") == "blue" and server.file("proxy/live.conf") == server.file("proxy/blue.conf")
    assert server.file("migrations.log") == f"{MIGRATE}-old v1.0.0 2026-10-01T10:00:00Z\n", "a later migration kept"
    assert "v2.0.0 serves, but its migrations ran after the restored point" in restored.stderr
    assert f"dump:{DUMP} {DUMP} kametrix_aside_" in server.file("restores.log")
    assert not server.locked()


@pytest.mark.parametrize(
    ("name", "refusal"),
    [
        ("../settings.env", "dump: allowed one of the dumps in"),
        ("20261101T100000Z-v9.9.9.dump", f"dump: allowed one of the dumps in {{backups}}: {DUMP}; received"),
    ],
)
def test_a_dump_that_is_not_one_of_the_stages_is_refused_and_nothing_changes(
    server: Server, name: str, refusal: str
) -> None:
    with_dump(server)
    refused = server.run("restore-dump.sh", "--dump", name, "--yes")
    assert refused.returncode == 1
    assert refusal.format(backups=server.app_dir / "backups") in refused.stderr
    assert not any("psql" in call or "pg_restore" in call for call in server.calls())
    assert not server.locked()


def test_a_dump_that_fails_to_restore_drops_what_it_made_and_the_app_never_leaves_traffic(server: Server) -> None:
    with_dump(server)
    server.fact("restore_status", "1")
    failed = server.run("restore-dump.sh", "--dump", DUMP, "--yes")
    assert failed.returncode == 1
    calls = server.calls()
    assert starting(calls, "pg_restore: into kametrix_restore_") < starting(calls, "psql: drop database kametrix_re")
    assert not any("rename" in call or "nologin" in call for call in calls), calls
    assert server.file("proxy/live.conf") == server.file("proxy/blue.conf")
    assert server.file("migrations.log").count("\n") == 2 and not server.locked()


def test_a_swap_that_fails_puts_the_database_and_the_traffic_back(server: Server) -> None:
    with_dump(server)
    server.fact("fail_rename", "yes")
    failed = server.run("restore-dump.sh", "--dump", DUMP, "--yes")
    assert failed.returncode == 1 and "putting the database that served back" in failed.stderr
    calls = server.calls()
    assert starting(calls, "psql: nologin kametrix_blue") < starting(calls, "psql: login kametrix_blue", last=True)
    assert "psql: drop database kametrix_restore_" in "\n".join(calls)
    assert server.read("proxy_colour") == "blue" and server.file("proxy/live.conf") == server.file("proxy/blue.conf")


def test_the_dump_restores_plan_changes_nothing(server: Server) -> None:
    with_dump(server)
    planned = server.run("restore-dump.sh", "--dump", DUMP, "--plan")
    assert (
        planned.returncode == 0 and "the current data is kept aside as the database kametrix_aside_" in planned.stdout
    )
    assert not any("create database" in call or "pg_restore: into" in call for call in server.calls())
    assert not server.locked()
