"""The backup repository of the local target: a second place, off the app server, that a stage's PostgreSQL archives
to (issue 18). A real S3-compatible object store from a real package, S3Proxy (Apache 2.0, `org.gaul:s3proxy` from
Maven Central) with its `filesystem-nio2` backend, served over HTTPS, run as a daemon of its own: its own pid, log, TLS
material and data under `/var/tmp/kametrix-backup-repository/` (`$KAMETRIX_BACKUP_REPOSITORY_DIR`), never inside the
target's cache, whose dockerd and volumes are "the server".

Why S3Proxy: pgBackRest 2.45 (Debian bookworm) speaks S3 one way, from inside the database container, over TLS; an SSH
repository host would need SSH both ways into a container. S3Proxy is served by Maven Central here and runs on the
installed Java 17; SeaweedFS would need a pseudo-versioned Go build. Its older `filesystem` backend (deprecated) did not
answer a multi-object delete of 1,200 keys here (AWS S3 does), which pgBackRest sends to expire a backup: with that
backend, every backup past the retention failed after its expire timed out.

How a container reaches it: the target's dockerd routes nothing out of a container (no NAT, no forwarding), and a
container cannot reach the host's loopback. The repository listens on the host side of a Docker network of its own,
`kametrix-backup-repository` (gateway 10.199.254.1, a bridge inside this machine, as `../shared/local-target.md`
allows for a registry), which a stage's PostgreSQL joins (`backup.repository.dockerNetwork`). Traffic stays on this
machine. pgBackRest checks a certificate's DNS names only, so the certificate names `ENDPOINT` and pgBackRest
connects to the gateway address (`repo1-storage-host`), checking the certificate against the CA of this folder.

`python -m embedded_default.backups up|down|status` drives it by hand. The database image with pgBackRest is built
here too, as the building stage builds it (components/database_image.py) and under the tag it gives, from the
project's Dockerfile on the target's PostgreSQL image: the local stack deploys what a building stage pushed (the
stand-in docker provider builds nothing), by the digest the registry names.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from components.database_tag import DOCKERFILE_DIR, database_repository, database_tag
from embedded_default.target import APP_REPOSITORY, POSTGRES_IMAGE, LocalTarget
from embedded_default.target.layout import Layout as _TargetLayout
from embedded_default.target.layout import locked as _locked_target
from embedded_default.target.layout import write_if_changed
from embedded_default.target.processes import TargetError, run, running_pid, spawn, terminate, wait_until, which

S3PROXY_VERSION = "2.6.0"
DEFAULT_DIR = "/var/tmp/kametrix-backup-repository"
NETWORK = "kametrix-backup-repository"
SUBNET = "10.199.254.0/24"
ADDRESS = "10.199.254.1"
PORT = 9443
# The name the certificate carries: pgBackRest checks host names, never IP addresses.
ENDPOINT = "backup-repository.kametrix.test"
BUCKET = "kametrix-backups"
REGION = "us-east-1"
DATABASE_IMAGE = f"{database_repository(APP_REPOSITORY)}:{database_tag(POSTGRES_IMAGE)}"
# The snapshot mirror this machine's apt uses serves Release files past their Valid-Until date.
APT_OPTIONS = "-o Acquire::Check-Valid-Until=false"
BASE_LABEL = "org.kametrix.backups.base-image-id"


def repository_dir() -> Path:
    return Path(os.environ.get("KAMETRIX_BACKUP_REPOSITORY_DIR") or DEFAULT_DIR)


def tool_cache() -> Path:
    """S3Proxy's jars, cached outside the clone and keyed by version (scripts/remove-caches removes it)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kametrix-deploy" / f"s3proxy-{S3PROXY_VERSION}"


@dataclass(frozen=True)
class BackupRepository:
    """What a stack declares to archive to this repository, and where its objects lie on this machine."""

    endpoint: str
    host: str
    port: int
    bucket: str
    region: str
    ca_certificate: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    network: str
    image: str
    """The database image a stage that archives here runs: the target's PostgreSQL with pgBackRest."""
    data_dir: Path

    @property
    def bucket_dir(self) -> Path:
        """The bucket's objects as files (S3Proxy's filesystem backend): what a test corrupts."""
        return self.data_dir / self.bucket

    def stack_settings(self, path: str) -> dict[str, object]:
        """The `backup` keys of a local stack file (dotted, without namespace) that archive to this repository."""
        return {
            "backup.repository.endpoint": self.endpoint,
            "backup.repository.host": self.host,
            "backup.repository.port": self.port,
            "backup.repository.bucket": self.bucket,
            "backup.repository.region": self.region,
            "backup.repository.uriStyle": "path",
            "backup.repository.path": path,
            "backup.repository.caCertificate": self.ca_certificate,
            "backup.repository.dockerNetwork": self.network,
            "app.postgresImage": POSTGRES_IMAGE,
        }


