"""The stage's GitHub environments: who may approve a deployment or a preview, from which branches, with which
secrets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_github as github
from pydantic import SecretStr

from components.config import GitHubSettings, Reviewers

# What the read-only environments (`-preview`, `-drift`) get of the stage's environment secrets, by name there ->
# name in `githubEnvironmentSecrets`: enough to read the state, decrypt the stack's config and read the app
# repository (staging's build context), never the release App's key nor the deploy job's backend credential (a
# Pulumi Cloud backend gives previews a read-only token).
READ_ONLY_SECRETS = {
    "PULUMI_BACKEND_URL": "PULUMI_BACKEND_URL",
    "PULUMI_CONFIG_PASSPHRASE": "PULUMI_CONFIG_PASSPHRASE",
    "PULUMI_ACCESS_TOKEN": "PULUMI_READ_ACCESS_TOKEN",
    "APP_REPOSITORY_TOKEN": "APP_REPOSITORY_TOKEN",
}
_READ_ONLY_SOURCES = {"PULUMI_READ_ACCESS_TOKEN"}


@dataclass(frozen=True)
class GitHubEnvironmentArgs:
    settings: GitHubSettings
    token: SecretStr | None
    app_private_key: SecretStr | None
    secrets: Mapping[str, SecretStr]
    variables: Mapping[str, str]
    """Variables the stack itself publishes (APP_URL, PULUMI_STACK); config `github.variables` adds to them."""
    provider: github.Provider | None = None
    """The administering stack's provider, when it declares another stage's environments with the same credential;
    None: one of its own, from `token` or `app_private_key`."""


class GitHubEnvironment(pulumi.ComponentResource):
    """The stage's deploy environment, plus `<environment>-preview` and `<environment>-drift` where the workflows
    only read the stack: every environment a workflow names is declared here, with its protection. Only the stack
    that administers the repository declares them, for every stage (config.GITHUB_ADMINISTRATOR)."""

    provider: github.Provider
    environment: github.RepositoryEnvironment

    def __init__(self, name: str, args: GitHubEnvironmentArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kametrix:github_environment:GitHubEnvironment", name, None, opts)
        settings = self._settings = args.settings
        self.provider = args.provider or github.Provider(
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
        self._lookup = pulumi.InvokeOptions(parent=self, provider=self.provider)
        self._child = pulumi.ResourceOptions(parent=self, provider=self.provider)
        self.environment = self._declare(
            name,
            settings.environment,
            reviewers=settings.reviewers,
            deployment_branches=settings.deployment_branches,
            wait_timer=settings.wait_timer,
            prevent_self_review=settings.prevent_self_review,
            can_admins_bypass=settings.can_admins_bypass,
            secrets={n: v for n, v in args.secrets.items() if n not in _READ_ONLY_SOURCES},
            variables={**settings.variables, **args.variables},
        )
        read_only_secrets = {
            target: args.secrets[source] for target, source in READ_ONLY_SECRETS.items() if source in args.secrets
        }
        for kind, read_only in (("preview", settings.preview), ("drift", settings.drift)):
            if read_only is not None:
                self._declare(
                    f"{name}-{kind}",
                    f"{settings.environment}-{kind}",
                    reviewers=read_only.reviewers,
                    deployment_branches=read_only.deployment_branches,
                    wait_timer=0,
                    # Whoever pushed the pull request never approves its own preview.
                    prevent_self_review=True,
                    can_admins_bypass=False,
                    secrets=read_only_secrets,
                    variables={**args.variables, **read_only.variables},
                )
        self.register_outputs({"environment": self.environment.environment})

    def _declare(
        self,
        name: str,
        environment: str,
        *,
        reviewers: Reviewers,
        deployment_branches: Sequence[str],
        wait_timer: int,
        prevent_self_review: bool,
        can_admins_bypass: bool,
        secrets: Mapping[str, SecretStr],
        variables: Mapping[str, str],
    ) -> github.RepositoryEnvironment:
        """One environment with its reviewers, branch policies (none: any branch), secrets and variables."""
        settings = self._settings
        user_ids = [
            github.get_user_output(username=login, opts=self._lookup).id.apply(int) for login in reviewers.users
        ]
        team_ids = [
            github.get_team_output(slug=slug, summary_only=True, opts=self._lookup).id.apply(int)
            for slug in reviewers.teams
        ]
        declared = github.RepositoryEnvironment(
            f"{name}-environment",
            repository=settings.repository,
            environment=environment,
            reviewers=[github.RepositoryEnvironmentReviewerArgs(users=user_ids, teams=team_ids)]
            if reviewers.count
            else [],
            wait_timer=wait_timer,
            prevent_self_review=prevent_self_review,
            can_admins_bypass=can_admins_bypass,
            deployment_branch_policy=github.RepositoryEnvironmentDeploymentBranchPolicyArgs(
                protected_branches=False,
                custom_branch_policies=True,
            )
            if deployment_branches
            else None,
            opts=self._child,
        )
        in_environment = pulumi.ResourceOptions.merge(self._child, pulumi.ResourceOptions(depends_on=[declared]))
        for branch in deployment_branches:
            github.RepositoryEnvironmentDeploymentPolicy(
                f"{name}-branch-{branch}",
                repository=settings.repository,
                environment=declared.environment,
                branch_pattern=branch,
                opts=in_environment,
            )
        for secret_name, secret_value in sorted(secrets.items()):
            github.ActionsEnvironmentSecret(
                f"{name}-secret-{secret_name}",
                repository=settings.repository,
                environment=declared.environment,
                secret_name=secret_name,
                value=pulumi.Output.secret(secret_value.get_secret_value()),
                opts=in_environment,
            )
        for variable_name, value in sorted(variables.items()):
            github.ActionsEnvironmentVariable(
                f"{name}-variable-{variable_name}",
                repository=settings.repository,
                environment=declared.environment,
                variable_name=variable_name,
                value=value,
                opts=in_environment,
            )
        return declared


def _secret(value: SecretStr | None) -> pulumi.Output[str] | None:
    return pulumi.Output.secret(value.get_secret_value()) if value is not None else None


def _required(value: SecretStr | None) -> SecretStr:
    if value is None:
        raise ValueError("the stack config promised this secret; config.load checks it")
    return value
