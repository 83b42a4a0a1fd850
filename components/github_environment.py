"""The stage's GitHub environment: who may approve a deployment, from which branches, with which secrets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_github as github
from pydantic import SecretStr

from components.config import GitHubSettings


@dataclass(frozen=True)
class GitHubEnvironmentArgs:
    settings: GitHubSettings
    token: SecretStr | None
    app_private_key: SecretStr | None
    secrets: Mapping[str, SecretStr]
    variables: Mapping[str, str]
    """Variables the stack itself publishes (APP_URL, PULUMI_STACK); config `github.variables` adds to them."""


class GitHubEnvironment(pulumi.ComponentResource):
    provider: github.Provider
    environment: github.RepositoryEnvironment

    def __init__(self, name: str, args: GitHubEnvironmentArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kametrix:github_environment:GitHubEnvironment", name, None, opts)
        settings = args.settings
        self.provider = github.Provider(
            f"{name}-provider",
            owner=settings.owner,
            token=_secret(args.token) if settings.app is None else None,
            app_auth=github.ProviderAppAuthArgs(
                id=settings.app.id,
                installation_id=settings.app.installation_id,
                pem_file=pulumi.Output.secret(_required(args.app_private_key).get_secret_value()),
            )
            if settings.app is not None
            else None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, provider=self.provider)
        lookup = pulumi.InvokeOptions(parent=self, provider=self.provider)

        user_ids = [
            github.get_user_output(username=login, opts=lookup).id.apply(int) for login in settings.reviewers.users
        ]
        team_ids = [
            github.get_team_output(slug=slug, summary_only=True, opts=lookup).id.apply(int)
            for slug in settings.reviewers.teams
        ]
        reviewers = (
            [github.RepositoryEnvironmentReviewerArgs(users=user_ids, teams=team_ids)]
            if settings.reviewers.count
            else []
        )
        self.environment = github.RepositoryEnvironment(
            f"{name}-environment",
            repository=settings.repository,
            environment=settings.environment,
            reviewers=reviewers,
            wait_timer=settings.wait_timer,
            prevent_self_review=settings.prevent_self_review,
            can_admins_bypass=settings.can_admins_bypass,
            deployment_branch_policy=github.RepositoryEnvironmentDeploymentBranchPolicyArgs(
                protected_branches=False,
                custom_branch_policies=True,
            ),
            opts=child,
        )
        in_environment = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[self.environment]))
        for branch in settings.deployment_branches:
            github.RepositoryEnvironmentDeploymentPolicy(
                f"{name}-branch-{branch}",
                repository=settings.repository,
                environment=self.environment.environment,
                branch_pattern=branch,
                opts=in_environment,
            )
        for secret_name, secret_value in sorted(args.secrets.items()):
            github.ActionsEnvironmentSecret(
                f"{name}-secret-{secret_name}",
                repository=settings.repository,
                environment=self.environment.environment,
                secret_name=secret_name,
                value=pulumi.Output.secret(secret_value.get_secret_value()),
                opts=in_environment,
            )
        for variable_name, value in sorted({**settings.variables, **args.variables}.items()):
            github.ActionsEnvironmentVariable(
                f"{name}-variable-{variable_name}",
                repository=settings.repository,
                environment=self.environment.environment,
                variable_name=variable_name,
                value=value,
                opts=in_environment,
            )
        self.register_outputs({"environment": self.environment.environment})


def _secret(value: SecretStr | None) -> pulumi.Output[str] | None:
    return pulumi.Output.secret(value.get_secret_value()) if value is not None else None


def _required(value: SecretStr | None) -> SecretStr:
    if value is None:
        raise ValueError("the stack config promised this secret; config.load checks it")
    return value
