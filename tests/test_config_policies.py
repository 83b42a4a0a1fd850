"""Bad stack config stops the program before anything is declared, naming every problem at once."""

from __future__ import annotations

from typing import Any

import pytest

from components.config import ConfigError
from tests import kit
from tests.kit import DELETE


def problems_for(
    stack: str, overrides: dict[str, Any] | None = None, secrets: dict[str, Any] | None = None
) -> tuple[ConfigError, dict[str, str]]:
    with pytest.raises(ConfigError) as raised:
        kit.run_stack(stack, overrides=overrides, secrets=secrets)
    error = raised.value
    return error, {p.key: p.message for p in error.problems}


@pytest.mark.parametrize("stack", ["staging", "production", "local"])
def test_every_committed_stack_file_is_valid(stack: str) -> None:
    deployment = kit.run_stack(stack)
    assert deployment.resources, f"{stack}: the program declared nothing"


def test_nothing_is_declared_when_config_is_bad() -> None:
    deployment, error = kit.attempt_stack("production", overrides={"github.waitTimer": -1})
    assert isinstance(error, ConfigError)
    assert [r.urn for r in deployment.resources] == []


def test_problems_name_the_stack_file_and_are_all_reported_at_once() -> None:
    error, problems = problems_for(
        "production",
        overrides={"github.waitTimer": 50000, "server.port": 0, "version": "latest"},
        secrets={"postgresPassword": DELETE},
    )
    assert str(error).startswith("Pulumi.production.yaml: invalid stack configuration (4 problems)")
    assert set(problems) == {
        "kametrix-deploy:github.waitTimer",
        "kametrix-deploy:server.port",
        "kametrix-deploy:version",
        "kametrix-deploy:postgresPassword",
    }


def test_unknown_key_suggests_the_closest_valid_key() -> None:
    _, problems = problems_for("staging", overrides={"github.waitTimr": 3, "relase": {"healthAttempts": 3}})
    assert "did you mean 'waitTimer'?" in problems["kametrix-deploy:github.waitTimr"]
    assert "received 'waitTimr'" in problems["kametrix-deploy:github.waitTimr"]
    assert "did you mean 'release'?" in problems["kametrix-deploy:relase"]


def test_a_misspelt_secret_key_suggests_the_secret_key() -> None:
    _, problems = problems_for("local", secrets={"postgresPasword": "TESTSECRET-typo"})
    assert "did you mean 'postgresPassword'?" in problems["kametrix-deploy:postgresPasword"]
    assert "TESTSECRET" not in str(problems)


def test_a_missing_required_secret_says_how_to_set_it() -> None:
    _, problems = problems_for("production", secrets={"stripeSecretKey": DELETE, "githubToken": DELETE})
    assert "pulumi config set --secret -s production stripeSecretKey" in problems["kametrix-deploy:stripeSecretKey"]
    assert "required secret is missing" in problems["kametrix-deploy:githubToken"]


def test_a_secret_stored_in_plaintext_is_refused_without_echoing_it() -> None:
    error, problems = problems_for("staging", overrides={"vapiApiKey": "TESTSECRET-in-plaintext"})
    assert "stored in plaintext" in problems["kametrix-deploy:vapiApiKey"]
    assert "--secret" in problems["kametrix-deploy:vapiApiKey"]
    assert "TESTSECRET" not in str(error)


def test_a_malformed_secret_is_refused_without_echoing_it() -> None:
    error, problems = problems_for("local", secrets={"googleEncryptionKey": "TESTSECRET-not-hex"})
    assert "64 hexadecimal characters" in problems["kametrix-deploy:googleEncryptionKey"]
    assert "TESTSECRET" not in str(error)


@pytest.mark.parametrize("version", ["latest", "", "main", "develop", "v1.2", "1.2.3", "feature/login", "v1.2.3-rc"])
def test_a_version_pin_must_be_an_exact_version(version: str) -> None:
    _, problems = problems_for("local", overrides={"version": version})
    message = problems["kametrix-deploy:version"]
    assert "exact version" in message and "v1.2.3" in message and repr(version) in message


