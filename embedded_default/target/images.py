"""The images a release pulls from the target's registry, built without downloading any image:
a Debian base made by debootstrap, PostgreSQL and the proxy (Debian's nginx) on it, and the
stand-in app (``embedded_default/standin_app``) in the versions of ``APP_VERSIONS``. Each image carries
a hash of its inputs, so an unchanged one is neither rebuilt nor pushed again."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from embedded_default.target.connection import docker_cli
from embedded_default.target.daemons import registry_digest
from embedded_default.target.layout import REGISTRY, STANDIN_DIR, Layout, hash_paths, remove_tree
from embedded_default.target.processes import TargetError, run, which

POSTGRES_IMAGE = f"{REGISTRY}/kametrix/postgres:15"
PROXY_IMAGE = f"{REGISTRY}/kametrix/proxy:nginx-1.22"
APP_REPOSITORY = f"{REGISTRY}/kametrix/kametrix"
DEBIAN_SUITE = "bookworm"
# The base image of both the PostgreSQL image and the stand-in app.
BASE_PACKAGES = ("postgresql-15", "python3")
HASH_LABEL = "org.kametrix.e2e.input-hash"
_BASE_KEY = hashlib.sha256(f"{DEBIAN_SUITE} {' '.join(BASE_PACKAGES)}".encode()).hexdigest()[:12]

BUSYBOX = Path("/bin/busybox")  # Debian busybox-static


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


def _base_tarball(layout: Layout) -> Path:
    """debootstrap (minbase + BASE_PACKAGES) once, cached as a tarball."""
    tarball = layout.root / f"debootstrap-{DEBIAN_SUITE}-{_BASE_KEY}.tar"
    if tarball.exists():
        return tarball
    rootfs = layout.root / "debootstrap-rootfs"
    remove_tree(rootfs)
    log = layout.logs / "debootstrap.log"
    argv = [
        which("debootstrap", "/usr/sbin/debootstrap"),
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        DEBIAN_SUITE,
        str(rootfs),
    ]
    mirror = _debian_mirror()
    if mirror:
        argv.append(mirror)
    try:
        run(argv, log=log, timeout=1200)
        partial = tarball.with_suffix(".tar.partial")
        run(
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
        remove_tree(rootfs)
    return tarball


def _image_labels(env: Mapping[str, str], images: Sequence[str]) -> dict[str, tuple[str, list[str]]]:
    """image -> (input-hash label, RepoDigests) for the images that exist locally."""
    if not images:
        return {}
    done = subprocess.run(
        [docker_cli(), "image", "inspect", *images],
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


def _ensure_base_image(layout: Layout, env: Mapping[str, str]) -> str:
    image = f"kametrix-e2e/base:{DEBIAN_SUITE}-{_BASE_KEY}"
    if _image_labels(env, [image]):
        return image
    tarball = _base_tarball(layout)
    run(
        [docker_cli(), "import", "--change", 'CMD ["/bin/bash"]', str(tarball), image],
        env=env,
        log=layout.logs / "images.log",
    )
    return image


def _image_id(env: Mapping[str, str], image: str) -> str:
    cli = docker_cli()
    return run([cli, "image", "inspect", "--format", "{{.Id}}", image], env=env).strip()


def _stage_context(layout: Layout, name: str, sources: Sequence[Path]) -> Path:
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
    layout: Layout,
    env: Mapping[str, str],
    context: Path,
    tag: str,
    input_hash: str,
    build_args: Mapping[str, str],
    target: str | None = None,
) -> None:
    argv = [docker_cli(), "build", "--network", "host", "--label", f"{HASH_LABEL}={input_hash}"]
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    if target:
        argv += ["--target", target]
    argv += ["-t", tag, str(context)]
    run(argv, env=env, log=layout.logs / "images.log", timeout=900)


def _push(layout: Layout, env: Mapping[str, str], image: str) -> str:
    run([docker_cli(), "push", image], env=env, log=layout.logs / "images.log", timeout=900)
    digest = registry_digest(image)
    if digest is None:
        raise TargetError(f"{image} was pushed but the registry does not serve it")
    return f"{image.rpartition(':')[0]}@{digest}"


def _ensure_base_derived_image(layout: Layout, env: Mapping[str, str], base: str, name: str, image: str) -> None:
    """Build ``standin_app/<name>`` on the base image and push it as ``image``, unless it is current."""
    sources = sorted((STANDIN_DIR / name).iterdir())
    h = hashlib.sha256(_image_id(env, base).encode())
    hash_paths(sources, h)
    input_hash = h.hexdigest()
    if _current(env, [image], input_hash) is not None:
        return
    context = _stage_context(layout, name, sources)
    _build(layout, env, context, image, input_hash, {"BASE_IMAGE": base})
    _push(layout, env, image)


def ensure_server_images(layout: Layout, env: Mapping[str, str]) -> None:
    """The PostgreSQL and proxy images in the registry, built (or reused) on the base image."""
    base = _ensure_base_image(layout, env)
    _ensure_base_derived_image(layout, env, base, "postgres", POSTGRES_IMAGE)
    _ensure_base_derived_image(layout, env, base, "proxy", PROXY_IMAGE)


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
    listed = run([docker_cli(), "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository], env=env)
    stale = sorted(set(listed.split()) - set(keep) - {f"{repository}:<none>"})
    if stale:
        run([docker_cli(), "image", "rm", *stale], env=env)


def push_app_versions(layout: Layout, env: Mapping[str, str], repository: str) -> dict[str, str]:
    """Build and push every version of ``APP_VERSIONS`` to ``repository`` unless all are current;
    version -> runner digest reference, as the registry serves it."""
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
    hash_paths(sources, h)
    input_hash = h.hexdigest()
    images = [f"{repository}:{version}{suffix}" for version in APP_VERSIONS for suffix in ("", "-migrate")]
    _untag_other_app_images(env, repository, images)
    current = _current(env, images, input_hash)
    if current is not None:
        return {version: f"{repository}@{current[f'{repository}:{version}']}" for version in APP_VERSIONS}
    context = _stage_context(layout, "app", sources)
    refs: dict[str, str] = {}
    for version in APP_VERSIONS:
        args = {"BASE_IMAGE": base, **app_build_args(version, input_hash)}
        runner = f"{repository}:{version}"
        builder = f"{runner}-migrate"
        _build(layout, env, context, builder, input_hash, args, target="builder")
        _build(layout, env, context, runner, input_hash, args, target="runner")
        _push(layout, env, builder)
        refs[version] = _push(layout, env, runner)
    # Old builds of changed sources: dangling images of our own dockerd only.
    run([docker_cli(), "image", "prune", "--force"], env=env)
    return refs
