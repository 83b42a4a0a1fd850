"""Hosts of a stage on Docker Swarm for the end-to-end tests: network namespaces of this machine, each with its own
dockerd and sshd, joined by a bridge that never leaves the machine.

- The bridge `kswarm-br0` holds 10.213.77.1/24 in the root namespace; host N is the namespace `kswarm-hN` at
  10.213.77.1N, with a veth on the bridge and no route beyond the /24: nothing it runs reaches past this machine.
- Each host runs dockerd (its own data root, exec root and socket under /var/tmp/kametrix-swarm/hN, its own
  hostname) and sshd on port 22 of its address (a host key of its own, the local target's deploy key allowed, and
  DOCKER_HOST set for every session), both started with `nsenter --net` (`ip netns exec` remounts /sys, where
  dockerd then finds no cgroups).
- Images come from a registry of their own on 10.213.77.1:5000 (Debian's docker-registry, its storage under the
  hosts' folder), where the local target's images are copied blob by blob when the hosts start: every host pulls
  the very digests the local target pushed, and nothing the local target's registry does afterwards (another test
  stopping it) reaches them.
- The root namespace's FORWARD chain sees the bridge's frames (br_netfilter): one rule lets them through whatever
  its policy is, and goes again afterwards.

Every daemon is started and stopped by its pid; `down()` removes the namespaces, the bridge, the rule, what dockerd
left mounted and the whole folder.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedded_default import workspace as local_workspace
from embedded_default.target import APP_REPOSITORY, APP_VERSIONS, POSTGRES_IMAGE, PROXY_IMAGE, LocalTarget
from embedded_default.target.connection import docker_cli, docker_env
from embedded_default.target.daemons import _sshd_config as target_sshd_config
from embedded_default.target.layout import REGISTRY as TARGET_REGISTRY
from embedded_default.target.layout import SSH_HOST, Layout, unmount_under
from embedded_default.target.layout import SSH_PORT as TARGET_SSH_PORT
from embedded_default.target.processes import (
    DAEMON_START_TIMEOUT,
    TargetError,
    run,
    running_pid,
    spawn,
    terminate,
    wait_until,
    which,
)
from tests.e2e.stage import Stage

ROOT = Path("/var/tmp/kametrix-swarm")
BRIDGE = "kswarm-br0"
SUBNET = "10.213.77"
GATEWAY = f"{SUBNET}.1"
REGISTRY = f"{GATEWAY}:5000"
SSH_PORT = 22
# Marks the one FORWARD rule these hosts add, so that exactly that rule is removed again.
RULE = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-m", "comment", "--comment", "kametrix-swarm", "-j", "ACCEPT"]


@dataclass(frozen=True)
class Host:
    """One host: its namespace, address and folders (a target Layout of its own)."""

    number: int

    @property
    def name(self) -> str:
        return f"kswarm-h{self.number}"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{10 + self.number}"

    @property
    def layout(self) -> Layout:
        return Layout(ROOT / self.name)

    @property
    def netns(self) -> str:
        return f"/var/run/netns/{self.name}"

    @property
    def host_key(self) -> str:
        kind, blob, *_ = self.layout.host_key.with_suffix(".pub").read_text().split()
        return f"{kind} {blob}"

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The docker CLI of this machine against this host's dockerd, as a session on the host runs it."""
        done = subprocess.run(
            [docker_cli(), *args],
            env=docker_env(self.layout.docker_host),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise TargetError(f"docker {' '.join(args)} on {self.name}: {done.stderr.strip()}")
        return done

    def in_namespace(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={self.netns}", *argv]

    # --- dockerd -------------------------------------------------------------------------------------------------

    def start_dockerd(self) -> None:
        layout = self.layout
        for folder in (layout.docker_data, layout.docker_exec, layout.run, layout.logs):
            folder.mkdir(parents=True, exist_ok=True)
        layout.docker_config.write_text("{}\n")
        layout.docker_sock.unlink(missing_ok=True)
        dockerd = which("dockerd", "/usr/sbin/dockerd")
        # As on the local target: no default bridge, NAT, forwarding or iptables rule of its own.
        daemon = [
            dockerd, "--host", layout.docker_host, "--data-root", str(layout.docker_data),
            "--exec-root", str(layout.docker_exec), "--pidfile", str(layout.docker_pid),
            "--config-file", str(layout.docker_config), "--bridge=none", "--iptables=false", "--ip-masq=false",
            "--ip-forward=false", "--insecure-registry", REGISTRY,
        ]  # fmt: skip
        # Its own hostname (a UTS namespace), so that Swarm names each node after its host.
        argv = self.in_namespace("unshare", "--uts", "--", "sh", "-c", f'hostname {self.name} && exec "$@"', "sh")
        spawn([*argv, *daemon], layout.logs / "dockerd.log", env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        wait_until(
            f"dockerd of {self.name}",
            lambda: running_pid(layout.docker_pid, "dockerd") is not None and self._docker_answers(),
            DAEMON_START_TIMEOUT,
            layout.logs / "dockerd.log",
        )

    def dockerd_runs(self) -> bool:
        return running_pid(self.layout.docker_pid, "dockerd") is not None

    def _docker_answers(self) -> bool:
        # A dockerd started again after a crash may take longer than one try to answer: not yet, rather than a failure.
        try:
            return self.docker("version", check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def kill_dockerd(self) -> None:
        """SIGKILL dockerd, as a crash would: its containerd follows it, its containers' processes stay."""
        pid = running_pid(self.layout.docker_pid, "dockerd")
        assert pid is not None, f"dockerd of {self.name} does not run"
        os.kill(pid, signal.SIGKILL)
        while running_pid(self.layout.docker_pid, "dockerd") is not None:
            time.sleep(0.05)

    def stop_dockerd(self) -> None:
        terminate(self.layout.docker_pid, "dockerd", timeout=90)
        terminate(self.layout.containerd_pid, "containerd", timeout=10)

    # --- sshd ----------------------------------------------------------------------------------------------------

    def start_sshd(self, authorized_key: str) -> None:
        layout = self.layout
        layout.ssh.mkdir(parents=True, exist_ok=True)
        layout.ssh.chmod(0o700)
        if not layout.host_key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.name, "-f", str(layout.host_key)])
        layout.authorized_keys.write_text(authorized_key)
        layout.sshd_config.write_text(_sshd_config(self))
        sshd = which("sshd", "/usr/sbin/sshd")
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        run([sshd, "-t", "-f", str(layout.sshd_config)])
        # sshd forks into the background and writes its PidFile itself.
        run(self.in_namespace(sshd, "-f", str(layout.sshd_config), "-E", str(layout.logs / "sshd.log")))
        wait_until(
            f"sshd of {self.name}",
            lambda: running_pid(layout.sshd_pid, "sshd") is not None,
            DAEMON_START_TIMEOUT,
            layout.logs / "sshd.log",
        )

    def stop_sshd(self) -> None:
        terminate(self.layout.sshd_pid, "sshd")


def _sshd_config(host: Host) -> str:
    """The local target's sshd settings (key only, no AcceptEnv, DOCKER_HOST set by the server, the keys and pid
    file of the host's own folder) on port 22 of the host's address."""
    config = target_sshd_config(host.layout)
    replaced = {
        "loopback only": f"{host.address} only",
        f"\nPort {TARGET_SSH_PORT}\n": f"\nPort {SSH_PORT}\n",
        f"\nListenAddress {SSH_HOST}\n": f"\nListenAddress {host.address}\n",
    }
    for old, new in replaced.items():
        assert old in config, f"the local target's sshd_config has no {old.strip()!r}"
        config = config.replace(old, new)
    return config


def _registry_config() -> str:
    return "\n".join(
        [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {ROOT / 'registry'}",
            "http:",
            f"  addr: {REGISTRY}",
            "",
        ]
    )


def _http(
    method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    """A request to a registry of this machine, never through a proxy."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))  # noqa: S310
    try:
        with opener.open(request, timeout=120) as response:
            return response.status, response.read(), dict(response.headers.items())
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers.items())


def copy_images(images: Sequence[str], source: str = TARGET_REGISTRY, target: str = REGISTRY) -> None:
    """Copy `repository:tag` images from one registry to another as they are stored: the manifest's bytes and every
    blob it names, so each keeps its digest."""
    for image in images:
        repository, _, tag = image.rpartition(":")
        status, manifest, headers = _http(
            "GET", f"http://{source}/v2/{repository}/manifests/{tag}", headers={"Accept": _MANIFEST_TYPES}
        )
        if status != 200:
            raise TargetError(f"{source}/{image}: the registry answered {status}")
        document = json.loads(manifest)
        for digest in [document["config"]["digest"], *(layer["digest"] for layer in document["layers"])]:
            if _http("HEAD", f"http://{target}/v2/{repository}/blobs/{digest}")[0] == 200:
                continue
            status, blob, _ = _http("GET", f"http://{source}/v2/{repository}/blobs/{digest}")
            if status != 200:
                raise TargetError(f"{source}/{repository}@{digest}: the registry answered {status}")
            _, _, started = _http("POST", f"http://{target}/v2/{repository}/blobs/uploads/")
            location = {key.lower(): value for key, value in started.items()}["location"]
            location = location if location.startswith("http") else f"http://{target}{location}"
            joiner = "&" if "?" in location else "?"
            # Any other type, urllib's form default among them, has the registry read the body as a form.
            octets = {"Content-Type": "application/octet-stream"}
            status, answer, _ = _http("PUT", f"{location}{joiner}digest={digest}", blob, octets)
            if status != 201:
                raise TargetError(f"{target}/{repository}@{digest}: upload answered {status}: {answer[:200]!r}")
        media_type = {key.lower(): value for key, value in headers.items()}["content-type"]
        status, answer, _ = _http(
            "PUT", f"http://{target}/v2/{repository}/manifests/{tag}", manifest, {"Content-Type": media_type}
        )
        if status != 201:
            raise TargetError(f"{target}/{image}: the manifest's upload answered {status}: {answer[:200]!r}")


_MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    )
)


class SwarmHosts:
    """Hosts 1..count on the bridge; `up()` starts them from nothing, `down()` leaves nothing behind."""

    def __init__(self, count: int) -> None:
        self.hosts = [Host(number) for number in range(1, count + 1)]
        self.registry_pid = ROOT / "registry.pid"

    def up(self, authorized_key: str, images: Sequence[str]) -> None:
        if os.geteuid() != 0:
            raise TargetError("the Swarm hosts are network namespaces with daemons of their own: run as root")
        self.down()
        (ROOT / "registry").mkdir(parents=True)
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "address", "add", f"{GATEWAY}/24", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        run(["iptables", "-I", *RULE])
        for host in self.hosts:
            run(["ip", "netns", "add", host.name])
            run(["ip", "link", "add", host.name, "type", "veth", "peer", "name", "eth0", "netns", host.name])
            run(["ip", "link", "set", host.name, "master", BRIDGE, "up"])
            run(["ip", "-n", host.name, "address", "add", f"{host.address}/24", "dev", "eth0"])
            run(["ip", "-n", host.name, "link", "set", "eth0", "up"])
            run(["ip", "-n", host.name, "link", "set", "lo", "up"])
        config = ROOT / "registry.yml"
        config.write_text(_registry_config())
        log = ROOT / "registry.log"
        pid = spawn([which("docker-registry", "/usr/bin/docker-registry"), "serve", str(config)], log)
        self.registry_pid.write_text(f"{pid}\n")
        wait_until("the hosts' registry", self._registry_answers, DAEMON_START_TIMEOUT, log)
        # The local target's registry may be down for a moment (a test of the target stops it): try again.
        for attempt in range(3):
            try:
                copy_images(images)
                break
            except (TargetError, OSError):
                if attempt == 2:
                    raise
                time.sleep(10)
        for host in self.hosts:
            host.start_dockerd()
            host.start_sshd(authorized_key)

    def _registry_answers(self) -> bool:
        done = subprocess.run(
            ["curl", "--silent", "--fail", "--max-time", "2", "--noproxy", "*", f"http://{REGISTRY}/v2/"],
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    def down(self) -> None:
        """Stop every daemon of the hosts by its pid file, then remove namespaces, bridge, rule and folder.

        Every action is tried whatever an earlier one raised (a dockerd that does not start again, a namespace still
        busy): what one leaves, a later one removes. The first failure is raised at the end."""
        failures: list[Exception] = []

        def attempt(action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as error:  # collected: the first is raised once everything was tried
                failures.append(error)

        for host in self.hosts:
            attempt(host.stop_sshd)
            # A dockerd that was killed left its containers running: started again, it stops them itself.
            if Path(host.netns).exists() and host.layout.docker_data.exists() and not host.dockerd_runs():
                attempt(host.start_dockerd)
        stopping = [(host, running_pid(host.layout.docker_pid, "dockerd")) for host in self.hosts]
        # dockerd stops its tasks first (the proxy drains): stopped together, they take as long as one.
        for _, pid in stopping:
            if pid is not None:
                attempt(functools.partial(os.kill, pid, signal.SIGTERM))
        for host, _ in stopping:
            attempt(host.stop_dockerd)
        attempt(functools.partial(_kill_left_over, ROOT))
        attempt(functools.partial(_kill_in_namespaces, [Path(host.netns) for host in self.hosts]))
        attempt(functools.partial(terminate, self.registry_pid, "docker-registry"))
        for host in self.hosts:
            if Path(host.netns).exists():
                attempt(functools.partial(run, ["ip", "netns", "delete", host.name]))
        attempt(functools.partial(_wait_for_links_to_go, [host.name for host in self.hosts]))
        if Path("/sys/class/net", BRIDGE).exists():
            attempt(functools.partial(run, ["ip", "link", "delete", BRIDGE]))
        while subprocess.run(["iptables", "-D", *RULE], capture_output=True, check=False).returncode == 0:
            pass
        if ROOT.exists():
            attempt(functools.partial(unmount_under, ROOT))
            attempt(functools.partial(shutil.rmtree, ROOT))
        if failures:
            raise failures[0]

    def __getitem__(self, number: int) -> Host:
        return self.hosts[number - 1]


def _kill_left_over(folder: Path) -> None:
    """What a dockerd that could not stop cleanly left behind (a containerd shim, a docker-proxy): every process
    whose command line names `folder`, by pid."""
    marker = str(folder).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)


def _kill_in_namespaces(host_namespaces: Sequence[Path]) -> None:
    """Every process in a host's network namespace or in one its dockerd mounted under the hosts' folder for a
    container: a container whose dockerd died, and did not start again to stop it, runs on otherwise and keeps its
    namespace, its veths and their mounts."""
    mounted = [Path(line.split()[1]) for line in Path("/proc/mounts").read_text().splitlines() if " nsfs " in line]
    ours = [path for path in mounted if path.is_relative_to(ROOT)] + [path for path in host_namespaces if path.exists()]
    namespaces = set()
    for path in ours:
        with contextlib.suppress(OSError):
            found = path.stat()
            namespaces.add((found.st_dev, found.st_ino))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            found = (entry / "ns" / "net").stat()
            if (found.st_dev, found.st_ino) in namespaces:
                os.kill(int(entry.name), signal.SIGKILL)


def _wait_for_links_to_go(names: Sequence[str], timeout: float = 30) -> None:
    """A namespace's veth goes once the last process in the namespace has exited."""
    deadline = time.monotonic() + timeout
    while any(Path("/sys/class/net", name).exists() for name in names) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name in names:
        if Path("/sys/class/net", name).exists():
            run(["ip", "link", "delete", name])


@contextlib.contextmanager
def swarm_hosts(count: int, target: LocalTarget) -> Iterator[SwarmHosts]:
    """`count` hosts that let the local target's deploy key in, with the local target's images in their registry."""
    built = [POSTGRES_IMAGE, PROXY_IMAGE]
    built += [f"{APP_REPOSITORY}:{version}{suffix}" for version in APP_VERSIONS for suffix in ("", "-migrate")]
    hosts = SwarmHosts(count)
    # A run stopped from outside (a CI job's timeout sends SIGTERM) ends as an interrupted one does: pytest then
    # tears its fixtures down, and this removes the hosts.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        hosts.up(
            Path(target.ssh_private_key_path).with_suffix(".pub").read_text(),
            [image.removeprefix(f"{target.registry}/") for image in built],
        )
        yield hosts
    finally:
        try:
            hosts.down()
        finally:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, _: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def listed(hosts: SwarmHosts, numbers: Sequence[int]) -> list[dict[str, Any]]:
    """`server.hosts` for these hosts: the first a manager holding the database, the others workers."""
    return [
        {
            "host": hosts[number].address,
            "hostKey": hosts[number].host_key,
            "role": "manager" if number == numbers[0] else "worker",
            "database": number == numbers[0],
            "advertiseAddress": hosts[number].address,
        }
        for number in numbers
    ]


def new_swarm_stage(
    target: LocalTarget,
    prepared: Path,
    cli: Path,
    hosts: SwarmHosts,
    numbers: Sequence[int],
    proxy_port: int,
    overrides: Mapping[str, Any] | None = None,
) -> Stage:
    """A stage of its own on these hosts (the first holds the database), its images from the hosts' registry, its
    proxy on `proxy_port` of every host, two app tasks."""
    name = f"kametrix-swarm-{uuid.uuid4().hex[:8]}"
    folder = prepared.parent / name
    local_workspace.copy_prepared(
        prepared,
        folder,
        cli,
        {
            "server.appDir": f"{ROOT}/app/{name}",
            "image.registry": REGISTRY,
            "app.composeProject": name,
            "app.appContainer": f"{name}-app",
            "app.dbContainer": f"{name}-db",
            "app.url": f"http://{hosts[numbers[0]].address}:{proxy_port}",
            "app.proxyPort": proxy_port,
            "app.bluePort": proxy_port + 1,
            "app.greenPort": proxy_port + 2,
            "app.proxyImage": PROXY_IMAGE.replace(target.registry, REGISTRY),
            "app.postgresImage": POSTGRES_IMAGE.replace(target.registry, REGISTRY),
            "release.drainSeconds": 5,
            **(overrides or {}),
        },
    )
    stage = Stage(target, folder, cli)
    # The one host's keys give way to the list of hosts.
    stage.configure(
        {
            "server.host": None,
            "server.hostKey": None,
            "server.port": None,
            "server.hosts": listed(hosts, numbers),
            "server.replicas": 2,
        }
    )
    return stage
