"""The shape of the stack file's plain keys: one pydantic model per section, each key with what it means.

The docstring under each field is its description in docs/configuration.md (scripts/config_reference.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from components.config.fields import (
    FITS_ENV_FILE,
    HOST_NAME_PATTERN,
    IPV4_PATTERN,
    REQUESTER_PATTERN,
    UTC_TIME_PATTERN,
    AbsolutePath,
    BranchPattern,
    CommitSha,
    DatabaseName,
    DatabaseTag,
    Digest,
    EnvName,
    EnvValue,
    GitHubLogin,
    HttpsUrl,
    Ipv4Address,
    Port,
    SshHostKey,
    TeamSlug,
    Version,
    in_range,
    matching,
)

MAX_REVIEWERS_PER_KIND = 6
PEM_CERTIFICATE_PATTERN = r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----\s*"
MAX_WAIT_TIMER_MINUTES = 43200


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=False,
        extra="forbid",
        frozen=True,
        strict=True,
        use_attribute_docstrings=True,
    )


class Reviewers(Model):
    users: list[GitHubLogin] = Field(default_factory=list, max_length=MAX_REVIEWERS_PER_KIND)
    """GitHub logins who may approve."""
    teams: list[TeamSlug] = Field(default_factory=list, max_length=MAX_REVIEWERS_PER_KIND)
    """Team slugs (of the owner's organisation) whose members may approve."""

    @property
    def count(self) -> int:
        return len(self.users) + len(self.teams)


class GitHubApp(Model):
    id: Annotated[str, matching(r"\d+", "a numeric GitHub App ID")]
    """The App's numeric ID."""
    installation_id: Annotated[str, matching(r"\d+", "a numeric installation ID")]
    """The numeric ID of its installation on the owner."""


class ReadOnlyEnvironmentSettings(Model):
    """A GitHub environment where a workflow only reads the stack (`pulumi preview`), never deploys it."""

    reviewers: Reviewers = Field(default_factory=Reviewers)
    """Who approves each run in this environment."""
    deployment_branches: list[BranchPattern] = Field(default_factory=list)
    """Empty: any branch (pull requests); the reviewers are then the gate."""
    variables: dict[EnvName, str] = Field(default_factory=dict)
    """E.g. AWS_ROLE_ARN of a read-only role on the state bucket."""


class GitHubSettings(Model):
    owner: GitHubLogin
    """The GitHub owner (organisation or user) of both repositories."""
    repository: Annotated[str, matching(r"[A-Za-z0-9._-]+", "a repository name without owner")]
    """This deploy repository: its workflows run the stage's jobs, so the environment lives here."""
    app_repository: Annotated[str, matching(r"[A-Za-z0-9._-]+", "a repository name without owner")]
    """The app's repository, where releases are published and versions are tagged."""
    environment: Annotated[str, matching(r"[A-Za-z0-9._-]+", "a GitHub environment name")]
    """The deploy environment's name; `<environment>-preview` and `<environment>-drift` go with it."""
    deployment_branches: list[BranchPattern] = Field(min_length=1)
    """The branches that may deploy in the environment: exactly those its deploy workflow runs from."""
    reviewers: Reviewers = Field(default_factory=Reviewers)
    """Who approves a deployment (required reviewers)."""
    wait_timer: Annotated[int, in_range(0, MAX_WAIT_TIMER_MINUTES, "minutes")] = 0
    """Minutes a deployment waits after its approval."""
    prevent_self_review: bool = True
    """Whoever started a deployment cannot approve it."""
    can_admins_bypass: bool = False
    """Whether repository administrators may deploy without an approval."""
    variables: dict[EnvName, str] = Field(default_factory=dict)
    """Environment variables of the deploy environment (APP_URL and PULUMI_STACK are the stack's own)."""
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


class BuildSettings(Model):
    context: str
    """The build context: the app repository checked out beside this project."""
    dockerfile: str = "Dockerfile"
    """The Dockerfile, relative to the context."""
    runner_target: str = "runner"
    """The Dockerfile stage that runs the app: pushed as `<version>`."""
    migrate_target: str = "builder"
    """The Dockerfile stage that runs migrations: pushed as `<version>-migrate`."""


class VersionDigests(Model):
    """What one version is, for good: the digests of its two images."""

    app: Digest
    """The app image's digest (`<repository>:<version>`)."""
    migrate: Digest
    """The migrate image's digest (`<repository>:<version>-migrate`)."""


class ImageSettings(Model):
    registry: str = "ghcr.io"
    """The container registry."""
    repository: Annotated[str, matching(r"[a-z0-9._/-]+", "a lower-case repository path")]
    """The image's path in the registry."""
    username: str
    """The account whose token is the `registryPassword` secret."""
    plain_http: bool = False
    """The registry answers plain HTTP, without TLS (the local target's registry on 127.0.0.1). Otherwise the docker
    provider asks it over HTTPS, as it always does unless told `http://`."""
    build: BuildSettings | None = None
    """Build and push the version from source; absent means the version must already exist."""
    digests: dict[Version, VersionDigests] = Field(default_factory=dict)
    """Each version's digests, recorded when it first became releasable (scripts/record_release.py). A recorded
    version deploys exactly these bytes: no build, and a registry whose tag now names other bytes stops the update."""
    database_digests: dict[DatabaseTag, Digest] = Field(default_factory=dict)
    """Where `backup` is declared: the digest of each database image (`<repository>-postgres:<tag>`, built by the
    building stage on app.postgresImage), recorded when it was first built (scripts/record_database_image.py).
    A recorded tag deploys exactly these bytes, without the registry; production deploys only a recorded one."""


class ClusterHost(Model):
    """One host of a stage that runs on Docker Swarm (docs/swarm.md)."""

    host: str
    """How the release steps reach it over SSH: its name or address."""
    port: Port | None = None
    """Its SSH port; absent: `server.port`."""
    user: str | None = None
    """The deploy user (in the `docker` group); absent: `server.user`."""
    host_key: SshHostKey
    """Its SSH host key, pinned: `ssh-keyscan -t ed25519 HOST`."""
    role: Literal["manager", "worker"]
    """A manager keeps the Swarm's state (Raft) and can run its commands; a worker only runs tasks."""
    database: bool = False
    """This host holds PostgreSQL and its backups, and runs the release steps: exactly one host, a manager."""
    advertise_address: Ipv4Address
    """The address the other hosts reach it at (Swarm's control, gossip and overlay traffic): a private one."""


class ServerSettings(Model):
    host: str = ""
    """The Docker host the stage runs on. Leave it out where `hosts` lists the stage's hosts."""
    port: Port = 22
    """Its SSH port (with `hosts`: of each host that names none)."""
    user: str
    """The deploy user (in the `docker` group; with `hosts`: on each host that names none)."""
    host_key: SshHostKey = ""
    """The server's SSH host key, pinned: `ssh-keyscan -t ed25519 HOST`. Leave it out where `hosts` lists the hosts."""
    app_dir: AbsolutePath = "/opt/kametrix"
    """Where the compose project, its scripts, `.env` and backups live on the server (with `hosts`: on the
    database host; the other hosts hold no file of the stage)."""
    hosts: list[ClusterHost] = Field(default_factory=list)
    """A stage on several hosts: Docker Swarm, one database host, every host serving the app through its proxy
    (docs/swarm.md). Empty: the stage is the one host `host`."""
    replicas: Annotated[int, in_range(1, 100, "app tasks")] = 2
    """With `hosts`: how many tasks of the app Swarm runs across the hosts; a rolling update replaces them one
    at a time, each new task health-gated before the old one stops."""

    def release_host(self) -> ServerSettings:
        """The host the release steps run on: the stage's one host, or the one of `hosts` that holds the database."""
        database = next((entry for entry in self.hosts if entry.database), None)
        if database is None:
            return self
        return self.model_copy(
            update={
                "host": database.host,
                "port": database.port or self.port,
                "user": database.user or self.user,
                "host_key": database.host_key,
                "hosts": [],
            }
        )


class AppSettings(Model):
    """The app's compose project and its plain settings; every text value lands in the server's `.env`."""

    url: Annotated[HttpsUrl, FITS_ENV_FILE]
    """Where users reach the app (NEXT_PUBLIC_APP_URL)."""
    compose_project: Annotated[str, matching(r"[a-z0-9][a-z0-9_-]*", "a compose project name"), FITS_ENV_FILE]
    """The compose project's name on the server."""
    app_container: EnvValue
    """The app containers' name; each colour adds `-blue` or `-green`."""
    db_container: EnvValue
    """The PostgreSQL container's name."""
    proxy_port: Port = 3000
    """Where the stage's proxy listens on the host's loopback: what the front proxy that terminates TLS points
    at. 3000 is where the single-container layout published the app, so that front proxy needs no change."""
    blue_port: Port = 3001
    """Where the blue colour of the app answers on the host's loopback: the health gate reaches it there."""
    green_port: Port = 3002
    """Where the green colour of the app answers on the host's loopback: the health gate reaches it there."""
    proxy_image: EnvValue = "nginx:1.28-alpine"
    """The proxy in front of the colours: an nginx image (the release steps reload and drain it as nginx)."""
    postgres_image: EnvValue = "postgres:16-alpine"
    """The PostgreSQL image. Where `backup` is declared, the database runs this image with pgBackRest added: the
    building stage builds it (components/database/Dockerfile) and pushes it as `<image.repository>-postgres`, and
    every stage that declares the same image deploys it."""
    postgres_user: DatabaseName
    """POSTGRES_USER: the database's owner. The app's colours and its migrations log in as roles of their own,
    `<user>_blue`, `<user>_green` and `<user>_migrate`, each acting as the owner."""
    postgres_db: DatabaseName
    """POSTGRES_DB."""
    database_pool_min: Annotated[int, in_range(0, 1000, "connections")] = 2
    """DATABASE_POOL_MIN: at most databasePoolMax."""
    database_pool_max: Annotated[int, in_range(1, 1000, "connections")] = 10
    """DATABASE_POOL_MAX."""
    vapi_public_key: EnvValue
    """VAPI_PUBLIC_KEY."""
    google_client_id: EnvValue
    """GOOGLE_CLIENT_ID."""
    stripe_currency: Annotated[str, matching(r"[a-z]{3}", "an ISO 4217 currency code in lower case"), FITS_ENV_FILE] = (
        "eur"
    )
    """STRIPE_CURRENCY."""
    smtp_host: EnvValue
    """SMTP_HOST."""
    smtp_port: Port = 587
    """SMTP_PORT."""
    smtp_user: EnvValue
    """SMTP_USER."""
    smtp_from: EnvValue
    """SMTP_FROM: the sender of the app's mail."""


class ReleaseSettings(Model):
    health_attempts: Annotated[int, in_range(1, 600, "attempts")] = 30
    """How often the health gate asks a new colour whether it is healthy before the release fails. An ask counts once
    the colour answers: until then (it boots) it is asked every 0.1 s, for attempts × interval at most."""
    health_interval_seconds: Annotated[int, in_range(1, 60, "seconds")] = 2
    """Seconds between two of those asks."""
    backups_to_keep: Annotated[int, in_range(1, 1000, "backups")] = 10
    """Database backups kept on the server (the newest)."""
    images_to_keep: Annotated[int, in_range(2, 100, "images")] = 5
    """App images kept on the server; the live, previous and migrate images always stay."""
    lock_timeout_minutes: Annotated[int, in_range(5, 1440, "minutes")] = 30
    """A release lock handed on between two steps and older than this is taken over by anything but the stack's next
    update (which takes it at once): a break-glass script or another state waits at most this long."""
    drain_seconds: Annotated[int, in_range(1, 3600, "seconds")] = 30
    """After a switch, how long requests still running on the old colour may take before it is stopped."""
    backup: Literal["always", "before-migrations", "restore-point"] | None = None
    """Whether a release takes a `pg_dump` before migrating: `always`; `before-migrations` (only when a migration
    is pending); `restore-point` (never: the repository of `backup` holds the database, and the release only marks a
    named restore point and makes sure the WAL up to it is archived). Where `backup` is declared, every release marks
    that restore point whatever this says. Default: restore-point where `backup` is declared, before-migrations
    otherwise."""
    backup_on_rollback: bool = False
    """A rollback to a version this server already ran takes no backup (its schema is already there) unless
    this is true."""
    requested_by: (
        Annotated[str, matching(REQUESTER_PATTERN, "a run URL and who started it, like 'https://…/runs/42 (alice)'")]
        | None
    ) = None
    """Who asked for the pinned version: the workflows write their run URL and actor here when they pin a new
    version; the server's release lock names it beside the login that runs the steps."""


class BackupRepositorySettings(Model):
    """An S3-compatible object store off the app server: PostgreSQL's WAL and base backups go there, encrypted."""

    endpoint: Annotated[str, matching(HOST_NAME_PATTERN, "a host name, like s3.eu-central-1.amazonaws.com")]
    """The store's host name, as its TLS certificate names it (pgBackRest checks host names, never addresses)."""
    port: Port = 443
    """Its HTTPS port."""
    bucket: Annotated[str, matching(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "an S3 bucket name")]
    """The bucket, created beforehand (pgBackRest creates none)."""
    region: Annotated[str, matching(r"[a-z0-9-]{1,40}", "an S3 region, like eu-central-1")] = "us-east-1"
    """The bucket's region."""
    path: Annotated[str, matching(r"/[A-Za-z0-9._/-]{0,200}", "an absolute path inside the bucket")] = "/kametrix"
    """Where the stage's repository lies in the bucket: one stage, one path."""
    uri_style: Literal["host", "path"] = "host"
    """How a bucket is named in requests: `host` (bucket.endpoint, AWS) or `path` (endpoint/bucket)."""
    ca_certificate: (
        Annotated[str, matching(PEM_CERTIFICATE_PATTERN, "a PEM certificate (-----BEGIN CERTIFICATE----- …)")] | None
    ) = None
    """The CA that signed the store's certificate, as PEM, where it is not one the database image trusts (a
    store of your own). pgBackRest speaks TLS only and always checks the certificate."""
    host: Annotated[str, matching(IPV4_PATTERN, "an IPv4 address")] | None = None
    """The address the endpoint's name stands for, where no DNS says it (the database container's /etc/hosts)."""
    docker_network: Annotated[str, matching(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", "a Docker network name")] | None = None
    """An existing Docker network the database and its scheduler join to reach the store (the local target's);
    absent: they reach it through the compose network's default route, as any container reaches the internet."""


class BackupSettings(Model):
    """Continuous, off-site, encrypted backups of the database with pgBackRest (docs: README, Backups)."""

    repository: BackupRepositorySettings
    """Where the backups go: never the app server."""
    archive_timeout_seconds: Annotated[int, in_range(10, 3600, "seconds")] = 60
    """PostgreSQL's archive_timeout: a WAL segment is archived at least this often while anything is written, so a
    lost server loses at most about this much of committed writes (the RPO)."""
    full_every_hours: Annotated[int, in_range(1, 2160, "hours")] = 168
    """A full base backup at least this often."""
    diff_every_hours: Annotated[int, in_range(1, 2160, "hours")] = 24
    """A differential base backup (what changed since the last full) at least this often between full ones."""
    drill_every_hours: Annotated[int, in_range(1, 2160, "hours")] = 24
    """A restore drill at least this often: the latest backup restored into a scratch database on the server and
    its tables and row counts compared with the live ones."""
    retention_full: Annotated[int, in_range(1, 100, "full backups")] = 2
    """Full backups kept, with the differential backups and WAL that depend on them; older ones expire."""
    retention_diff: Annotated[int, in_range(1, 100, "differential backups")] = 7
    """Differential backups kept."""
    stale_after_hours: Annotated[int, in_range(1, 2160, "hours")] = 26
    """`status` and the drift check call the backups stale when the newest base backup or the last good drill is
    older than this."""


class PlainConfig(Model):
    """Every non-secret key of the `kametrix-deploy` namespace."""

    version: Version
    """The version the stage runs: an exact version, never `latest` or a branch."""
    commit: CommitSha | None = None
    """The commit a building stage builds (GIT_SHA)."""
    commit_time: Annotated[str, matching(UTC_TIME_PATTERN, "an ISO 8601 UTC time like 2026-11-28T12:00:00Z")] | None = (
        None
    )
    """When that commit was made (BUILD_TIMESTAMP); a build stays reproducible, so no clock is read."""
    server: ServerSettings
    """The Docker host, reached over SSH."""
    image: ImageSettings
    """The container image: built and pushed (staging) or resolved to its digest (production)."""
    app: AppSettings
    """The app's compose project, ports and plain settings."""
    release: ReleaseSettings = Field(default_factory=ReleaseSettings)
    """How a release gates, drains, locks and cleans up."""
    backup: BackupSettings | None = None
    """Continuous WAL archiving, scheduled base backups and restore drills to a repository off the server;
    absent: only the release's `pg_dump` backups on the server itself."""
    github: GitHubSettings | None = None
    """The stage's GitHub environment; absent only where no GitHub repository is managed (local)."""
