"""A release is `pulumi up` with a new pinned version; a rollback is the same with an earlier one."""

from __future__ import annotations

import base64
import io
import itertools
import re
import shlex
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic.alias_generators import to_snake

from components import config, shared_facts
from components.database_tag import database_tag
from components.image import (
    DigestChangedError,
    RegistryAuthenticationError,
    RegistryUnreachableError,
    VersionNotInRegistryError,
)
from components.server_files import LIBRARIES
from tests import kit
from tests.kit import Deployment, Resource
from tests.test_swarm_config import SWARM

COMMAND = "command:remote:Command"
RELEASE = "github:index/release:Release"
IMAGE_BUILD = "docker:index/image:Image"
GOLDEN_PROXY = Path(__file__).parent / "golden" / "proxy"
RELEASE_STEPS = ["server-backup", "server-migrate", "server-up"]
STEPS = ["server-files", "server-env", "server-database", *RELEASE_STEPS]
REPOSITORY = "ghcr.io/kametrix-org/kametrix/kametrix"
# The database image staging and production run (both declare backup): postgres:16-alpine with pgBackRest.
DATABASE_IMAGE = f"{REPOSITORY}-postgres:{database_tag('postgres:16-alpine')}"
# What the registry answers: the digests Pulumi.production.yaml records for each tag and its database image.
REGISTRY = {
    f"{REPOSITORY}:{tag}": kit.digest_of(f"{REPOSITORY}:{tag}")
    for tag in ("v1.4.1", "v1.4.1-migrate", "v1.4.2", "v1.4.2-migrate")
} | {DATABASE_IMAGE: kit.digest_of(DATABASE_IMAGE)}
V142 = REGISTRY[f"{REPOSITORY}:v1.4.2"]
LOCAL_REPOSITORY = "127.0.0.1:5000/kametrix/kametrix"


def production(version: str, **overrides: Any) -> Deployment:
    return kit.run_stack("production", overrides={"version": version, **overrides}, registry_tags=REGISTRY)


def steps(deployment: Deployment) -> dict[str, Resource]:
    return {r.name: r for r in deployment.of_type(COMMAND)}


def comparable(resource: Resource) -> dict[str, Any]:
    return {
        "inputs": kit.unwrap(resource.inputs),
        "secret_inputs": sorted(k for k in resource.inputs if resource.is_secret(k)),
        "dependencies": resource.dependencies,
        "options": (resource.retain_on_delete, resource.protect, resource.additional_secret_outputs),
    }


def changed_between(before: Deployment, after: Deployment) -> set[str]:
    old = {r.urn: comparable(r) for r in before.resources}
    new = {r.urn: comparable(r) for r in after.resources}
    return {urn.rpartition("::")[2] for urn in old.keys() | new.keys() if old.get(urn) != new.get(urn)}


def test_release_steps_run_in_order_files_env_database_backup_migrate_up() -> None:
    deployment = production("v1.4.2")
    declared = steps(deployment)
    assert list(declared) == STEPS, list(declared)
    for earlier, later in itertools.pairwise(STEPS):
        assert deployment.depends_on(declared[later], declared[earlier]), (
            f"{declared[later].urn} does not wait for {declared[earlier].urn}"
        )


def test_the_server_only_ever_runs_an_image_pinned_by_digest() -> None:
    deployment = production("v1.4.2")
    for step in ("server-backup", "server-migrate", "server-up"):
        command = steps(deployment)[step].plain("create")
        assert f"{REPOSITORY}@{V142}" in command, f"{steps(deployment)[step].urn}: {command}"
        assert ":v1.4.2 " not in command and "latest" not in command, steps(deployment)[step].urn
    assert deployment.output("imageRef") == f"{REPOSITORY}@{V142}"


def test_a_new_version_changes_only_the_release_s_steps_each_naming_the_release() -> None:
    """The stage's steps (files, env, database) have nothing to do for a new version: they name no release, so a
    release runs backup, migrate and up alone, under that release's lock."""
    changed = changed_between(production("v1.4.1"), production("v1.4.2"))
    assert changed == set(RELEASE_STEPS), changed
    for step in steps(production("v1.4.2")).values():
        flags = shlex.split(step.plain("create").rpartition("bash ")[2])
        if step.urn.rpartition("::")[2] in RELEASE_STEPS:
            assert flags[flags.index("--release") + 1] == f"v1.4.2@{V142[7:19]}", f"{step.urn} names no release"
        else:
            assert "--release" not in flags, f"{step.urn} names the release: a new version would run it"


