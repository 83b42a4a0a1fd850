"""Run the real program for a named stack under Pulumi's mocks and record everything it declares.

`run_stack("production")` reads `Pulumi.production.yaml`, fills in distinctive test secrets where the
file holds none, applies per-test overrides, runs `__main__.py` fresh, and returns a `Deployment`
that answers questions about the declared resources.
"""

from __future__ import annotations

import copy
import json
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml

from components.config import GITHUB_ADMINISTRATOR
from tests import pulumi_runtime

PROJECT_DIR = Path(__file__).resolve().parent.parent
PROJECT = "kametrix-deploy"
NAMESPACE = "kametrix-deploy"

# Distinctive values, so a leak is found by searching for them.
TEST_SSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nTESTSECRET-ssh-private-key-7f3a\n-----END OPENSSH PRIVATE KEY-----\n"
)
TEST_SECRETS: dict[str, Any] = {
    "postgresPassword": "TESTSECRET-postgres-password-91ab",
    "vapiApiKey": "TESTSECRET-vapi-api-key-12cd",
    "vapiWebhookSecret": "TESTSECRET-vapi-webhook-34ef",
    "googleClientSecret": "TESTSECRET-google-client-56aa",
    "googleEncryptionKey": "ab" * 32,
    "stripeSecretKey": "TESTSECRET-stripe-secret-78bb",
    "stripeWebhookSecret": "TESTSECRET-stripe-webhook-9acc",
    "smtpPass": "TESTSECRET-smtp-pass-bcdd",
    "openrouterApiKey": "TESTSECRET-openrouter-deee",
    "elevenlabsApiKey": "TESTSECRET-elevenlabs-f0ff",
    "sshPrivateKey": TEST_SSH_KEY,
    "registryPassword": "TESTSECRET-registry-token-1357",
    "backupCipherPass": "TESTSECRET-backup-cipher-pass-0a1b",
    "backupRepositoryKey": "TESTSECRET-backup-key-2c3d",
    "backupRepositorySecret": "TESTSECRET-backup-secret-4e5f",
    "githubToken": "TESTSECRET-github-token-2468",
    "githubEnvironmentSecrets": {
        "PULUMI_CONFIG_PASSPHRASE": "TESTSECRET-passphrase-3579",
        "PULUMI_BACKEND_URL": "s3://TESTSECRET-state-bucket-4680",
    },
    "stagingEnvironmentSecrets": {
        "PULUMI_CONFIG_PASSPHRASE": "TESTSECRET-staging-passphrase-5791",
        "PULUMI_BACKEND_URL": "s3://TESTSECRET-staging-state-bucket-6802",
    },
}
# The google key is hex by contract, so it is found by its exact value rather than the marker.
SECRET_MARKERS = ("TESTSECRET", "ab" * 32)
# Held only by the stack that administers the GitHub repository.
GITHUB_ONLY_SECRETS = ("githubToken", "githubEnvironmentSecrets", "stagingEnvironmentSecrets")
DELETE = object()
"""An override value that removes the key from the stack's config."""


def numeric_id(name: str) -> int:
    """A stable, realistic GitHub numeric ID for a login or team slug."""
    return 1_000_000 + zlib.crc32(name.encode()) % 90_000_000


def digest_of(reference: str) -> str:
    return "sha256:" + format(zlib.crc32(reference.encode()), "08x") * 8


@dataclass
class Resource(pulumi_runtime.Registration):
    """A resource the program declared."""

    def plain(self, key: str) -> Any:
        """An input with any secret wrapper removed."""
        return unwrap(self.inputs.get(key))

    def is_secret(self, key: str) -> bool:
        return pulumi_runtime.is_secret(self.inputs.get(key))


