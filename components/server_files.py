"""What the server holds for a stage, rendered from the stack: the compose file, the proxy's config, the `.env`,
the scripts."""

from __future__ import annotations

import base64
import hashlib
import io
import string
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import yaml
from pydantic import SecretStr

from components import shared_facts
from components.config import AppSettings, BackupSettings, ReleaseSettings
from components.shared_facts import BACKUP_CONFIG_DIR, BACKUP_LABEL, BACKUP_STATUS_DIR, COLOURS, SCHEDULER_SERVICE

SCRIPTS_DIR = Path(__file__).parent / "scripts"
# The files rendered for the server, with @{name} placeholders (render()).
TEMPLATES_DIR = Path(__file__).parent / "templates"
# The release's steps before its switch, which a stage on Swarm runs too (components/remote_steps.py).
STEP_SCRIPTS = ("files.sh", "env.sh", "database.sh", "backup.sh", "migrate.sh")
# What a step runs, and the operator's commands on the server; bin/lib/ holds what they source, by concern.
SCRIPTS = (
    *STEP_SCRIPTS,
    "switch.sh",
    "up.sh",
    "release-lock.sh",
    "switch-back.sh",
    "restore.sh",
    "restore-dump.sh",
    "backup-status.sh",
    "backup-scheduler.sh",
    "backup-drill.sh",
)
LIBRARIES = (
    "lib/step.sh",
    "lib/lock.sh",
    "lib/live.sh",
    "lib/compose.sh",
    "lib/dump.sh",
    "lib/pgbackrest.sh",
    "lib/backup-job.sh",
    "lib/restoring.sh",
)
# Rendered from components/shared_facts.py into every bundle.
FACTS = "lib/facts.sh"
COMPOSE_FILE = "docker-compose.yml"
# The app repository's migrate service (target-app.md): status, deploy, status again.
MIGRATE_COMMAND = "npx prisma migrate status || true; npx prisma migrate deploy && npx prisma migrate status"
CONTAINER_PORT = 3000
POSTGRES_PORT = 5432
# The proxy's folder under the app directory, and where its container sees it. The release steps copy
# proxy/<colour>.conf to proxy/live.conf, which nginx.conf includes, to move traffic.
PROXY_DIR = "proxy"
PROXY_MOUNT = "/etc/kametrix-proxy"
# Answered by the proxy itself, never by the app: the colour it sends traffic to.
COLOUR_PATH = "/.kametrix/colour"
# Who logs in to the database besides its owner: each colour of the app, and the migrations.
LOGIN_ROLES = (*COLOURS, "migrate")


def colour_port(app: AppSettings, colour: str) -> int:
    return app.blue_port if colour == "blue" else app.green_port


def health_urls(app: AppSettings) -> list[str]:
    """Each colour's health endpoint on the host, in the order of COLOURS: the gate before a switch."""
    return [f"http://127.0.0.1:{colour_port(app, colour)}/api/health?build=true" for colour in COLOURS]


def colour_url(app: AppSettings) -> str:
    return f"http://127.0.0.1:{app.proxy_port}{COLOUR_PATH}"


def stage_files(app: AppSettings, release: ReleaseSettings, backup: BackupSettings | None = None) -> dict[str, str]:
    """What `up` switches with, by its path under the app directory: a change here is a cutover."""
    return {COMPOSE_FILE: compose_file(app, backup), **proxy_files(app, release)}


def settings_file(stack: str, app: AppSettings, release: ReleaseSettings) -> str:
    """The settings the steps read when they run (shared_facts.SETTINGS), for the updates of `stack`
    (shared_facts.stack_name): a change re-runs the files step alone."""
    blue_health_url, green_health_url = health_urls(app)
    values = {
        "STACK": stack,
        "PROJECT": app.compose_project,
        "LOCK_TIMEOUT_SECONDS": str(release.lock_timeout_minutes * 60),
        "IMAGES_TO_KEEP": str(release.images_to_keep),
        "HEALTH_ATTEMPTS": str(release.health_attempts),
        "HEALTH_INTERVAL_SECONDS": str(release.health_interval_seconds),
        "DRAIN_SECONDS": str(release.drain_seconds),
        "COLOUR_URL": colour_url(app),
        "BLUE_HEALTH_URL": blue_health_url,
        "GREEN_HEALTH_URL": green_health_url,
        "DATABASE_USER": app.postgres_user,
        "DATABASE_NAME": app.postgres_db,
        "REQUESTED_BY": release.requested_by or "",
    }
    if tuple(values) != tuple(shared_facts.SETTINGS):
        raise RuntimeError(
            f"the settings file has {tuple(values)}; shared_facts.SETTINGS names {tuple(shared_facts.SETTINGS)}"
        )
    return "".join(f"{key}={value}\n" for key, value in values.items())