def settings_of(deployment: Deployment) -> dict[str, str]:
    """The settings file the files step installs: what the steps read when they run."""
    lines = server_files(deployment)[shared_facts.SETTINGS_FILE].splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_who_asked_for_the_release_reaches_the_server_in_its_settings() -> None:
    requester = "https://github.com/kametrix/kametrix-deploy/actions/runs/42 (alice)"
    assert settings_of(production("v1.4.2", **{"release.requestedBy": requester}))["REQUESTED_BY"] == requester
    assert settings_of(production("v1.4.2"))["REQUESTED_BY"] == "", "no requester is said as none"


@pytest.mark.parametrize(
    ("override", "setting", "value"),
    [
        ({"release.lockTimeoutMinutes": 45}, "LOCK_TIMEOUT_SECONDS", "2700"),
        ({"release.requestedBy": "incident 42 (alice)"}, "REQUESTED_BY", "incident 42 (alice)"),
        ({"release.imagesToKeep": 7}, "IMAGES_TO_KEEP", "7"),
        ({"release.healthAttempts": 12}, "HEALTH_ATTEMPTS", "12"),
        ({"release.healthIntervalSeconds": 3}, "HEALTH_INTERVAL_SECONDS", "3"),
    ],
)
def test_a_setting_the_steps_read_when_they_run_reruns_the_files_step_alone(
    override: dict[str, Any], setting: str, value: str
) -> None:
    """Nothing restarts the app, nor re-runs a backup, for a setting that changes no file `up` switches with."""
    changed = production("v1.4.2", **override)
    assert changed_between(production("v1.4.2"), changed) == {"server-files"}
    assert settings_of(changed)[setting] == value


def test_a_rollback_runs_exactly_the_server_commands_of_the_original_release() -> None:
    original, _, rolled_back = production("v1.4.1"), production("v1.4.2"), production("v1.4.1")
    for name, step in steps(original).items():
        again = steps(rolled_back)[name]
        assert comparable(step) == comparable(again), f"{step.urn} differs on rollback"


def test_a_rollback_never_deletes_a_published_release() -> None:
    for deployment in (production("v1.4.2"), production("v1.4.1")):
        releases = {r.inputs["tagName"]: r for r in deployment.of_type(RELEASE)}
        assert set(releases) == {"v1.4.1", "v1.4.2"}, "a recorded release stopped being declared"
        for release in releases.values():
            assert release.retain_on_delete, f"{release.urn} would delete the GitHub release"
            assert release.inputs["draft"] is False and release.inputs["prerelease"] is False, release.urn


def test_a_release_is_published_for_its_commit_only_after_the_version_serves() -> None:
    deployment = production("v1.4.2")
    release = deployment.one(RELEASE, "release-v1.4.2")
    assert release.inputs["targetCommitish"] == "3f9c2a1d7b8e4f6a0c5d2e9b1a7f3c8d4e6b2a90", release.urn
    assert deployment.depends_on(release, steps(deployment)["server-up"]), f"{release.urn} is published before up"


def test_a_version_without_recorded_digests_missing_from_the_registry_fails_before_any_server_step() -> None:
    deployment, error = kit.attempt_stack("local", overrides={"version": "v9.9.9"}, registry_tags={})
    assert isinstance(error, VersionNotInRegistryError)
    assert "'v9.9.9'" in str(error) and "127.0.0.1:5000/kametrix/kametrix:v9.9.9" in str(error)
    assert deployment.of_type(COMMAND) == [], [r.urn for r in deployment.of_type(COMMAND)]


def test_a_recorded_version_deploys_its_recorded_digests_even_while_the_registry_cannot_answer() -> None:
    recorded = kit.stack_file("production")["config"]["kametrix-deploy:image"]["digests"]["v1.4.1"]
    deployment = kit.run_stack("production", overrides={"version": "v1.4.1"}, registry_tags={})
    assert deployment.output("imageRef") == f"{REPOSITORY}@{recorded['app']}"
    assert deployment.output("migrateImageRef") == f"{REPOSITORY}@{recorded['migrate']}"
    assert list(steps(deployment)) == STEPS


