"""What the server holds for a stage, rendered from the stack: the compose file, the `.env`, the scripts."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import yaml
from pydantic import SecretStr

from components.config import AppSettings

SCRIPTS_DIR = Path(__file__).parent / "scripts"
SCRIPTS = ("lib.sh", "env.sh", "backup.sh", "migrate.sh", "switch.sh", "up.sh")
COMPOSE_FILE = "docker-compose.yml"
# The app repository's migrate service (target-app.md): status, deploy, status again.
MIGRATE_COMMAND = "npx prisma migrate status || true; npx prisma migrate deploy && npx prisma migrate status"
CONTAINER_PORT = 3000


def health_url(app: AppSettings) -> str:
    return f"http://127.0.0.1:{app.app_port}/api/health?build=true"


def compose_file(app: AppSettings) -> str:
    """The stage's compose project. Images come from APP_IMAGE / MIGRATE_IMAGE, which only the release steps set."""
    app_port = app.app_port if app.host_network else CONTAINER_PORT
    postgres: dict[str, object] = {
        "image": app.postgres_image,
        "container_name": app.db_container,
        "restart": "unless-stopped",
        "environment": {
            "POSTGRES_USER": "${POSTGRES_USER:?}",
            "POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?}",
            "POSTGRES_DB": "${POSTGRES_DB:?}",
            "PGPORT": str(app.postgres_port),
        },
        "volumes": ["postgres-data:/var/lib/postgresql/data"],
        "healthcheck": {
            "test": ["CMD-SHELL", 'pg_isready -U "$$POSTGRES_USER" -d "$$POSTGRES_DB"'],
            "interval": "5s",
            "timeout": "5s",
            "retries": 10,
        },
    }
    depends_on = {"postgres": {"condition": "service_healthy"}}
    app_service: dict[str, object] = {
        "image": "${APP_IMAGE:?set by the release steps}",
        "container_name": app.app_container,
        "restart": "unless-stopped",
        "env_file": [".env"],
        "environment": {"PORT": str(app_port)},
        "depends_on": depends_on,
        "healthcheck": {
            "test": ["CMD", "wget", "-qO-", f"http://127.0.0.1:{app_port}/api/health?quick=true"],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
            "start_period": "30s",
        },
    }
    migrate: dict[str, object] = {
        "image": "${MIGRATE_IMAGE:?set by the release steps}",
        "profiles": ["migrate"],
        "env_file": [".env"],
        "command": ["sh", "-c", MIGRATE_COMMAND],
        "depends_on": depends_on,
        "restart": "no",
    }
    if app.host_network:
        for service in (postgres, app_service, migrate):
            service["network_mode"] = "host"
    else:
        app_service["ports"] = [f"127.0.0.1:{app.app_port}:{CONTAINER_PORT}"]
    document = {
        "services": {"postgres": postgres, "app": app_service, "migrate": migrate},
        "volumes": {"postgres-data": {}},
    }
    return yaml.safe_dump(document, sort_keys=False)


def env_file(app: AppSettings, secrets: Mapping[str, SecretStr]) -> str:
    """The app's `.env`: its plain settings and secrets, one single-quoted KEY='value' a line."""
    database_host = f"127.0.0.1:{app.postgres_port}" if app.host_network else f"postgres:{app.postgres_port}"
    password = secrets["POSTGRES_PASSWORD"].get_secret_value()
    values = {
        "NODE_ENV": "production",
        "NEXT_PUBLIC_APP_URL": app.url,
        "POSTGRES_USER": app.postgres_user,
        "POSTGRES_DB": app.postgres_db,
        "DATABASE_URL": (
            f"postgresql://{quote(app.postgres_user, safe='')}:{quote(password, safe='')}"
            f"@{database_host}/{quote(app.postgres_db, safe='')}"
        ),
        "DATABASE_POOL_MIN": str(app.database_pool_min),
        "DATABASE_POOL_MAX": str(app.database_pool_max),
        "VAPI_PUBLIC_KEY": app.vapi_public_key,
        "GOOGLE_CLIENT_ID": app.google_client_id,
        "STRIPE_CURRENCY": app.stripe_currency,
        "SMTP_HOST": app.smtp_host,
        "SMTP_PORT": str(app.smtp_port),
        "SMTP_USER": app.smtp_user,
        "SMTP_FROM": app.smtp_from,
        **{name: value.get_secret_value() for name, value in secrets.items()},
    }
    return "".join(f"{name}='{value}'\n" for name, value in values.items())


def bundle(compose: str) -> str:
    """The compose file and the scripts, as a reproducible tar in base64, for the files step's stdin."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _add(tar, COMPOSE_FILE, compose.encode(), 0o644)
        for name in SCRIPTS:
            _add(tar, f"bin/{name}", (SCRIPTS_DIR / name).read_bytes(), 0o755)
    return base64.b64encode(buffer.getvalue()).decode()


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _add(tar: tarfile.TarFile, name: str, content: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = mode
    info.mtime = 0
    tar.addfile(info, io.BytesIO(content))
