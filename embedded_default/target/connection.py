"""How the tests reach the running target: over real SSH as Pulumi's command provider does,
and with the local ``docker`` CLI against the target's own dockerd."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from embedded_default.target.processes import TargetError, describe_failure, which


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
                env=client_env(),
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
        return docker_env(self.docker_host)

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
            [docker_cli(), *args],
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            timeout=timeout,
            env={**self.docker_env(), **(env_extra or {})},
            check=False,
        )
        if check and done.returncode != 0:
            raise TargetError(describe_failure(["docker", *args], done))
        return done


def docker_cli() -> str:
    return which("docker", "/usr/local/bin/docker", "/usr/bin/docker")


def client_env() -> dict[str, str]:
    """A plain environment for clients (ssh): nothing that could reach the server."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
    }


def docker_env(docker_host: str) -> dict[str, str]:
    """This process's environment with every DOCKER_ variable replaced: the CLI talks to ``docker_host``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = docker_host
    # No buildx plugin here: the legacy builder, explicitly, without its banner.
    env["DOCKER_BUILDKIT"] = "0"
    env["DOCKER_CLI_HINTS"] = "false"
    return env