def test_a_tag_pushed_again_with_other_bytes_stops_the_update_before_the_server_is_touched() -> None:
    recorded = REGISTRY[f"{REPOSITORY}:v1.4.1"]
    pushed_again = "sha256:" + "e" * 64
    deployment, error = kit.attempt_stack(
        "production",
        overrides={"version": "v1.4.1"},
        registry_tags={**REGISTRY, f"{REPOSITORY}:v1.4.1": pushed_again},
    )
    assert isinstance(error, DigestChangedError), error
    for named in ("'v1.4.1'", recorded, pushed_again, "scripts/record_release.py", "docker push"):
        assert named in str(error), f"the error does not name {named}: {error}"
    assert deployment.of_type(COMMAND) == [], [r.urn for r in deployment.of_type(COMMAND)]


@pytest.mark.parametrize(
    ("reported", "kind", "names"),
    [
        (
            "Got error when attempting to fetch image version kametrix/kametrix:v1.0.0 from registry: "
            "Got bad response from registry: 404 Not Found",
            VersionNotInRegistryError,
            ["version 'v1.0.0' is not in the registry 127.0.0.1:5000", "kametrix-deploy:version"],
        ),
        (
            "Got error when attempting to fetch image version kametrix/kametrix:v1.0.0 from registry: "
            "Got bad response from registry: 403 Forbidden",
            RegistryAuthenticationError,
            ["the registry 127.0.0.1:5000 refused the credentials", "image.username ('local')"],
        ),
        (
            'Error during registry request: Head "https://127.0.0.1:5000/v2/kametrix/kametrix/manifests/v1.0.0":'
            " dial tcp 127.0.0.1:5000: connect: connection refused",
            RegistryUnreachableError,
            ["the registry 127.0.0.1:5000 could not be reached", "kametrix-deploy:image.registry ('127.0.0.1:5000')"],
        ),
    ],
)
def test_a_registry_failure_says_whether_the_tag_is_missing_the_credentials_refused_or_the_registry_unreachable(
    reported: str, kind: type[Exception], names: list[str]
) -> None:
    """A version without recorded digests needs the registry's answer: the local stack records none."""
    deployment, error = kit.attempt_stack(
        "local", overrides={"version": "v1.0.0"}, registry_failures={f"{LOCAL_REPOSITORY}:v1.0.0": reported}
    )
    assert type(error) is kind, error
    message = str(error)
    assert all(name in message for name in names), message
    assert f"{LOCAL_REPOSITORY}:v1.0.0" in message, message
    assert ("is not in the registry" in message) == (kind is VersionNotInRegistryError), message
    assert "TESTSECRET" not in message, "a registry error printed a secret"
    assert deployment.of_type(COMMAND) == [], "a server step was declared after the registry failed"


@pytest.mark.parametrize(
    "reported",
    [
        "Got bad response from registry: 404 Not Found",
        "Got bad response from registry: 403 Forbidden",
        "Error during registry request: dial tcp: lookup ghcr.io: no such host",
    ],
)
def test_a_recorded_version_is_deployed_whichever_way_the_registry_fails(reported: str) -> None:
    recorded = kit.stack_file("production")["config"]["kametrix-deploy:image"]["digests"]["v1.4.1"]
    failures = {f"{REPOSITORY}:{tag}": reported for tag in ("v1.4.1", "v1.4.1-migrate")}
    deployment, error = kit.attempt_stack("production", overrides={"version": "v1.4.1"}, registry_failures=failures)
    assert error is None, error
    assert deployment.output("imageRef") == f"{REPOSITORY}@{recorded['app']}"
    assert deployment.output("migrateImageRef") == f"{REPOSITORY}@{recorded['migrate']}"
    assert list(steps(deployment)) == STEPS


def test_a_recorded_staging_version_is_never_built_again() -> None:
    recorded = kit.stack_file("staging")["config"]["kametrix-deploy:image"]["digests"]["staging-8d2e6b1"]
    deployment = kit.run_stack("staging", overrides={"version": "staging-8d2e6b1"})
    built = [r.name for r in deployment.of_type(IMAGE_BUILD)]
    assert built == ["database-image-build"], f"a recorded version was built again: {built}"
    assert deployment.output("imageRef").endswith(f"@{recorded['app']}")
    assert deployment.output("migrateImageRef").endswith(f"@{recorded['migrate']}")


