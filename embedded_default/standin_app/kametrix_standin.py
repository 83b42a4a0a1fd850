"""The Kametrix stand-in app: what the end-to-end tests release instead of the real image.

It honours the public contract of the real app (shared/target-app.md) with the Debian
python3 and psql of its base image, and nothing else:

- ``serve`` (the ``runner`` stage): HTTP on $HOSTNAME:$PORT (default 0.0.0.0:3000, as the standalone
  Next.js server of the real image listens) with
  ``GET /api/health`` (plain, ``?quick=true``, ``?build=true``) and ``GET /api/version``.
  The database check runs ``SELECT 1`` through psql against ``DATABASE_URL``.
  ``GET /api/env-check`` tells which of the app's settings are set, each with the
  SHA-256 of its value (never the value), so a test can prove a secret arrived.
- ``migrate status|deploy`` (the ``builder`` stage, behind the ``npx prisma migrate``
  shim): applies the numbered SQL files in /app/migrations once each, each in its own
  transaction together with its row in ``_prisma_migrations``; a failing migration is
  rolled back whole and the command exits non-zero.
- ``seed`` (behind the ``npm run db:seed`` shim): inserts one idempotent demo row.

The query string of ``DATABASE_URL`` (Prisma's ``?schema=public`` and the like, which
libpq rejects) is dropped, and the connection settings reach psql through PG* variables,
so no password shows on a command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

APP_DIR = Path(os.environ.get("STANDIN_APP_DIR", "/app"))
MIGRATIONS_DIR = APP_DIR / "migrations"
BUILD_FILE = APP_DIR / "build.json"
STARTED = time.monotonic()

# The settings the real app reads (shared/target-app.md).
SETTINGS = (
    "DATABASE_URL",
    "POSTGRES_PASSWORD",
    "VAPI_API_KEY",
    "VAPI_WEBHOOK_SECRET",
    "GOOGLE_CLIENT_SECRET",
    "GOOGLE_ENCRYPTION_KEY",
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "SMTP_PASS",
    "OPENROUTER_API_KEY",
    "ELEVENLABS_API_KEY",
    "NEXT_PUBLIC_APP_URL",
    "POSTGRES_USER",
    "POSTGRES_DB",
    "DATABASE_POOL_MIN",
    "DATABASE_POOL_MAX",
    "VAPI_PUBLIC_KEY",
    "GOOGLE_CLIENT_ID",
    "STRIPE_CURRENCY",
    "SMTP_HOST",
    "SMTP_PORT",
    "SMTP_USER",
    "SMTP_FROM",
    "NODE_ENV",
)

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS _prisma_migrations (
    id VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum VARCHAR(64) NOT NULL,
    finished_at TIMESTAMPTZ,
    migration_name VARCHAR(255) NOT NULL,
    logs TEXT,
    rolled_back_at TIMESTAMPTZ,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count INTEGER NOT NULL DEFAULT 0
);
"""

RECORD_MIGRATION = """
INSERT INTO _prisma_migrations
    (id, checksum, finished_at, migration_name, started_at, applied_steps_count)
VALUES (gen_random_uuid()::text, :'checksum', clock_timestamp(), :'name', now(), 1);
"""


class DatabaseError(Exception):
    """psql failed; the message is what it printed."""