@pytest.mark.parametrize("version", ["v1.2.3", "v2026.11.28-3f9c2a1", "staging-3f9c2a1"])
def test_exact_versions_are_accepted(version: str) -> None:
    assert kit.run_stack("local", overrides={"version": version}).output("version") == version


def test_production_cannot_deploy_without_an_approval() -> None:
    _, problems = problems_for("production", overrides={"github.reviewers": {"users": [], "teams": []}})
    assert "at least one required reviewer" in problems["kametrix-deploy:github.reviewers"]
    assert "received none" in problems["kametrix-deploy:github.reviewers"]


def test_production_admins_cannot_bypass_the_approval() -> None:
    _, problems = problems_for("production", overrides={"github.canAdminsBypass": True})
    assert "allowed in production: false" in problems["kametrix-deploy:github.canAdminsBypass"]


def test_production_cannot_run_without_its_github_environment() -> None:
    _, problems = problems_for("production", overrides={"github": DELETE})
    assert "required for the production stack" in problems["kametrix-deploy:github"]


def test_who_asked_for_a_release_is_refused_when_the_server_could_not_record_it_safely() -> None:
    _, problems = problems_for("production", overrides={"release.requestedBy": "alice'; rm -rf /"})
    assert problems["kametrix-deploy:release.requestedBy"].startswith("allowed: a run URL and who started it")


@pytest.mark.parametrize("minutes", [-1, 43201, 100000])
def test_a_wait_timer_outside_0_to_43200_minutes_is_refused(minutes: int) -> None:
    _, problems = problems_for("staging", overrides={"github.waitTimer": minutes})
    assert problems["kametrix-deploy:github.waitTimer"] == f"allowed: 0–43200 minutes; received {minutes}"


@pytest.mark.parametrize("minutes", [0, 43200])
def test_wait_timer_bounds_are_accepted(minutes: int) -> None:
    deployment = kit.run_stack("production", overrides={"github.waitTimer": minutes})
    environment = deployment.one("github:index/repositoryEnvironment:RepositoryEnvironment", "github-environment")
    assert environment.inputs["waitTimer"] == minutes, environment.urn


@pytest.mark.parametrize("kind", ["users", "teams"])
def test_more_than_six_reviewers_of_a_kind_are_refused(kind: str) -> None:
    reviewers = [f"reviewer-{i}" for i in range(7)]
    _, problems = problems_for("production", overrides={f"github.reviewers.{kind}": reviewers})
    assert "at most 6" in problems[f"kametrix-deploy:github.reviewers.{kind}"]


def test_an_empty_deployment_branch_list_is_refused() -> None:
    _, problems = problems_for("staging", overrides={"github.deploymentBranches": []})
    assert "at least 1" in problems["kametrix-deploy:github.deploymentBranches"]


@pytest.mark.parametrize("port", [0, 65536, -22])
def test_a_port_outside_1_to_65535_is_refused(port: int) -> None:
    _, problems = problems_for("staging", overrides={"server.port": port, "app.proxyPort": port})
    assert problems["kametrix-deploy:server.port"] == f"allowed: 1–65535 (TCP port); received {port}"
    assert problems["kametrix-deploy:app.proxyPort"] == f"allowed: 1–65535 (TCP port); received {port}"


def test_the_proxy_and_each_colour_need_a_port_of_their_own() -> None:
    _, problems = problems_for("local", overrides={"app.greenPort": 13000, "app.bluePort": 13000})
    assert problems == {
        "kametrix-deploy:app.bluePort": "allowed: a port that app.proxyPort does not use; received 13000",
        "kametrix-deploy:app.greenPort": "allowed: a port that app.proxyPort does not use; received 13000",
    }


def test_a_stack_file_that_sets_the_database_port_is_told_why_it_went() -> None:
    _, problems = problems_for("production", overrides={"app.postgresPort": 15432})
    message = problems["kametrix-deploy:app.postgresPort"]
    assert "PostgreSQL listens on 5432 on the stage's compose network only" in message
    assert "received 'postgresPort'" in message


