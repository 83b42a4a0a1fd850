"""Where the target lives: its loopback addresses, and its cache folder (``$KAMETRIX_TARGET_DIR``
or /var/tmp/kametrix-e2e-target) with the lock that lets one set-up run at a time and the
registry storage keyed by what this revision builds."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from embedded_default.target.processes import TargetError

DEFAULT_TARGET_DIR = "/var/tmp/kametrix-e2e-target"
SSH_HOST = "127.0.0.1"
SSH_PORT = 2222
SSH_USER = "root"
REGISTRY = "127.0.0.1:5000"

PACKAGE_DIR = Path(__file__).resolve().parent
STANDIN_DIR = PACKAGE_DIR.parent / "standin_app"


def target_dir() -> Path:
    return Path(os.environ.get("KAMETRIX_TARGET_DIR") or DEFAULT_TARGET_DIR)


def hash_paths(paths: Sequence[Path], h: hashlib._Hash) -> None:
    """Feed names, exec bits and contents of ``paths`` (files, or folders walked) into ``h``."""
    for top in paths:
        files = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            name = path.relative_to(top.parent)
            h.update(f"{name}\0{'x' if os.access(path, os.X_OK) else '-'}\0".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())


def revision_key() -> str:
    """A hash of what this revision builds and pushes: every module of this package (tags,
    versions, build steps) and the stand-in's sources. The registry's storage is keyed by it,
    so a run can only resolve images and tags that this revision pushed, never ones an older
    build left."""
    h = hashlib.sha256()
    hash_paths([PACKAGE_DIR, STANDIN_DIR], h)
    return h.hexdigest()[:12]


class Layout:
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
        self.containerd_pid = self.docker_exec / "containerd" / "containerd.pid"
        self.docker_config = root / "daemon.json"
        self.registry_pid = self.run / "registry.pid"
        self.registry_config = root / "registry.yml"
        self.registry_data = root / f"registry-data-{revision_key()}"
        self.sshd_pid = self.run / "sshd.pid"
        self.sshd_config = root / "sshd_config"
        self.host_key = self.ssh / "ssh_host_ed25519_key"
        self.client_key = self.ssh / "id_ed25519"
        self.authorized_keys = self.ssh / "authorized_keys"
        self.known_hosts = self.ssh / "known_hosts"
        self.session_home = root / "home"
        self.builds = root / "build"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.docker_sock}"


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """One set-up at a time (pytest-xdist workers, a human's `up` beside a test run)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with layout.lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
    return True


def mounts_under(path: Path) -> list[str]:
    """The mount points at ``path`` and below it, deepest first."""
    root = str(path.resolve())
    mounts = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == root or point.startswith(root + "/"):
            mounts.append(point)
    return sorted(mounts, reverse=True)


def unmount_under(path: Path) -> None:
    """Lazily unmount what a daemon or a failed debootstrap left mounted at or under ``path``."""
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False)


def remove_tree(path: Path) -> None:
    """rm -rf a folder of the cache, unmounting what was left mounted in it first."""
    if not path.exists():
        return
    unmount_under(path)
    if mounts_under(path):
        raise TargetError(f"cannot unmount everything under {path}; remove it by hand")
    shutil.rmtree(path)
