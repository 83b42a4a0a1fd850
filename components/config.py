"""The stack configuration: read once, validated into typed models, every problem reported at once."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import pulumi
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

NAMESPACE = "kametrix-deploy"
STAGES = ("staging", "production", "local")
Stage = Literal["staging", "production", "local"]

# Versions the image registry holds: release tags and staging builds. Never a moving tag.
VERSION_PATTERN = re.compile(r"^(v\d+\.\d+\.\d+|v\d{4}\.\d{2}\.\d{2}-[0-9a-f]{7,40}|staging-[0-9a-f]{7,40})$")
VERSION_FORMATS = "v1.2.3, vYYYY.MM.DD-<short sha> or staging-<short sha>"
MAX_REVIEWERS_PER_KIND = 6
MAX_WAIT_TIMER_MINUTES = 43200


def _in_range(low: int, high: int, unit: str) -> AfterValidator:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"allowed: {low}–{high} {unit}; received {value}")
        return value

    return AfterValidator(check)


def _matching(pattern: str, allowed: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"allowed: {allowed}; received {value!r}")
        return value

    return AfterValidator(check)


Port = Annotated[int, _in_range(1, 65535, "(TCP port)")]
Version = Annotated[str, AfterValidator(lambda v: _check_version(v))]
# What the server's release lock accepts too (components/scripts/lib.sh, require_requester).
REQUESTER_PATTERN = r"[A-Za-z0-9 ._:/@()#+,=\[\]-]{1,300}"
CommitSha = Annotated[str, _matching(r"[0-9a-f]{40}", "a full 40-character lowercase git SHA")]
GitHubLogin = Annotated[str, _matching(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})", "a GitHub login")]
TeamSlug = Annotated[str, _matching(r"[a-z0-9][a-z0-9._-]*", "a GitHub team slug")]
BranchPattern = Annotated[str, _matching(r"[A-Za-z0-9._/*-]+", "a branch name or pattern")]
EnvName = Annotated[
    str,
    _matching(r"(?!GITHUB_)[A-Z_][A-Z0-9_]*", "an upper-case name not starting with GITHUB_"),
]
AbsolutePath = Annotated[str, _matching(r"/[A-Za-z0-9._/-]*", "an absolute path")]
HttpsUrl = Annotated[str, _matching(r"https?://[^\s/]+(/[^\s]*)?", "an http(s) URL")]
Digest = Annotated[str, _matching(r"sha256:[0-9a-f]{64}", "an image digest sha256:<64 lower-case hex>")]


def _check_version(value: str) -> str:
    if not VERSION_PATTERN.fullmatch(value):
        raise ValueError(f"must be an exact version ({VERSION_FORMATS}); received {value!r}")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=False,
        extra="forbid",
        frozen=True,
        strict=True,
    )


class Reviewers(_Model):
    users: list[GitHubLogin] = Field(default_factory=list, max_length=MAX_REVIEWERS_PER_KIND)
    teams: list[TeamSlug] = Field(default_factory=list, max_length=MAX_REVIEWERS_PER_KIND)

    @property
    def count(self) -> int:
        return len(self.users) + len(self.teams)


class GitHubApp(_Model):
    id: Annotated[str, _matching(r"\d+", "a numeric GitHub App ID")]
    installation_id: Annotated[str, _matching(r"\d+", "a numeric installation ID")]


class ReadOnlyEnvironmentSettings(_Model):
    """A GitHub environment where a workflow only reads the stack (`pulumi preview`), never deploys it."""

    reviewers: Reviewers = Field(default_factory=Reviewers)
    deployment_branches: list[BranchPattern] = Field(default_factory=list)
    """Empty: any branch (pull requests); the reviewers are then the gate."""
    variables: dict[EnvName, str] = Field(default_factory=dict)
    """E.g. AWS_ROLE_ARN of a read-only role on the state bucket."""


class GitHubSettings(_Model):
    owner: GitHubLogin
    repository: Annotated[str, _matching(r"[A-Za-z0-9._-]+", "a repository name without owner")]
    """This deploy repository: its workflows run the stage's jobs, so the environment lives here."""
    app_repository: Annotated[str, _matching(r"[A-Za-z0-9._-]+", "a repository name without owner")]
    """The app's repository, where releases are published and versions are tagged."""
    environment: Annotated[str, _matching(r"[A-Za-z0-9._-]+", "a GitHub environment name")]
    deployment_branches: list[BranchPattern] = Field(min_length=1)
    reviewers: Reviewers = Field(default_factory=Reviewers)
    wait_timer: Annotated[int, _in_range(0, MAX_WAIT_TIMER_MINUTES, "minutes")] = 0
    prevent_self_review: bool = True
    can_admins_bypass: bool = False
    variables: dict[EnvName, str] = Field(default_factory=dict)
    app: GitHubApp | None = None
    """Authenticate as a GitHub App (private key in the `githubAppPrivateKey` secret) instead of a token."""
    preview: ReadOnlyEnvironmentSettings | None = None
    """`<environment>-preview`, where pull requests preview the stack. The preview runs the PR's program with the
    stage's passphrase, so its reviewers approve each preview."""
    drift: ReadOnlyEnvironmentSettings | None = None
    """`<environment>-drift`, where the scheduled drift check previews the stack from the stage's branch."""
    releases: dict[Version, CommitSha] = Field(default_factory=dict)
    """Every version published as a GitHub release, with its commit. Kept declared so a rollback to one of
    them finds its release record in place instead of trying to create it again."""


