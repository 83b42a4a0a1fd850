"""Commands and daemons of the target: run a command, start a daemon detached, wait for it,
and stop it again by its pid file, never by its name."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

DAEMON_START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class TargetError(RuntimeError):
    """The local target could not be set up; the message says what and where to look."""


def which(name: str, *fallbacks: str) -> str:
    """The path of the program ``name``: on PATH, else the first executable of ``fallbacks``."""
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return path
    raise TargetError(f"{name} not found: run `bash .ci/install-target` first")


def describe_failure(argv: Sequence[str], done: subprocess.CompletedProcess[bytes]) -> str:
    out = (done.stdout or b"").decode(errors="replace")[-3000:]
    err = (done.stderr or b"").decode(errors="replace")[-3000:]
    return f"`{' '.join(argv)}` exited {done.returncode}\nstdout:\n{out}\nstderr:\n{err}"


@contextlib.contextmanager
def _log_for(log: Path, heading: str) -> Iterator[BinaryIO]:
    """``log`` opened for a child's output, after a line saying what runs."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n{heading}\n".encode())
        out.flush()
        yield out


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
    log: Path | None = None,
    cwd: Path | None = None,
) -> str:
    """Run a command; return stdout, or raise TargetError with its output (or log)."""
    if log is not None:
        with _log_for(log, f"$ {' '.join(argv)}") as out:
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
        raise TargetError(describe_failure(argv, done))
    return done.stdout.decode()


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


def running_pid(pid_file: Path, executable: str) -> int | None:
    """The pid in ``pid_file`` if that process is alive and runs ``executable``, else None."""
    pid = _read_pid(pid_file)
    if pid is not None and _pid_running(pid, executable):
        return pid
    return None


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
    """Start a daemon detached from us (own session, output to ``log``); return its pid."""
    with _log_for(log, f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} $ {' '.join(argv)}") as out:
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


def wait_until(what: str, ready: Callable[[], bool], timeout: float, log: Path) -> None:
    """Poll ``ready`` until it is true; after ``timeout`` raise with the end of ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    tail = log.read_bytes()[-4000:].decode(errors="replace") if log.exists() else ""
    raise TargetError(f"{what} not ready after {timeout:g}s; end of {log}:\n{tail}")


def terminate(pid_file: Path, executable: str, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM the process named in ``pid_file`` if it still runs ``executable``, wait,
    SIGKILL after ``timeout``. Returns whether a process was stopped."""
    pid = running_pid(pid_file, executable)
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
