"""The stand-in for pulumi-docker 5.2.0: the provider's `registryAuth` and `getRegistryImage`, over real HTTP.

Behaviour read from terraform-provider-docker v4.5.0 (5074970c, the upstream pulumi-docker 5.2.0 bridges, with
its patch 0002: `http.DefaultClient` for registry requests): `data_source_docker_registry_image.go`,
`authentication_helpers.go`, `config.go`, `provider.go`, `resource_docker_image_funcs.go` (`parseImageOptions`).

- `registryAuth`: each entry's address is normalised to `https://` unless it says `http://` explicitly, and keyed
  by its host; an image's registry (the part of its name before the first `/`) picks its entry, and a registry
  without one is asked anonymously over `https://`. So a plain-HTTP registry needs `http://` in its auth address.
- `getRegistryImage`: a HEAD of `/v2/<repository>/manifests/<tag>` with the Accept headers the real one sends and
  basic auth; on any failure a second try that accepts only schema-1 manifests, whose failure is the one reported:
  `Got error when attempting to fetch image version <repository>:<tag> from registry: <reason>`, wrapped as the
  bridge wraps a data source's error. Returns `{id, name, sha256Digest, insecureSkipVerify}`, id = digest.

Refused, with a clear error: every resource (the local stack never builds or pushes: `docker.Image`,
`docker.RegistryImage` and the rest are the real plugin's) and every other function; `registryAuth` entries that
read a Docker config file (`configFile`, `configFileContent`, or no username) or set `authDisabled`; registries that
answer with a token (Bearer) challenge or a redirect; ghcr.io, gcr.io, ECR and Azure registries (the real one sends
them other Authorization headers); an HTTP proxy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import ipaddress
import json
import os
import socket
import ssl
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import version

from pulumi.provider.experimental.property_value import PropertyValue

from embedded_default.providers.standin import (
    Checked,
    DialError,
    EngineLog,
    Failure,
    Properties,
    ProviderError,
    Returned,
    StandinProvider,
    dial_tcp,
    is_unknown,
    plain,
    serve,
    standin_label,
    urn_type,
)

GET_REGISTRY_IMAGE = "docker:index/getRegistryImage:getRegistryImage"
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)
FALLBACK_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_HUB_HOSTNAMES = ("registry-1.docker.io", "index.docker.io", "docker.io", "registry.hub.docker.com")
DIAL_TIMEOUT = 30.0
"""Go's http.DefaultTransport gives a TCP connect 30 s; a request has no other time limit."""
LABEL = standin_label("docker", version("pulumi-docker"))


@dataclass(frozen=True)
class RegistryAuth:
    server_address: str
    """`https://host[:port]`, or `http://host[:port]` when the auth address said `http://`."""
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Image:
    registry: str
    repository: str
    tag: str


class RegistryRequestError(Exception):
    """One registry request that did not give a digest, worded as the real provider words it."""


class DockerProvider(StandinProvider):
    package = "docker"
    implements = f"the provider's registryAuth (address, username, password) and {GET_REGISTRY_IMAGE}"

    def __init__(self, plugin_version: str, log: EngineLog) -> None:
        super().__init__(plugin_version, log)
        self._auth: dict[str, RegistryAuth] | None = None
        """Registry host -> credentials; None until the engine configured this provider for the local stack."""

    async def check_config(self, urn: str, news: Properties) -> Checked:
        self.require_local(urn)
        entries = news.get("registryAuth")
        if entries is None or is_unknown(entries):
            return Checked(news)
        try:
            registry_auths(entries)
        except ProviderError as error:
            return Checked(news, [Failure("registryAuth", str(error))])
        return Checked(news)

    async def configure(self, urn: str, args: Properties) -> None:
        await super().configure(urn, args)
        entries = args.get("registryAuth")
        self._auth = registry_auths(entries) if entries is not None else {}

    async def check(self, urn: str, olds: Properties, news: Properties) -> Checked:
        self.require_local(urn)
        raise self.refuse(
            f"the resource type {urn_type(urn)}: the local stack never builds or pushes, so docker.Image, "
            "docker.RegistryImage and every other docker resource are left to the real plugin"
        )

    async def invoke(self, token: str, args: Properties) -> Returned:
        if token != GET_REGISTRY_IMAGE:
            raise self.refuse(f"the function {token}")
        if self._auth is None:
            # An invoke carries no URN: only a provider the engine configured with a local-stack URN answers.
            raise ProviderError(f"{self.label} was not configured for the local stack, so it answers no invoke")
        name = args.get("name")
        if name is None or not isinstance(name.value, str):
            return Returned({}, [Failure("name", "Missing required argument 'name'")])
        insecure = args.get("insecureSkipVerify")
        skip_verify = insecure is not None and insecure.value is True
        digest = await asyncio.to_thread(registry_image_digest, name.value, skip_verify, self._auth)
        return Returned(
            {
                "id": PropertyValue(digest),
                "insecureSkipVerify": PropertyValue(skip_verify),
                "name": PropertyValue(name.value),
                "sha256Digest": PropertyValue(digest),
            }
        )


