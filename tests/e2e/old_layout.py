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
from tests import kit
from tests.e2e.engine import LocalStack, registry_tags

PIPELINE = Path(__file__).with_name("old_pipeline.sh")


def settings(stage: LocalStack, version: str) -> config.PlainConfig:
    """The stage's plain config, as the program reads it."""
    raw, secret_keys = kit.stack_config("local", {**stage.overrides, "version": version}, stage.secrets)
    return config.load("local", raw, set(secret_keys)).plain


def compose_file(app: config.AppSettings) -> str:
    """The stage's compose file as the single-container layout had it: `app` where the colours and proxy are now."""
    document: dict[str, Any] = yaml.safe_load(server_files.compose_file(app))
    services = document["services"]
    single = services.pop("app-blue")
    del services["app-green"], services["proxy"]
    single["container_name"] = app.app_container
    single["environment"]["PORT"] = str(app.proxy_port)
    single["healthcheck"]["test"][-1] = f"http://127.0.0.1:{app.proxy_port}/api/health?quick=true"
    document["services"] = {"postgres": services["postgres"], "app": single, "migrate": services["migrate"]}
    return yaml.safe_dump(document, sort_keys=False)


def image_refs(stage: LocalStack, version: str) -> tuple[str, str]:
    """`version`'s runner and migrate images, pinned to the digests the registry serves."""
    tags = registry_tags(stage.repository, [version])
    repository = stage.target.app_repository
    return f"{repository}@{tags[f'{repository}:{version}']}", f"{repository}@{tags[f'{repository}:{version}-migrate']}"


def release(stage: LocalStack, version: str) -> subprocess.CompletedProcess[bytes]:
    """One release of `version` in the old pipeline's order, over SSH on the stage's own compose project."""
    plain = settings(stage, version)
    arguments = [
        plain.server.app_dir,
        plain.app.compose_project,
        *image_refs(stage, version),
        f"http://127.0.0.1:{plain.app.proxy_port}/api/health?build=true",
        str(plain.release.health_attempts),
        str(plain.release.health_interval_seconds),
    ]
    return stage.target.ssh(shlex.join(["bash", f"{plain.server.app_dir}/{PIPELINE.name}", *arguments]), timeout=600)


def install(stage: LocalStack, version: str) -> subprocess.CompletedProcess[bytes]:
    """Puts the single-container layout on the stage's server, with the program's own `.env` and the old
    pipeline beside it, and releases `version` on it; then writes the release record as the program did."""
    plain = settings(stage, version)
    plan = stage.plan(version)
    assert not isinstance(plan, BaseException), plan
    env = next(step.stdin for step in plan if step.name == "server-env")
    assert env is not None
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
