"""Each stage's GitHub environment, as declared from the real stack files: production's stack declares them all,
staging's as Pulumi.staging.yaml describes them; staging's stack declares none and holds no GitHub credential."""

from __future__ import annotations

import copy
import json

import pytest

from components.config import ConfigError, load
from tests import kit
from tests.kit import Deployment, Resource

ENVIRONMENT = "github:index/repositoryEnvironment:RepositoryEnvironment"
BRANCH_POLICY = "github:index/repositoryEnvironmentDeploymentPolicy:RepositoryEnvironmentDeploymentPolicy"
ENV_SECRET = "github:index/actionsEnvironmentSecret:ActionsEnvironmentSecret"
ENV_VARIABLE = "github:index/actionsEnvironmentVariable:ActionsEnvironmentVariable"
GITHUB_PROVIDER = "pulumi:providers:github"


def environment_of(deployment: Deployment, kind: str = "", stage: str = "") -> Resource:
    """A stage's deploy environment, or its `-preview` / `-drift` environment: production's own, or those of the
    stage it declares for (`stage`)."""
    component = f"github-{stage}" if stage else "github"
    return deployment.one(ENVIRONMENT, f"{component}-{kind}-environment" if kind else f"{component}-environment")


def test_production_cannot_be_deployed_without_an_approval_that_admins_cannot_bypass() -> None:
    production = kit.run_stack("production")
    environment = environment_of(production)
    reviewers = environment.inputs["reviewers"]
    assert reviewers and (reviewers[0].get("users") or reviewers[0].get("teams")), (
        f"{environment.urn}: production has no required reviewer"
    )
    assert environment.inputs["canAdminsBypass"] is False, f"{environment.urn}: admins can bypass the approval"
    assert environment.inputs["preventSelfReview"] is True, f"{environment.urn}: a deployer can approve themself"


def test_reviewers_are_resolved_from_logins_and_team_slugs_to_numeric_ids() -> None:
    production = kit.run_stack(
        "production",
        overrides={"github.reviewers": {"users": ["alice", "bob"], "teams": ["release-managers"]}},
    )
    environment = environment_of(production)
    reviewer = environment.inputs["reviewers"][0]
    assert reviewer["users"] == [kit.numeric_id("alice"), kit.numeric_id("bob")], environment.urn
    assert reviewer["teams"] == [kit.numeric_id("release-managers")], environment.urn
    looked_up = [(token.split(":")[-1], args.get("username") or args.get("slug")) for token, args in production.invokes]
    assert ("getUser", "alice") in looked_up and ("getTeam", "release-managers") in looked_up


def test_staging_deploys_only_from_develop() -> None:
    production = kit.run_stack("production")
    environment = environment_of(production, stage="staging")
    assert environment.inputs["environment"] == "staging"
    assert environment.inputs["deploymentBranchPolicy"] == {
        "protectedBranches": False,
        "customBranchPolicies": True,
    }, environment.urn
    policies = [p for p in production.of_type(BRANCH_POLICY) if p.inputs["environment"] == "staging"]
    assert [p.inputs["branchPattern"] for p in policies] == ["develop"], [p.urn for p in policies]


def test_staging_secrets_cannot_administer_production_environment() -> None:
    """Staging's jobs run without an approval: a GitHub token in staging's stack (Administration: write on the
    repository) could delete production's reviewers. Staging's stack declares nothing on GitHub and refuses any
    GitHub credential; production's stack, behind production's approval, declares staging's environments."""
    staging = kit.run_stack("staging")
    assert [r.urn for r in staging.resources if r.type.startswith(("github:", "pulumi:providers:github"))] == []
    config, _ = kit.stack_config("staging")
    assert not {f"kametrix-deploy:{name}" for name in kit.GITHUB_ONLY_SECRETS} & set(config)
    for name, value in (("githubToken", "TESTSECRET-token"), ("githubEnvironmentSecrets", {"A": "TESTSECRET-a"})):
        with pytest.raises(ConfigError) as raised:
            kit.run_stack("staging", secrets={name: value})
        (problem,) = [p for p in raised.value.problems if p.key == f"kametrix-deploy:{name}"]
        assert problem.message.startswith("allowed only in the production stack, which administers"), problem
        assert "TESTSECRET" not in problem.message
    production = kit.run_stack("production")
    declared = {e.inputs["environment"] for e in production.of_type(ENVIRONMENT)}
    assert declared == {f"{stage}{kind}" for stage in ("staging", "production") for kind in ("", "-preview", "-drift")}


def test_production_deploys_only_from_main() -> None:
    production = kit.run_stack("production")
    policies = [p for p in production.of_type(BRANCH_POLICY) if p.inputs["environment"] == "production"]
    assert [p.inputs["branchPattern"] for p in policies] == ["main"], [p.urn for p in policies]


def test_each_deployment_branch_gets_its_own_policy_in_its_environment() -> None:
    production = kit.run_stack("production")
    environments = {e.inputs["environment"]: e for e in production.of_type(ENVIRONMENT)}
    policies = production.of_type(BRANCH_POLICY)
    for policy in policies:
        environment = environments[policy.inputs["environment"]]
        assert environment.urn in policy.dependencies, f"{policy.urn} does not wait for its environment"
    assert sorted((p.inputs["environment"], p.inputs["branchPattern"]) for p in policies) == [
        ("production", "main"),
        ("production-drift", "main"),
        ("staging", "develop"),
        ("staging-drift", "develop"),
    ]


