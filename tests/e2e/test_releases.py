"""Releases, rollbacks and faults of one stage, on a real Docker host over real SSH, through the runner.

The tests run in order against one stage: each starts from the state the previous one left,
as a stage's history would. Every assertion reads the real server: the app's answers through
the stage's proxy, the database's rows, the files on disk.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from embedded_default import workspace as local_workspace
from tests.e2e.load import Load
from tests.e2e.stage import Stage, drop_when, explain, processes_running

RELEASE_STEPS = ["server-backup", "server-migrate", "server-up"]
ALL_STEPS = ["server-files", "server-env", "server-database", *RELEASE_STEPS]
DATABASE = ("kametrix", "kametrix_local")
steps_of_first_release: dict[str, str] = {}


def app_url(stage: Stage, path: str) -> str:
    """Where the front proxy would send a request: the stage's proxy."""
    return f"http://127.0.0.1:{stage.setting('app.proxyPort')}{path}"


def app_get(stage: Stage, path: str) -> Any:
    with urllib.request.urlopen(app_url(stage, path), timeout=5) as response:  # noqa: S310 - http on loopback
        return json.loads(response.read())


def served_version(stage: Stage) -> str:
    version: str = app_get(stage, "/api/version")["version"]
    return version


def sql(stage: Stage, query: str, database: str = DATABASE[1]) -> list[str]:
    container = stage.setting("app.dbContainer")
    done = stage.target.docker("exec", container, "psql", "-U", DATABASE[0], "-d", database, "-Atc", query)
    return done.stdout.decode().split()


def on_server(stage: Stage, command: str) -> str:
    done = stage.target.ssh(command)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def app_dir(stage: Stage) -> str:
    return shlex.quote(stage.app_dir)


def migrations(stage: Stage) -> list[str]:
    return sql(stage, "select migration_name from _prisma_migrations order by 1")


def schema(stage: Stage) -> list[str]:
    return sql(
        stage,
        "select table_name || '.' || column_name from information_schema.columns "
        "where table_schema = 'public' order by 1",
    )


def row_counts(stage: Stage, database: str = DATABASE[1]) -> dict[str, int]:
    counts = sql(stage, "select count(*) from customers union all select count(*) from calls", database)
    return dict(zip(("customers", "calls"), map(int, counts), strict=True))


def env_digest(stage: Stage) -> str:
    """The installed settings, by digest: the test never reads a secret's value."""
    return on_server(stage, f"sha256sum < {app_dir(stage)}/.env")


def commands_in_state(stage: Stage) -> dict[str, str]:
    """Each release step's command line, as the stack's state holds it."""
    state = json.loads(stage.state_file().read_text())
    return {
        resource["urn"].rpartition("::")[2]: resource["inputs"]["create"]
        for resource in state["checkpoint"]["latest"]["resources"]
        if resource["type"] == "command:remote:Command"
    }


def backups(stage: Stage) -> list[str]:
    return on_server(stage, f"ls -1 {app_dir(stage)}/backups").split()


def release_lock_held(stage: Stage) -> bool:
    return stage.target.ssh(f"test -e {app_dir(stage)}/.release-lock").returncode == 0


def recorded(stage: Stage, key: str) -> str:
    """A value of the server's live release (empty when it holds none)."""
    lines = on_server(stage, f"cat {app_dir(stage)}/release.env").splitlines()
    return dict(line.split("=", 1) for line in lines).get(key, "")


def running_colours(stage: Stage) -> list[str]:
    name = stage.setting("app.appContainer")
    names = stage.target.docker("ps", "--format", "{{.Names}}", "--filter", f"name=^{name}-(blue|green)$")
    return sorted(line.rpartition("-")[2] for line in names.stdout.decode().split())


def test_first_release_on_an_empty_server(stage: Stage) -> None:
    result = stage.up("v1.0.0")
    assert result.ok, explain(result)
    assert result.ran() == ALL_STEPS
    assert "nothing to back up" in result.step("server-backup").stdout, "an empty server has no database to back up"
    assert served_version(stage) == "v1.0.0"
    assert app_get(stage, "/api/health?build=true")["build"]["valid"] is True
    assert migrations(stage) == ["001_create_customers", "002_create_calls"]
    assert row_counts(stage)["customers"] == 3
    assert on_server(stage, f"stat -c %a {app_dir(stage)}/.env").strip() == "600"
    assert running_colours(stage) == ["blue"] and recorded(stage, "LIVE_COLOUR") == "blue"
    assert not release_lock_held(stage)
    steps_of_first_release.update(commands_in_state(stage))


