"""The target's three daemons, each started only when it is not already running as configured:
dockerd on its own Unix socket, an OCI registry on 127.0.0.1:5000 and sshd on 127.0.0.1:2222."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from embedded_default.target.connection import LocalTarget
from embedded_default.target.layout import REGISTRY, SSH_HOST, SSH_PORT, Layout, unmount_under, write_if_changed
from embedded_default.target.processes import (
    DAEMON_START_TIMEOUT,
    TargetError,
    port_in_use,
    run,
    running_pid,
    spawn,
    terminate,
    wait_until,
    which,
)

# --- dockerd -------------------------------------------------------------------------


def _docker_ping(sock: Path) -> bool:
    """GET /_ping on the daemon's Unix socket."""

    class _UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(2)
            self.sock.connect(str(sock))

    if not sock.exists():
        return False
    conn = _UnixConnection("localhost", timeout=2)
    try:
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def start_dockerd(layout: Layout) -> None:
    log = layout.logs / "dockerd.log"
    if running_pid(layout.docker_pid, "dockerd") is not None:
        # A running daemon slow to answer (a busy machine, or one still starting) is waited for, never restarted on
        # one missed ping: a restart stops every stage it runs.
        try:
            wait_until("dockerd", lambda: _docker_ping(layout.docker_sock), DAEMON_START_TIMEOUT, log)
            return
        except TargetError:
            pass
    stop_dockerd(layout)
    for path in (layout.docker_data, layout.docker_exec, layout.run):
        path.mkdir(parents=True, exist_ok=True)
    # Our own (empty) config file: /etc/docker/daemon.json must not change this daemon.
    write_if_changed(layout.docker_config, "{}\n")
    layout.docker_sock.unlink(missing_ok=True)
    argv = [
        which("dockerd", "/usr/sbin/dockerd", "/usr/bin/dockerd"),
        "--host", layout.docker_host,
        "--data-root", str(layout.docker_data),
        "--exec-root", str(layout.docker_exec),
        "--pidfile", str(layout.docker_pid),
        "--config-file", str(layout.docker_config),
        # Compose networks are bridges inside this machine; no default bridge, no NAT, no forwarding, no
        # iptables rule: a container reaches its network's peers and nothing beyond. Published ports
        # (127.0.0.1 only) are served by docker-proxy on the host's loopback.
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
        "--ip-forward=false",
        "--insecure-registry", REGISTRY,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    spawn(argv, log, env)
    wait_until(
        "dockerd",
        lambda: running_pid(layout.docker_pid, "dockerd") is not None and _docker_ping(layout.docker_sock),
        DAEMON_START_TIMEOUT,
        log,
    )


def _bridges(layout: Layout) -> list[str]:
    """The Linux bridges of dockerd's networks (`br-<network id>`), as dockerd names them; none if it is down."""
    if running_pid(layout.docker_pid, "dockerd") is None or not _docker_ping(layout.docker_sock):
        return []
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}, "DOCKER_HOST": layout.docker_host}
    listed = subprocess.run(
        [which("docker", "/usr/bin/docker"), "network", "ls", "--no-trunc", "--filter", "driver=bridge", "-q"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=30,
    )
    return [f"br-{network[:12]}" for network in listed.stdout.split()]


def stop_dockerd(layout: Layout) -> bool:
    # dockerd leaves its networks' bridges behind when it stops: they are removed after it.
    bridges = _bridges(layout)
    stopped = terminate(layout.docker_pid, "dockerd", timeout=60)
    # dockerd stops its own containerd; only after a SIGKILL could it be left over.
    terminate(layout.containerd_pid, "containerd", timeout=10)
    # dockerd leaves its bind mount of the host's network namespace (netns/default), and a dockerd that was killed
    # leaves the bind mount of its data root onto itself (which it makes to share mounts with containers).
    for root in (layout.docker_exec, layout.docker_data):
        if root.exists():
            unmount_under(root)
    for bridge in bridges:
        if Path("/sys/class/net", bridge).exists():
            run(["ip", "link", "delete", bridge])
    return stopped


# --- registry ------------------------------------------------------------------------


def _http(
    method: str, url: str, headers: Mapping[str, str] | None = None, timeout: float = 5
) -> tuple[int, dict[str, str]]:
    """A loopback HTTP request that never goes through a proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    # Only ever http://127.0.0.1:5000 (REGISTRY): no file: or other scheme reaches here.
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}))  # noqa: S310
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items())
    except OSError:
        return 0, {}


def _registry_ready() -> bool:
    return _http("GET", f"http://{REGISTRY}/v2/")[0] == 200


_MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)


def registry_digest(image: str) -> str | None:
    """The digest (``sha256:...``) the local registry serves for ``repo:tag``, or None."""
    prefix = f"{REGISTRY}/"
    if not image.startswith(prefix):
        raise ValueError(f"{image} is not in the local registry {REGISTRY}")
    name, _, tag = image[len(prefix) :].rpartition(":")
    status, headers = _http(
        "HEAD",
        f"http://{REGISTRY}/v2/{name}/manifests/{tag}",
        {"Accept": _MANIFEST_TYPES},
    )
    digest = {k.lower(): v for k, v in headers.items()}.get("docker-content-digest")
    return digest if status == 200 and digest else None


def _remove_other_registry_storage(layout: Layout) -> None:
    for path in layout.root.glob("registry-data*"):
        if path != layout.registry_data and path.is_dir():
            shutil.rmtree(path)


def start_registry(layout: Layout) -> None:
    layout.run.mkdir(parents=True, exist_ok=True)
    changed = write_if_changed(
        layout.registry_config,
        "\n".join(
            [
                "version: 0.1",
                "log:",
                "  level: info",
                "  accesslog:",
                "    disabled: true",
                "storage:",
                "  filesystem:",
                f"    rootdirectory: {layout.registry_data}",
                "  delete:",
                "    enabled: true",
                "http:",
                f"  addr: {REGISTRY}",
                "",
            ]
        ),
    )
    if not changed and running_pid(layout.registry_pid, "docker-registry") is not None and _registry_ready():
        return
    terminate(layout.registry_pid, "docker-registry")
    if port_in_use(5000):
        raise TargetError("127.0.0.1:5000 is taken by a process this target did not start")
    _remove_other_registry_storage(layout)
    layout.registry_data.mkdir(parents=True, exist_ok=True)
    log = layout.logs / "registry.log"
    binary = which("docker-registry", "/usr/bin/docker-registry")
    pid = spawn([binary, "serve", str(layout.registry_config)], log)
    layout.registry_pid.write_text(f"{pid}\n")
    wait_until("docker-registry", _registry_ready, DAEMON_START_TIMEOUT, log)


# --- sshd ----------------------------------------------------------------------------


def ensure_keys(layout: Layout) -> None:
    layout.ssh.mkdir(parents=True, exist_ok=True)
    layout.ssh.chmod(0o700)
    keygen = which("ssh-keygen", "/usr/bin/ssh-keygen")
    for key, comment in (
        (layout.host_key, "kametrix-e2e-host"),
        (layout.client_key, "kametrix-e2e-client"),
    ):
        if not (key.exists() and key.with_suffix(".pub").exists()):
            key.unlink(missing_ok=True)
            key.with_suffix(".pub").unlink(missing_ok=True)
            run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)])
        key.chmod(0o600)
    write_if_changed(layout.authorized_keys, layout.client_key.with_suffix(".pub").read_text())


def host_key_line(layout: Layout) -> str:
    kind, blob, *_ = layout.host_key.with_suffix(".pub").read_text().split()
    return f"{kind} {blob}"


def _sshd_config(layout: Layout) -> str:
    return "\n".join(
        [
            "# sshd of the kametrix e2e target: loopback only, key only, no AcceptEnv.",
            f"Port {SSH_PORT}",
            f"ListenAddress {SSH_HOST}",
            f"HostKey {layout.host_key}",
            f"PidFile {layout.sshd_pid}",
            f"AuthorizedKeysFile {layout.authorized_keys}",
            # The keys live under /var/tmp (mode 1777), which StrictModes refuses.
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "AuthenticationMethods publickey",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "PermitEmptyPasswords no",
            "UsePAM no",
            "UseDNS no",
            "PermitUserEnvironment no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "MaxSessions 64",
            "MaxStartups 64:30:128",
            "LoginGraceTime 30",
            "ClientAliveInterval 30",
            # Set by the server in every session: no client variable is needed or read. A home of the target's own:
            # a session runs none of this machine's shell start-up files (root's .bashrc), as a deploy user's runs
            # none of a developer's.
            f"SetEnv DOCKER_HOST={layout.docker_host} HOME={layout.session_home}",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def _ssh_ready(target: LocalTarget) -> bool:
    try:
        return target.ssh("true", timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def start_sshd(layout: Layout, target: LocalTarget) -> None:
    sshd = which("sshd", "/usr/sbin/sshd")
    changed = write_if_changed(layout.sshd_config, _sshd_config(layout), 0o600)
    running = running_pid(layout.sshd_pid, "sshd") is not None
    if running and not changed and _ssh_ready(target):
        return
    terminate(layout.sshd_pid, "sshd")
    if port_in_use(SSH_PORT):
        raise TargetError(f"127.0.0.1:{SSH_PORT} is taken by a process this target did not start")
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    layout.run.mkdir(parents=True, exist_ok=True)
    layout.session_home.mkdir(mode=0o700, exist_ok=True)
    run([sshd, "-t", "-f", str(layout.sshd_config)])
    log = layout.logs / "sshd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # sshd forks into the background and writes its PidFile itself.
    run([sshd, "-f", str(layout.sshd_config), "-E", str(log)])
    wait_until("sshd", lambda: _ssh_ready(target), DAEMON_START_TIMEOUT, log)