# --- registryAuth ------------------------------------------------------------------------------------------------


def registry_auths(entries: PropertyValue) -> dict[str, RegistryAuth]:
    """`providerSetToRegistryAuth`: registry host -> credentials. The SDK sends the list as a JSON string."""
    value = plain(entries)
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        raise ProviderError("registryAuth must be a list of {address, username, password}")
    auths: dict[str, RegistryAuth] = {}
    for entry in value:
        address = entry.get("address")
        if not isinstance(address, str) or not address:
            raise ProviderError("registryAuth: address is required and must not be empty")
        for key in ("configFile", "configFileContent"):
            if entry.get(key):
                raise ProviderError(f"{LABEL} does not implement registryAuth.{key} (a Docker config file)")
        if entry.get("authDisabled"):
            raise ProviderError(f"{LABEL} does not implement registryAuth.authDisabled")
        # The schema's defaults for both come from these variables.
        username = entry.get("username") or os.environ.get("DOCKER_REGISTRY_USER", "")
        password = entry.get("password") or os.environ.get("DOCKER_REGISTRY_PASS", "")
        if not username:
            raise ProviderError(
                f"registryAuth for {address} has no username: the real provider would then read a Docker config "
                f"file (~/.docker/config.json), which {LABEL} does not implement"
            )
        server_address = canonical_registry_address(address)
        auths[hostname_of(server_address)] = RegistryAuth(server_address, str(username), str(password))
    return auths


def canonical_registry_address(address: str) -> str:
    """`canonicalizeRegistryAddress`: `http://` only when the address says so, else `https://`; host only."""
    scheme = "http://" if address.startswith("http://") else "https://"
    return scheme + hostname_of(address)


def hostname_of(url: str) -> str:
    """`convertToHostname`: the address without its scheme and path."""
    return url.removeprefix("http://").removeprefix("https://").split("/", 1)[0]


# --- getRegistryImage --------------------------------------------------------------------------------------------


def parse_image(name: str) -> Image:
    """`parseImageOptions`: the registry is the first path component if it has a `.` or `:` or is `localhost`
    (Docker Hub otherwise); the tag follows the last component's `:` (`latest` if none), a digest wins over it."""
    registry = ""
    first_slash = name.find("/")
    if name.count("/") > 1 or (
        first_slash != -1 and (any(c in name[:first_slash] for c in ".:") or name[:first_slash] == "localhost")
    ):
        registry = name[:first_slash]
    repository, tag = name, ""
    tag_index = name[len(registry) :].find(":")
    if tag_index != -1:
        repository = name[: len(registry) + tag_index]
        tag = name[len(registry) + tag_index + 1 :]
        if "@" in tag:
            tag = tag[tag.index("@") + 1 :]
    tag = tag or "latest"
    if not registry:
        registry = "registry-1.docker.io"
        if "/" not in repository:
            repository = f"library/{repository}"
    else:
        repository = repository.replace(f"{registry}/", "", 1)
    return Image(registry, repository, tag)


def registry_image_digest(name: str, insecure_skip_verify: bool, auths: Mapping[str, RegistryAuth]) -> str:
    """`dataSourceDockerRegistryImageRead`: the digest the registry names for `name`'s tag."""
    image = parse_image(name)
    auth = auths.get(image.registry)
    if auth is None and image.registry in DOCKER_HUB_HOSTNAMES:
        auth = next((auths[host] for host in DOCKER_HUB_HOSTNAMES if host in auths), None)
    if auth is None:
        # No credentials for this registry: asked anonymously, over https.
        auth = RegistryAuth(f"https://{image.registry}", "", "")
    try:
        return _image_digest(image, auth, insecure_skip_verify, fallback=False)
    except RegistryRequestError:
        try:
            return _image_digest(image, auth, insecure_skip_verify, fallback=True)
        except RegistryRequestError as failure:
            summary = (
                f"Got error when attempting to fetch image version {image.repository}:{image.tag} "
                f"from registry: {failure}"
            )
            # The bridge's wording of a data source's error: `invoking <token>: ` and go-multierror's list.
            raise ProviderError(f"invoking {GET_REGISTRY_IMAGE}: 1 error occurred:\n\t* {summary}\n\n") from None


def _image_digest(image: Image, auth: RegistryAuth, insecure_skip_verify: bool, fallback: bool) -> str:
    """`getImageDigest`: one HEAD of the manifest."""
    url = f"{auth.server_address}/v2/{image.repository}/manifests/{image.tag}"
    headers = [("Accept", FALLBACK_MANIFEST_TYPE)] if fallback else [("Accept", kind) for kind in MANIFEST_TYPES]
    if auth.username:
        if _sends_other_authorization(image.registry):
            raise ProviderError(
                f"{LABEL} does not implement the Authorization header the real provider sends to "
                f"{image.registry}; it implements basic auth only"
            )
        token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
        headers.append(("Authorization", f"Basic {token}"))
    status, reason, answer = _head(url, headers, insecure_skip_verify)
    if status == 200:
        digest = answer.get("docker-content-digest", "")
        if not digest:
            # A HEAD has no body to hash: Go formats the nil error it got reading it.
            raise RegistryRequestError("error reading registry response body: %!s(<nil>)")
        return digest
    if status == 401:
        if not answer.get("www-authenticate", "").startswith("Bearer"):
            raise RegistryRequestError(f"bad credentials: {status} {reason}")
        raise ProviderError(
            f"{image.registry} asks for a token (Bearer challenge): {LABEL} does not implement the registry "
            "token flow; it implements basic auth only"
        )
    if 300 <= status < 400:
        raise ProviderError(f"{url} answered {status} {reason}: {LABEL} follows no redirect")
    raise RegistryRequestError(f"got bad response from registry: {status} {reason}")