def test_wait_timer_and_self_review_come_from_config() -> None:
    production = kit.run_stack("production", overrides={"github.waitTimer": 30, "github.preventSelfReview": False})
    environment = environment_of(production)
    assert environment.inputs["waitTimer"] == 30, environment.urn
    assert environment.inputs["preventSelfReview"] is False, environment.urn


def test_every_declared_secret_reaches_its_environment_as_a_secret() -> None:
    declared = {
        "PULUMI_CONFIG_PASSPHRASE": "TESTSECRET-passphrase",
        "PULUMI_BACKEND_URL": "s3://TESTSECRET-bucket",
        "SENTRY_AUTH_TOKEN": "TESTSECRET-sentry",
    }
    production = kit.run_stack("production", secrets={"stagingEnvironmentSecrets": declared})
    secrets = {
        s.inputs["secretName"]: s for s in production.of_type(ENV_SECRET) if s.inputs["environment"] == "staging"
    }
    assert set(secrets) == set(declared)
    for name, resource in secrets.items():
        assert resource.is_secret("value"), f"{resource.urn}: value is not a secret"
        assert resource.plain("value") == declared[name], resource.urn
        assert "plaintextValue" not in resource.inputs, f"{resource.urn}: uses the deprecated plaintext_value"
        assert resource.inputs["environment"] == "staging", resource.urn


def test_the_environment_publishes_the_app_url_and_stack_name() -> None:
    production = kit.run_stack("production", overrides={"github.variables": {"SENTRY_ENVIRONMENT": "production"}})
    variables = {
        v.inputs["variableName"]: v.inputs["value"]
        for v in production.of_type(ENV_VARIABLE)
        if v.inputs["environment"] == "production"
    }
    assert variables == {
        "APP_URL": "https://app.kametrix.example",
        "PULUMI_STACK": "production",
        "SENTRY_ENVIRONMENT": "production",
    }
    staging = {
        v.inputs["variableName"]: v.inputs["value"]
        for v in production.of_type(ENV_VARIABLE)
        if v.inputs["environment"] == "staging"
    }
    assert staging == {"APP_URL": "https://staging.kametrix.example", "PULUMI_STACK": "staging"}


def test_a_stack_touches_only_the_repository_it_names_through_its_own_provider() -> None:
    production = kit.run_stack("production")
    providers = production.of_type(GITHUB_PROVIDER)
    assert len(providers) == 1
    provider = providers[0]
    assert provider.inputs["owner"] == "kametrix-org", provider.urn
    assert provider.is_secret("token"), f"{provider.urn}: the token is not a secret"
    for resource in production.resources:
        if resource.type.startswith("github:"):
            assert resource.provider.startswith(provider.urn), f"{resource.urn} uses another GitHub provider"
            if "repository" in resource.inputs:
                expected = "kametrix" if resource.type == "github:index/release:Release" else "kametrix-deploy"
                assert resource.inputs["repository"] == expected, resource.urn


def test_a_github_app_can_authenticate_instead_of_a_token() -> None:
    app_key = "-----BEGIN RSA PRIVATE KEY-----\nTESTSECRET-app-key\n-----END RSA PRIVATE KEY-----\n"
    production = kit.run_stack(
        "production",
        overrides={"github.app": {"id": "123456", "installationId": "7890123"}},
        secrets={"githubToken": kit.DELETE, "githubAppPrivateKey": app_key},
    )
    provider = production.one(GITHUB_PROVIDER)
    assert provider.is_secret("appAuth"), f"{provider.urn}: the app's private key is not a secret"
    auth = kit.unwrap(provider.inputs["appAuth"])
    # A provider receives object inputs JSON-encoded.
    auth = json.loads(auth) if isinstance(auth, str) else auth
    assert auth["id"] == "123456" and auth["installationId"] == "7890123", provider.urn
    assert "token" not in provider.inputs, f"{provider.urn}: a token is configured beside the app"
    assert not kit.find_secret_leaks(production), kit.find_secret_leaks(production).leaks


def test_the_local_stack_manages_no_github_repository() -> None:
    local = kit.run_stack("local")
    assert [r.urn for r in local.resources if r.type.startswith("github:")] == []
    assert local.of_type(GITHUB_PROVIDER) == []


def test_real_stages_refuse_implicit_github_and_docker_providers() -> None:
    for stack in ("staging", "production"):
        disabled = kit.stack_file(stack)["config"].get("pulumi:disable-default-providers", [])
        assert {"github", "docker"} <= set(disabled), f"Pulumi.{stack}.yaml lets a resource use a default provider"


def test_production_declares_stagings_environments_only_as_its_file_describes_them_in_this_repository() -> None:
    config, secret_keys = kit.stack_config("production")
    staging = kit.stack_file("staging")["config"]
    loaded = load("production", config, set(secret_keys), {"staging": staging})
    (administered,) = loaded.administered
    assert (administered.stage, administered.github.environment) == ("staging", "staging")
    elsewhere = copy.deepcopy(staging)
    elsewhere["kametrix-deploy:github"]["repository"] = "another-repository"
    for files, problem in (
        ({"staging": elsewhere}, "allowed: this stack's repository kametrix-org/kametrix-deploy; received"),
        ({"staging": {}}, "`pulumi preview -s staging` names every problem"),
    ):
        with pytest.raises(ConfigError) as raised:
            load("production", config, set(secret_keys), files)
        assert any(
            p.key == "Pulumi.staging.yaml: kametrix-deploy:github" and problem in p.message
            for p in raised.value.problems
        ), raised.value.problems
