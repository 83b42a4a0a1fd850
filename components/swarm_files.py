"""What the database host of a stage on Docker Swarm holds, rendered from the stack: the compose project of
PostgreSQL and migrations (the one-host stage's own services, on the stage's overlay network), the Swarm stack of
the app and the proxy, and the proxy's config.

PostgreSQL stays a compose service of its host, as on one host: its data, backups and migrations never move, and
the backup and migrate steps are the one-host stage's own. The app and the proxy are Swarm services: the app's
tasks anywhere, rolled forward one at a time behind their health check and rolled back by Swarm when one never
turns healthy; the proxy on every host.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from components import server_files, shared_facts
from components.config import AppSettings, ReleaseSettings, ServerSettings

STACK_FILE = "swarm-stack.yml"
PROXY_CONFIG = f"{server_files.PROXY_DIR}/nginx.conf"
# The settings as `docker stack deploy` reads them: KEY=value, unquoted (it keeps quotes as part of a value), with
# the database URL of the login role the tasks run as. swarm-up.sh writes it for the deploy and removes it afterwards.
STACK_ENV_FILE = ".env.stack"
# What the database host runs: the one-host stage's steps but its switch, Swarm's release and what runs where.
SCRIPTS = (
    *server_files.STEP_SCRIPTS,
    "release-lock.sh",
    "swarm-up.sh",
    "swarm-status.sh",
)
# What the Swarm's scripts source beside lib/facts.sh (shared_facts.swarm_facts_sh).
SWARM_FACTS = "lib/swarm-facts.sh"


def swarm_facts() -> dict[str, str]:
    return {SWARM_FACTS: shared_facts.swarm_facts_sh()}


def network(app: AppSettings) -> str:
    """The stage's overlay network: the app's tasks, the proxies and PostgreSQL meet on it, on every host."""
    return f"{app.compose_project}_net"


def app_service(app: AppSettings) -> str:
    return f"{app.compose_project}_app"


def server_files_of(
    stack: str, server: ServerSettings, app: AppSettings, release: ReleaseSettings
) -> server_files.ServerFiles:
    """What the files step installs on the database host for the updates of `stack`: the stage's files, the one-host
    stage's settings file, and the scripts it runs with their libraries and facts."""
    return server_files.installed_files(
        stage_files(server, app, release),
        server_files.settings_file(stack, app, release),
        server_files.script_files(SCRIPTS, server_files.LIBRARIES, swarm_facts()),
    )


def stage_files(server: ServerSettings, app: AppSettings, release: ReleaseSettings) -> dict[str, str]:
    """What `up` deploys with, by its path under the app directory: a change here is a rolling update."""
    proxy = proxy_config(app, release)
    return {
        server_files.COMPOSE_FILE: compose_file(app),
        STACK_FILE: stack_file(server, app, release, proxy),
        PROXY_CONFIG: proxy,
    }


def compose_file(app: AppSettings) -> str:
    """The one-host stage's PostgreSQL and migrate services as they are, on the stage's overlay network."""
    one_host = yaml.safe_load(server_files.compose_file(app))
    services = {name: one_host["services"][name] for name in ("postgres", "migrate")}
    document = {
        "services": services,
        "volumes": one_host["volumes"],
        "networks": {"default": {"name": network(app), "external": True}},
    }
    return yaml.safe_dump(document, sort_keys=False)


def stack_file(server: ServerSettings, app: AppSettings, release: ReleaseSettings, proxy: str) -> str:
    """The Swarm stack: the app (the one-host stage's app service, as Swarm tasks) and a proxy on every host."""
    one_host = yaml.safe_load(server_files.compose_file(app))["services"]
    colour, proxy_service = one_host["app-blue"], one_host["proxy"]
    interval = release.health_interval_seconds
    monitor = f"{shared_facts.swarm_monitor_seconds(interval)}s"
    update = {"parallelism": 1, "order": "start-first", "monitor": monitor, "max_failure_ratio": 0}
    application: dict[str, Any] = {
        "image": "${APP_IMAGE:?set by the release steps}",
        "env_file": [STACK_ENV_FILE],
        # A colour's own, but the database URL: that of the login role the tasks run as, from STACK_ENV_FILE.
        "environment": {key: value for key, value in colour["environment"].items() if key != "DATABASE_URL"},
        "labels": {
            shared_facts.RELEASE_LABEL: "${KAMETRIX_RELEASE:?set by the release steps}",
            shared_facts.SETTINGS_LABEL: "${KAMETRIX_SETTINGS:?set by the release steps}",
            shared_facts.COLOUR_LABEL: "${KAMETRIX_COLOUR:?set by the release steps}",
        },
        # The one-host stage's health gate, as Swarm's: healthy within healthAttempts checks, or never started.
        "healthcheck": {
            "test": colour["healthcheck"]["test"],
            "interval": f"{interval}s",
            "timeout": colour["healthcheck"]["timeout"],
            "retries": release.health_attempts,
            "start_period": "0s",
        },
        "stop_grace_period": f"{release.drain_seconds}s",
        "deploy": {
            "replicas": server.replicas,
            "endpoint_mode": "dnsrr",
            "update_config": {**update, "failure_action": "rollback"},
            "rollback_config": {**update, "failure_action": "pause"},
            "restart_policy": {"condition": "any", "delay": f"{interval}s"},
        },
    }
    config_name = f"{app.compose_project}-proxy-{hashlib.sha256(proxy.encode()).hexdigest()[:12]}"
    front: dict[str, Any] = {
        "image": proxy_service["image"],
        "user": proxy_service["user"],
        "command": proxy_service["command"],
        "stop_signal": proxy_service["stop_signal"],
        "stop_grace_period": f"{release.drain_seconds}s",
        # Swarm's configs are immutable and reach every host: a changed config is a new name.
        "configs": [{"source": "proxy", "target": f"{server_files.PROXY_MOUNT}/nginx.conf"}],
        # On each host itself, without Swarm's routing mesh (IPVS): the front proxy or load balancer sends to
        # every host's address.
        "ports": [{"target": app.proxy_port, "published": app.proxy_port, "protocol": "tcp", "mode": "host"}],
        "deploy": {
            "mode": "global",
            "endpoint_mode": "dnsrr",
            # A host's port is held by its one proxy: a new one starts once the old one is gone.
            "update_config": {"parallelism": 1, "order": "stop-first", "failure_action": "rollback"},
        },
    }
    document = {
        "version": "3.8",
        "services": {"app": application, "proxy": front},
        "networks": {"default": {"name": network(app), "external": True}},
        "configs": {"proxy": {"name": config_name, "file": f"./{PROXY_CONFIG}"}},
    }
    return yaml.safe_dump(document, sort_keys=False)


def proxy_config(app: AppSettings, release: ReleaseSettings) -> str:
    return server_files.render(
        "swarm-nginx.conf",
        drain_seconds=release.drain_seconds,
        listen=app.proxy_port,
        tasks=f"tasks.{app_service(app)}:{server_files.CONTAINER_PORT}",
    )