def _sends_other_authorization(registry: str) -> bool:
    """Registries the real provider sends a Bearer (or ECR's own Basic) header instead of username:password."""
    return (
        registry in ("ghcr.io", "gcr.io", "public.ecr.aws")
        or (".dkr.ecr." in registry and registry.endswith(".amazonaws.com"))
        or registry.endswith(".azurecr.io")
    )


def _head(url: str, headers: list[tuple[str, str]], insecure_skip_verify: bool) -> tuple[int, str, dict[str, str]]:
    """A HEAD as Go's http.DefaultClient sends it; a request without an answer fails as
    `Error during registry request: Head "<url>": <reason>`."""
    scheme, _, rest = url.partition("://")
    host, _, path = rest.partition("/")
    hostname, port = _split_host(host, 443 if scheme == "https" else 80)
    _refuse_proxy(scheme, hostname)
    try:
        sock = dial_tcp(hostname, port, DIAL_TIMEOUT)
    except DialError as error:
        raise RegistryRequestError(f'Error during registry request: Head "{url}": {error}') from None
    connection = http.client.HTTPConnection(hostname, port)
    try:
        connection.sock = _tls(sock, hostname, port, insecure_skip_verify) if scheme == "https" else sock
        connection.putrequest("HEAD", f"/{path}", skip_accept_encoding=True)
        connection.putheader("User-Agent", "Go-http-client/1.1")
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.reason, {key.lower(): value for key, value in response.getheaders()}
    except RegistryRequestError as failure:
        raise RegistryRequestError(f'Error during registry request: Head "{url}": {failure}') from None
    except (OSError, http.client.HTTPException):
        raise RegistryRequestError(f'Error during registry request: Head "{url}": EOF') from None
    finally:
        connection.close()


def _tls(sock: socket.socket, hostname: str, port: int, insecure_skip_verify: bool) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    if insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        return context.wrap_socket(sock, server_hostname=hostname)
    except ssl.SSLCertVerificationError as error:
        raise RegistryRequestError(f"tls: failed to verify certificate: x509: {error.verify_message}") from None
    except ssl.SSLError as error:
        if _answers_plain_http(hostname, port):
            raise RegistryRequestError("http: server gave HTTP response to HTTPS client") from None
        raise RegistryRequestError(f"tls: {error.reason or error}") from None


def _answers_plain_http(hostname: str, port: int) -> bool:
    """Go's test after a failed TLS handshake: do the server's first bytes read `HTTP/`? Asked again on a second
    connection, since Python's handshake does not show the bytes it choked on."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    handshake = context.wrap_bio(incoming, outgoing, server_hostname=hostname)
    # The handshake stops for want of the server's answer, with the ClientHello written: that is all it needs.
    with contextlib.suppress(ssl.SSLWantReadError):
        handshake.do_handshake()
    try:
        with dial_tcp(hostname, port, DIAL_TIMEOUT) as sock:
            sock.settimeout(DIAL_TIMEOUT)
            sock.sendall(outgoing.read())
            first = b""
            while len(first) < len(b"HTTP/") and (chunk := sock.recv(len(b"HTTP/") - len(first))):
                first += chunk
    except (DialError, OSError):
        return False
    return first == b"HTTP/"


def _split_host(host: str, default_port: int) -> tuple[str, int]:
    if host.startswith("["):
        address, _, port = host[1:].partition("]")
        return address, int(port.removeprefix(":") or default_port)
    name, _, port = host.partition(":")
    return name, int(port or default_port)


def _refuse_proxy(scheme: str, hostname: str) -> None:
    """Go's `http.ProxyFromEnvironment` would send the request through a proxy (never for localhost or a
    loopback address): the stand-in does not implement that."""
    if hostname == "localhost" or _is_loopback(hostname):
        return
    variable = "HTTPS_PROXY" if scheme == "https" else "HTTP_PROXY"
    proxy = os.environ.get(variable) or os.environ.get(variable.lower())
    if proxy and not urllib.request.proxy_bypass(hostname):
        raise ProviderError(f"{variable} is set: {LABEL} does not implement an HTTP proxy")


def _is_loopback(hostname: str) -> bool:
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def main() -> None:
    serve(lambda log: DockerProvider(version("pulumi-docker"), log), sys.argv[1:])


if __name__ == "__main__":
    main()
