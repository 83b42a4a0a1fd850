"""The value types the stack file's keys share: each checks one shape and says what it allows."""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated

from pydantic import AfterValidator, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

# Versions the image registry holds: release tags and staging builds. Never a moving tag.
# Written in the subset of regular expressions that Python and bash's [[ =~ ]] read alike: the server's scripts and
# the workflows' scripts use this very string (components/shared_facts.py, .github/scripts/lib.sh).
VERSION_PATTERN = re.compile(
    r"^(v[0-9]+\.[0-9]+\.[0-9]+|v[0-9]{4}\.[0-9]{2}\.[0-9]{2}-[0-9a-f]{7,40}|staging-[0-9a-f]{7,40})$"
)
VERSION_FORMATS = "v1.2.3, vYYYY.MM.DD-<short sha> or staging-<short sha>"
# The server's `.env` holds KEY='value' lines: a value cannot close its quotes or start another line.
ENV_FILE_FORBIDDEN = ("'", "\n", "\r")
ENV_FILE_RULE = "no single quote, carriage return or line break (the .env quotes values)"
# The JSON schema keyword that carries a rule's words (docs/configuration.md's "allowed" column).
ALLOWED = "x-allowed"


@dataclasses.dataclass(frozen=True, slots=True)
class Rule(AfterValidator):
    """A check of one value that also says what it allows: in its error, in docs/configuration.md and in the
    stack file's JSON schema (with the same rule in JSON schema words where it has them, for an editor)."""

    allowed: str = ""
    pattern: str | None = None
    minimum: int | None = None
    maximum: int | None = None

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        words = {"pattern": self.pattern, "minimum": self.minimum, "maximum": self.maximum}
        for keyword, value in words.items():
            if value is None:
                continue
            if keyword in schema:
                schema.setdefault("allOf", []).append({keyword: value})
            else:
                schema[keyword] = value
        schema[ALLOWED] = f"{schema[ALLOWED]}; {self.allowed}" if ALLOWED in schema else self.allowed
        return schema


def in_range(low: int, high: int, unit: str) -> Rule:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"allowed: {low}–{high} {unit}; received {value}")
        return value

    return Rule(check, f"{low}–{high} {unit}", minimum=low, maximum=high)


def matching(pattern: str, allowed: str) -> Rule:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"allowed: {allowed}; received {value!r}")
        return value

    return Rule(check, allowed, pattern=f"^(?:{pattern})$")


def fits_env_file(value: str) -> bool:
    return not any(character in value for character in ENV_FILE_FORBIDDEN)


def _check_version(value: str) -> str:
    if not VERSION_PATTERN.fullmatch(value):
        raise ValueError(f"must be an exact version ({VERSION_FORMATS}); received {value!r}")
    return value


def _check_env_value(value: str) -> str:
    if not fits_env_file(value):
        raise ValueError(f"allowed: {ENV_FILE_RULE}; received {value!r}")
    return value


Port = Annotated[int, in_range(1, 65535, "(TCP port)")]
# What the server's release lock accepts too (components/shared_facts.py hands it to the scripts). `]` first and `[`
# last in the set: read alike by Python and by bash's [[ =~ ]].
REQUESTER_PATTERN = r"[]A-Za-z0-9 ._:/@()#+,=[-]{1,300}"
Version = Annotated[str, Rule(_check_version, f"an exact version: {VERSION_FORMATS}", pattern=VERSION_PATTERN.pattern)]
# Each written in the subset both Python and bash's [[ =~ ]] read, like VERSION_PATTERN.
COMMIT_PATTERN = r"[0-9a-f]{40}"
DIGEST_PATTERN = r"sha256:[0-9a-f]{64}"
HOST_NAME_PATTERN = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
IPV4_PATTERN = r"([0-9]{1,3}\.){3}[0-9]{1,3}"
UTC_TIME_PATTERN = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"
# A version's two images: the app as `<version>`, the migrations as `<version>-migrate`.
MIGRATE_TAG_SUFFIX = "-migrate"
CommitSha = Annotated[str, matching(COMMIT_PATTERN, "a full 40-character lowercase git SHA")]
GitHubLogin = Annotated[str, matching(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})", "a GitHub login")]
TeamSlug = Annotated[str, matching(r"[a-z0-9][a-z0-9._-]*", "a GitHub team slug")]
BranchPattern = Annotated[str, matching(r"[A-Za-z0-9._/*-]+", "a branch name or pattern")]
# A PostgreSQL user or database name the scripts can quote alike: the login roles add a suffix of up to 8 characters
# and stay within PostgreSQL's 63.
DATABASE_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,49}"
DatabaseName = Annotated[str, matching(DATABASE_NAME_PATTERN, "a PostgreSQL name: letters, digits, _ (up to 50)")]
ENV_NAME_PATTERN = r"(?!GITHUB_)[A-Z_][A-Z0-9_]*"
ENV_NAME_RULE = "an upper-case name not starting with GITHUB_"
EnvName = Annotated[str, matching(ENV_NAME_PATTERN, ENV_NAME_RULE)]
AbsolutePath = Annotated[str, matching(r"/[A-Za-z0-9._/-]*", "an absolute path")]
HttpsUrl = Annotated[str, matching(r"https?://[^\s/]+(/[^\s]*)?", "an http(s) URL")]
Digest = Annotated[str, matching(DIGEST_PATTERN, "an image digest sha256:<64 lower-case hex>")]
# The database image's tag where `backup` is declared (components/database_tag.py): named by its inputs.
DATABASE_TAG_PATTERN = r"pgbackrest-[0-9a-f]{16}"
DatabaseTag = Annotated[str, matching(DATABASE_TAG_PATTERN, "a database image tag: pgbackrest-<16 hex>")]
SshHostKey = Annotated[
    str, matching(r"(ssh-ed25519|ecdsa-sha2-nistp256|ssh-rsa) [A-Za-z0-9+/=]+", "an SSH public host key line")
]
# Written for Python and bash's regular expressions alike: the Swarm's scripts check addresses with it too.
IPV4_PATTERN = r"((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
Ipv4Address = Annotated[str, matching(IPV4_PATTERN, "an IPv4 address")]
FITS_ENV_FILE = Rule(_check_env_value, ENV_FILE_RULE, pattern="^[^'\\r\\n]*$")
EnvValue = Annotated[str, FITS_ENV_FILE]
"""A plain value the server's `.env` carries."""