def compose_file(app: AppSettings, backup: BackupSettings | None = None) -> str:
    """The stage's compose project: PostgreSQL, the app in two colours, the proxy in front of them, migrate.

    Images come from APP_IMAGE / MIGRATE_IMAGE, which only the release steps set: they start one colour at a
    time, by name, with APP_IMAGE pinned to the image that colour is to run. The database step alone starts or
    replaces PostgreSQL, with POSTGRES_IMAGE: a new image of it changes no file `up` switches with. Each colour
    reads its own copy of the settings, `.env.<colour>`, made when it starts.
    """
    postgres: dict[str, object] = {
        "image": "${POSTGRES_IMAGE:?set by the database step}",
        "container_name": app.db_container,
        "restart": "unless-stopped",
        "environment": {
            "POSTGRES_USER": "${POSTGRES_USER:?}",
            "POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?}",
            "POSTGRES_DB": "${POSTGRES_DB:?}",
        },
        "volumes": ["postgres-data:/var/lib/postgresql/data"],
        "healthcheck": {
            "test": ["CMD-SHELL", 'pg_isready -U "$$POSTGRES_USER" -d "$$POSTGRES_DB"'],
            "interval": "5s",
            "timeout": "5s",
            "retries": 10,
        },
    }
    depends_on = {"postgres": {"condition": "service_healthy"}}
    colours: dict[str, dict[str, object]] = {}
    for colour in COLOURS:
        colours[f"app-{colour}"] = {
            "image": "${APP_IMAGE:?set by the release steps}",
            "container_name": f"{app.app_container}-{colour}",
            "restart": "unless-stopped",
            "env_file": [{"path": f".env.{colour}", "required": False}],
            "environment": {
                # As the app's standalone Next.js server is run: every interface of the container's own network
                # namespace (only its compose network and the loopback-published port reach it), port 3000.
                "HOSTNAME": "0.0.0.0",  # noqa: S104
                "PORT": str(CONTAINER_PORT),
                "DATABASE_URL": f"${{{database_url_key(colour)}:?}}",
            },
            "depends_on": depends_on,
            "healthcheck": {
                "test": ["CMD", "wget", "-qO-", f"http://127.0.0.1:{CONTAINER_PORT}/api/health?quick=true"],
                "interval": "10s",
                "timeout": "5s",
                "retries": 3,
                "start_period": "30s",
            },
            # The health gate reaches each colour from the host, on loopback only.
            "ports": [f"127.0.0.1:{colour_port(app, colour)}:{CONTAINER_PORT}"],
        }
    proxy: dict[str, object] = {
        "image": app.proxy_image,
        "container_name": f"{app.compose_project}-proxy",
        "restart": "unless-stopped",
        "user": "65534:65534",
        "command": ["nginx", "-c", f"{PROXY_MOUNT}/nginx.conf", "-e", "stderr", "-g", "daemon off;"],
        "volumes": [f"./{PROXY_DIR}:{PROXY_MOUNT}:ro"],
        # SIGQUIT: nginx's graceful stop, letting running requests finish.
        "stop_signal": "SIGQUIT",
        # Where the front proxy that terminates TLS reaches the stage: the host's loopback only.
        "ports": [f"127.0.0.1:{app.proxy_port}:{app.proxy_port}"],
    }
    migrate: dict[str, object] = {
        "image": "${MIGRATE_IMAGE:?set by the release steps}",
        "profiles": ["migrate"],
        "env_file": [".env"],
        "environment": {"DATABASE_URL": f"${{{database_url_key('migrate')}:?}}"},
        "command": ["sh", "-c", MIGRATE_COMMAND],
        "depends_on": depends_on,
        "restart": "no",
    }
    document: dict[str, dict[str, object]] = {
        "services": {"postgres": postgres, **colours, "proxy": proxy, "migrate": migrate},
        "volumes": {"postgres-data": {}},
    }
    if backup is not None:
        _with_backups(document, app, backup)
    return yaml.safe_dump(document, sort_keys=False)


