"""What each stage demands beyond the shape of its keys: production's approval, branch and release rules,
the read-only environments every GitHub stage declares, and consistency between keys.

Each section's keys are validated one by one here, so an invalid key hides no rule on the others: one run
reports the invalid key and every policy breach beside it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

from components.config.fields import VERSION_PATTERN
from components.config.models import MAX_REVIEWERS_PER_KIND, AppSettings, GitHubSettings, ImageSettings
from components.config.problems import Problem, full_key
from components.database_tag import database_tag

STAGES = ("staging", "production", "local")
# Sections a stage cannot do without, and why.
REQUIRED_SECTIONS: Mapping[str, tuple[tuple[str, ...], str]] = {
    "github": (
        ("staging", "production"),
        "its GitHub environments are described here (production's stack declares both stages')",
    ),
}
# The only branch production deploys from: .github/workflows/deploy-production.yml runs on a push to it, checks
# it out and refuses a run from any other. Its environment must admit exactly that branch: one more (develop, a
# wildcard) would let a deployment the workflow refuses pass GitHub's gate. The workflow's trigger is read
# before any stack is, so the stack cannot move it; tests/workflows/test_deployment_branches.py keeps the two equal.
PRODUCTION_BRANCH = "main"
# The branch each deploying stage deploys from (the workflow scripts get it from .github/scripts/facts.sh).
STAGE_BRANCHES: Mapping[str, str] = {"production": PRODUCTION_BRANCH, "staging": "develop"}
# The one stage whose stack administers the GitHub repository: it holds the only credential that can change the
# environments, and declares every stage's (each from its own stack file's `github` section). Staging's jobs run
# without anyone's approval: a GitHub token in staging's stack could delete production's reviewers.
GITHUB_ADMINISTRATOR = "production"
# The stages whose environments the administrator declares for them.
ADMINISTERED_STAGES = ("staging",)
# Variables every stage's environment gets from the stack, so workflows know where they deploy.
STACK_VARIABLES = ("APP_URL", "PULUMI_STACK")
# The rules below in a few words each, by the key they name: the "stages" column of docs/configuration.md.
STAGE_RULES: Mapping[str, str] = {
    "commit": "where image.build is set (staging), with commitTime",
    "commitTime": "where image.build is set (staging), with commit",
    "github.deploymentBranches": f"production: exactly [{PRODUCTION_BRANCH}]",
    "github.reviewers": "production: at least one",
    "github.canAdminsBypass": "production: false",
    "github.variables": f"never {' or '.join(STACK_VARIABLES)}",
    "github.preview": "staging, production: with reviewers",
    "github.drift": "staging, production: with deploymentBranches among the stage's; production: with reviewers",
    "github.releases": "production: holds the `version` it deploys",
    "image.build": "never in production",
    "image.plainHttp": "local only",
    "image.digests": "production: holds the `version` it deploys",
    "app.databasePoolMin": "at most databasePoolMax",
    "app.proxyPort": "a port of its own",
    "app.bluePort": "a port of its own",
    "app.greenPort": "a port of its own",
}
# The host ports of the stage, each needing a port of its own.
_HOST_PORTS = ("proxy_port", "blue_port", "green_port")

_SectionModel = TypeVar("_SectionModel", bound=BaseModel)


@dataclass(frozen=True)
class Section(Generic[_SectionModel]):
    """A section's valid keys, the others left at their defaults or out: one invalid key does not keep a rule on
    the section's other keys from being judged."""

    part: _SectionModel
    invalid: frozenset[str]
    """Fields present but invalid, or required and absent: their own problem is told already."""

    def valid(self, *fields: str) -> _SectionModel | None:
        """The section, when each of these fields holds a valid value of its own or its default; else None."""
        return None if self.invalid & set(fields) else self.part

    @staticmethod
    def of(model: type[_SectionModel], raw: Any) -> Section[_SectionModel] | None:
        if not isinstance(raw, dict):
            return None
        valid: dict[str, Any] = {}
        invalid = set()
        for name, field in model.model_fields.items():
            if field.alias not in raw:
                if field.is_required():
                    invalid.add(name)
                continue
            try:
                valid[name] = _field_validator(model, name).validate_python(raw[field.alias], strict=True)
            except ValidationError:
                invalid.add(name)
        return Section(model.model_construct(_fields_set=set(valid), **valid), frozenset(invalid))