class BuildSettings(_Model):
    context: str
    dockerfile: str = "Dockerfile"
    runner_target: str = "runner"
    migrate_target: str = "builder"


class VersionDigests(_Model):
    """What one version is, for good: the digests of its two images."""

    app: Digest
    migrate: Digest


class ImageSettings(_Model):
    registry: str = "ghcr.io"
    repository: Annotated[str, _matching(r"[a-z0-9._/-]+", "a lower-case repository path")]
    username: str
    build: BuildSettings | None = None
    """Build and push the version from source; absent means the version must already exist."""
    digests: dict[Version, VersionDigests] = Field(default_factory=dict)
    """Each version's digests, recorded when it first became releasable (scripts/record_release.py). A recorded
    version deploys exactly these bytes: no build, and a registry whose tag now names other bytes stops the update."""


class ServerSettings(_Model):
    host: str
    port: Port = 22
    user: str
    host_key: Annotated[
        str,
        _matching(r"(ssh-ed25519|ecdsa-sha2-nistp256|ssh-rsa) [A-Za-z0-9+/=]+", "an SSH public host key line"),
    ]
    app_dir: AbsolutePath = "/opt/kametrix"


class AppSettings(_Model):
    url: HttpsUrl
    compose_project: Annotated[str, _matching(r"[a-z0-9][a-z0-9_-]*", "a compose project name")]
    app_container: str
    db_container: str
    proxy_port: Port = 3000
    """Where the stage's proxy listens on the host's loopback: what the front proxy that terminates TLS points
    at. 3000 is where the single-container layout published the app, so that front proxy needs no change."""
    blue_port: Port = 3001
    green_port: Port = 3002
    """Where each colour of the app answers on the host's loopback: the health gate reaches a colour there."""
    proxy_image: str = "nginx:1.28-alpine"
    """The proxy in front of the colours: an nginx image (the release steps reload and drain it as nginx)."""
    postgres_image: str = "postgres:16-alpine"
    postgres_port: Port = 5432
    host_network: bool = False
    postgres_user: str
    postgres_db: str
    database_pool_min: Annotated[int, _in_range(0, 1000, "connections")] = 2
    database_pool_max: Annotated[int, _in_range(1, 1000, "connections")] = 10
    vapi_public_key: str
    google_client_id: str
    stripe_currency: Annotated[str, _matching(r"[a-z]{3}", "an ISO 4217 currency code in lower case")] = "eur"
    smtp_host: str
    smtp_port: Port = 587
    smtp_user: str
    smtp_from: str

    @model_validator(mode="after")
    def _fits_env_file(self) -> AppSettings:
        for name, value in self:
            if isinstance(value, str) and ("'" in value or "\n" in value):
                raise ValueError(
                    f"app.{to_camel(name)}: allowed: no single quote or line break (the .env quotes values); "
                    f"received {value!r}"
                )
        return self