# Where the database and its scheduler find PostgreSQL's data and socket (the images' own paths).
PGDATA = "/var/lib/postgresql/data"
SOCKET_DIR = "/var/run/postgresql"
# Where the scheduler finds the scripts the files step installs.
SCHEDULER_BIN = "/kametrix/bin"


def _with_backups(document: dict[str, dict[str, object]], app: AppSettings, backup: BackupSettings) -> None:
    """PostgreSQL archives every WAL segment with pgBackRest (its image has it: the database step checks), reading
    the config the database step installs in the `backup-config` volume; a scheduler beside it, from the same image,
    takes the base backups and runs the drills (bin/backup-scheduler.sh). Both reach the repository the same way."""
    services = document["services"]
    postgres = services["postgres"]
    if not isinstance(postgres, dict):
        raise TypeError("the compose file's postgres service is not a mapping")
    reach = _reach(backup)
    if backup.repository.docker_network is not None:
        document["networks"] = {"backup-repository": {"external": True, "name": backup.repository.docker_network}}
    archiving = _archiving(app)
    postgres.update(archiving)
    postgres["labels"] = {BACKUP_LABEL: backup_fingerprint(app, backup)}
    postgres.update(reach)
    services[SCHEDULER_SERVICE] = {
        "image": "${POSTGRES_IMAGE:?set by the database step}",
        "container_name": f"{app.db_container}-backups",
        "restart": "unless-stopped",
        "entrypoint": ["bash", f"{SCHEDULER_BIN}/backup-scheduler.sh"],
        "environment": {"POSTGRES_USER": "${POSTGRES_USER:?}", "POSTGRES_DB": "${POSTGRES_DB:?}"},
        "volumes": [
            f"postgres-data:{PGDATA}:ro",
            f"backup-config:{BACKUP_CONFIG_DIR}:ro",
            f"postgres-socket:{SOCKET_DIR}",
            f"backup-status:{BACKUP_STATUS_DIR}",
            f"./bin:{SCHEDULER_BIN}:ro",
        ],
        "labels": {BACKUP_LABEL: backup_fingerprint(app, backup)},
        "depends_on": {"postgres": {"condition": "service_healthy"}},
        # bash waits in `sleep`; SIGTERM ends it through its trap.
        "stop_grace_period": "30s",
        **reach,
    }
    volumes = document["volumes"]
    volumes.update({"backup-config": {}, "postgres-socket": {}, "backup-status": {}})


def _reach(backup: BackupSettings) -> dict[str, object]:
    """How a container of the database's reaches the repository: its name's address, the network it is on."""
    reach: dict[str, object] = {}
    repository = backup.repository
    if repository.host is not None:
        reach["extra_hosts"] = [f"{repository.endpoint}:{repository.host}"]
    if repository.docker_network is not None:
        reach["networks"] = ["default", "backup-repository"]
    return reach


def _archiving(app: AppSettings) -> dict[str, object]:
    """What PostgreSQL starts with to archive: every completed WAL segment pushed by pgBackRest."""
    # Bounded: an archive_command that never returns holds every later segment back.
    archive = f"timeout 600 pgbackrest --stanza={app.compose_project} archive-push %p"
    return {
        "command": ["postgres", "-c", "archive_mode=on", "-c", f"archive_command={archive}"],
        "volumes": [
            f"postgres-data:{PGDATA}",
            # Written by the database step (as root, through this container), read by pgBackRest as postgres.
            f"backup-config:{BACKUP_CONFIG_DIR}",
            f"postgres-socket:{SOCKET_DIR}",
        ],
    }


def backup_fingerprint(app: AppSettings, backup: BackupSettings | None) -> str:
    """What the running PostgreSQL must have been started with to archive as declared (its label): the database
    step recreates it when this changes."""
    if backup is None:
        return "none"
    return fingerprint(yaml.safe_dump({**_archiving(app), **_reach(backup)}, sort_keys=True))