def test_a_release_with_a_new_migration_keeps_the_data_and_backs_it_up(stage: Stage) -> None:
    sql(stage, "insert into customers (name, phone) values ('added by a user of v1', '+4930000000')")
    before, settings = row_counts(stage), env_digest(stage)
    result = stage.up("v2.0.0")
    assert result.ok, explain(result)
    assert result.ran() == RELEASE_STEPS, "a new version ran a stage step (files, env, database)"
    assert env_digest(stage) == settings, "a release changed the settings"
    assert served_version(stage) == "v2.0.0"
    assert running_colours(stage) == ["green"], "the old colour was not stopped after the switch"
    assert recorded(stage, "GREEN_IMAGE") == recorded(stage, "APP_IMAGE")
    assert migrations(stage)[-1] == "003_add_customer_email"
    assert row_counts(stage) == before, "v1's rows did not survive the release"

    dump = f"{stage.app_dir}/backups/{backups(stage)[-1]}"
    assert dump.endswith("-v2.0.0.dump")
    container = stage.setting("app.dbContainer")
    on_server(stage, f"docker exec {container} createdb -U kametrix restored")
    on_server(stage, f"docker exec -i {container} pg_restore -U kametrix -d restored < {shlex.quote(dump)}")
    assert row_counts(stage, "restored") == before, "the backup does not hold v1's data"
    restored_migrations = sql(stage, "select migration_name from _prisma_migrations order by 1", "restored")
    assert restored_migrations == ["001_create_customers", "002_create_calls"], "the backup was taken after migrating"
    on_server(stage, f"docker exec {container} dropdb -U kametrix restored")


def test_a_release_that_never_turns_healthy_is_never_switched_to(stage: Stage) -> None:
    result = stage.up("v3.0.0")
    assert not result.ok
    failed = result.failed
    assert failed is not None and failed.name == "server-up", explain(result)
    assert "not healthy on blue after 20 attempts" in failed.error
    assert "release v3.0.0 was not switched to (see above); v2.0.0" in failed.error
    assert "keeps serving" in failed.error
    assert served_version(stage) == "v2.0.0"
    assert running_colours(stage) == ["green"] and recorded(stage, "VERSION") == "v2.0.0"
    assert not release_lock_held(stage)


def test_a_release_whose_migration_fails_leaves_the_live_version_and_the_database_unchanged(
    stage: Stage,
) -> None:
    before = (migrations(stage), schema(stage), row_counts(stage))
    result = stage.up("v4.0.0")
    failed = result.failed
    assert failed is not None and failed.name == "server-migrate", explain(result)
    assert "migrations of v4.0.0 failed; the live version (v2.0.0) keeps serving" in failed.error
    assert served_version(stage) == "v2.0.0"
    assert (migrations(stage), schema(stage), row_counts(stage)) == before
    assert not release_lock_held(stage)


def test_a_rollback_by_config_runs_the_original_commands_and_keeps_the_newer_schema(stage: Stage) -> None:
    result = stage.up("v1.0.0")
    assert result.ok, explain(result)
    up = result.step("server-up")
    assert up.stdout.startswith("healthy on"), "the image still on the host was pulled"
    assert served_version(stage) == "v1.0.0"
    assert "003_add_customer_email" in migrations(stage), "a rollback must not run down-migrations"
    assert commands_in_state(stage) == steps_of_first_release