class ReleaseSettings(_Model):
    health_attempts: Annotated[int, _in_range(1, 600, "attempts")] = 30
    health_interval_seconds: Annotated[int, _in_range(1, 60, "seconds")] = 2
    backups_to_keep: Annotated[int, _in_range(1, 1000, "backups")] = 10
    images_to_keep: Annotated[int, _in_range(2, 100, "images")] = 5
    lock_timeout_minutes: Annotated[int, _in_range(5, 1440, "minutes")] = 30
    """A release lock older than this is taken over: a release that died between steps cannot block forever."""
    drain_seconds: Annotated[int, _in_range(1, 3600, "seconds")] = 30
    """After a switch, how long requests still running on the old colour may take before it is stopped."""
    backup: Literal["always", "before-migrations"] = "before-migrations"
    """Whether a release whose migrations are all applied already backs up (always) or not (before-migrations).
    A release with a pending migration always backs up first."""
    backup_on_rollback: bool = False
    """A rollback to a version this server already ran takes no backup (its schema is already there) unless
    this is true."""
    requested_by: (
        Annotated[str, _matching(REQUESTER_PATTERN, "a run URL and who started it, like 'https://…/runs/42 (alice)'")]
        | None
    ) = None
    """Who asked for the pinned version: the workflows write their run URL and actor here when they pin a new
    version; the server's release lock names it beside the login that runs the steps."""