def backup_config(app: AppSettings, backup: BackupSettings, secrets: Mapping[str, SecretStr]) -> str:
    """What the database step installs for pgBackRest, as a bundle for its stdin (secret: it holds the repository's
    keys and the cipher pass): pgbackrest.conf (mode 600), the repository's CA, and the schedule."""
    repository = backup.repository
    stanza = app.compose_project
    options = {
        "repo1-type": "s3",
        "repo1-s3-endpoint": repository.endpoint,
        "repo1-storage-port": str(repository.port),
        "repo1-s3-bucket": repository.bucket,
        "repo1-s3-region": repository.region,
        "repo1-s3-uri-style": repository.uri_style,
        "repo1-path": repository.path,
        "repo1-s3-key": secrets["backupRepositoryKey"].get_secret_value(),
        "repo1-s3-key-secret": secrets["backupRepositorySecret"].get_secret_value(),
        "repo1-cipher-type": "aes-256-cbc",
        "repo1-cipher-pass": secrets["backupCipherPass"].get_secret_value(),
        "repo1-retention-full": str(backup.retention_full),
        "repo1-retention-diff": str(backup.retention_diff),
        # Chosen by measurement (README, Benchmarks): lz4 and two processes keep a 1.2 GB backup and restore short.
        "compress-type": "lz4",
        "process-max": "2",
        "start-fast": "y",
        "log-level-console": "warn",
        "log-level-file": "off",
        # What the restore sets aside and restores into, inside the data volume: never part of a backup.
        "exclude": ".kametrix/",
    }
    if repository.ca_certificate is not None:
        options["repo1-storage-ca-file"] = f"{BACKUP_CONFIG_DIR}/ca.pem"
    lines = ["[global]", *(f"{key}={value}" for key, value in options.items()), "", f"[{stanza}]"]
    lines += [f"pg1-path={PGDATA}", f"pg1-socket-path={SOCKET_DIR}", f"pg1-user={app.postgres_user}"]
    lines += [f"pg1-database={app.postgres_db}", ""]
    schedule = {
        "ARCHIVE_TIMEOUT_SECONDS": backup.archive_timeout_seconds,
        "FULL_EVERY_HOURS": backup.full_every_hours,
        "DIFF_EVERY_HOURS": backup.diff_every_hours,
        "DRILL_EVERY_HOURS": backup.drill_every_hours,
        "STALE_AFTER_HOURS": backup.stale_after_hours,
    }
    if tuple(schedule) != shared_facts.BACKUP_SCHEDULE_KEYS:
        raise RuntimeError(f"the schedule has {tuple(schedule)}; shared_facts has {shared_facts.BACKUP_SCHEDULE_KEYS}")
    files: dict[str, tuple[bytes, int]] = {
        "pgbackrest.conf": ("\n".join(lines).encode(), 0o600),
        "schedule.env": ("".join(f"{key}={value}\n" for key, value in schedule.items()).encode(), 0o644),
    }
    if repository.ca_certificate is not None:
        files["ca.pem"] = (repository.ca_certificate.strip().encode() + b"\n", 0o644)
    return bundle(files)


def database_url_key(role: str) -> str:
    """The variable of `.env` that holds the database URL a login role (a colour, the migrations) connects with."""
    return f"DATABASE_URL_{role.upper()}"


def proxy_files(app: AppSettings, release: ReleaseSettings) -> dict[str, str]:
    """nginx.conf, which sends every request to the colour that live.conf names, and one such file per colour."""
    # Docker's DNS, asked at request time: a colour's container keeps its name, not its address.
    upstreams = {colour: f"app-{colour}:{CONTAINER_PORT}" for colour in COLOURS}
    addresses = " ".join(f"{colour} {address};" for colour, address in upstreams.items())
    nginx = render(
        "nginx.conf",
        drain_seconds=release.drain_seconds,
        proxy_mount=PROXY_MOUNT,
        addresses=addresses,
        listen=app.proxy_port,
        colour_path=COLOUR_PATH,
    )
    files = {f"{PROXY_DIR}/nginx.conf": nginx}
    for colour in COLOURS:
        files[f"{PROXY_DIR}/{colour}.conf"] = render("colour.conf", colour=colour)
    files[f"{PROXY_DIR}/maintenance.conf"] = render("maintenance.conf")
    return files


class _Template(string.Template):
    """`@{name}` placeholders only: nginx's own `$variables` and `{ }` blocks stay as they are written."""

    delimiter = "@"
    pattern = r"@(?:(?P<escaped>(?!))|(?P<named>(?!))|\{(?P<braced>[a-z_]+)\}|(?P<invalid>\{))"  # type: ignore[assignment]


