"""The local deploy target works: SSH reaches Docker and Compose with nothing forwarded,
a wrong host key is refused, the PostgreSQL image keeps the official image's contract,
and the stand-in app versions behave as the release tests expect of them."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from embedded_default.target import APP_VERSIONS, LocalTarget, build_app_versions

pytestmark = pytest.mark.e2e

DB_USER = "kametrix"
DB_NAME = "kametrix"
DB_PASSWORD = "e2e:pw/with@odd%chars"  # throwaway, only ever in this test's containers
DB_PASSWORD_URL = "e2e%3Apw%2Fwith%40odd%25chars"
DB_PORT = 5432
APP_PORT = 3000


@pytest.fixture(scope="module")
def app_refs(target: LocalTarget) -> dict[str, str]:
    return build_app_versions(target)


def free_port(first: int) -> int:
    """A free loopback port from a small range below the ephemeral range (32768+):
    a recent outgoing connection in TIME_WAIT on an ephemeral port makes a server's
    bind() there fail, even with nothing listening."""
    for port in range(first, first + 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}..{first + 199}")


def http_get(url: str) -> tuple[int, dict[str, Any]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(what: str, probe: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            last = probe()
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached in {timeout:g}s (last: {last!r})")


@dataclasses.dataclass
class Database:
    container: str
    network: str
    """A bridge network of the database's own, as a stage's compose network: the app finds it by name."""
    url: str  # as the app gets it: Prisma style, with ?schema=public


@contextlib.contextmanager
def postgres(target: LocalTarget) -> Iterator[Database]:
    """A PostgreSQL container of the target's image on a network and volume of its own; removed after."""
    name = f"e2e-target-db-{uuid.uuid4().hex[:8]}"
    try:
        target.docker("network", "create", name)
        target.docker(
            "run", "--detach", "--name", name, "--network", name,
            "--volume", f"{name}:/var/lib/postgresql/data",
            "--env", f"POSTGRES_USER={DB_USER}",
            "--env", f"POSTGRES_DB={DB_NAME}",
            "--env", f"PGPORT={DB_PORT}",
            "--env", "POSTGRES_PASSWORD",
            target.postgres_image,
            env_extra={"POSTGRES_PASSWORD": DB_PASSWORD},
        )  # fmt: skip
        # Over TCP: during initdb the first server listens on the Unix socket only.
        wait_for(
            "postgres accepting TCP connections",
            lambda: (
                target.docker("exec", name, "pg_isready", "-h", "127.0.0.1", "-p", str(DB_PORT), check=False).returncode
                == 0
            ),
        )
        url = f"postgresql://{DB_USER}:{DB_PASSWORD_URL}@{name}:{DB_PORT}/{DB_NAME}?schema=public"
        yield Database(name, name, url)
    finally:
        target.docker("rm", "--force", "--volumes", name, check=False)
        target.docker("volume", "rm", "--force", name, check=False)
        target.docker("network", "rm", name, check=False)


def sql(target: LocalTarget, db: Database, query: str) -> str:
    done = target.docker("exec", db.container, "psql", "-XAt", "-U", DB_USER, "-d", DB_NAME, "-c", query)
    return done.stdout.decode().strip()