def test_a_connection_dropped_mid_step_converges_when_the_update_is_run_again(stage: Stage) -> None:
    serving = running_colours(stage)
    dropped = stage.up_interrupted("v2.0.0", drop_when(stage, "up.sh", lambda: running_colours(stage) != serving))
    assert dropped.failed is not None and dropped.failed.name == "server-up", explain(dropped)
    assert "without exit status" in dropped.failed.error, explain(dropped)
    result = stage.up("v2.0.0")
    assert result.ok, explain(result)
    assert result.ran() == ["server-up"], "only the interrupted step runs again"
    assert served_version(stage) == "v2.0.0"
    assert not release_lock_held(stage)

    # Enough rows that the dump takes a moment, so the connection drops while it is written.
    sql(stage, "create table bulk as select g, md5(g::text) as h from generate_series(1, 400000) g")
    backup_dir = Path(stage.app_dir) / "backups"

    def dumping() -> bool:
        return any(backup_dir.glob("*.partial"))

    # v1.0.0 ran here already: its rollback backs up only when asked to.
    stage.configure({"release.backupOnRollback": True})
    dropped = stage.up_interrupted("v1.0.0", drop_when(stage, "backup.sh", dumping))
    assert dropped.failed is not None and dropped.failed.name == "server-backup", explain(dropped)
    result = stage.up("v1.0.0")
    assert result.ok, explain(result)
    assert served_version(stage) == "v1.0.0"
    assert not release_lock_held(stage)
    assert [name for name in backups(stage) if not name.endswith(".dump")] == [], "a half-written backup is left"
    container = stage.setting("app.dbContainer")
    for name in backups(stage):
        on_server(stage, f"docker exec -i {container} pg_restore --list < {app_dir(stage)}/backups/{name} >/dev/null")
    sql(stage, "drop table bulk")
    stage.configure({"release.backupOnRollback": None})


def test_two_releases_of_one_stage_at_once_never_interleave(stage: Stage, prepared_stack: Path) -> None:
    # Two operators with a state of their own each (another backend, a break-glass copy): only the server's
    # release lock stands between their updates.
    rival_dir = stage.work_dir.with_name(f"{stage.work_dir.name}-rival")
    local_workspace.copy_prepared(stage.work_dir, rival_dir, stage.cli, {})
    rival = Stage(stage.target, rival_dir, stage.cli)
    # At once, whatever their speed: the first release's migrate step is held (SIGSTOP) on the server until the
    # rival's first step is there, waiting for the lock.
    folder = app_dir(stage)
    held = f"{folder}/.test-held"
    hold = (
        f'until pid="$(pgrep -f -- {shlex.quote(folder + "/bin/[m]igrate[.]sh")} | head -n 1)" && [[ -n "$pid" ]]; do '
        f'sleep 0.01; done; kill -STOP "$pid"; touch {shlex.quote(held)}; '
        f"for ((i = 0; i < 1200; i++)); do "
        f"pgrep -f -- {shlex.quote(folder + '/[.]files[.][^/]*/bin/[f]iles[.]sh')} >/dev/null && break; "
        "sleep 0.05; done; "
        f'sleep 0.5; kill -CONT "$pid"; rm -f {shlex.quote(held)}'
    )
    holder = threading.Thread(target=on_server, args=(stage, hold))
    holder.start()
    started = {"v2.0.0": (stage, stage.start("release", "v2.0.0", "--yes"))}
    deadline = time.monotonic() + 120
    while "held" not in on_server(stage, f"test -f {shlex.quote(held)} && echo held || true"):
        assert time.monotonic() < deadline, "the first release's migrate step never ran"
        time.sleep(0.2)
    started["v1.0.0"] = (rival, rival.start("release", "v1.0.0", "--yes"))
    holder.join(timeout=180)
    results = {version: owner.finish(process) for version, (owner, process) in started.items()}

    winners = [v for v, r in results.items() if r.ok]
    losers = [v for v, r in results.items() if not r.ok]
    summary = "\n".join(f"{v}: {explain(r)}" for v, r in results.items())
    assert len(winners) == 1 and len(losers) == 1, summary
    refused = results[losers[0]].failed
    assert refused is not None and "is in progress" in refused.error and "refusing to start" in refused.error, summary
    assert f"release {winners[0]}@" in refused.error and "bin/release-lock.sh" in refused.error, summary
    winner = results[winners[0]]
    assert winner.ran() in (ALL_STEPS, RELEASE_STEPS), summary
    assert served_version(stage) == winners[0]
    assert not release_lock_held(stage)
    assert "is free" in on_server(stage, f"bash {app_dir(stage)}/bin/release-lock.sh")
    # The module's stage goes on from what serves now.
    again = stage.up(winners[0])
    assert again.ok, explain(again)