@functools.cache
def _field_validator(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    field = model.model_fields[name]
    annotation = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    return TypeAdapter(annotation)  # type: ignore[arg-type]  # a field's annotation is a type form


@dataclass(frozen=True)
class Sections:
    """The plain keys, each section on its own (None where absent or not an object)."""

    declared: frozenset[str]
    version: str | None
    """Set only when valid: rules compare it with other keys."""
    commit: str | None
    commit_time: str | None
    github: Section[GitHubSettings] | None
    image: Section[ImageSettings] | None
    app: Section[AppSettings] | None

    @staticmethod
    def of(values: Mapping[str, Any]) -> Sections:
        def text(alias: str) -> str | None:
            value = values.get(alias)
            return value if isinstance(value, str) else None

        version = text("version")
        return Sections(
            declared=frozenset(values),
            version=version if version and VERSION_PATTERN.fullmatch(version) else None,
            commit=text("commit"),
            commit_time=text("commitTime"),
            github=Section.of(GitHubSettings, values.get("github")),
            image=Section.of(ImageSettings, values.get("image")),
            app=Section.of(AppSettings, values.get("app")),
        )


def stage_policy(stack: str, sections: Sections) -> list[Problem]:
    problems = [
        Problem(full_key(name), f"required for the {stack} stack: {why}")
        for name, (stages, why) in REQUIRED_SECTIONS.items()
        if stack in stages and name not in sections.declared
    ]
    if stack in ("staging", "production") and sections.github is not None:
        problems.extend(_read_only_environment_policy(sections.github))
    if stack == "production":
        problems.extend(_production_policy(sections))
    problems.extend(_build_policy(sections))
    github = sections.github.valid("variables") if sections.github else None
    if github is not None:
        problems.extend(
            Problem(
                full_key(f"github.variables.{reserved}"),
                f"is published by the stack itself; allowed: any name except {', '.join(STACK_VARIABLES)}",
            )
            for reserved in sorted(set(github.variables) & set(STACK_VARIABLES))
        )
    if sections.app is not None:
        problems.extend(_app_policy(sections.app))
    image = sections.image.valid("plain_http") if sections.image else None
    if stack != "local" and image is not None and image.plain_http:
        problems.append(
            Problem(
                full_key("image.plainHttp"),
                "a real stage's registry speaks TLS: images and the registry token never cross the network in "
                "plaintext; allowed: false (the local stack only may say true); received true",
            )
        )
    return problems


def _production_policy(sections: Sections) -> list[Problem]:
    """Production deploys only approved, already-built, recorded versions from its one branch."""
    problems = []
    github = sections.github
    if github is not None and (valid := github.valid("reviewers")) and valid.reviewers.count == 0:
        problems.append(
            Problem(
                full_key("github.reviewers"),
                f"production needs at least one required reviewer; allowed: 1–{MAX_REVIEWERS_PER_KIND} users "
                f"and/or 1–{MAX_REVIEWERS_PER_KIND} teams; received none",
            )
        )
    if github is not None and (valid := github.valid("can_admins_bypass")) and valid.can_admins_bypass:
        problems.append(
            Problem(
                full_key("github.canAdminsBypass"),
                "allowed in production: false (nobody skips the approval); received true",
            )
        )
    valid = github.valid("drift", "environment") if github else None
    if valid is not None and valid.drift is not None and valid.drift.reviewers.count == 0:
        problems.append(
            Problem(
                full_key("github.drift.reviewers"),
                f"{valid.environment}-drift runs {PRODUCTION_BRANCH}'s code with production's passphrase, which "
                "decrypts every production secret; "
                f"allowed in production: 1–{MAX_REVIEWERS_PER_KIND} users and/or 1–{MAX_REVIEWERS_PER_KIND} teams "
                "who approve each drift check; received none",
            )
        )
    valid = github.valid("deployment_branches") if github else None
    if valid is not None and valid.deployment_branches != [PRODUCTION_BRANCH]:
        problems.append(
            Problem(
                full_key("github.deploymentBranches"),
                f"allowed in production: exactly [{PRODUCTION_BRANCH}] (the production workflow, "
                f".github/workflows/deploy-production.yml, deploys only from {PRODUCTION_BRANCH}; any other "
                f"branch or pattern would pass GitHub's gate for a run the workflow refuses); "
                f"received [{', '.join(valid.deployment_branches)}]",
            )
        )
    valid = github.valid("releases") if github else None
    if valid is not None and sections.version is not None and sections.version not in valid.releases:
        problems.append(
            Problem(
                full_key("github.releases"),
                f"production releases only versions recorded here with their commit; allowed: "
                f"{', '.join(valid.releases) or 'none recorded yet'}; received version {sections.version!r}. "
                f"Add `{sections.version}: <commit sha>` under github.releases",
            )
        )
    image = sections.image.valid("digests") if sections.image else None
    if image is not None and sections.version is not None and sections.version not in image.digests:
        problems.append(
            Problem(
                full_key("image.digests"),
                f"production deploys only versions whose image digests are recorded here; allowed: "
                f"{', '.join(image.digests) or 'none recorded yet'}; received version {sections.version!r}. "
                f"Record it with: python scripts/record_release.py --stack-file Pulumi.production.yaml "
                f"--version {sections.version} --app-digest sha256:<app> --migrate-digest sha256:<migrate>",
            )
        )
    image = sections.image.valid("build") if sections.image else None
    if image is not None and image.build is not None:
        problems.append(
            Problem(
                full_key("image.build"),
                "production never rebuilds: it deploys a version that already exists; "
                "allowed: absent; received a build",
            )
        )
    image = sections.image.valid("database_digests") if sections.image else None
    app = sections.app.valid("postgres_image") if sections.app else None
    if "backup" in sections.declared and image is not None and app is not None:
        tag = database_tag(app.postgres_image)
        if tag not in image.database_digests:
            problems.append(
                Problem(
                    full_key("image.databaseDigests"),
                    "production runs only a database image whose digest is recorded here (a stage with backup "
                    "runs app.postgresImage with pgBackRest added, built by staging); allowed: "
                    f"{', '.join(image.database_digests) or 'none recorded yet'}; received app.postgresImage "
                    f"{app.postgres_image!r}, whose database image is tagged {tag}. Release staging with the same "
                    "app.postgresImage, then record what it built: python scripts/record_database_image.py "
                    '--stack-file Pulumi.production.yaml --image "$(pulumi stack output databaseImageRef -s staging)"',
                )
            )
    return problems


def _build_policy(sections: Sections) -> list[Problem]:
    image = sections.image.valid("build") if sections.image else None
    if image is None or image.build is None or (sections.commit and sections.commit_time):
        return []
    return [
        Problem(
            full_key("commit"),
            "a building stage needs the commit it builds and its time (keys commit and commitTime); "
            f"received commit={sections.commit!r}, commitTime={sections.commit_time!r}",
        )
    ]


def _read_only_environment_policy(section: Section[GitHubSettings]) -> list[Problem]:
    """The workflows preview every stage in `<environment>-preview` and check its drift in `<environment>-drift`:
    both must be declared (GitHub would create a missing one without protection), and since a preview of a pull
    request runs the PR's program with the stage's passphrase, someone approves it first."""
    problems = []
    github = section.valid("environment", "preview")
    if github is not None and (github.preview is None or github.preview.reviewers.count == 0):
        problems.append(
            Problem(
                full_key("github.preview.reviewers"),
                f"{github.environment}-preview runs pull requests' code with the stage's passphrase; allowed: "
                f"1–{MAX_REVIEWERS_PER_KIND} users and/or 1–{MAX_REVIEWERS_PER_KIND} teams who approve each "
                "preview; received none",
            )
        )
    github = section.valid("environment", "drift", "deployment_branches")
    if github is None:
        return problems
    if github.drift is None or not github.drift.deployment_branches:
        problems.append(
            Problem(
                full_key("github.drift.deploymentBranches"),
                f"{github.environment}-drift must name the branch the drift check runs from; allowed: "
                f"{', '.join(github.deployment_branches)}; received none",
            )
        )
    elif not set(github.drift.deployment_branches) <= set(github.deployment_branches):
        problems.append(
            Problem(
                full_key("github.drift.deploymentBranches"),
                f"allowed: branches the stage deploys from ({', '.join(github.deployment_branches)}); "
                f"received {', '.join(github.drift.deployment_branches)}",
            )
        )
    return problems


def _app_policy(section: Section[AppSettings]) -> list[Problem]:
    """The pool's bounds in order; the proxy, both colours and PostgreSQL each on a port of their own."""
    problems = []
    app = section.valid("database_pool_min", "database_pool_max")
    if app is not None and app.database_pool_min > app.database_pool_max:
        problems.append(
            Problem(
                full_key("app.databasePoolMin"),
                f"allowed: at most app.databasePoolMax ({app.database_pool_max}); received {app.database_pool_min}",
            )
        )
    used_by: dict[int, str] = {}
    for name in _HOST_PORTS:
        if section.valid(name) is None:
            continue
        port, alias = getattr(section.part, name), f"app.{to_camel(name)}"
        if port in used_by:
            problems.append(
                Problem(full_key(alias), f"allowed: a port that {used_by[port]} does not use; received {port}")
            )
        used_by.setdefault(port, alias)
    return problems
