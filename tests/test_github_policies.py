"""Each stage's GitHub environment, as declared from the real stack files."""

from __future__ import annotations

import json

from tests import kit
from tests.kit import Deployment, Resource

ENVIRONMENT = "github:index/repositoryEnvironment:RepositoryEnvironment"
BRANCH_POLICY = "github:index/repositoryEnvironmentDeploymentPolicy:RepositoryEnvironmentDeploymentPolicy"
ENV_SECRET = "github:index/actionsEnvironmentSecret:ActionsEnvironmentSecret"
ENV_VARIABLE = "github:index/actionsEnvironmentVariable:ActionsEnvironmentVariable"
GITHUB_PROVIDER = "pulumi:providers:github"


def environment_of(deployment: Deployment, kind: str = "") -> Resource:
    """The stage's deploy environment, or its `-preview` / `-drift` environment."""
    return deployment.one(ENVIRONMENT, f"github-{kind}-environment" if kind else "github-environment")


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
    staging = kit.run_stack("staging")
    environment = environment_of(staging)
    assert environment.inputs["deploymentBranchPolicy"] == {
        "protectedBranches": False,
        "customBranchPolicies": True,
    }, environment.urn
    policies = [p for p in staging.of_type(BRANCH_POLICY) if p.inputs["environment"] == "staging"]
    assert [p.inputs["branchPattern"] for p in policies] == ["develop"], [p.urn for p in policies]


def test_production_deploys_only_from_main() -> None:
    production = kit.run_stack("production")
    policies = [p for p in production.of_type(BRANCH_POLICY) if p.inputs["environment"] == "production"]
    assert [p.inputs["branchPattern"] for p in policies] == ["main"], [p.urn for p in policies]


def test_each_deployment_branch_gets_its_own_policy_in_its_environment() -> None:
    staging = kit.run_stack("staging", overrides={"github.deploymentBranches": ["develop", "release/*"]})
    environment = environment_of(staging)
    policies = [p for p in staging.of_type(BRANCH_POLICY) if p.name.startswith("github-branch-")]
    for policy in policies:
        assert environment.urn in policy.dependencies, f"{policy.urn} does not wait for its environment"
        assert policy.inputs["environment"] == "staging", policy.urn
    assert sorted(p.inputs["branchPattern"] for p in policies) == ["develop", "release/*"]


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
    staging = kit.run_stack("staging", secrets={"githubEnvironmentSecrets": declared})
    secrets = {s.inputs["secretName"]: s for s in staging.of_type(ENV_SECRET) if s.inputs["environment"] == "staging"}
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
