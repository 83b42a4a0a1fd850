"""The single-container layout this project released before blue/green, and the old pipeline's order on it.

The layout: one `app` service (container `app.appContainer`) on the port the proxy takes over now,
beside the same `postgres` service, `postgres-data` volume and compose project. The order is
`old_pipeline.sh`'s.

The migration test starts a stage from this layout; the zero-downtime benchmark compares against it.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import yaml

from components import config, server_files
from embedded_default.target import registry_digest
from tests.e2e.stage import Stage

PIPELINE = Path(__file__).with_name("old_pipeline.sh")


def settings(stage: Stage) -> config.PlainConfig:
    """The stage's plain config, as the program reads it."""
    return stage.stack_config().plain


def compose_file(app: config.AppSettings) -> str:
    """The stage's compose file as the single-container layout had it: `app` where the colours and proxy are now."""
    document: dict[str, Any] = yaml.safe_load(server_files.compose_file(app))
    services = document["services"]
    single = services.pop("app-blue")
    del services["app-green"], services["proxy"]
    single["container_name"] = app.app_container
    # The one container took the port the proxy has now, read the one .env, and logged in as the database's owner.
    single["ports"] = [f"127.0.0.1:{app.proxy_port}:{server_files.CONTAINER_PORT}"]
    single["env_file"] = [".env"]
    services["postgres"]["image"] = app.postgres_image
    owner_url = "postgresql://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres:5432/${POSTGRES_DB}"
    for service in (single, services["migrate"]):
        service["environment"]["DATABASE_URL"] = owner_url
    document["services"] = {"postgres": services["postgres"], "app": single, "migrate": services["migrate"]}
    return yaml.safe_dump(document, sort_keys=False)


def image_refs(stage: Stage, version: str) -> tuple[str, str]:
    """`version`'s runner and migrate images, pinned to the digests the registry serves."""
    repository = stage.repository
    app, migrate = (registry_digest(f"{repository}:{tag}") for tag in (version, f"{version}-migrate"))
    assert app and migrate, f"{version} is not in the registry"
    return f"{repository}@{app}", f"{repository}@{migrate}"


def release(stage: Stage, version: str) -> subprocess.CompletedProcess[bytes]:
    """One release of `version` in the old pipeline's order, over SSH on the stage's own compose project."""
    plain = settings(stage)
    arguments = [
        plain.server.app_dir,
        plain.app.compose_project,
        *image_refs(stage, version),
        f"http://127.0.0.1:{plain.app.proxy_port}/api/health?build=true",
        str(plain.release.health_attempts),
        str(plain.release.health_interval_seconds),
    ]
    return stage.target.ssh(shlex.join(["bash", f"{plain.server.app_dir}/{PIPELINE.name}", *arguments]), timeout=600)


def install(stage: Stage, version: str) -> subprocess.CompletedProcess[bytes]:
    """Puts the single-container layout on the stage's server, with the program's own `.env` and the old
    pipeline beside it, and releases `version` on it; then writes the release record as the program did."""
    loaded = stage.stack_config()
    plain = loaded.plain
    env = server_files.env_file(plain.app, loaded.secrets.app)
    app_dir = shlex.quote(plain.server.app_dir)
    stage.target.ssh(
        f"mkdir -p {app_dir} && cat >{app_dir}/docker-compose.yml",
        stdin=compose_file(plain.app).encode(),
    )
    stage.target.ssh(f"cat >{app_dir}/{PIPELINE.name}", stdin=PIPELINE.read_bytes())
    stage.target.ssh(f"umask 077 && cat >{app_dir}/.env", stdin=env.encode())
    done = release(stage, version)
    if done.returncode == 0:
        app_image, migrate_image = image_refs(stage, version)
        record = [f"VERSION={version}", f"APP_IMAGE={app_image}", f"MIGRATE_IMAGE={migrate_image}"]
        stage.target.ssh(f"cat >{app_dir}/release.env", stdin="".join(f"{line}\n" for line in record).encode())
    return done