class PlainConfig(_Model):
    """Every non-secret key of the `kametrix-deploy` namespace."""

    version: Version
    commit: CommitSha | None = None
    """The commit a building stage builds (GIT_SHA)."""
    commit_time: (
        Annotated[
            str, _matching(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", "an ISO 8601 UTC time like 2026-11-28T12:00:00Z")
        ]
        | None
    ) = None
    """When that commit was made (BUILD_TIMESTAMP); a build stays reproducible, so no clock is read."""
    server: ServerSettings
    image: ImageSettings
    app: AppSettings
    release: ReleaseSettings = Field(default_factory=ReleaseSettings)
    github: GitHubSettings | None = None
    """The stage's GitHub environment; absent only where no GitHub repository is managed (local)."""


# Secret keys, each its own top-level key so the engine knows exactly which are secret.
APP_SECRET_KEYS: Mapping[str, str] = {
    "postgresPassword": "POSTGRES_PASSWORD",
    "vapiApiKey": "VAPI_API_KEY",
    "vapiWebhookSecret": "VAPI_WEBHOOK_SECRET",
    "googleClientSecret": "GOOGLE_CLIENT_SECRET",
    "googleEncryptionKey": "GOOGLE_ENCRYPTION_KEY",
    "stripeSecretKey": "STRIPE_SECRET_KEY",
    "stripeWebhookSecret": "STRIPE_WEBHOOK_SECRET",
    "smtpPass": "SMTP_PASS",
    "openrouterApiKey": "OPENROUTER_API_KEY",
    "elevenlabsApiKey": "ELEVENLABS_API_KEY",
}
SSH_KEY = "sshPrivateKey"
REGISTRY_KEY = "registryPassword"
GITHUB_TOKEN_KEY = "githubToken"
GITHUB_APP_KEY_KEY = "githubAppPrivateKey"
ENVIRONMENT_SECRETS_KEY = "githubEnvironmentSecrets"
# What the deploy workflow needs in its GitHub environment to run `pulumi up` at all.
REQUIRED_ENVIRONMENT_SECRETS = ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE")
# Variables every stage's environment gets from the stack, so workflows know where they deploy.
STACK_VARIABLES = ("APP_URL", "PULUMI_STACK")
SECRET_KEYS = (
    *APP_SECRET_KEYS,
    SSH_KEY,
    REGISTRY_KEY,
    GITHUB_TOKEN_KEY,
    GITHUB_APP_KEY_KEY,
    ENVIRONMENT_SECRETS_KEY,
)
_OBJECT_KEYS = {"server", "image", "app", "release", "github", ENVIRONMENT_SECRETS_KEY}
_SECRET_FORMATS: Mapping[str, tuple[re.Pattern[str], str]] = {
    "googleEncryptionKey": (re.compile(r"[0-9a-fA-F]{64}"), "64 hexadecimal characters"),
    SSH_KEY: (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.+", re.S), "a PEM/OpenSSH private key"),
    GITHUB_APP_KEY_KEY: (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.+", re.S), "a PEM private key"),
}


@dataclass(frozen=True)
class Secrets:
    ssh_private_key: SecretStr
    registry_password: SecretStr
    app: Mapping[str, SecretStr]
    """Environment variable name -> value, for the server's `.env`."""
    github_token: SecretStr | None
    github_app_private_key: SecretStr | None
    environment: Mapping[str, SecretStr]
    """GitHub environment secret name -> value."""


@dataclass(frozen=True)
class StackConfig:
    stage: Stage
    stack_file: str
    plain: PlainConfig
    secrets: Secrets

    @property
    def github(self) -> GitHubSettings | None:
        return self.plain.github


@dataclass(frozen=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(pulumi.RunError):
    def __init__(self, stack_file: str, problems: list[Problem]) -> None:
        self.stack_file = stack_file
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{stack_file}: invalid stack configuration ({len(problems)} problems):\n{lines}")


def load(stack: str, raw: Mapping[str, Any], secret_keys: set[str]) -> StackConfig:
    """Validate the raw config bag of one stack (full keys `namespace:key` -> engine values)."""
    stack_file = f"Pulumi.{stack}.yaml"
    problems: list[Problem] = []

    def key(name: str) -> str:
        return f"{NAMESPACE}:{name}"

    values: dict[str, Any] = {}
    for full_key, value in raw.items():
        namespace, _, name = full_key.partition(":")
        if namespace != NAMESPACE:
            continue
        if name in _OBJECT_KEYS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                shown = "a value (not shown)" if name in SECRET_KEYS else repr(value)
                problems.append(Problem(full_key, f"must be an object; received {shown}"))
                continue
        values[name] = value

    if stack not in STAGES:
        problems.append(Problem("stack", f"allowed stacks: {', '.join(STAGES)}; received {stack!r}"))

    plain_values = {k: v for k, v in values.items() if k not in SECRET_KEYS}
    plain: PlainConfig | None = None
    try:
        plain = PlainConfig.model_validate(plain_values)
    except ValidationError as error:
        problems.extend(_problems_from(error, key))

    if stack in STAGES:
        problems.extend(_stage_policy(stack, _Sections.of(plain_values), key))

    github = plain.github if plain else plain_values.get("github")
    required_secrets = [*APP_SECRET_KEYS, SSH_KEY, REGISTRY_KEY]
    if github:
        uses_app = plain.github.app is not None if plain and plain.github else False
        required_secrets += [GITHUB_APP_KEY_KEY if uses_app else GITHUB_TOKEN_KEY, ENVIRONMENT_SECRETS_KEY]
    secret_values: dict[str, SecretStr] = {}
    environment_secrets: dict[str, SecretStr] = {}
    for name in SECRET_KEYS:
        if name not in values:
            if name in required_secrets:
                problems.append(
                    Problem(
                        key(name),
                        "required secret is missing; set it with: "
                        f"pulumi config set --secret -s {stack} {_set_hint(name)}",
                    )
                )
            continue
        if key(name) not in secret_keys:
            problems.append(
                Problem(
                    key(name),
                    "is stored in plaintext (value not shown); allowed: a Pulumi secret. Remove it from "
                    f"{stack_file} and run: pulumi config set --secret -s {stack} {_set_hint(name)}",
                )
            )
            continue
        value = values[name]
        if name == ENVIRONMENT_SECRETS_KEY:
            problems.extend(_environment_secrets(value, environment_secrets, key(name)))
            continue
        if not isinstance(value, str) or not value:
            problems.append(Problem(key(name), "allowed: a non-empty string; received an empty or non-string value"))
            continue
        if name in APP_SECRET_KEYS and ("'" in value or "\n" in value):
            problems.append(
                Problem(key(name), "allowed: no single quote or line break (the .env quotes values); value not shown")
            )
            continue
        if name in _SECRET_FORMATS:
            pattern, described = _SECRET_FORMATS[name]
            if not pattern.fullmatch(value.strip()):
                problems.append(
                    Problem(
                        key(name), f"allowed: {described}; received {len(value)} characters of another form (not shown)"
                    )
                )
                continue
        secret_values[name] = SecretStr(value)

    if problems or plain is None:
        raise ConfigError(stack_file, _dedupe(problems))

    return StackConfig(
        stage=stack,  # type: ignore[arg-type]  # checked against STAGES above
        stack_file=stack_file,
        plain=plain,
        secrets=Secrets(
            ssh_private_key=secret_values[SSH_KEY],
            registry_password=secret_values[REGISTRY_KEY],
            app={env: secret_values[name] for name, env in APP_SECRET_KEYS.items()},
            github_token=secret_values.get(GITHUB_TOKEN_KEY),
            github_app_private_key=secret_values.get(GITHUB_APP_KEY_KEY),
            environment=environment_secrets,
        ),
    )


def load_from_engine() -> StackConfig:
    """The entry point's one read of the stack's config, from what the engine handed the program."""
    from pulumi.runtime import config as runtime_config

    raw = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    secret_keys = set(runtime_config.get_config_secret_keys_env())
    secret_keys |= {k for k in raw if runtime_config.is_config_secret(k)}
    return load(pulumi.get_stack(), raw, secret_keys)


def _set_hint(name: str) -> str:
    if name == ENVIRONMENT_SECRETS_KEY:
        return f"--path '{name}.<NAME>'   (one per secret: {', '.join(REQUIRED_ENVIRONMENT_SECRETS)})"
    if name in (SSH_KEY, GITHUB_APP_KEY_KEY):
        return f"{name} < path/to/private-key"
    return f"{name}   (prompts for the value; or pipe it on stdin)"


def _environment_secrets(value: Any, into: dict[str, SecretStr], full_key: str) -> list[Problem]:
    if not isinstance(value, dict):
        return [Problem(full_key, "allowed: an object of NAME: secret value; received another type")]
    problems: list[Problem] = []
    name_pattern = re.compile(r"(?!GITHUB_)[A-Z_][A-Z0-9_]*")
    for name, secret in value.items():
        if not name_pattern.fullmatch(name):
            problems.append(Problem(f"{full_key}.{name}", "allowed: an upper-case name not starting with GITHUB_"))
        elif not isinstance(secret, str) or not secret:
            problems.append(Problem(f"{full_key}.{name}", "allowed: a non-empty string"))
        else:
            into[name] = SecretStr(secret)
    for required in REQUIRED_ENVIRONMENT_SECRETS:
        if required not in value:
            problems.append(
                Problem(
                    f"{full_key}.{required}",
                    "required environment secret is missing (the deploy workflow needs it); set it with: "
                    f"pulumi config set --secret --path '{full_key.partition(':')[2]}.{required}'",
                )
            )
    return problems


# Keys of an earlier layout, with what took their place.
_REPLACED_KEYS = {
    "app.appPort": "the app is reached through the stage's proxy now: allowed instead app.proxyPort (where the "
    "front proxy points), app.bluePort and app.greenPort (see docs/zero-downtime.md)",
}

_SectionModel = TypeVar("_SectionModel", bound=BaseModel)


@dataclass(frozen=True)
class _Sections:
    """Each section validated on its own, so a mistake in one does not hide a policy breach in another."""

    version: str | None
    commit: str | None
    commit_time: str | None
    github_declared: bool
    github: GitHubSettings | None
    image: ImageSettings | None
    app: AppSettings | None

    @staticmethod
    def of(values: Mapping[str, Any]) -> _Sections:
        def section(model: type[_SectionModel], alias: str) -> _SectionModel | None:
            try:
                return model.model_validate(values[alias]) if alias in values else None
            except ValidationError:
                return None

        def text(alias: str) -> str | None:
            value = values.get(alias)
            return value if isinstance(value, str) else None

        return _Sections(
            version=text("version"),
            commit=text("commit"),
            commit_time=text("commitTime"),
            github_declared="github" in values,
            github=section(GitHubSettings, "github"),
            image=section(ImageSettings, "image"),
            app=section(AppSettings, "app"),
        )


def _stage_policy(stack: str, plain: _Sections, key: Any) -> list[Problem]:
    problems: list[Problem] = []
    github = plain.github
    if stack in ("staging", "production") and not plain.github_declared:
        problems.append(
            Problem(key("github"), f"required for the {stack} stack: its GitHub environment is declared here")
        )
    if stack in ("staging", "production") and github is not None:
        problems.extend(_read_only_environment_policy(github, key))
    if stack == "production":
        if github is not None and github.reviewers.count == 0:
            problems.append(
                Problem(
                    key("github.reviewers"),
                    "production needs at least one required reviewer; allowed: 1–6 users and/or 1–6 teams; "
                    "received none",
                )
            )
        if github is not None and github.can_admins_bypass:
            problems.append(
                Problem(
                    key("github.canAdminsBypass"),
                    "allowed in production: false (nobody skips the approval); received true",
                )
            )
        if github is not None and plain.version is not None and plain.version not in github.releases:
            problems.append(
                Problem(
                    key("github.releases"),
                    f"production releases only versions recorded here with their commit; allowed: "
                    f"{', '.join(github.releases) or 'none recorded yet'}; received version {plain.version!r}. "
                    f"Add `{plain.version}: <commit sha>` under github.releases",
                )
            )
        if (
            plain.image is not None
            and plain.version is not None
            and VERSION_PATTERN.fullmatch(plain.version)
            and plain.version not in plain.image.digests
        ):
            problems.append(
                Problem(
                    key("image.digests"),
                    f"production deploys only versions whose image digests are recorded here; allowed: "
                    f"{', '.join(plain.image.digests) or 'none recorded yet'}; received version {plain.version!r}. "
                    f"Record it with: python scripts/record_release.py --stack-file Pulumi.production.yaml "
                    f"--version {plain.version} --app-digest sha256:<app> --migrate-digest sha256:<migrate>",
                )
            )
        if plain.image is not None and plain.image.build is not None:
            problems.append(
                Problem(
                    key("image.build"),
                    "production never rebuilds: it deploys a version that already exists; "
                    "allowed: absent; received a build",
                )
            )
    if plain.image is not None and plain.image.build is not None and not (plain.commit and plain.commit_time):
        problems.append(
            Problem(
                key("commit"),
                "a building stage needs the commit it builds and its time (keys commit and commitTime); "
                f"received commit={plain.commit!r}, commitTime={plain.commit_time!r}",
            )
        )
    for reserved in sorted(set(github.variables) & set(STACK_VARIABLES) if github else set()):
        problems.append(
            Problem(
                key(f"github.variables.{reserved}"),
                f"is published by the stack itself; allowed: any name except {', '.join(STACK_VARIABLES)}",
            )
        )
    if plain.app is not None and plain.app.database_pool_min > plain.app.database_pool_max:
        problems.append(
            Problem(
                key("app.databasePoolMin"),
                f"allowed: at most app.databasePoolMax ({plain.app.database_pool_max}); "
                f"received {plain.app.database_pool_min}",
            )
        )
    if plain.app is not None:
        problems.extend(_port_clashes(plain.app, key))
    return problems


def _read_only_environment_policy(github: GitHubSettings, key: Any) -> list[Problem]:
    """The workflows preview every stage in `<environment>-preview` and check its drift in `<environment>-drift`:
    both must be declared (GitHub would create a missing one without protection), and since a preview of a pull
    request runs the PR's program with the stage's passphrase, someone approves it first."""
    problems = []
    if github.preview is None or github.preview.reviewers.count == 0:
        problems.append(
            Problem(
                key("github.preview.reviewers"),
                f"{github.environment}-preview runs pull requests' code with the stage's passphrase; allowed: 1–6 "
                "users and/or 1–6 teams who approve each preview; received none",
            )
        )
    if github.drift is None or not github.drift.deployment_branches:
        problems.append(
            Problem(
                key("github.drift.deploymentBranches"),
                f"{github.environment}-drift must name the branch the drift check runs from; allowed: "
                f"{', '.join(github.deployment_branches)}; received none",
            )
        )
    elif not set(github.drift.deployment_branches) <= set(github.deployment_branches):
        problems.append(
            Problem(
                key("github.drift.deploymentBranches"),
                f"allowed: branches the stage deploys from ({', '.join(github.deployment_branches)}); "
                f"received {', '.join(github.drift.deployment_branches)}",
            )
        )
    return problems


def _port_clashes(app: AppSettings, key: Any) -> list[Problem]:
    """The proxy, both colours and PostgreSQL each need a port of their own on the host."""
    problems = []
    used_by: dict[int, str] = {}
    for name in ("proxy_port", "blue_port", "green_port", "postgres_port"):
        port, alias = getattr(app, name), f"app.{to_camel(name)}"
        if port in used_by:
            problems.append(Problem(key(alias), f"allowed: a port that {used_by[port]} does not use; received {port}"))
        used_by.setdefault(port, alias)
    return problems


def _problems_from(error: ValidationError, key: Any) -> list[Problem]:
    problems = []
    for detail in error.errors():
        loc = [str(part) for part in detail["loc"]]
        path = ".".join(loc)
        kind = detail["type"]
        if kind == "extra_forbidden" and path in _REPLACED_KEYS:
            message = f"unknown key; {_REPLACED_KEYS[path]}; received {loc[-1]!r}"
        elif kind == "extra_forbidden":
            known = _aliases_at(PlainConfig, loc[:-1]) | (set(SECRET_KEYS) if len(loc) == 1 else set())
            message = _unknown_key_message(loc[-1], sorted(known))
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "value_error":
            message = str(detail["msg"]).removeprefix("Value error, ")
        else:
            allowed = str(detail["msg"]).removeprefix("Input should be ")
            message = f"allowed: {allowed}; received {detail['input']!r}"
        problems.append(Problem(key(path), message))
    return problems


def _unknown_key_message(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}allowed: {', '.join(known)}; received {name!r}"


def _aliases(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def _aliases_at(model: type[BaseModel], loc: list[str]) -> set[str]:
    current: Any = model
    for part in loc:
        by_alias = {field.alias or name: field for name, field in current.model_fields.items()}
        if part not in by_alias:
            return set()
        annotation = by_alias[part].annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        current = next((c for c in candidates if issubclass(c, BaseModel)), None)
        if current is None:
            return set()
    return _aliases(current)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for problem in problems:
        if (problem.key, problem.message) not in seen:
            seen.add((problem.key, problem.message))
            unique.append(problem)
    return unique