@dataclass
class Deployment:
    stack: str
    resources: list[Resource]
    outputs: dict[str, Any]
    invokes: list[tuple[str, dict[str, Any]]]

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str | None = None) -> Resource:
        found = [r for r in self.of_type(type_) if name is None or r.name == name]
        names = [r.urn for r in self.of_type(type_)]
        assert len(found) == 1, f"expected exactly one {type_} named {name!r} in {self.stack}, found {names}"
        return found[0]

    def by_urn(self, urn: str) -> Resource:
        return next(r for r in self.resources if r.urn == urn)

    def by_name(self, name: str) -> Resource:
        return next(r for r in self.resources if r.name == name)

    def depends_on(self, resource: Resource, other: Resource) -> bool:
        """True when `resource` waits for `other`, directly or through other resources."""
        seen: set[str] = set()
        stack = list(resource.dependencies)
        while stack:
            urn = stack.pop()
            if urn == other.urn:
                return True
            if urn in seen:
                continue
            seen.add(urn)
            stack.extend(next((r.dependencies for r in self.resources if r.urn == urn), []))
        return False

    def output(self, name: str) -> Any:
        return unwrap(self.outputs[name])


def unwrap(value: Any) -> Any:
    if pulumi_runtime.is_secret(value):
        return unwrap(pulumi_runtime.reveal(value))
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def walk(value: Any, in_secret: bool = False) -> Iterator[tuple[Any, bool]]:
    """Every leaf of a value, with whether it sits inside a secret."""
    if pulumi_runtime.is_secret(value):
        yield from walk(pulumi_runtime.reveal(value), True)
    elif isinstance(value, dict):
        for item in value.values():
            yield from walk(item, in_secret)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item, in_secret)
    else:
        yield value, in_secret


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self, registry_tags: Mapping[str, str] | None, registry_failures: Mapping[str, str]) -> None:
        self.registry_tags = registry_tags
        self.registry_failures = registry_failures
        self.invokes: list[tuple[str, dict[str, Any]]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        state = dict(args.inputs)
        if args.typ == "docker:index/image:Image":
            repository = str(unwrap(args.inputs.get("imageName"))).rpartition(":")[0]
            state["repoDigest"] = f"{repository}@{digest_of(args.name)}"
        if args.typ == "docker:index/registryImage:RegistryImage":
            state["sha256Digest"] = digest_of(str(unwrap(args.inputs.get("name"))))
        if args.typ == "command:remote:Command":
            state.setdefault("stdout", "")
            state.setdefault("stderr", "")
        if args.typ.startswith("pulumi:providers:"):
            # The engine gives a provider a random UUID; this one is the same on every run of the program.
            return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{args.typ}::{args.name}")), state
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        self.invokes.append((args.token, dict(args.args)))
        if args.token == "github:index/getUser:getUser":
            login = args.args["username"]
            return {"id": str(numeric_id(login)), "login": login, "nodeId": f"U_{login}"}, []
        if args.token == "github:index/getTeam:getTeam":
            slug = args.args["slug"]
            return {"id": str(numeric_id(slug)), "slug": slug, "name": slug, "nodeId": f"T_{slug}"}, []
        if args.token == "docker:index/getRegistryImage:getRegistryImage":
            name = args.args["name"]
            if name in self.registry_failures:
                return {}, [("name", self.registry_failures[name])]
            if self.registry_tags is not None and name not in self.registry_tags:
                # How the engine reports a provider's failed read: the invoke fails, the program decides.
                return {}, [("name", f"Got bad response from registry: 404 Not Found (manifest unknown: {name})")]
            digest = self.registry_tags[name] if self.registry_tags is not None else digest_of(name)
            return {"name": name, "sha256Digest": digest, "id": digest}, []
        raise Exception(f"the test kit has no answer for invoke {args.token}")


def stack_file(stack: str) -> dict[str, Any]:
    loaded = yaml.safe_load((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _engine_value(value: Any) -> str:
    """What the engine hands a program for a config value: strings as-is, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _has_secure(value: Any) -> bool:
    if isinstance(value, dict):
        return set(value) == {"secure"} or any(_has_secure(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_secure(v) for v in value)
    return False


def stack_config(
    stack: str,
    overrides: Mapping[str, Any] | None = None,
    secrets: Mapping[str, Any] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """The config bag and secret keys the engine would hand the program for this stack.

    `secrets` replaces or adds secret keys (`DELETE` removes). `overrides` then replaces plain keys
    (dotted paths reach into objects; `DELETE` removes); a whole key overridden is stored in plaintext,
    as `pulumi config set` without `--secret` would. Keys are without the namespace.
    """
    values: dict[str, Any] = {}
    secret_keys: set[str] = set()
    for full_key, value in (stack_file(stack).get("config") or {}).items():
        values[full_key] = value
        if _has_secure(value):
            secret_keys.add(full_key)
    administers_github = f"{NAMESPACE}:github" in values and stack == GITHUB_ADMINISTRATOR
    for name, value in TEST_SECRETS.items():
        full_key = f"{NAMESPACE}:{name}"
        if name in GITHUB_ONLY_SECRETS and not administers_github:
            continue
        if full_key not in values or _has_secure(values[full_key]):
            values[full_key] = copy.deepcopy(value)
            secret_keys.add(full_key)
    for name, value in (secrets or {}).items():
        full_key = f"{NAMESPACE}:{name}"
        if value is DELETE:
            values.pop(full_key, None)
            secret_keys.discard(full_key)
        else:
            values[full_key] = value
            secret_keys.add(full_key)
    for path, value in (overrides or {}).items():
        top = _set_path(values, path, value)
        if "." not in path:
            secret_keys.discard(top)  # a plain override of a whole key stores it in plaintext
    return {k: _engine_value(v) for k, v in values.items()}, sorted(secret_keys)


def _set_path(values: dict[str, Any], path: str, value: Any) -> str:
    top, *rest = path.split(".")
    full_key = top if ":" in top else f"{NAMESPACE}:{top}"
    if not rest:
        if value is DELETE:
            values.pop(full_key, None)
        else:
            values[full_key] = copy.deepcopy(value)
        return full_key
    node = values.setdefault(full_key, {})
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(rest[-1], None)
    else:
        node[rest[-1]] = copy.deepcopy(value)
    return full_key


def attempt_stack(
    stack: str,
    overrides: Mapping[str, Any] | None = None,
    secrets: Mapping[str, Any] | None = None,
    registry_tags: Mapping[str, str] | None = None,
    preview: bool = False,
    as_stack: str | None = None,
    registry_failures: Mapping[str, str] | None = None,
) -> tuple[Deployment, BaseException | None]:
    """Run `__main__.py` fresh with the config of `Pulumi.<stack>.yaml`; return what it declared and how it failed.

    `registry_tags` maps `registry/repository:tag` to the digest the registry holds; None answers
    every lookup with a made-up digest. `registry_failures` maps `registry/repository:tag` to the error
    the provider reports for it. `as_stack` runs the same config under another stack name.
    """
    config, secret_keys = stack_config(stack, overrides, secrets)
    mock = _Mocks(registry_tags, registry_failures or {})
    name = as_stack or stack
    run = pulumi_runtime.run_program(
        PROJECT_DIR / "__main__.py",
        mock,
        project=PROJECT,
        stack=name,
        preview=preview,
        config=config,
        secret_keys=secret_keys,
    )
    resources = [Resource(**vars(registration)) for registration in run.registrations]
    return Deployment(name, resources, run.stack_outputs, mock.invokes), run.error


def run_stack(
    stack: str,
    overrides: Mapping[str, Any] | None = None,
    secrets: Mapping[str, Any] | None = None,
    registry_tags: Mapping[str, str] | None = None,
    preview: bool = False,
    as_stack: str | None = None,
) -> Deployment:
    """Like `attempt_stack`, raising the program's error."""
    deployment, error = attempt_stack(stack, overrides, secrets, registry_tags, preview, as_stack)
    if error is not None:
        raise error
    return deployment


@dataclass
class Leak:
    where: str
    marker: str
    """Which test secret leaked, not the value itself."""


@dataclass
class LeakReport:
    leaks: list[Leak] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.leaks)


def find_secret_leaks(deployment: Deployment, markers: tuple[str, ...] = SECRET_MARKERS) -> LeakReport:
    """Every place a secret value appears outside a secret: resource inputs and stack outputs."""
    report = LeakReport()
    for resource in deployment.resources:
        for value, in_secret in walk(resource.inputs):
            report.leaks.extend(Leak(resource.urn, m) for m in _leaked(value, in_secret, markers))
    for name, output in deployment.outputs.items():
        for value, in_secret in walk(output):
            report.leaks.extend(Leak(f"stack output {name}", m) for m in _leaked(value, in_secret, markers))
    return report


def _leaked(value: Any, in_secret: bool, markers: tuple[str, ...]) -> list[str]:
    if in_secret or not isinstance(value, str):
        return []
    return [marker for marker in markers if marker in value]