def test_a_version_missing_from_the_registry_fails_before_any_server_step(stage: Stage) -> None:
    live = served_version(stage)
    result = stage.up("v9.9.9")
    assert not result.ok
    assert "version 'v9.9.9' is not in the registry" in result.output, explain(result)
    assert "127.0.0.1:5000/kametrix/kametrix:v9.9.9" in result.output, explain(result)
    assert result.runs == [], "a server step ran"
    assert served_version(stage) == live
    stage.configure({"version": live})


def live_colour(stage: Stage) -> str:
    """The colour the stage's proxy sends traffic to."""
    with urllib.request.urlopen(app_url(stage, "/.kametrix/colour"), timeout=5) as response:  # noqa: S310 - loopback
        return str(response.read().decode().strip())


def sees_secret(stage: Stage, value: str) -> bool:
    return hashlib.sha256(value.encode()).hexdigest() in json.dumps(app_get(stage, "/api/env-check"))


def test_changing_an_app_secret_moves_colours_once_and_backs_up_nothing(stage: Stage) -> None:
    live, colour = served_version(stage), live_colour(stage)
    stage.set_secret("stripeSecretKey", "TESTSECRET-rotated-stripe-key")
    result = stage.up(live)
    assert result.ok, explain(result)
    assert result.ran() == ["server-env", "server-up"]
    assert sees_secret(stage, "TESTSECRET-rotated-stripe-key"), "the app does not see the rotated secret"
    assert live_colour(stage) != colour and running_colours(stage) == [live_colour(stage)]
    assert served_version(stage) == live


def test_a_settings_and_version_change_starts_the_new_version_with_the_new_settings_in_one_cutover(
    stage: Stage,
) -> None:
    live, colour = served_version(stage), live_colour(stage)
    other = "v1.0.0" if live == "v2.0.0" else "v2.0.0"
    stage.set_secret("smtpPass", "TESTSECRET-smtp-with-the-release")
    result = stage.up(other)
    assert result.ok, explain(result)
    assert result.ran() == ["server-env", *RELEASE_STEPS]
    up = result.step("server-up")
    assert up.stdout.count("healthy on ") == 1 and "with settings that differ" in up.stdout, up.stdout
    # Two cutovers would have moved traffic away and back: the colour would be the one it was.
    assert live_colour(stage) != colour and running_colours(stage) == [live_colour(stage)]
    assert served_version(stage) == other and sees_secret(stage, "TESTSECRET-smtp-with-the-release")
    assert on_server(stage, f"stat -c %a {app_dir(stage)}/.env.{live_colour(stage)}").strip() == "600"
    assert not release_lock_held(stage)


def test_a_switch_the_proxy_refuses_leaves_no_trace_even_after_the_proxy_restarts(stage: Stage) -> None:
    live, colour = served_version(stage), live_colour(stage)
    idle = "green" if colour == "blue" else "blue"
    other = "v1.0.0" if live == "v2.0.0" else "v2.0.0"
    record = on_server(stage, f"cat {app_dir(stage)}/release.env")
    proxy_dir = f"{app_dir(stage)}/proxy"
    broken = f"{proxy_dir}/{idle}.conf"

    def break_the_idle_colour(_: object) -> bool:
        """Once `up` runs (the files step is over), the idle colour's config is one nginx refuses to reload
        with: it keeps its old config, and the switch must not pretend otherwise."""
        if not processes_running(f"{stage.app_dir}/bin/up.sh"):
            return False
        on_server(stage, f"cp {broken} {broken}.good && echo 'not nginx;' > {broken}")
        return True

    try:
        result = stage.up_interrupted(other, break_the_idle_colour)
        failed = result.failed
        assert failed is not None and failed.name == "server-up", explain(result)
        assert f"the proxy did not switch to {idle} within 10s; the switch is undone" in failed.error
        assert f"release {other} was not switched to (see above); {live}" in failed.error
        assert on_server(stage, f"cat {proxy_dir}/live.conf") == on_server(stage, f"cat {proxy_dir}/{colour}.conf")
        assert on_server(stage, f"cat {app_dir(stage)}/release.env") == record
        assert running_colours(stage) == [colour] and served_version(stage) == live
        # A restart reads live.conf afresh, as after a reboot.
        stage.target.docker("restart", f"{stage.project}-proxy")
        assert answered_after_restart(stage) == live and live_colour(stage) == colour, "another version serves"
    finally:
        on_server(stage, f"mv -f {broken}.good {broken}")
    assert not release_lock_held(stage)
    again = stage.up(live)
    assert again.ok, explain(again)


