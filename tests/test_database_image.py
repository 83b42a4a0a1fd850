"""Where a stage declares `backup`, its database runs PostgreSQL with pgBackRest: the building stage builds that
image from this project's Dockerfile on app.postgresImage, a release installs it by digest like the app's, and
production runs only one whose digest it records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.database_image import BUILD_CONTEXT, DatabaseImageMissingError
from components.database_tag import DOCKERFILE_DIR, database_tag
from components.image import DigestChangedError
from tests import kit

COMMAND = "command:remote:Command"
IMAGE_BUILD = "docker:index/image:Image"
APP_REPOSITORY = "ghcr.io/kametrix-org/kametrix/kametrix"
REPOSITORY = f"{APP_REPOSITORY}-postgres"
BASE = "postgres:16-alpine"
TAG = database_tag(BASE)
TAGGED = f"{REPOSITORY}:{TAG}"
BUILT = kit.digest_of(TAGGED)
RECORDED = "sha256:" + "d4" * 32
# What production's registry holds for its app: the digests Pulumi.production.yaml records.
APP_TAGS = {
    f"{APP_REPOSITORY}:{tag}": kit.digest_of(f"{APP_REPOSITORY}:{tag}")
    for tag in ("v1.4.1", "v1.4.1-migrate", "v1.4.2", "v1.4.2-migrate")
}
BACKUP_SECRETS = {
    "backupCipherPass": "TESTSECRET-backup-cipher-pass-0a1b",
    "backupRepositoryKey": "TESTSECRET-backup-key-2c3d",
    "backupRepositorySecret": "TESTSECRET-backup-secret-4e5f",
}
RECORD = kit.PROJECT_DIR / "scripts" / "record_database_image.py"


def with_backups(stage: str, **overrides: Any) -> dict[str, Any]:
    repository = {"endpoint": "s3.eu-central-1.amazonaws.com", "bucket": "kametrix-backups", "path": f"/{stage}"}
    return {"backup": {"repository": repository}, **overrides}


def production(recorded: dict[str, str] | None = None, **kwargs: Any) -> tuple[kit.Deployment, BaseException | None]:
    overrides = with_backups(
        "production", **{"image.databaseDigests": {TAG: RECORDED} if recorded is None else recorded}
    )
    return kit.attempt_stack("production", overrides=overrides, secrets=BACKUP_SECRETS, **kwargs)


def database_flag(deployment: kit.Deployment) -> str:
    create = deployment.one(COMMAND, "server-database").plain("create")
    return create.split(" --postgres-image ", 1)[1].split(" ", 1)[0]


def test_a_building_stage_with_backups_builds_its_database_image_and_runs_it_by_digest_once_pushed() -> None:
    deployment = kit.run_stack("staging", overrides=with_backups("staging"), secrets=BACKUP_SECRETS)
    built = deployment.one(IMAGE_BUILD, "database-image-build")
    assert built.plain("imageName") == TAGGED
    build = built.plain("build")
    assert (build["context"], build["dockerfile"]) == (BUILD_CONTEXT, f"{BUILD_CONTEXT}/Dockerfile")
    assert (kit.PROJECT_DIR / build["dockerfile"]).is_file(), build
    assert build["args"] == {"POSTGRES_IMAGE": BASE}
    pushed = kit.digest_of("database-image-build")  # what the kit's registry gives the pushed image
    assert database_flag(deployment) == f"{REPOSITORY}@{pushed}"
    assert deployment.output("databaseImageRef") == f"{TAGGED}@{pushed}"


def test_production_runs_the_recorded_database_image_by_its_digest_and_builds_nothing() -> None:
    deployment, error = production(registry_tags=APP_TAGS | {TAGGED: RECORDED})
    assert error is None, error
    assert deployment.of_type(IMAGE_BUILD) == [], "production built an image"
    assert database_flag(deployment) == f"{REPOSITORY}@{RECORDED}"


@pytest.mark.parametrize(
    "reported",
    [
        "Got bad response from registry: 404 Not Found",
        "Got bad response from registry: 403 Forbidden",
        "Error during registry request: dial tcp: lookup ghcr.io: no such host",
    ],
)
def test_a_recorded_database_image_is_deployed_whichever_way_the_registry_fails(reported: str) -> None:
    """A rollback must work while the registry is down: the server keeps the image it runs."""
    deployment, error = production(registry_failures={TAGGED: reported} | {tag: reported for tag in APP_TAGS})
    assert error is None, error
    assert database_flag(deployment) == f"{REPOSITORY}@{RECORDED}"


def test_a_database_tag_pushed_again_with_other_bytes_stops_the_update_before_the_server() -> None:
    deployment, error = production(registry_tags=APP_TAGS | {TAGGED: "sha256:" + "e" * 64})
    assert isinstance(error, DigestChangedError), error
    assert RECORDED in str(error) and "image.databaseDigests" in str(error), error
    assert deployment.of_type(COMMAND) == []


def test_production_refuses_a_database_image_it_has_not_recorded_naming_key_allowed_and_received() -> None:
    deployment, error = production(recorded={}, registry_tags=APP_TAGS | {TAGGED: BUILT})
    assert error is not None
    message = str(error)
    for named in ("kametrix-deploy:image.databaseDigests", "none recorded yet", repr(BASE), TAG,
                  "scripts/record_database_image.py"):  # fmt: skip
        assert named in message, f"{named} is not in: {message}"
    assert "TESTSECRET" not in message
    assert deployment.of_type(COMMAND) == []


def test_an_unrecorded_database_image_runs_by_the_registrys_digest_with_a_warning_where_not_production() -> None:
    stack = kit.run_stack("local", overrides=with_backups("local"), secrets=BACKUP_SECRETS)
    local_repository = "127.0.0.1:5000/kametrix/kametrix-postgres"
    base = kit.stack_file("local")["config"]["kametrix-deploy:app"]["postgresImage"]
    assert database_flag(stack) == f"{local_repository}@{kit.digest_of(f'{local_repository}:{database_tag(base)}')}"


def test_a_database_image_never_built_stops_the_update_before_the_server_naming_app_postgres_image() -> None:
    other = "postgres:17-alpine"
    deployment, error = kit.attempt_stack(
        "local", overrides=with_backups("local", **{"app.postgresImage": other}), secrets=BACKUP_SECRETS,
        registry_tags={f"127.0.0.1:5000/kametrix/kametrix:{tag}": BUILT for tag in ("v1.0.0", "v1.0.0-migrate")},
    )  # fmt: skip
    assert isinstance(error, DatabaseImageMissingError), error
    message = str(error)
    assert database_tag(other) in message and "app.postgresImage" in message and repr(other) in message, message
    assert "Allowed" in message and "TESTSECRET" not in message, message
    assert deployment.of_type(COMMAND) == [], "a server step was declared for an image the registry lacks"


def test_the_tag_names_the_inputs_so_one_base_shares_it_and_another_base_or_dockerfile_gets_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert database_tag(BASE) == TAG and database_tag("postgres:17-alpine") != TAG
    changed = tmp_path / "database"
    changed.mkdir()
    (changed / "Dockerfile").write_text((DOCKERFILE_DIR / "Dockerfile").read_text() + "RUN true\n")
    monkeypatch.setattr("components.database_tag.DOCKERFILE_DIR", changed)
    assert database_tag(BASE) != TAG


def test_without_backups_the_database_runs_app_postgres_image_as_declared() -> None:
    deployment = kit.run_stack("local")
    assert all(image.name != "database-image-build" for image in deployment.of_type(IMAGE_BUILD))
    assert database_flag(deployment) == kit.stack_file("local")["config"]["kametrix-deploy:app"]["postgresImage"]
    assert "databaseImageRef" not in deployment.outputs


def record(stack_file: Path, image: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RECORD), "--stack-file", str(stack_file), "--image", image],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_recorded_database_image_is_what_production_then_runs_and_recording_again_changes_nothing(
    tmp_path: Path,
) -> None:
    stack_file = tmp_path / "Pulumi.production.yaml"
    stack_file.write_text((kit.PROJECT_DIR / "Pulumi.production.yaml").read_text())
    result = record(stack_file, f"{TAGGED}@{BUILT}")
    assert result.returncode == 0, result.stderr
    recorded = yaml.safe_load(stack_file.read_text())["config"]["kametrix-deploy:image"]["databaseDigests"]
    assert recorded == {TAG: BUILT}
    deployment, error = production(recorded=recorded, registry_tags=APP_TAGS | {TAGGED: BUILT})
    assert error is None, error
    assert database_flag(deployment) == f"{REPOSITORY}@{BUILT}"
    before = stack_file.read_text()
    again = record(stack_file, f"{TAGGED}@{BUILT}")
    assert again.returncode == 0 and "already recorded" in again.stdout and stack_file.read_text() == before


@pytest.mark.parametrize(
    ("image", "named"),
    [
        (f"{TAGGED}@{'sha256:' + 'e' * 64}", "is recorded as"),
        (f"{REPOSITORY}:latest@{BUILT}", "pgbackrest-<16 hex>"),
        (f"ghcr.io/someone/else-postgres:{TAG}@{BUILT}", REPOSITORY),
    ],
)
def test_recording_refuses_another_digest_for_a_tag_and_an_image_not_the_stages(
    tmp_path: Path, image: str, named: str
) -> None:
    stack_file = tmp_path / "Pulumi.production.yaml"
    stack_file.write_text((kit.PROJECT_DIR / "Pulumi.production.yaml").read_text())
    assert record(stack_file, f"{TAGGED}@{BUILT}").returncode == 0
    before = stack_file.read_text()
    refused = record(stack_file, image)
    assert refused.returncode == 1 and named in refused.stderr, refused.stderr
    assert stack_file.read_text() == before