class _Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.run = root / "run"
        self.logs = root / "logs"
        self.data = root / "data"
        self.tls = root / "tls"
        self.pid = self.run / "s3proxy.pid"
        self.log = self.logs / "s3proxy.log"
        self.config = root / "s3proxy.conf"
        self.logback = root / "logback.xml"
        self.credentials = root / "credentials"
        self.ca = self.tls / "ca.pem"
        self.keystore = self.tls / "keystore.p12"


def _jars() -> Path:
    """S3Proxy and its dependencies, fetched once with maven (a tiny pom, `dependency:copy-dependencies`)."""
    cache = tool_cache()
    lib = cache / "lib"
    if (lib / f"s3proxy-{S3PROXY_VERSION}.jar").is_file():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "pom.xml").write_text(
        "<project xmlns='http://maven.apache.org/POM/4.0.0'><modelVersion>4.0.0</modelVersion>"
        "<groupId>kametrix</groupId><artifactId>s3proxy-fetch</artifactId><version>1</version>"
        "<packaging>pom</packaging><dependencies><dependency><groupId>org.gaul</groupId>"
        f"<artifactId>s3proxy</artifactId><version>{S3PROXY_VERSION}</version></dependency></dependencies></project>\n"
    )
    partial = cache / "lib.partial"
    run(
        [
            which("mvn", "/usr/bin/mvn"), "-q", "-B", "-f", str(cache / "pom.xml"),
            f"-Dmaven.repo.local={cache / 'm2'}", "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}", "-DincludeScope=runtime",
        ],
        log=cache / "mvn.log",
        timeout=1200,
    )  # fmt: skip
    partial.rename(lib)
    return lib


def _tls(layout: _Layout) -> None:
    """A CA of this folder and a server certificate naming ENDPOINT, as a PKCS#12 keystore for S3Proxy."""
    if layout.keystore.is_file() and layout.ca.is_file():
        return
    layout.tls.mkdir(parents=True, exist_ok=True)
    layout.tls.chmod(0o700)
    openssl = which("openssl", "/usr/bin/openssl")
    tls = layout.tls
    run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=kametrix backup repository CA",
            "-keyout",
            str(tls / "ca.key"),
            "-out",
            str(layout.ca),
        ]
    )
    run(
        [
            openssl,
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={ENDPOINT}",
            "-keyout",
            str(tls / "server.key"),
            "-out",
            str(tls / "server.csr"),
        ]
    )
    (tls / "server.ext").write_text(
        f"subjectAltName=DNS:{ENDPOINT}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    run(
        [
            openssl,
            "x509",
            "-req",
            "-in",
            str(tls / "server.csr"),
            "-CA",
            str(layout.ca),
            "-CAkey",
            str(tls / "ca.key"),
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            str(tls / "server.ext"),
            "-out",
            str(tls / "server.pem"),
        ]
    )
    password = f"pass:{_keystore_password(layout)}"
    run([openssl, "pkcs12", "-export", "-in", str(tls / "server.pem"), "-inkey", str(tls / "server.key"),
         "-name", "s3proxy", "-out", str(layout.keystore), "-passout", password])  # fmt: skip


def _keystore_password(layout: _Layout) -> str:
    return hashlib.sha256(f"{layout.root}".encode()).hexdigest()[:24]


def _credentials(layout: _Layout) -> tuple[str, str]:
    """The repository's access key and secret, made once (mode 600)."""
    if not layout.credentials.is_file():
        layout.credentials.write_text(f"{secrets.token_hex(10)}\n{secrets.token_urlsafe(30)}\n")
        layout.credentials.chmod(0o600)
    key, secret = layout.credentials.read_text().split()
    return key, secret


def _ensure_network(target: LocalTarget) -> None:
    """The repository's Docker network on the target's dockerd. Its bridge keeps dockerd's own name (`br-<id>`), the
    name the target's stop removes bridges by (embedded_default/target/daemons.py)."""
    if target.docker("network", "inspect", NETWORK, check=False).returncode == 0:
        return
    target.docker("network", "create", "--driver", "bridge", "--subnet", SUBNET, "--gateway", ADDRESS, NETWORK)


def _answers() -> bool:
    context = ssl.create_default_context(cafile=str(_Layout(repository_dir()).ca))
    try:
        with (
            socket.create_connection((ADDRESS, PORT), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname=ENDPOINT),
        ):
            return True
    except OSError:
        return False