def schema(target: LocalTarget, db: Database) -> str:
    """The schema as pg_dump prints it, less the random key of its \\restrict lines."""
    dump = target.docker("exec", db.container, "pg_dump", "--schema-only", "-U", DB_USER, DB_NAME).stdout.decode()
    return "\n".join(line for line in dump.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def env_file(tmp_path: Path, db: Database) -> Path:
    """A .env with the app's settings (shared/target-app.md), as the release writes it."""
    path = tmp_path / "app.env"
    path.write_text(
        "\n".join(
            [
                f"DATABASE_URL={db.url}",
                f"POSTGRES_USER={DB_USER}",
                f"POSTGRES_PASSWORD={DB_PASSWORD}",
                f"POSTGRES_DB={DB_NAME}",
                "NODE_ENV=production",
                "NEXT_PUBLIC_APP_URL=http://127.0.0.1",
                "DATABASE_POOL_MIN=2",
                "DATABASE_POOL_MAX=10",
                "VAPI_API_KEY=e2e-vapi-key",
                "GOOGLE_ENCRYPTION_KEY=" + "ab" * 32,
                "STRIPE_CURRENCY=eur",
                "SMTP_PORT=587",
                "",
            ]
        )
    )
    return path


def migrate(target: LocalTarget, db: Database, ref: str, env: Path) -> subprocess.CompletedProcess[bytes]:
    """The builder image's default command, as `docker compose run --rm migrate` runs it."""
    return target.docker("run", "--rm", "--network", db.network, "--env-file", str(env), ref, check=False, timeout=120)


@contextlib.contextmanager
def app(target: LocalTarget, db: Database, ref: str, env: Path) -> Iterator[str]:
    """The runner image as a stage runs a colour: on the database's network, its port 3000 published on
    127.0.0.1 only."""
    name = f"e2e-target-app-{uuid.uuid4().hex[:8]}"
    port = free_port(13000)
    try:
        target.docker(
            "run", "--detach", "--name", name, "--network", db.network, "--publish", f"127.0.0.1:{port}:{APP_PORT}",
            "--env-file", str(env), ref,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        wait_for("the app answering", lambda: http_get(f"{base}/api/version")[0] == 200, timeout=30)
        yield base
    finally:
        target.docker("rm", "--force", "--volumes", name, check=False)


def runner_tag(target: LocalTarget, version: str) -> str:
    """The tag ``build_app_versions`` pushed for ``version``: only versions of this revision exist."""
    assert version in APP_VERSIONS, f"{version} is not a stand-in version ({', '.join(APP_VERSIONS)})"
    return f"{target.app_repository}:{version}"


# --- SSH -----------------------------------------------------------------------------


def test_ssh_reaches_docker_and_compose_with_no_environment_forwarded(target: LocalTarget) -> None:
    version = target.ssh("docker version --format '{{.Server.Version}} {{.Server.APIVersion}}'")
    assert version.returncode == 0, version.stderr.decode()
    assert version.stdout.decode().startswith("20.10."), version.stdout

    compose = target.ssh("docker compose version --short")
    assert compose.returncode == 0, compose.stderr.decode()
    assert compose.stdout.decode().strip().lstrip("v").startswith("2."), compose.stdout

    # DOCKER_HOST comes from the server (sshd SetEnv); the client sent nothing.
    env = target.ssh("env")
    assert env.returncode == 0
    names = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in env.stdout.decode().splitlines() if "=" in line}
    assert names["DOCKER_HOST"] == target.docker_host
    assert not {n for n in names if n.startswith(("LC_", "LANG", "TERM", "KAMETRIX"))}, sorted(names)

    # A client that tries to send a variable is ignored: sshd accepts none (no AcceptEnv).
    probe = subprocess.run(
        [
            *target.ssh_argv(str(Path(target.target_dir) / "ssh" / "known_hosts")),
            "-o",
            "SetEnv=KAMETRIX_PROBE=leaked",
            "--",
            "echo ${KAMETRIX_PROBE-unset}",
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr.decode()
    assert probe.stdout.decode().strip() == "unset"


def test_ssh_pipes_stdin_and_reports_exit_codes(target: LocalTarget) -> None:
    done = target.ssh("tr a-z A-Z; exit 7", stdin=b"hello over ssh\n")
    assert done.returncode == 7
    assert done.stdout == b"HELLO OVER SSH\n"


def test_a_wrong_host_key_is_refused(target: LocalTarget, tmp_path: Path) -> None:
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, blob, *_ = other.with_suffix(".pub").read_text().split()
    impostor = dataclasses.replace(target, ssh_host_key=f"{kind} {blob}")

    done = impostor.ssh("touch /tmp/kametrix-e2e-must-not-exist")

    assert done.returncode == 255
    assert b"Host key verification failed" in done.stderr
    assert target.ssh("test ! -e /tmp/kametrix-e2e-must-not-exist").returncode == 0


# --- PostgreSQL image ----------------------------------------------------------------


def test_postgres_image_initialises_a_database_that_dumps_and_restores(target: LocalTarget) -> None:
    with postgres(target) as db:
        assert sql(target, db, "SELECT current_user, current_database()") == f"{DB_USER}|{DB_NAME}"
        sql(target, db, "CREATE TABLE probe (id int PRIMARY KEY); INSERT INTO probe VALUES (1), (2);")
        # Password auth on TCP, on every address of its container, as the official image: the app reaches it by name.
        listen = sql(target, db, "SHOW listen_addresses")
        assert listen == "*"
        tcp = [
            "exec",
            "--env",
            "PGPASSWORD",
            db.container,
            "psql",
            "-XAt",
            "-h",
            "127.0.0.1",
            "-p",
            str(DB_PORT),
            "-U",
            DB_USER,
            "-d",
            DB_NAME,
            "-c",
            "SELECT count(*) FROM probe",
        ]
        assert target.docker(*tcp, env_extra={"PGPASSWORD": DB_PASSWORD}).stdout.strip() == b"2"
        wrong = target.docker(*tcp, env_extra={"PGPASSWORD": "wrong"}, check=False)
        assert wrong.returncode != 0
        assert b"password authentication failed" in wrong.stderr

        dump = target.docker("exec", db.container, "pg_dump", "-Fc", "-U", DB_USER, DB_NAME).stdout
        assert dump.startswith(b"PGDMP")
        listing = target.docker("exec", "-i", db.container, "pg_restore", "--list", stdin=dump).stdout.decode()
        assert "TABLE public probe" in listing

        # The data survives a restart on the same volume (no second initdb).
        target.docker("restart", db.container)
        wait_for(
            "postgres back after restart",
            lambda: (
                target.docker(
                    "exec", db.container, "pg_isready", "-h", "127.0.0.1", "-p", str(DB_PORT), check=False
                ).returncode
                == 0
            ),
        )
        assert sql(target, db, "SELECT count(*) FROM probe") == "2"
        logs = target.docker("logs", db.container).stdout + target.docker("logs", db.container).stderr
        assert b"Skipping initialization" in logs


# --- the stand-in app ----------------------------------------------------------------


def test_only_tags_this_revision_built_can_be_resolved(target: LocalTarget, app_refs: dict[str, str]) -> None:
    built = {f"{version}{suffix}" for version in APP_VERSIONS for suffix in ("", "-migrate")}
    repository = target.app_repository.removeprefix(f"{target.registry}/")
    status, listed = http_get(f"http://{target.registry}/v2/{repository}/tags/list")
    assert status == 200 and set(listed["tags"]) == built
    local = target.docker("image", "ls", "--format", "{{.Tag}}", target.app_repository).stdout.decode().split()
    # `<none>`: an image known here by digest only, which no tag can resolve.
    assert set(local) - {"<none>"} == built
    storages = sorted(path.name for path in Path(target.target_dir).glob("registry-data*"))
    assert len(storages) == 1, f"registry storage of older builds left behind: {storages}"


def test_app_versions_are_pushed_by_digest(target: LocalTarget, app_refs: dict[str, str]) -> None:
    assert set(app_refs) == set(APP_VERSIONS)
    assert len(set(app_refs.values())) == len(app_refs)
    for version, ref in app_refs.items():
        assert ref.startswith(f"{target.app_repository}@sha256:"), ref
        pulled = target.ssh(f"docker pull -q {ref} && docker image inspect --format '{{{{.Config.User}}}}' {ref}")
        assert pulled.returncode == 0, (version, pulled.stderr.decode())
        assert pulled.stdout.decode().split()[-1] == "nextjs"


def test_v1_migrates_and_reports_a_healthy_valid_build(
    target: LocalTarget, app_refs: dict[str, str], tmp_path: Path
) -> None:
    with postgres(target) as db:
        env = env_file(tmp_path, db)
        done = migrate(target, db, f"{runner_tag(target, 'v1.0.0')}-migrate", env)
        assert done.returncode == 0, done.stderr.decode()
        assert b"All migrations have been successfully applied." in done.stdout
        assert sql(target, db, "SELECT count(*) FROM customers") == "3"
        assert sql(
            target, db, "SELECT string_agg(migration_name, ',' ORDER BY migration_name) FROM _prisma_migrations"
        ) == ("001_create_customers,002_create_calls")
        again = migrate(target, db, f"{runner_tag(target, 'v1.0.0')}-migrate", env)
        assert again.returncode == 0 and b"No pending migrations to apply." in again.stdout

        with app(target, db, app_refs["v1.0.0"], env) as base:
            status, quick = wait_for(
                "v1 healthy", lambda: (r := http_get(f"{base}/api/health?quick=true"))[0] == 200 and r
            )
            assert quick["status"] == "healthy" and quick["buildValid"] is True
            status, full = http_get(f"{base}/api/health?build=true")
            assert status == 200
            assert full["build"]["valid"] is True and full["version"] == "v1.0.0"
            assert set(full["build"]) >= {"id", "gitSha", "timestamp", "valid"}
            assert http_get(f"{base}/api/version")[1]["version"] == "v1.0.0"
            settings = http_get(f"{base}/api/env-check")[1]
            assert settings["VAPI_API_KEY"]["set"] is True and settings["SMTP_PASS"]["set"] is False

            # The health check really asks the database.
            target.docker("stop", db.container)
            status, plain = wait_for(
                "v1 unhealthy without its database", lambda: (r := http_get(f"{base}/api/health"))[0] == 503 and r
            )
            assert plain["status"] == "unhealthy"
            assert http_get(f"{base}/api/health?quick=true")[0] == 503


def test_v3_never_reports_a_valid_build(target: LocalTarget, app_refs: dict[str, str], tmp_path: Path) -> None:
    with postgres(target) as db:
        env = env_file(tmp_path, db)
        assert migrate(target, db, f"{runner_tag(target, 'v3.0.0')}-migrate", env).returncode == 0
        with app(target, db, app_refs["v3.0.0"], env) as base:
            wait_for("v3 database check healthy", lambda: http_get(f"{base}/api/health")[0] == 200)
            status, quick = http_get(f"{base}/api/health?quick=true")
            assert status == 503
            assert quick["status"] == "healthy" and quick["buildValid"] is False
            status, full = http_get(f"{base}/api/health?build=true")
            assert full["build"]["valid"] is False and full["version"] == "v3.0.0"


def test_v4_migration_fails_and_leaves_the_schema_unchanged(
    target: LocalTarget, app_refs: dict[str, str], tmp_path: Path
) -> None:
    with postgres(target) as db:
        env = env_file(tmp_path, db)
        assert migrate(target, db, f"{runner_tag(target, 'v2.0.0')}-migrate", env).returncode == 0
        before = schema(target, db)
        assert "CREATE TABLE public.appointments" in before
        rows_before = sql(target, db, "SELECT count(*) FROM customers")

        done = migrate(target, db, f"{runner_tag(target, 'v4.0.0')}-migrate", env)

        assert done.returncode != 0
        assert b"004_broken_vip_flag" in done.stderr
        assert schema(target, db) == before
        assert sql(target, db, "SELECT count(*) FROM customers") == rows_before
        assert sql(target, db, "SELECT count(*) FROM _prisma_migrations WHERE migration_name LIKE '004%'") == "0"
        # The previous release (v2) still runs on the unchanged schema.
        with app(target, db, app_refs["v2.0.0"], env) as base:
            wait_for("v2 healthy", lambda: http_get(f"{base}/api/health?quick=true")[0] == 200)
