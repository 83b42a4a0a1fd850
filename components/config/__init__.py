"""The stack configuration: read once at the entry point, validated into typed models, every problem at once.

One package, split by concern rather than kept beside each component (the way mitodl/ol-infrastructure
does), because the stack file is checked as a whole before any component exists: "every problem at once"
needs one pass over every section, and several rules span sections (production's version must be recorded
under github.releases; a stage that builds an image needs commit and commitTime). The components import
only the section model they take. Read in this order:

- `fields.py`: the value types keys share (ports, versions, names), each saying what it allows;
- `models.py`: the shape of the plain keys, one model per section; its field docstrings are the
  reference in docs/configuration.md and the schema docs/stack-file.schema.json
  (`scripts/config_reference.py` writes both);
- `secrets.py`: the secret keys, which a stage needs, and reading them without ever showing a value;
- `stage_policy.py`: what each stage demands beyond shape (production's approval, branch and releases);
- `cluster_policy.py`: one host, or several on Docker Swarm with managers and a database host Swarm can run on;
- `problems.py`: how a problem is told (key once, allowed, received) and the one error that lists them;
- `loading.py`: `load()`, which runs all of the above over one stack's raw values.
"""

from components.config.fields import VERSION_FORMATS, VERSION_PATTERN
from components.config.loading import StackConfig, Stage, load, load_from_engine
from components.config.models import (
    AppSettings,
    BackupRepositorySettings,
    BackupSettings,
    BuildSettings,
    ClusterHost,
    GitHubApp,
    GitHubSettings,
    ImageSettings,
    PlainConfig,
    ReadOnlyEnvironmentSettings,
    ReleaseSettings,
    Reviewers,
    ServerSettings,
    VersionDigests,
)
from components.config.problems import NAMESPACE, ConfigError, Problem
from components.config.secrets import (
    APP_SECRET_KEYS,
    ENVIRONMENT_SECRETS_KEY,
    GITHUB_APP_KEY_KEY,
    GITHUB_TOKEN_KEY,
    REGISTRY_KEY,
    REQUIRED_ENVIRONMENT_SECRETS,
    SECRET_KEYS,
    SSH_KEY,
    Secrets,
)
from components.config.stage_policy import GITHUB_ADMINISTRATOR, PRODUCTION_BRANCH, STACK_VARIABLES, STAGES

__all__ = [
    "APP_SECRET_KEYS",
    "ENVIRONMENT_SECRETS_KEY",
    "GITHUB_ADMINISTRATOR",
    "GITHUB_APP_KEY_KEY",
    "GITHUB_TOKEN_KEY",
    "NAMESPACE",
    "PRODUCTION_BRANCH",
    "REGISTRY_KEY",
    "REQUIRED_ENVIRONMENT_SECRETS",
    "SECRET_KEYS",
    "SSH_KEY",
    "STACK_VARIABLES",
    "STAGES",
    "VERSION_FORMATS",
    "VERSION_PATTERN",
    "AppSettings",
    "BackupRepositorySettings",
    "BackupSettings",
    "BuildSettings",
    "ClusterHost",
    "ConfigError",
    "GitHubApp",
    "GitHubSettings",
    "ImageSettings",
    "PlainConfig",
    "Problem",
    "ReadOnlyEnvironmentSettings",
    "ReleaseSettings",
    "Reviewers",
    "Secrets",
    "ServerSettings",
    "StackConfig",
    "Stage",
    "VersionDigests",
    "load",
    "load_from_engine",
]