def test_a_database_name_is_one_the_server_can_quote() -> None:
    _, problems = problems_for("staging", overrides={"app.postgresUser": "kametrix; drop", "app.postgresDb": "a\nb"})
    rule = "allowed: a PostgreSQL name: letters, digits, _ (up to 50); received "
    assert problems == {
        "kametrix-deploy:app.postgresUser": rule + repr("kametrix; drop"),
        "kametrix-deploy:app.postgresDb": rule + repr("a\nb"),
    }


def test_a_stack_file_of_the_single_container_layout_is_told_where_app_port_went() -> None:
    _, problems = problems_for("production", overrides={"app.appPort": 3000})
    message = problems["kametrix-deploy:app.appPort"]
    assert "allowed instead app.proxyPort (where the front proxy points)" in message
    assert "received 'appPort'" in message


@pytest.mark.parametrize("seconds", [0, 3601])
def test_a_drain_outside_1_to_3600_seconds_is_refused(seconds: int) -> None:
    _, problems = problems_for("production", overrides={"release.drainSeconds": seconds})
    assert problems["kametrix-deploy:release.drainSeconds"] == f"allowed: 1–3600 seconds; received {seconds}"


def test_production_never_builds() -> None:
    _, problems = problems_for("production", overrides={"image.build": {"context": "app"}})
    assert "production never rebuilds" in problems["kametrix-deploy:image.build"]


def test_production_releases_only_recorded_versions() -> None:
    _, problems = problems_for("production", overrides={"version": "v9.9.9"})
    assert "received version 'v9.9.9'" in problems["kametrix-deploy:github.releases"]
    assert "received version 'v9.9.9'" in problems["kametrix-deploy:image.digests"]
    assert "scripts/record_release.py" in problems["kametrix-deploy:image.digests"]


def recorded_digests(stack: str) -> dict[str, dict[str, str]]:
    digests: dict[str, dict[str, str]] = kit.stack_file(stack)["config"]["kametrix-deploy:image"]["digests"]
    return digests


def test_production_deploys_only_versions_whose_digests_are_recorded() -> None:
    only_v141 = {"v1.4.1": recorded_digests("production")["v1.4.1"]}
    _, problems = problems_for("production", overrides={"image.digests": only_v141})
    assert list(problems) == ["kametrix-deploy:image.digests"], problems
    assert "allowed: v1.4.1; received version 'v1.4.2'" in problems["kametrix-deploy:image.digests"]


def test_a_recorded_digest_must_be_a_sha256_digest() -> None:
    digests = recorded_digests("production")
    digests["v1.4.2"]["app"] = "v1.4.2"
    _, problems = problems_for("production", overrides={"image.digests": digests})
    message = problems["kametrix-deploy:image.digests.v1.4.2.app"]
    assert message == "allowed: an image digest sha256:<64 lower-case hex>; received 'v1.4.2'"


def test_the_backup_policy_names_its_allowed_values() -> None:
    _, problems = problems_for("staging", overrides={"release.backup": "sometimes"})
    message = problems["kametrix-deploy:release.backup"]
    assert "'always'" in message and "'before-migrations'" in message and "'sometimes'" in message, message


def test_an_unknown_stack_name_is_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        kit.run_stack("staging", as_stack="qa")
    assert "allowed stacks: staging, production, local; received 'qa'" in str(raised.value)


def test_required_environment_secrets_for_the_deploy_workflow() -> None:
    _, problems = problems_for(
        "staging", secrets={"githubEnvironmentSecrets": {"PULUMI_CONFIG_PASSPHRASE": "TESTSECRET-x"}}
    )
    assert (
        "required environment secret is missing"
        in problems["kametrix-deploy:githubEnvironmentSecrets.PULUMI_BACKEND_URL"]
    )


def test_every_app_value_that_cannot_live_in_the_env_file_is_reported_on_its_own_key() -> None:
    _, problems = problems_for(
        "staging",
        overrides={"app.smtpHost": "smtp'.example", "app.smtpFrom": "Kametrix\r\nBcc: x", "app.smtpUser": "a\nb"},
    )
    rule = "allowed: no single quote, carriage return or line break (the .env quotes values); received "
    assert problems == {
        "kametrix-deploy:app.smtpHost": rule + repr("smtp'.example"),
        "kametrix-deploy:app.smtpFrom": rule + repr("Kametrix\r\nBcc: x"),
        "kametrix-deploy:app.smtpUser": rule + repr("a\nb"),
    }