@pytest.mark.parametrize(
    ("stack", "mode", "backups"),
    [("production", "restore-point", "a fingerprint"), ("staging", "restore-point", "a fingerprint"),
     ("local", "before-migrations", "none")],
)  # fmt: skip
def test_the_backup_step_is_told_the_stages_backup_policy(stack: str, mode: str, backups: str) -> None:
    """Staging and production back up to their repository and mark a restore point; local dumps before migrating."""
    for on_rollback in ("no", "yes"):
        deployment = kit.run_stack(stack, overrides={"release.backupOnRollback": on_rollback == "yes"})
        command = steps(deployment)["server-backup"].plain("create")
        found = re.search(r" --backup (\S+) --backup-on-rollback (\S+) --backups (\S+)$", command)
        assert found and found[1] == mode and found[2] == on_rollback, command
        assert (found[3] == "none") == (backups == "none"), command


def test_staging_builds_once_and_pushes_both_stages_of_the_dockerfile() -> None:
    staging = kit.run_stack("staging")
    builds = {r.name: r for r in staging.of_type(IMAGE_BUILD)}
    assert set(builds) == {"image-app", "image-migrate", "database-image-build"}
    app, migrate = builds["image-app"], builds["image-migrate"]
    assert app.inputs["imageName"] == f"{REPOSITORY}:staging-3f9c2a1", app.urn
    assert migrate.inputs["imageName"] == f"{REPOSITORY}:staging-3f9c2a1-migrate", migrate.urn
    assert app.inputs["build"]["target"] == "runner" and migrate.inputs["build"]["target"] == "builder"
    assert app.inputs["build"]["args"] == {
        "BUILD_ID": "staging-3f9c2a1",
        "GIT_SHA": "3f9c2a1d7b8e4f6a0c5d2e9b1a7f3c8d4e6b2a90",
        "BUILD_TIMESTAMP": "2026-11-27T16:42:00Z",
        "NODE_ENV": "production",
    }, app.urn
    assert app.is_secret("registry") or kit.unwrap(app.inputs["registry"])["password"] is not None
    assert staging.output("imageRef") == f"{REPOSITORY}@{kit.digest_of('image-app')}"


def test_production_never_builds_it_resolves_existing_versions() -> None:
    deployment = production("v1.4.2")
    assert deployment.of_type(IMAGE_BUILD) == []
    looked_up = sorted(args["name"] for token, args in deployment.invokes if token.endswith("getRegistryImage"))
    assert looked_up == sorted([f"{REPOSITORY}:v1.4.2", f"{REPOSITORY}:v1.4.2-migrate", DATABASE_IMAGE])


def test_the_env_file_travels_on_stdin_as_a_secret_and_its_output_is_hidden() -> None:
    env = steps(production("v1.4.2"))["server-env"]
    assert env.is_secret("stdin"), f"{env.urn}: .env is not a secret"
    assert "POSTGRES_PASSWORD='TESTSECRET-postgres-password-91ab'" in env.plain("stdin"), env.urn
    assert env.inputs["logging"] == "none", env.urn
    assert {"stdout", "stderr"} <= set(env.additional_secret_outputs), env.urn


def test_changing_one_app_secret_stages_it_and_cuts_over_once_without_a_backup_or_migration() -> None:
    before = kit.run_stack("production", registry_tags=REGISTRY)
    after = kit.run_stack("production", registry_tags=REGISTRY, secrets={"stripeSecretKey": "TESTSECRET-rotated"})
    assert changed_between(before, after) == {"server-env", "server-up"}
    assert steps(after)["server-up"].is_secret("triggers"), "up's trigger derived from the .env is not secret"


def test_no_step_can_undo_a_release_and_none_relies_on_ssh_environment() -> None:
    for resource in production("v1.4.2").of_type(COMMAND):
        assert "delete" not in resource.inputs, f"{resource.urn} has a delete command"
        assert "environment" not in resource.inputs, f"{resource.urn} needs AcceptEnv on the server"
        assert resource.inputs["addPreviousOutputInEnv"] is False, resource.urn


