"""What `pulumi up -s local` would do with the program's server steps, done over real SSH.

The program runs under mocks for the `local` stack (tests/kit.py) with the local target's facts and
the registry's real digests. The engine part is what the command provider does with the declared
`remote.Command`s: in dependency order, run a step's `create` when the step is new or its inputs
changed since the last successful run, with its `stdin` and no environment; a failed step stops
the update and leaves its recorded state as it was, so the next update runs it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from components.recorded_versions import record_digests, version_digests
from embedded_default.target import LocalTarget, registry_digest
from tests import kit

COMMAND = "command:remote:Command"


@dataclass(frozen=True)
class Step:
    name: str
    create: str
    stdin: str | None
    state: Any
    """What the engine compares between updates: every input of the step."""


@dataclass
class StepRun:
    name: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float


@dataclass
class UpdateResult:
    runs: list[StepRun] = field(default_factory=list)
    error: BaseException | None = None
    """The program's own failure (bad config, a version missing from the registry)."""

    @property
    def ok(self) -> bool:
        return self.error is None and all(run.returncode == 0 for run in self.runs)

    @property
    def failed(self) -> StepRun | None:
        return next((run for run in self.runs if run.returncode != 0), None)

    def ran(self) -> list[str]:
        return [run.name for run in self.runs]


def registry_tags(repository: str, versions: list[str]) -> dict[str, str]:
    """`repository:tag` -> digest, as the real registry answers right now (nothing while it is down)."""
    tags: dict[str, str] = {}
    for version in versions:
        for tag in (version, f"{version}-migrate"):
            reference = f"{repository}:{tag}"
            digest = registry_digest(reference)
            if digest is not None:
                tags[reference] = digest
    return tags


def server_steps(deployment: kit.Deployment) -> list[Step]:
    commands = deployment.of_type(COMMAND)
    ordered: list[kit.Resource] = []
    while len(ordered) < len(commands):
        ready = [
            c
            for c in commands
            if c not in ordered and all(not deployment.depends_on(c, other) or other in ordered for other in commands)
        ]
        assert ready, "the server steps depend on each other in a cycle"
        ordered.extend(ready)
    return [
        Step(
            name=c.name,
            create=c.plain("create"),
            stdin=c.plain("stdin"),
            state=kit.unwrap({k: v for k, v in c.inputs.items() if k not in ("stdout", "stderr")}),
        )
        for c in ordered
    ]


@dataclass
class LocalStack:
    """The `local` stack's checkpoint: the inputs each step last succeeded with."""

    target: LocalTarget
    overrides: Mapping[str, Any]
    known_versions: list[str]
    recorded: dict[str, Any] = field(default_factory=dict)

    secrets: dict[str, Any] = field(default_factory=dict)
    digests: dict[str, Any] = field(default_factory=dict)
    """The stack file's `image.digests`: versions recorded so far."""

    @property
    def repository(self) -> str:
        """Where the stage's images live: `registry/repository`."""
        return f"{self.target.registry}/{self.overrides.get('image.repository', 'kametrix/kametrix')}"

    def declare(self, version: str) -> kit.Deployment:
        recorded = {"image.digests": self.digests} if self.digests else {}
        return kit.run_stack(
            "local",
            overrides={**self.overrides, **recorded, "version": version},
            secrets={**self.secrets, "sshPrivateKey": self.target.ssh_private_key},
            registry_tags=registry_tags(self.repository, [*self.known_versions, version]),
        )

    def record(self, version: str) -> None:
        """Record `version`'s digests as the registry names them now, as the workflows do once it is released."""
        tags = registry_tags(self.repository, [version])
        app, migrate = (tags[f"{self.repository}:{tag}"] for tag in (version, f"{version}-migrate"))
        record_digests(self.digests, version, version_digests(version, app, migrate))

    def plan(self, version: str) -> list[Step] | BaseException:
        """The steps the program declares for `version`, or why it failed before declaring them."""
        try:
            return server_steps(self.declare(version))
        except Exception as error:
            return error

    def up(self, version: str, drop: tuple[str, Callable[[], bool]] | None = None) -> UpdateResult:
        """`pulumi up` with `version` pinned. `drop=(step, condition)` kills that step's SSH connection
        as soon as the condition holds while it runs."""
        return self.apply(self.plan(version), drop)

    def apply(
        self, plan: list[Step] | BaseException, drop: tuple[str, Callable[[], bool]] | None = None
    ) -> UpdateResult:
        """Run a plan's changed steps in order, stopping at the first that fails."""
        result = UpdateResult()
        if isinstance(plan, BaseException):
            result.error = plan
            return result
        for step in plan:
            if self.recorded.get(step.name) == step.state:
                continue
            drop_when = drop[1] if drop and drop[0] == step.name else None
            started = time.monotonic()
            done = self.target.ssh(step.create, stdin=(step.stdin or "").encode(), timeout=900, drop_when=drop_when)
            run = StepRun(step.name, done.returncode, done.stdout.decode(), done.stderr.decode(), 0.0)
            run.seconds = time.monotonic() - started
            result.runs.append(run)
            if run.returncode != 0:
                return result
            self.recorded[step.name] = step.state
        return result
