"""The stack's secret keys: which exist, which a stage needs, what each holds, and reading them safely.

Each secret is its own top-level key, so the engine knows exactly which values are secret. A problem with
one names the key and, where it helps, the value's length or form; never the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from components.config.fields import ENV_FILE_RULE, ENV_NAME_PATTERN, ENV_NAME_RULE, fits_env_file
from components.config.problems import Problem, full_key

# Secret key -> the variable of the server's `.env` that carries it.
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
STAGING_ENVIRONMENT_SECRETS_KEY = "stagingEnvironmentSecrets"
# What the database's backups need where `backup` is declared: the repository's encryption key and its credentials.
BACKUP_CIPHER_KEY = "backupCipherPass"
BACKUP_ACCESS_KEY = "backupRepositoryKey"
BACKUP_SECRET_KEY = "backupRepositorySecret"
BACKUP_SECRET_KEYS = (BACKUP_CIPHER_KEY, BACKUP_ACCESS_KEY, BACKUP_SECRET_KEY)
# What the deploy workflow needs in its GitHub environment to run `pulumi up` at all.
REQUIRED_ENVIRONMENT_SECRETS = ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE")
SECRET_KEYS = (
    *APP_SECRET_KEYS,
    SSH_KEY,
    REGISTRY_KEY,
    GITHUB_TOKEN_KEY,
    GITHUB_APP_KEY_KEY,
    ENVIRONMENT_SECRETS_KEY,
    STAGING_ENVIRONMENT_SECRETS_KEY,
    *BACKUP_SECRET_KEYS,
)
# What can change the repository's GitHub environments (the token or App key that administers it) or comes from
# them: held by the stack that administers the repository only (stage_policy.GITHUB_ADMINISTRATOR).
GITHUB_ADMINISTRATION_KEYS = (
    GITHUB_TOKEN_KEY,
    GITHUB_APP_KEY_KEY,
    ENVIRONMENT_SECRETS_KEY,
    STAGING_ENVIRONMENT_SECRETS_KEY,
)
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.+", re.S)
SECRET_FORMATS: Mapping[str, tuple[re.Pattern[str], str]] = {
    "googleEncryptionKey": (re.compile(r"[0-9a-fA-F]{64}"), "64 hexadecimal characters"),
    SSH_KEY: (_PRIVATE_KEY, "a PEM/OpenSSH private key"),
    GITHUB_APP_KEY_KEY: (_PRIVATE_KEY, "a PEM private key"),
    # pgBackRest reads them from its config file, one line each: printable, no line break.
    BACKUP_CIPHER_KEY: (re.compile(r"[!-~]{32,1024}"), "32 or more printable characters without spaces"),
    BACKUP_ACCESS_KEY: (re.compile(r"[!-~]{3,256}"), "printable characters without spaces"),
    BACKUP_SECRET_KEY: (re.compile(r"[!-~]{3,256}"), "printable characters without spaces"),
}
# What each secret is for, beyond the `.env` variable an app secret fills (docs/configuration.md).
SECRET_PURPOSES: Mapping[str, str] = {
    "googleEncryptionKey": "generate it with `openssl rand -hex 32`",
    SSH_KEY: "the deploy key the release steps log in to the server with",
    REGISTRY_KEY: "a token that can read (production) or write (staging) the image's packages",
    GITHUB_TOKEN_KEY: (
        "the token that administers the repository: every stage's environments (their reviewers, branches, "
        "secrets) and the releases; production's stack only"
    ),
    GITHUB_APP_KEY_KEY: f"the GitHub App's private key, instead of `{GITHUB_TOKEN_KEY}`, with `github.app` set",
    ENVIRONMENT_SECRETS_KEY: (
        "the GitHub environments' secrets, one per name: PULUMI_CONFIG_PASSPHRASE and PULUMI_BACKEND_URL (every "
        "environment of the stage gets them), RELEASE_APP_PRIVATE_KEY (the key of the stage's own release App; "
        "the deploy environment only), APP_REPOSITORY_TOKEN (Contents: read on a private app repository; every "
        "environment of the stage) and, for Pulumi Cloud, PULUMI_ACCESS_TOKEN (deploys) and "
        "PULUMI_READ_ACCESS_TOKEN (previews and drift get it as their PULUMI_ACCESS_TOKEN)"
    ),
    BACKUP_CIPHER_KEY: (
        "the passphrase that encrypts the backup repository (aes-256-cbc), where `backup` is declared: generate it "
        "with `openssl rand -base64 48` and keep a copy outside the stack; without it no backup can be restored"
    ),
    BACKUP_ACCESS_KEY: "the backup repository's access key ID (S3), where `backup` is declared",
    BACKUP_SECRET_KEY: "the backup repository's secret access key (S3), where `backup` is declared",
    STAGING_ENVIRONMENT_SECRETS_KEY: (
        f"the staging environments' secrets, kept by production's stack, which declares them: the same names as "
        f"`{ENVIRONMENT_SECRETS_KEY}`, with staging's values (its backend, passphrase and release App key)"
    ),
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
    staging_environment: Mapping[str, SecretStr]
    """The same, for the staging environments the administering stack declares."""
    backup: Mapping[str, SecretStr] | None = None
    """The backup secrets by key (BACKUP_SECRET_KEYS), where `backup` is declared."""


def required_secrets(manages_github: bool, uses_github_app: bool, backups: bool = False) -> list[str]:
    """The secret keys a stack must hold: a stack that manages GitHub authenticates with a token or an App key; a
    stack that declares backups holds their key and credentials."""
    required = [*APP_SECRET_KEYS, SSH_KEY, REGISTRY_KEY, *(BACKUP_SECRET_KEYS if backups else ())]
    if manages_github:
        required += [
            GITHUB_APP_KEY_KEY if uses_github_app else GITHUB_TOKEN_KEY,
            ENVIRONMENT_SECRETS_KEY,
            STAGING_ENVIRONMENT_SECRETS_KEY,
        ]
    return required


def set_arguments(name: str) -> str:
    """What follows `pulumi config set --secret -s STAGE` to set this secret without it landing in a shell history."""
    if name in (ENVIRONMENT_SECRETS_KEY, STAGING_ENVIRONMENT_SECRETS_KEY):
        return f"--path '{name}.<NAME>'"
    if name in (SSH_KEY, GITHUB_APP_KEY_KEY):
        return f"{name} < path/to/private-key"
    return name


def set_note(name: str) -> str:
    if name in (ENVIRONMENT_SECRETS_KEY, STAGING_ENVIRONMENT_SECRETS_KEY):
        return f"one per secret: {', '.join(REQUIRED_ENVIRONMENT_SECRETS)}"
    if name in (SSH_KEY, GITHUB_APP_KEY_KEY):
        return ""
    return "prompts for the value; or pipe it on stdin"


def set_hint(name: str) -> str:
    note = set_note(name)
    return set_arguments(name) + (f"   ({note})" if note else "")


def read_secrets(
    stack: str, values: Mapping[str, Any], secret_keys: set[str], required: list[str]
) -> tuple[Secrets | None, list[Problem]]:
    """The secrets among `values` (keys without namespace), each checked; None when any is missing or bad."""
    stack_file = f"Pulumi.{stack}.yaml"
    problems: list[Problem] = []
    found: dict[str, SecretStr] = {}
    environments: dict[str, dict[str, SecretStr]] = {ENVIRONMENT_SECRETS_KEY: {}, STAGING_ENVIRONMENT_SECRETS_KEY: {}}
    for name in SECRET_KEYS:
        if name not in values:
            if name in required:
                problems.append(
                    Problem(
                        full_key(name),
                        f"required secret is missing; set it with: pulumi config set --secret -s {stack} "
                        f"{set_hint(name)}",
                    )
                )
        elif full_key(name) not in secret_keys:
            problems.append(
                Problem(
                    full_key(name),
                    "is stored in plaintext (value not shown); allowed: a Pulumi secret. Remove it from "
                    f"{stack_file} and run: pulumi config set --secret -s {stack} {set_hint(name)}",
                )
            )
        elif name in environments:
            problems.extend(_environment_secrets(name, values[name], environments[name]))
        else:
            problem = _problem_with(name, values[name])
            if problem:
                problems.append(Problem(full_key(name), problem))
            else:
                found[name] = SecretStr(values[name])
    if problems:
        return None, problems
    return (
        Secrets(
            ssh_private_key=found[SSH_KEY],
            registry_password=found[REGISTRY_KEY],
            app={env: found[name] for name, env in APP_SECRET_KEYS.items()},
            github_token=found.get(GITHUB_TOKEN_KEY),
            github_app_private_key=found.get(GITHUB_APP_KEY_KEY),
            environment=environments[ENVIRONMENT_SECRETS_KEY],
            staging_environment=environments[STAGING_ENVIRONMENT_SECRETS_KEY],
            backup={name: found[name] for name in BACKUP_SECRET_KEYS} if BACKUP_CIPHER_KEY in required else None,
        ),
        [],
    )


def _problem_with(name: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "allowed: a non-empty string; received an empty or non-string value"
    if name in APP_SECRET_KEYS and not fits_env_file(value):
        return f"allowed: {ENV_FILE_RULE}; value not shown"
    if name in SECRET_FORMATS:
        pattern, described = SECRET_FORMATS[name]
        if not pattern.fullmatch(value.strip()):
            return f"allowed: {described}; received {len(value)} characters of another form (not shown)"
    return None


def _environment_secrets(secrets_key: str, value: Any, into: dict[str, SecretStr]) -> list[Problem]:
    key = full_key(secrets_key)
    if not isinstance(value, dict):
        return [Problem(key, "allowed: an object of NAME: secret value; received another type")]
    problems: list[Problem] = []
    name_pattern = re.compile(ENV_NAME_PATTERN)
    for name, secret in value.items():
        if not name_pattern.fullmatch(name):
            problems.append(Problem(f"{key}.{name}", f"allowed: {ENV_NAME_RULE}"))
        elif not isinstance(secret, str) or not secret:
            problems.append(Problem(f"{key}.{name}", "allowed: a non-empty string"))
        else:
            into[name] = SecretStr(secret)
    for required in REQUIRED_ENVIRONMENT_SECRETS:
        if required not in value:
            problems.append(
                Problem(
                    f"{key}.{required}",
                    "required environment secret is missing (the deploy workflow needs it); set it with: "
                    f"pulumi config set --secret --path '{secrets_key}.{required}'",
                )
            )
    return problems