def _start_daemon(layout: _Layout, key: str, secret: str) -> None:
    for path in (layout.run, layout.logs, layout.data):
        path.mkdir(parents=True, exist_ok=True)
    layout.data.chmod(0o700)
    (layout.data / BUCKET).mkdir(exist_ok=True)
    config_changed = write_if_changed(
        layout.config,
        "\n".join(
            [
                f"s3proxy.secure-endpoint=https://{ADDRESS}:{PORT}",
                f"s3proxy.keystore-path={layout.keystore}",
                f"s3proxy.keystore-password={_keystore_password(layout)}",
                "s3proxy.authorization=aws-v2-or-v4",
                f"s3proxy.identity={key}",
                f"s3proxy.credential={secret}",
                "jclouds.provider=filesystem-nio2",
                f"jclouds.filesystem.basedir={layout.data}",
                f"jclouds.identity={key}",
                f"jclouds.credential={secret}",
                "",
            ]
        ),
        0o600,
    )
    write_if_changed(
        layout.logback,
        "<configuration><appender name='out' class='ch.qos.logback.core.ConsoleAppender'><encoder>"
        "<pattern>%d{ISO8601} %-5level %logger{20} - %msg%n</pattern></encoder></appender>"
        "<logger name='org.gaul.s3proxy' level='INFO'/><root level='WARN'><appender-ref ref='out'/></root>"
        "</configuration>\n",
    )
    if running_pid(layout.pid, "java") is not None and not config_changed and _answers():
        return
    terminate(layout.pid, "java")
    java = which("java", "/usr/bin/java")
    argv = [java, f"-Dlogback.configurationFile={layout.logback}", "-Xmx512m", "-cp", f"{_jars()}/*",
            "org.gaul.s3proxy.Main", "--properties", str(layout.config)]  # fmt: skip
    pid = spawn(argv, layout.log)
    layout.pid.write_text(f"{pid}\n")
    wait_until("S3Proxy", _answers, 90.0, layout.log)


def _ensure_image(target: LocalTarget) -> None:
    """The target's PostgreSQL with pgBackRest, built on this dockerd and pushed; rebuilt when its base's bytes
    change (its name says the base's name and the Dockerfile only)."""
    base = target.docker("image", "inspect", "--format", "{{.Id}}", POSTGRES_IMAGE).stdout.decode().strip()
    found = target.docker(
        "image", "inspect", "--format", f'{{{{index .Config.Labels "{BASE_LABEL}"}}}}', DATABASE_IMAGE, check=False
    )
    if found.returncode != 0 or found.stdout.decode().strip() != base:
        target.docker(
            "build", "--quiet", "--network", "host", "--label", f"{BASE_LABEL}={base}",
            "--build-arg", f"POSTGRES_IMAGE={POSTGRES_IMAGE}", "--build-arg", f"APT_OPTIONS={APT_OPTIONS}",
            "--tag", DATABASE_IMAGE, str(DOCKERFILE_DIR),
            timeout=900,
        )  # fmt: skip
    # The stage pulls what it does not have; the registry's storage changes with the target's revision.
    target.docker("push", "--quiet", DATABASE_IMAGE, timeout=300, check=False)


def ensure_backup_repository(target: LocalTarget) -> BackupRepository:
    """Start (or reuse) the repository and build (or reuse) the database image; idempotent, seconds when warm."""
    if os.geteuid() != 0:
        raise TargetError("the backup repository's network is the target's: run as root")
    layout = _Layout(repository_dir())
    layout.root.mkdir(parents=True, exist_ok=True)
    with _locked_target(_TargetLayout(Path(target.target_dir))):
        _ensure_network(target)
        _ensure_image(target)
    _tls(layout)
    key, secret = _credentials(layout)
    _start_daemon(layout, key, secret)
    return BackupRepository(
        endpoint=ENDPOINT,
        host=ADDRESS,
        port=PORT,
        bucket=BUCKET,
        region=REGION,
        ca_certificate=layout.ca.read_text(),
        access_key=key,
        secret_key=secret,
        network=NETWORK,
        image=DATABASE_IMAGE,
        data_dir=layout.data,
    )


def repository_pid() -> int | None:
    return running_pid(_Layout(repository_dir()).pid, "java")


def stop_backup_repository() -> bool:
    """Stop the daemon this module started, by its pid file; its data stays until remove_backup_repository()."""
    return terminate(_Layout(repository_dir()).pid, "java")


def remove_backup_repository(target: LocalTarget) -> None:
    """Stop the daemon, remove its network from the target's dockerd (with its bridge) and its folder: its objects,
    keys and TLS material. The stages that joined the network must be gone first."""
    stop_backup_repository()
    with _locked_target(_TargetLayout(Path(target.target_dir))):
        found = target.docker("network", "ls", "--quiet", "--filter", f"name=^{NETWORK}$")
        if found.stdout.strip():
            target.docker("network", "rm", NETWORK)
    root = repository_dir()
    if root.exists():
        subprocess.run(["rm", "-rf", str(root)], check=True)