@pytest.mark.parametrize("overrides", [{}, SWARM], ids=["one host", "swarm"])
def test_every_step_runs_on_the_provider_whose_id_names_the_state(overrides: dict[str, Any]) -> None:
    """An update then starts one command plugin: the engine loads a plugin per provider, one after the other, and
    a default provider beside the marker would be a second one before the first step."""
    deployment = kit.run_stack("local", overrides=overrides)
    marker = deployment.one("pulumi:providers:command", shared_facts.STATE_MARKER)
    commands = deployment.of_type(COMMAND)
    assert len(commands) >= 6
    for resource in commands:
        assert resource.provider.startswith(f"{marker.urn}::"), f"{resource.urn} runs on {resource.provider}"


def test_every_step_pins_the_servers_host_key_and_keeps_its_ssh_key_secret() -> None:
    for resource in production("v1.4.2").of_type(COMMAND):
        connection = kit.unwrap(resource.inputs["connection"])
        assert connection["hostKey"].startswith("ssh-ed25519 "), f"{resource.urn}: host key not pinned"
        assert connection["host"] == "prod.kametrix.example", resource.urn
        assert kit.find_secret_leaks(Deployment("p", [resource], {}, [])).leaks == [], resource.urn


def test_backup_and_migrate_rerun_exactly_when_the_digest_or_their_files_change() -> None:
    deployment = production("v1.4.2")
    for name in ("server-backup", "server-migrate", "server-up"):
        triggers = steps(deployment)[name].plain("triggers")
        assert f"{REPOSITORY}@{V142}" in triggers, f"{steps(deployment)[name].urn}: {triggers}"
    assert "triggers" not in steps(deployment)["server-env"].inputs


@pytest.mark.parametrize("stack", ["staging", "production", "local"])
def test_the_stack_reports_what_a_release_left_behind(stack: str) -> None:
    deployment = kit.run_stack(stack)
    assert {"version", "imageRef", "appUrl", "latestBackup", "previousVersion"} <= set(deployment.outputs)


def server_files(deployment: Deployment) -> dict[str, str]:
    """What the files step installs under the app directory, by path."""
    return {name: content for name, (content, _) in server_files_with_modes(deployment).items()}


def server_files_with_modes(deployment: Deployment) -> dict[str, tuple[str, int]]:
    bundle = base64.b64decode(steps(deployment)["server-files"].plain("stdin"))
    files = {}
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        for member in tar.getmembers():
            content = tar.extractfile(member)
            assert content is not None, member.name
            files[member.name] = (content.read().decode(), member.mode)
    return files


def test_the_server_scripts_are_executable_and_their_libraries_are_not() -> None:
    modes = {name: mode for name, (_, mode) in server_files_with_modes(production("v1.4.2")).items()}
    libraries = {name: mode for name, mode in modes.items() if name.startswith("bin/lib/")}
    scripts = {name: mode for name, mode in modes.items() if name.startswith("bin/") and name not in libraries}
    assert set(libraries) == {"bin/lib/facts.sh", *(f"bin/{name}" for name in LIBRARIES)}
    assert set(libraries.values()) == {0o644}, libraries
    assert scripts and set(scripts.values()) == {0o755}, scripts


def test_the_files_step_installs_nothing_before_it_holds_the_release_lock() -> None:
    command = steps(production("v1.4.2"))["server-files"].plain("create")
    unpacked, _, installed = command.partition('bash "$staged/bin/files.sh"')
    assert installed, command
    assert '-C "$staged"' in unpacked and "mktemp -d /opt/kametrix/.files." in unpacked, command


def test_the_app_is_reached_only_through_the_proxy_which_sends_traffic_to_the_live_colour() -> None:
    files = server_files(production("v1.4.2"))
    services = yaml.safe_load(files["docker-compose.yml"])["services"]
    assert set(services) == {"postgres", "app-blue", "app-green", "proxy", "migrate", "backup-scheduler"}
    assert services["proxy"]["ports"] == ["127.0.0.1:3000:3000"], "the front proxy's port moved"
    assert services["app-blue"]["ports"] == ["127.0.0.1:3001:3000"]
    assert services["app-green"]["ports"] == ["127.0.0.1:3002:3000"]
    assert services["proxy"]["volumes"] == ["./proxy:/etc/kametrix-proxy:ro"]
    nginx = files["proxy/nginx.conf"]
    assert "include /etc/kametrix-proxy/live.conf;" in nginx
    assert "map $kametrix_colour $kametrix_upstream { blue app-blue:3000; green app-green:3000; }" in nginx
    assert "resolver 127.0.0.11 valid=1s;" in nginx, "a colour's new address would never be looked up"
    assert 'map "" $kametrix_colour { default green; }' in files["proxy/green.conf"]
    assert "proxy/live.conf" not in files, "the files step would move traffic"