def render(template: str, **values: object) -> str:
    """A file of components/templates/ with its placeholders filled in; a placeholder left unfilled is an error."""
    return _Template((TEMPLATES_DIR / template).read_text()).substitute(values)


def env_file(app: AppSettings, secrets: Mapping[str, SecretStr]) -> str:
    """The app's `.env`: its plain settings and secrets, one single-quoted KEY='value' a line."""
    password = secrets["POSTGRES_PASSWORD"].get_secret_value()
    values = {
        "NODE_ENV": "production",
        "NEXT_PUBLIC_APP_URL": app.url,
        "POSTGRES_USER": app.postgres_user,
        "POSTGRES_DB": app.postgres_db,
        **{
            database_url_key(role): (
                f"postgresql://{quote(f'{app.postgres_user}_{role}', safe='')}:{quote(password, safe='')}"
                f"@postgres:{POSTGRES_PORT}/{quote(app.postgres_db, safe='')}"
            )
            for role in LOGIN_ROLES
        },
        "DATABASE_POOL_MIN": str(app.database_pool_min),
        "DATABASE_POOL_MAX": str(app.database_pool_max),
        "VAPI_PUBLIC_KEY": app.vapi_public_key,
        "GOOGLE_CLIENT_ID": app.google_client_id,
        "STRIPE_CURRENCY": app.stripe_currency,
        "SMTP_HOST": app.smtp_host,
        "SMTP_PORT": str(app.smtp_port),
        "SMTP_USER": app.smtp_user,
        "SMTP_FROM": app.smtp_from,
        **{name: value.get_secret_value() for name, value in secrets.items()},
    }
    return "".join(f"{name}='{value}'\n" for name, value in values.items())


ServerFiles = Mapping[str, tuple[bytes, int]]
"""Each file of the bundle by its path under the app directory, with its content and mode."""


def server_files(
    stack: str, app: AppSettings, release: ReleaseSettings, backup: BackupSettings | None = None
) -> ServerFiles:
    """Everything the files step installs for the updates of `stack`: what `up` switches with, the settings, the
    scripts and their libraries (with the facts they share with the program, rendered)."""
    return installed_files(
        stage_files(app, release, backup), settings_file(stack, app, release), script_files(SCRIPTS, LIBRARIES)
    )


def installed_files(stage: Mapping[str, str], settings: str, scripts: ServerFiles) -> ServerFiles:
    """The files step's bundle: `stage` (what `up` switches with), the settings file and `scripts`."""
    files: dict[str, tuple[bytes, int]] = {path: (content.encode(), 0o644) for path, content in stage.items()}
    files[shared_facts.SETTINGS_FILE] = (settings.encode(), 0o644)
    return {**files, **scripts}


def script_files(
    scripts: Sequence[str], libraries: Sequence[str], facts: Mapping[str, str] | None = None
) -> dict[str, tuple[bytes, int]]:
    """`scripts` under bin/ with the `libraries` they source and the rendered facts (lib/facts.sh, and `facts`)."""
    files = {f"bin/{FACTS}": (shared_facts.facts_sh().encode(), 0o644)}
    files |= {f"bin/{path}": (content.encode(), 0o644) for path, content in (facts or {}).items()}
    for library in libraries:
        files[f"bin/{library}"] = ((SCRIPTS_DIR / library).read_bytes(), 0o644)
    for script in scripts:
        files[f"bin/{script}"] = ((SCRIPTS_DIR / script).read_bytes(), 0o755)
    return files


def bundle(files: ServerFiles) -> str:
    """The files as a reproducible tar in base64, for the files step's stdin."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, (content, mode) in files.items():
            _add(tar, path, content, mode)
    return base64.b64encode(buffer.getvalue()).decode()


def switched_with(files: ServerFiles) -> str:
    """A fingerprint of what `up` switches with: every file but the settings, which the steps read when they run."""
    return fingerprint(
        *(
            f"{path}\0{mode:o}\0{content.hex()}"
            for path, (content, mode) in sorted(files.items())
            if path != shared_facts.SETTINGS_FILE
        )
    )


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _add(tar: tarfile.TarFile, name: str, content: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = mode
    info.mtime = 0
    tar.addfile(info, io.BytesIO(content))
