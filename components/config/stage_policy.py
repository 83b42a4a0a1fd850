"""What each stage demands beyond the shape of its keys: production's approval, branch and release rules,
the read-only environments every GitHub stage declares, and consistency between keys.

Each section is validated on its own here, so a mistake in one section does not hide a policy breach in
another: one run reports both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from components.config.models import MAX_REVIEWERS_PER_KIND, AppSettings, GitHubSettings, ImageSettings
from components.config.problems import Problem, full_key

STAGES = ("staging", "production", "local")
# Sections a stage cannot do without, and why.
REQUIRED_SECTIONS: Mapping[str, tuple[tuple[str, ...], str]] = {
    "github": (("staging", "production"), "its GitHub environment is declared here"),
}
# The only branch production deploys from: .github/workflows/deploy-production.yml runs on a push to it, checks
# it out and refuses a run from any other. Its environment must admit exactly that branch: one more (develop, a
# wildcard) would let a deployment the workflow refuses pass GitHub's gate. The workflow's trigger is read
# before any stack is, so the stack cannot move it; tests/workflows/test_deployment_branches.py keeps the two equal.
PRODUCTION_BRANCH = "main"
# Variables every stage's environment gets from the stack, so workflows know where they deploy.
STACK_VARIABLES = ("APP_URL", "PULUMI_STACK")
# The host ports of the stage, each needing a port of its own.
_HOST_PORTS = ("proxy_port", "blue_port", "green_port", "postgres_port")

_SectionModel = TypeVar("_SectionModel", bound=BaseModel)


@dataclass(frozen=True)
class Sections:
    """Each section of the plain keys validated on its own: None where it is absent or invalid."""

    declared: frozenset[str]
    version: str | None
    commit: str | None
    commit_time: str | None
    github: GitHubSettings | None
    image: ImageSettings | None
    app: AppSettings | None

    @staticmethod
    def of(values: Mapping[str, Any]) -> Sections:
        def section(model: type[_SectionModel], alias: str) -> _SectionModel | None:
            try:
                return model.model_validate(values[alias]) if alias in values else None
            except ValidationError:
                return None

        def text(alias: str) -> str | None:
            value = values.get(alias)
            return value if isinstance(value, str) else None

        return Sections(
            declared=frozenset(values),
            version=text("version"),
            commit=text("commit"),
            commit_time=text("commitTime"),
            github=section(GitHubSettings, "github"),
            image=section(ImageSettings, "image"),
            app=section(AppSettings, "app"),
        )


def stage_policy(stack: str, sections: Sections) -> list[Problem]:
    problems = [
        Problem(full_key(name), f"required for the {stack} stack: {why}")
        for name, (stages, why) in REQUIRED_SECTIONS.items()
        if stack in stages and name not in sections.declared
    ]
    github = sections.github
    if stack in ("staging", "production") and github is not None:
        problems.extend(_read_only_environment_policy(github))
    if stack == "production":
        problems.extend(_production_policy(sections))
    problems.extend(_build_policy(sections))
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
    return problems


def _production_policy(sections: Sections) -> list[Problem]:
    """Production deploys only approved, already-built, recorded versions from its one branch."""
    problems = []
    github = sections.github
    if github is not None:
        if github.reviewers.count == 0:
            problems.append(
                Problem(
                    full_key("github.reviewers"),
                    f"production needs at least one required reviewer; allowed: 1–{MAX_REVIEWERS_PER_KIND} users "
                    f"and/or 1–{MAX_REVIEWERS_PER_KIND} teams; received none",
                )
            )
        if github.can_admins_bypass:
            problems.append(
                Problem(
                    full_key("github.canAdminsBypass"),
                    "allowed in production: false (nobody skips the approval); received true",
                )
            )
        if github.deployment_branches != [PRODUCTION_BRANCH]:
            problems.append(
                Problem(
                    full_key("github.deploymentBranches"),
                    f"allowed in production: exactly [{PRODUCTION_BRANCH}] (the production workflow, "
                    f".github/workflows/deploy-production.yml, deploys only from {PRODUCTION_BRANCH}; any other "
                    f"branch or pattern would pass GitHub's gate for a run the workflow refuses); "
                    f"received [{', '.join(github.deployment_branches)}]",
                )
            )
        if sections.version is not None and sections.version not in github.releases:
            problems.append(
                Problem(
                    full_key("github.releases"),
                    f"production releases only versions recorded here with their commit; allowed: "
                    f"{', '.join(github.releases) or 'none recorded yet'}; received version {sections.version!r}. "
                    f"Add `{sections.version}: <commit sha>` under github.releases",
                )
            )
    if sections.image is not None and sections.image.build is not None:
        problems.append(
            Problem(
                full_key("image.build"),
                "production never rebuilds: it deploys a version that already exists; "
                "allowed: absent; received a build",
            )
        )
    return problems


def _build_policy(sections: Sections) -> list[Problem]:
    if sections.image is None or sections.image.build is None or (sections.commit and sections.commit_time):
        return []
    return [
        Problem(
            full_key("commit"),
            "a building stage needs the commit it builds and its time (keys commit and commitTime); "
            f"received commit={sections.commit!r}, commitTime={sections.commit_time!r}",
        )
    ]


def _read_only_environment_policy(github: GitHubSettings) -> list[Problem]:
    """The workflows preview every stage in `<environment>-preview` and check its drift in `<environment>-drift`:
    both must be declared (GitHub would create a missing one without protection), and since a preview of a pull
    request runs the PR's program with the stage's passphrase, someone approves it first."""
    problems = []
    if github.preview is None or github.preview.reviewers.count == 0:
        problems.append(
            Problem(
                full_key("github.preview.reviewers"),
                f"{github.environment}-preview runs pull requests' code with the stage's passphrase; allowed: "
                f"1–{MAX_REVIEWERS_PER_KIND} users and/or 1–{MAX_REVIEWERS_PER_KIND} teams who approve each "
                "preview; received none",
            )
        )
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


def _app_policy(app: AppSettings) -> list[Problem]:
    """The pool's bounds in order; the proxy, both colours and PostgreSQL each on a port of their own."""
    problems = []
    if app.database_pool_min > app.database_pool_max:
        problems.append(
            Problem(
                full_key("app.databasePoolMin"),
                f"allowed: at most app.databasePoolMax ({app.database_pool_max}); received {app.database_pool_min}",
            )
        )
    used_by: dict[int, str] = {}
    for name in _HOST_PORTS:
        port, alias = getattr(app, name), f"app.{to_camel(name)}"
        if port in used_by:
            problems.append(
                Problem(full_key(alias), f"allowed: a port that {used_by[port]} does not use; received {port}")
            )
        used_by.setdefault(port, alias)
    return problems