def test_a_carriage_return_in_an_app_secret_is_refused_without_echoing_it() -> None:
    error, problems = problems_for("local", secrets={"smtpPass": "TESTSECRET-smtp\r"})
    assert "carriage return" in problems["kametrix-deploy:smtpPass"]
    assert "TESTSECRET" not in str(error)


def test_each_problem_names_its_key_once() -> None:
    error, problems = problems_for(
        "production",
        overrides={
            "app.smtpHost": "smtp'.example",
            "app.greenPort": 3000,
            "app.databasePoolMin": 20,
            "github.waitTimer": -1,
            "github.canAdminsBypass": True,
            "github.deploymentBranches": ["develop"],
            "github.variables": {"APP_URL": "https://elsewhere.example"},
            "image.build": {"context": "app"},
            "server.port": 0,
            "version": "v9.9.9",
            "relase": {},
        },
        secrets={"googleEncryptionKey": "TESTSECRET-not-hex", "sshPrivateKey": DELETE},
    )
    assert len(problems) >= 12, problems
    for key, message in problems.items():
        path = key.partition(":")[2]
        assert "kametrix-deploy:" not in message and f"{path}:" not in message, f"{key}: {message}"
        assert str(error).count(f"{key}:") == 1, f"{key} is named more than once"


def test_a_stack_on_github_app_authentication_is_not_asked_for_a_token_when_another_key_is_invalid() -> None:
    app_key = "-----BEGIN RSA PRIVATE KEY-----\nTESTSECRET-app-key\n-----END RSA PRIVATE KEY-----\n"
    _, problems = problems_for(
        "production",
        overrides={"github.app": {"id": "123456", "installationId": "7890123"}, "server.port": 0},
        secrets={"githubToken": DELETE, "githubAppPrivateKey": app_key},
    )
    assert set(problems) == {"kametrix-deploy:server.port"}


def test_a_stack_on_github_app_authentication_is_asked_for_the_app_key_not_a_token() -> None:
    _, problems = problems_for(
        "production",
        overrides={"github.app": {"id": "not-numeric", "installationId": "7890123"}},
        secrets={"githubToken": DELETE},
    )
    assert "required secret is missing" in problems["kametrix-deploy:githubAppPrivateKey"]
    assert "kametrix-deploy:githubToken" not in problems
    assert "numeric GitHub App ID" in problems["kametrix-deploy:github.app.id"]


@pytest.mark.parametrize("branches", [["develop"], ["main", "develop"], ["*"], ["release/*"], ["master"]])
def test_production_deploys_from_main_only(branches: list[str]) -> None:
    _, problems = problems_for(
        "production",
        overrides={"github.deploymentBranches": branches, "github.drift.deploymentBranches": branches},
    )
    message = problems["kametrix-deploy:github.deploymentBranches"]
    assert message.startswith("allowed in production: exactly [main]"), message
    assert ".github/workflows/deploy-production.yml" in message
    assert message.endswith(f"received [{', '.join(branches)}]"), message


def test_an_invalid_key_hides_no_policy_breach_beside_it_in_its_section() -> None:
    _, problems = problems_for(
        "production",
        overrides={
            "app.smtpHost": "smtp'.example",
            "app.greenPort": 3000,
            "github.waitTimer": -1,
            "github.canAdminsBypass": True,
            "github.preview": {"reviewers": {"users": ["not a login"]}},
        },
    )
    assert set(problems) == {
        "kametrix-deploy:app.smtpHost",
        "kametrix-deploy:app.greenPort",
        "kametrix-deploy:github.waitTimer",
        "kametrix-deploy:github.canAdminsBypass",
        "kametrix-deploy:github.preview.reviewers.users.0",
    }, "an invalid preview is told as invalid, never as missing"