def pg_env(url: str | None = None) -> dict[str, str]:
    """The environment for psql: ``DATABASE_URL`` split into PG* variables."""
    raw = url if url is not None else os.environ.get("DATABASE_URL", "")
    if not raw:
        raise DatabaseError("DATABASE_URL is not set")
    parts = urlsplit(raw)
    if parts.scheme not in ("postgres", "postgresql"):
        raise DatabaseError("DATABASE_URL is not a postgresql:// URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "5"
    env["PGAPPNAME"] = "kametrix-standin"
    if parts.hostname:
        env["PGHOST"] = parts.hostname
    if parts.port:
        env["PGPORT"] = str(parts.port)
    if parts.username:
        env["PGUSER"] = unquote(parts.username)
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    database = unquote(parts.path.lstrip("/"))
    if database:
        env["PGDATABASE"] = database
    sslmode = parse_qs(parts.query).get("sslmode")
    if sslmode:
        env["PGSSLMODE"] = sslmode[0]
    return env


def psql(sql: str, variables: dict[str, str] | None = None, timeout: float = 60) -> str:
    """Run SQL (read from stdin, stop at the first error) and return psql's output."""
    argv = ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"]
    for name, value in (variables or {}).items():
        argv += ["-v", f"{name}={value}"]
    try:
        done = subprocess.run(
            argv,
            input=sql.encode(),
            capture_output=True,
            env=pg_env(),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DatabaseError(f"psql timed out after {timeout:g}s") from exc
    if done.returncode != 0:
        raise DatabaseError((done.stderr or done.stdout).decode(errors="replace").strip())
    return done.stdout.decode()


# --- build metadata and health -------------------------------------------------------


def build_info() -> dict[str, Any]:
    info: dict[str, Any] = json.loads(BUILD_FILE.read_text())
    return info


def database_healthy() -> bool:
    # Bounded well below a health probe's own timeout: a stopped database's name fails to resolve only after
    # Docker's DNS gives up on its upstream, and a probe that times out learns nothing.
    try:
        return psql("SELECT 1;", timeout=4).strip() == "1"
    except DatabaseError:
        return False


def health(query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
    info = build_info()
    valid = info["valid"] is True
    delay = float(os.environ.get("STANDIN_STARTUP_SECONDS", "0") or 0)
    starting = time.monotonic() - STARTED < delay
    status = "starting" if starting else ("healthy" if database_healthy() else "unhealthy")
    timestamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if query.get("quick") == ["true"]:
        body: dict[str, Any] = {"status": status, "buildId": info["id"], "buildValid": valid}
        return (200 if status == "healthy" and valid else 503), body
    body = {
        "status": status,
        "timestamp": timestamp,
        "version": info["version"],
        "database": "connected" if status == "healthy" else "unavailable",
        "uptimeSeconds": round(time.monotonic() - STARTED, 1),
    }
    if query.get("build") == ["true"]:
        body["build"] = {
            "id": info["id"],
            "gitSha": info["gitSha"],
            "timestamp": info["timestamp"],
            "valid": valid,
        }
        body["environment"] = os.environ.get("NODE_ENV", "")
    return (200 if status == "healthy" else 503), body


def env_check() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in SETTINGS:
        value = os.environ.get(name)
        out[name] = {
            "set": value is not None and value != "",
            "sha256": hashlib.sha256(value.encode()).hexdigest() if value else None,
        }
    return out


class Handler(BaseHTTPRequestHandler):
    server_version = "kametrix-standin"
    protocol_version = "HTTP/1.1"

    def _send(self, code: int, body: dict[str, Any] | str, head_only: bool = False) -> None:
        if isinstance(body, str):
            payload, kind = body.encode(), "text/plain; charset=utf-8"
        else:
            payload, kind = json.dumps(body).encode(), "application/json"
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head_only:
            self.wfile.write(payload)

    def _route(self, head_only: bool) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path.rstrip("/") or "/"
        if path == "/api/health":
            code, body = health(query)
            self._send(code, body, head_only)
        elif path == "/api/version":
            info = build_info()
            self._send(200, {"version": info["version"], "buildId": info["id"]}, head_only)
        elif path == "/api/env-check":
            self._send(200, env_check(), head_only)
        elif path == "/":
            self._send(200, f"Kametrix stand-in {build_info()['version']}\n", head_only)
        else:
            self._send(404, {"error": "not found"}, head_only)

    def do_GET(self) -> None:
        self._route(head_only=False)

    def do_HEAD(self) -> None:
        self._route(head_only=True)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def serve() -> int:
    host, port = os.environ.get("HOSTNAME", "0.0.0.0"), int(os.environ.get("PORT", "3000"))  # noqa: S104
    build_info()  # fail at start, not at the first request, when the build is broken
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    # As PID 1 of its container the process would ignore SIGTERM: `docker stop` would
    # wait 10 s and kill it. Stop at once instead.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"kametrix stand-in {build_info()['version']} listening on {host}:{port}", flush=True)
    server.serve_forever()
    return 0


# --- migrations ----------------------------------------------------------------------


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9]_*.sql"))


def applied_migrations() -> set[str]:
    exists = psql("SELECT to_regclass('_prisma_migrations') IS NOT NULL;").strip() == "t"
    if not exists:
        return set()
    rows = psql(
        "SELECT migration_name FROM _prisma_migrations WHERE finished_at IS NOT NULL AND rolled_back_at IS NULL;"
    )
    return {line for line in rows.splitlines() if line}


def datasource() -> str:
    env = pg_env()
    return (
        f'Datasource "db": PostgreSQL database "{env.get("PGDATABASE", "")}", '
        f'schema "public" at "{env.get("PGHOST", "")}:{env.get("PGPORT", "5432")}"'
    )


def migrate_status() -> int:
    """Like ``prisma migrate status``: exit 1 while migrations are pending."""
    files = migration_files()
    print(datasource())
    print(f"{len(files)} migrations found in {MIGRATIONS_DIR}")
    applied = applied_migrations()
    pending = [f.stem for f in files if f.stem not in applied]
    if pending:
        print("Following migrations have not yet been applied:")
        for name in pending:
            print(name)
        return 1
    print("Database schema is up to date!")
    return 0


def migrate_deploy() -> int:
    """Like ``prisma migrate deploy``: apply each pending migration in its own transaction."""
    files = migration_files()
    print(datasource())
    print(f"{len(files)} migrations found in {MIGRATIONS_DIR}")
    psql(MIGRATIONS_TABLE)
    applied = applied_migrations()
    pending = [f for f in files if f.stem not in applied]
    if not pending:
        print("No pending migrations to apply.")
        return 0
    print(f"Applying {len(pending)} migration(s)")
    for path in pending:
        sql = path.read_text()
        checksum = hashlib.sha256(path.read_bytes()).hexdigest()
        script = f"BEGIN;\n{sql}\n;\n{RECORD_MIGRATION}\nCOMMIT;\n"
        try:
            psql(script, {"name": path.stem, "checksum": checksum}, timeout=300)
        except DatabaseError as exc:
            print("Error: P3018", file=sys.stderr)
            print(
                "A migration failed to apply; its transaction was rolled back.",
                file=sys.stderr,
            )
            print(f"Migration name: {path.stem}", file=sys.stderr)
            print(f"Database error:\n{exc}", file=sys.stderr)
            return 1
        print(f"Applied migration `{path.stem}`")
    print("All migrations have been successfully applied.")
    return 0


def seed() -> int:
    psql(
        "CREATE TABLE IF NOT EXISTS _standin_seed (name TEXT PRIMARY KEY);"
        " INSERT INTO _standin_seed VALUES ('demo') ON CONFLICT DO NOTHING;"
    )
    print("Seeded the database.")
    return 0


def main(argv: list[str]) -> int:
    usage = "usage: kametrix_standin.py serve | migrate status|deploy | seed"
    try:
        match argv:
            case ["serve"]:
                return serve()
            case ["migrate", "status"]:
                return migrate_status()
            case ["migrate", "deploy"]:
                return migrate_deploy()
            case ["seed"]:
                return seed()
            case _:
                print(usage, file=sys.stderr)
                return 2
    except DatabaseError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