def answered_after_restart(stage: Stage) -> str:
    """The version the proxy serves once it listens again (a few seconds at most)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return served_version(stage)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def slow_request(stage: Stage, seconds: float) -> tuple[float, float, int, str]:
    """GET /api/version whose request body trickles in over `seconds`: the request is in flight at the proxy
    all that time. Returns when it started and ended, the status and the version that answered."""
    started = time.monotonic()
    length = max(1, int(seconds * 4))
    port = int(stage.setting("app.proxyPort"))
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 30) as connection:
        head = f"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
        connection.sendall(head.encode())
        for _ in range(length):
            time.sleep(0.25)
            connection.sendall(b"x")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status_line, _, rest = answer.decode().partition("\r\n")
    body = rest.partition("\r\n\r\n")[2]
    version = json.loads(body)["version"] if body.startswith("{") else body
    return started, time.monotonic(), int(status_line.split()[1]), str(version)


def test_requests_in_flight_when_the_switch_happens_complete_whatever_their_length(stage: Stage) -> None:
    live = served_version(stage)
    other = "v1.0.0" if live == "v2.0.0" else "v2.0.0"
    lengths = [1.0, 4.0, 8.0]  # up to the local stack's drainSeconds (10)
    answers: list[tuple[float, float, int, str]] = []
    stop = threading.Event()

    def keep_sending(length: float) -> None:
        while not stop.is_set():
            answers.append(slow_request(stage, length))

    senders = [threading.Thread(target=keep_sending, args=(length,)) for length in lengths for _ in range(2)]
    for sender in senders:
        sender.start()
        time.sleep(0.5)
    try:
        result = stage.up(other)
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=60)
    assert result.ok, explain(result)
    assert answers and all(status == 200 for _, _, status, _ in answers), answers
    # A request the old version answered ended after one that started later was answered by the new version:
    # it was in flight at the switch, and it completed.
    old_ends = [end for _, end, _, version in answers if version == live]
    new_starts = [start for start, _, _, version in answers if version == other]
    assert old_ends and new_starts and max(old_ends) > min(new_starts), answers


def test_no_request_fails_while_releases_switch_colours_under_load(stage: Stage) -> None:
    """A correctness check, not a timing test: constant load through the proxy, zero failed requests
    through a release, a release that never turns healthy, a rollback, a settings change and a settings
    change together with a release."""
    live = served_version(stage)
    other = "v1.0.0" if live == "v2.0.0" else "v2.0.0"
    with Load(app_url(stage, "/api/version"), rate=100) as load:
        released = stage.up(other)
        never_healthy = stage.up("v3.0.0")
        rolled_back = stage.up(live)
        stage.set_secret("smtpPass", "TESTSECRET-rotated-smtp-pass")
        settings = stage.up(live)
        stage.set_secret("smtpPass", "TESTSECRET-smtp-pass-with-a-release")
        settings_and_version = stage.up(other)
    assert released.ok and rolled_back.ok, explain(released) + explain(rolled_back)
    assert never_healthy.failed is not None and never_healthy.failed.name == "server-up", explain(never_healthy)
    assert settings.ran() == ["server-env", "server-up"] and settings.ok, explain(settings)
    assert settings_and_version.ok, explain(settings_and_version)
    assert load.result.requests >= 500, load.result
    assert load.result.failed == 0, load.result
    assert served_version(stage) == other


@pytest.fixture(autouse=True, scope="module")
def _no_release_left_running(stage: Stage) -> Any:
    yield
    assert not release_lock_held(stage), "a release lock outlived the tests"
