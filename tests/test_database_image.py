"""Where a stage declares `backup`, its database runs PostgreSQL with pgBackRest: the building stage builds that
image from this project's Dockerfile on app.postgresImage, and a release installs it like everything else."""

from __future__ import annotations

from typing import Any

import pytest

from components.database_image import BUILD_CONTEXT, DatabaseImageMissingError, database_image_name
from tests import kit

COMMAND = "command:remote:Command"
IMAGE_BUILD = "docker:index/image:Image"
REGISTRY_LOOKUP = "docker:index/getRegistryImage:getRegistryImage"
APP_REPOSITORY = "ghcr.io/kametrix-org/kametrix/kametrix"
BASE = "postgres:16-alpine"
DATABASE_IMAGE = database_image_name(APP_REPOSITORY, BASE)
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


def backups(stage: str, **overrides: Any) -> dict[str, Any]:
    return {
        "backup": {
            "repository": {"endpoint": "s3.eu-central-1.amazonaws.com", "bucket": "kametrix-backups",
                           "region": "eu-central-1", "path": f"/{stage}"},
        },
        **overrides,
    }  # fmt: skip


def database_flag(deployment: kit.Deployment) -> str:
    create = deployment.one(COMMAND, "server-database").plain("create")
    return create.split(" --postgres-image ", 1)[1].split(" ", 1)[0]


def test_a_building_stage_with_backups_builds_its_database_image_and_installs_it_once_pushed() -> None:
    deployment = kit.run_stack("staging", overrides=backups("staging"), secrets=BACKUP_SECRETS)
    built = deployment.one(IMAGE_BUILD, "database-image-build")
    assert built.plain("imageName") == DATABASE_IMAGE
    build = built.plain("build")
    assert (build["context"], build["dockerfile"]) == (BUILD_CONTEXT, f"{BUILD_CONTEXT}/Dockerfile")
    assert build["args"] == {"POSTGRES_IMAGE": BASE}
    assert database_flag(deployment) == DATABASE_IMAGE
    assert deployment.depends_on(deployment.one(COMMAND, "server-database"), built), "pulled before it was pushed"


def test_a_deploying_stage_installs_the_database_image_its_building_stage_pushed_for_the_same_base() -> None:
    registry = APP_TAGS | {DATABASE_IMAGE: kit.digest_of(DATABASE_IMAGE)}
    deployment = kit.run_stack(
        "production", overrides=backups("production"), secrets=BACKUP_SECRETS, registry_tags=registry
    )
    assert deployment.of_type(IMAGE_BUILD) == [], "production built an image"
    assert (REGISTRY_LOOKUP, DATABASE_IMAGE) in [(token, args.get("name")) for token, args in deployment.invokes]
    assert database_flag(deployment) == DATABASE_IMAGE


def test_a_database_image_never_built_stops_the_update_before_the_server_naming_app_postgres_image() -> None:
    other = "postgres:17-alpine"
    deployment, error = kit.attempt_stack(
        "production",
        overrides=backups("production", **{"app.postgresImage": other}),
        secrets=BACKUP_SECRETS,
        registry_tags=APP_TAGS,
    )
    assert isinstance(error, DatabaseImageMissingError), error
    message = str(error)
    assert database_image_name(APP_REPOSITORY, other) in message, message
    assert "app.postgresImage" in message and repr(other) in message and "Allowed" in message, message
    assert "TESTSECRET" not in message
    assert deployment.of_type(COMMAND) == [], "a server step was declared for an image the registry lacks"


@pytest.mark.parametrize(
    "reported",
    [
        "Got bad response from registry: 403 Forbidden",
        "Error during registry request: dial tcp: lookup ghcr.io: no such host",
    ],
)
def test_a_registry_that_cannot_answer_does_not_stop_a_rollback_to_the_database_image_the_server_holds(
    reported: str,
) -> None:
    failures = {DATABASE_IMAGE: reported} | {name: reported for name in APP_TAGS}
    deployment, error = kit.attempt_stack(
        "production",
        overrides=backups("production", version="v1.4.1"),
        secrets=BACKUP_SECRETS,
        registry_failures=failures,
    )
    assert error is None, error
    assert database_flag(deployment) == DATABASE_IMAGE


def test_the_image_is_named_by_its_inputs_so_stages_with_one_base_share_it_and_another_base_gets_its_own() -> None:
    assert database_image_name(APP_REPOSITORY, BASE) == DATABASE_IMAGE
    assert database_image_name(APP_REPOSITORY, "postgres:17-alpine") != DATABASE_IMAGE
    assert DATABASE_IMAGE.startswith(f"{APP_REPOSITORY}-postgres:pgbackrest-")


def test_without_backups_the_database_runs_app_postgres_image_as_declared() -> None:
    deployment = kit.run_stack("staging")
    assert all(image.name != "database-image-build" for image in deployment.of_type(IMAGE_BUILD))
    assert database_flag(deployment) == BASE