@pytest.mark.parametrize("stack", ["staging", "production", "local"])
def test_the_proxy_config_of_each_stack_is_the_reviewed_one(stack: str) -> None:
    """tests/golden/proxy/<stack>/ holds the proxy config each committed stack file renders, as reviewed: a change
    to the template or its values shows there, in the diff."""
    files = server_files(kit.run_stack(stack))
    golden = GOLDEN_PROXY / stack
    rendered = {name: content for name, content in files.items() if name.startswith("proxy/")}
    assert set(rendered) == {f"proxy/{path.name}" for path in golden.iterdir()}
    for name, content in rendered.items():
        assert content.encode() == (golden / name.removeprefix("proxy/")).read_bytes(), f"{stack}: {name}"


# What a stage's compose file may differ in from another's: its names, ports and images.
STAGE_VALUES = (
    "composeProject",
    "appContainer",
    "dbContainer",
    "proxyImage",
    "postgresImage",
    "proxyPort",
    "bluePort",
    "greenPort",
)


def test_every_stage_runs_the_same_topology_and_only_stage_values_differ() -> None:
    """The local stack renders the compose file staging and production run: a compose network, containers found by
    service name, ports published on 127.0.0.1. Given staging's names, ports and images, it renders staging's file
    byte for byte."""
    staging_app = kit.stack_file("staging")["config"]["kametrix-deploy:app"]
    defaults = config.AppSettings.model_fields
    staging_values = {f"app.{key}": staging_app.get(key, defaults[to_snake(key)].default) for key in STAGE_VALUES}
    staging_values["backup"] = kit.stack_file("staging")["config"]["kametrix-deploy:backup"]
    as_staging = server_files(kit.run_stack("local", overrides=staging_values))["docker-compose.yml"]
    assert as_staging == server_files(kit.run_stack("staging"))["docker-compose.yml"]

    local = yaml.safe_load(server_files(kit.run_stack("local"))["docker-compose.yml"])["services"]
    assert not any("network_mode" in service for service in local.values()), "a service runs on the host's network"
    published = [port for service in local.values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published), published
    assert "resolver 127.0.0.11 valid=1s;" in server_files(kit.run_stack("local"))["proxy/nginx.conf"]


def test_the_single_container_layouts_project_and_database_volume_stay() -> None:
    deployment = production("v1.4.2")
    compose = yaml.safe_load(server_files(deployment)["docker-compose.yml"])
    assert "postgres-data" in compose["volumes"], compose["volumes"]
    assert compose["services"]["postgres"]["volumes"][0] == "postgres-data:/var/lib/postgresql/data"
    for name in STEPS:
        command = steps(deployment)[name].plain("create")
        assert "--app-dir /opt/kametrix --project kametrix " in f"{command} ", f"{name}: the project changed"


def test_the_drain_time_bounds_the_proxy_and_reaches_the_switch_at_the_next_cutover() -> None:
    deployment = production("v1.4.2", **{"release.drainSeconds": 45})
    assert "worker_shutdown_timeout 45s;" in server_files(deployment)["proxy/nginx.conf"]
    assert settings_of(deployment)["DRAIN_SECONDS"] == "45"
    # The proxy's config changed: `up` reloads it with the files it switches with, and nothing else runs.
    assert changed_between(production("v1.4.2"), deployment) == {"server-files", "server-up"}


@pytest.mark.parametrize(
    "override",
    [{"release.backupOnRollback": True}, {"release.backup": "before-migrations"}, {"release.backupsToKeep": 3}],
)
def test_a_changed_backup_policy_reruns_the_backup_alone_and_never_moves_traffic(override: dict[str, Any]) -> None:
    """The re-run backup of the live release gives the release lock back itself, since `up` has nothing to do
    (test_server_scripts: a step keeps the lock for up only when up has something to do)."""
    changed = changed_between(production("v1.4.2"), production("v1.4.2", **override))
    assert changed == {"server-backup"}, changed
