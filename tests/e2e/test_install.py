"""What installing and running the local target leaves on this machine: nothing that starts at boot, nothing
listening beyond loopback, no route out of a container, nothing left once it stops, and a Docker Compose that no
clone owns."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from embedded_default.target import LocalTarget, ensure_target, stop_target, target_status

pytestmark = pytest.mark.e2e

INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "install-target"
# What Debian's docker.io, containerd, openssh-server and docker-registry enable at boot.
BOOT_UNITS = {"docker.service", "docker.socket", "containerd.service", "ssh.service", "docker-registry.service"}
COMPOSE_PLUGIN = Path("/usr/local/lib/docker/cli-plugins/docker-compose")
TCP_LISTEN = "0A"


def units_started_at_boot() -> set[str]:
    return {link.name for link in Path("/etc/systemd/system").glob("*.wants/*")}


def listening_addresses(pid: int) -> list[str]:
    """Local addresses of the TCP sockets process ``pid`` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with_socket = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
        if with_socket:
            inodes.add(with_socket.group(1))
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == TCP_LISTEN and inode in inodes:
                addresses.append(_decode(local))
    return addresses


def _decode(local: str) -> str:
    """/proc/net/tcp's ``0100007F:1388`` (little-endian words) -> ``127.0.0.1``."""
    hex_address = local.split(":")[0]
    words = [bytes.fromhex(hex_address[i : i + 8])[::-1] for i in range(0, len(hex_address), 8)]
    return str(ipaddress.ip_address(b"".join(words)))


def test_no_service_the_target_installs_starts_at_boot(target: LocalTarget) -> None:
    assert units_started_at_boot() & BOOT_UNITS == set()


def test_debians_registry_config_listens_on_loopback_only(target: LocalTarget) -> None:
    config = yaml.safe_load(Path("/etc/docker/registry/config.yml").read_text())
    assert config["http"]["addr"] == "127.0.0.1:5000"


def test_the_targets_daemons_listen_on_loopback_only(target: LocalTarget) -> None:
    pids = {name: pid for name, pid in target_status().items() if pid is not None}
    assert set(pids) >= {"dockerd", "docker-registry", "sshd"}
    listening = {name: listening_addresses(pid) for name, pid in pids.items()}
    assert listening["docker-registry"] and listening["sshd"], listening
    for name, addresses in listening.items():
        assert all(ipaddress.ip_address(address).is_loopback for address in addresses), (name, addresses)


def test_docker_compose_is_a_system_plugin_that_outlives_any_clone(target: LocalTarget) -> None:
    pinned = re.search(r"^compose_version=(\S+)$", INSTALL_SCRIPT.read_text(), re.MULTILINE)
    assert pinned is not None
    assert COMPOSE_PLUGIN.is_file() and not COMPOSE_PLUGIN.is_symlink()
    assert not Path.home().joinpath(".docker/cli-plugins/docker-compose").is_symlink()
    version = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == pinned.group(1)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, []))
    return found


def iptables_rules() -> str:
    done = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False)
    return done.stdout


def links_left_after(links: list[str], seconds: float) -> list[str]:
    """The links still there after `seconds`: the kernel removes a stopped container's veth pair when it frees
    the container's network namespace, which it does in the background, seconds later on a busy machine."""
    deadline = time.monotonic() + seconds
    while True:
        left = [link for link in links if Path("/sys/class/net", link).exists()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


@pytest.fixture
def published_container(target: LocalTarget) -> Iterator[str]:
    """A container on a compose-like bridge network of its own, its port published on 127.0.0.1, as a stage's."""
    name = f"e2e-install-{os.getpid()}"
    target.docker("network", "create", name)
    target.docker(
        "run", "--detach", "--name", name, "--network", name, "--publish", "127.0.0.1:13900:8000",
        target.postgres_image, "python3", "-m", "http.server", "8000",
    )  # fmt: skip
    try:
        yield name
    finally:
        target.docker("rm", "--force", name, check=False)
        target.docker("network", "rm", name, check=False)


def test_published_ports_listen_on_loopback_and_nothing_routes_out(
    target: LocalTarget, published_container: str
) -> None:
    dockerd = target_status()["dockerd"]
    assert dockerd is not None
    listening = {pid: listening_addresses(pid) for pid in descendants(dockerd)}
    addresses = [address for found in listening.values() for address in found]
    assert "127.0.0.1" in addresses, f"the published port is not served: {listening}"
    assert all(ipaddress.ip_address(address).is_loopback for address in addresses), listening
    # No forwarding and no NAT: a container reaches its own network and nothing beyond it.
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0"
    assert "DOCKER" not in iptables_rules() and "MASQUERADE" not in iptables_rules()


def test_stopping_the_target_removes_what_dockerd_added(target: LocalTarget, published_container: str) -> None:
    network = target.docker("network", "inspect", "--format", "{{.Id}}", published_container).stdout.decode()
    bridge = Path("/sys/class/net", f"br-{network.strip()[:12]}")
    assert bridge.exists(), "the compose-like network has no bridge"
    # Only the target's own links: other daemons on this machine may keep theirs.
    ports = [port.name for port in (bridge / "brif").iterdir()]
    assert ports, f"no container is attached to {bridge.name}"
    stop_target()
    try:
        assert not bridge.exists(), f"{bridge.name} outlived the target"
        assert links_left_after(ports, 30) == []
        assert "DOCKER" not in iptables_rules()
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0"
    finally:
        ensure_target()
