"""Fixtures that run the workflows' own shell the way a runner does: scripts and steps in a checkout whose
`origin` is a local bare repository, with the real Pulumi CLI on a file backend where they call pulumi."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.pulumi_cli import offline_env
from tests.workflows.model import ROOT, SCRIPT_DIR, STAGES, Step


@dataclass
class Result:
    code: int
    outputs: dict[str, str]
    log: str
    summary: str


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@dataclass
class Runner:
    """A runner's environment in `work`: GITHUB_* variables, step outputs, a PATH with stand-ins first."""

    work: Path
    bin_dir: Path
    pulumi_dir: Path | None = None
    base_env: dict[str, str] = field(default_factory=dict)

    def env(self, extra: Mapping[str, str]) -> dict[str, str]:
        temp = self.work.parent
        path = [str(self.bin_dir), *([str(self.pulumi_dir)] if self.pulumi_dir else []), "/usr/bin", "/bin"]
        return {
            "PATH": ":".join(path),
            "HOME": str(temp),
            "RUNNER_TEMP": str(temp),
            "GITHUB_OUTPUT": str(temp / "output"),
            "GITHUB_STEP_SUMMARY": str(temp / "summary.md"),
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_REPOSITORY": "kametrix-org/kametrix-deploy",
            "GITHUB_RUN_ID": "4242",
            "GITHUB_ACTOR": "release-lead",
            "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
            "GIT_CONFIG_NOSYSTEM": "1",
            **self.base_env,
            **extra,
        }

    def _run(self, argv: list[str], extra: Mapping[str, str]) -> Result:
        temp = self.work.parent
        (temp / "output").write_text("")
        (temp / "summary.md").write_text("")
        done = subprocess.run(argv, cwd=self.work, env=self.env(extra), capture_output=True, text=True, check=False)
        outputs = dict(line.split("=", 1) for line in (temp / "output").read_text().splitlines() if "=" in line)
        return Result(done.returncode, outputs, done.stdout + done.stderr, (temp / "summary.md").read_text())

    def script(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Result:
        """A script of .github/scripts, called as the workflows call it."""
        return self._run(["bash", str(SCRIPT_DIR / name), *args], env or {})

    def step(self, step: Step, env: Mapping[str, str] | None = None) -> Result:
        """A `run:` step as GitHub runs it (`bash --noprofile --norc -eo pipefail`), with its scripts here."""
        (self.work / ".github").mkdir(exist_ok=True)
        if not (self.work / ".github" / "scripts").exists():
            (self.work / ".github" / "scripts").symlink_to(SCRIPT_DIR)
        return self._run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step.run], env or {})

    def pulumi(self, *args: str, stdin: str | None = None) -> str:
        assert self.pulumi_dir is not None
        done = subprocess.run(
            [str(self.pulumi_dir / "pulumi"), *args],
            cwd=self.work,
            env=self.env({}),
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    def deployed(self, stage: str, outputs: Mapping[str, str], resources: Sequence[Mapping[str, object]] = ()) -> None:
        """Give the stack a state whose outputs are `outputs` (and these `resources`), as after an update."""
        state = {
            "version": 3,
            "deployment": {
                "manifest": {"time": "2026-11-29T00:00:00Z", "magic": "", "version": ""},
                "resources": [
                    {
                        "urn": f"urn:pulumi:{stage}::kametrix-deploy::pulumi:pulumi:Stack::kametrix-deploy-{stage}",
                        "custom": False,
                        "type": "pulumi:pulumi:Stack",
                        "outputs": dict(outputs),
                    },
                    *resources,
                ],
            },
        }
        path = self.work.parent / f"state-{stage}.json"
        path.write_text(json.dumps(state))
        self.pulumi("stack", "import", "--stack", stage, "--file", str(path))


def install(bin_dir: Path, name: str, text: str) -> None:
    """A stand-in command, first on the runner's PATH."""
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)


@pytest.fixture
def with_jq(bin_dir: Path) -> Path:
    """The runner's real jq beside the stand-ins (GitHub's runners have it)."""
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed (the GitHub runners have it)")
    (bin_dir / "jq").symlink_to(jq)
    return bin_dir


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    (path / "sleep").write_text("#!/bin/sh\nexit 0\n")
    (path / "sleep").chmod(0o755)
    return path


def make_origin(root: Path) -> Path:
    """This repository's remote: a bare repository with `main` and `develop`, both holding the real stack files."""
    origin = root / "origin.git"
    git(root, "init", "--quiet", "--bare", "--initial-branch=main", str(origin))
    seed = root / "seed"
    git(root, "clone", "--quiet", str(origin), str(seed))
    for name in ("Pulumi.yaml", *(f"Pulumi.{stage}.yaml" for stage in STAGES)):
        shutil.copy(ROOT / name, seed / name)
    git(seed, "add", ".")
    git(seed, "commit", "--quiet", "-m", "initial")
    git(seed, "push", "--quiet", "origin", "HEAD:refs/heads/main", "HEAD:refs/heads/develop")
    shutil.rmtree(seed)
    return origin


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_origin(tmp_path)


def checkout(tmp_path: Path, origin: Path, branch: str) -> Path:
    work = tmp_path / "work"
    git(tmp_path, "clone", "--quiet", "--branch", branch, str(origin), str(work))
    return work


@pytest.fixture
def runner(tmp_path: Path, bin_dir: Path) -> Runner:
    """A runner with an empty workspace and no Pulumi CLI."""
    work = tmp_path / "work"
    work.mkdir()
    return Runner(work, bin_dir)


@pytest.fixture(scope="session")
def initialised_stacks(tmp_path_factory: pytest.TempPathFactory, pulumi_cli: Path) -> Path:
    """Once per session: a remote, a checkout of main and a file backend where the real CLI initialised both
    stacks (a few seconds); each test works on its own copy."""
    root = tmp_path_factory.mktemp("stacks")
    make_origin(root)
    work = checkout(root, root / "origin.git", "main")
    (root / "state").mkdir()
    runner = Runner(work, root, pulumi_cli.parent, offline_env(root))
    for stage in STAGES:
        runner.pulumi("stack", "init", stage, "--secrets-provider", "passphrase")
    # `stack init` adds the encryption salt: commit it, so a version change is the only diff left.
    git(work, "commit", "--quiet", "-am", "stacks initialised")
    git(work, "push", "--quiet", "origin", "HEAD:refs/heads/main", "HEAD:refs/heads/develop")
    return root


@pytest.fixture
def stack_runner(tmp_path: Path, bin_dir: Path, initialised_stacks: Path, pulumi_cli: Path) -> Runner:
    """A checkout of main whose stacks the real Pulumi CLI initialised on a file backend (this test's copy)."""
    for name in ("origin.git", "work", "state", "pulumi-home"):
        shutil.copytree(initialised_stacks / name, tmp_path / name, symlinks=True)
    git(tmp_path / "work", "remote", "set-url", "origin", str(tmp_path / "origin.git"))
    return Runner(tmp_path / "work", bin_dir, pulumi_cli.parent, offline_env(tmp_path))


@dataclass
class AppRepository:
    """The app's repository: a bare origin whose develop holds reviewed commits, and one commit that is only on a
    feature branch and a pull request's head (refs/pull/7/head)."""

    origin: Path
    on_develop: list[str]
    unreviewed: str

    def clone(self, into: Path, *refs: str) -> Path:
        """A checkout of develop with its branches, and `refs` fetched beside them."""
        git(into.parent, "clone", "--quiet", "--branch", "develop", str(self.origin), str(into))
        for ref in refs:
            git(into, "fetch", "--quiet", "origin", ref)
        return into


@pytest.fixture
def app_repository(tmp_path: Path) -> AppRepository:
    origin = tmp_path / "app.git"
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch=develop", str(origin))
    seed = tmp_path / "app-seed"
    git(tmp_path, "clone", "--quiet", str(origin), str(seed))
    on_develop = []
    for index in range(2):
        (seed / "app.txt").write_text(f"reviewed {index}\n")
        git(seed, "add", "app.txt")
        git(seed, "commit", "--quiet", "-m", f"reviewed on develop {index}")
        on_develop.append(git(seed, "rev-parse", "HEAD"))
    git(seed, "push", "--quiet", "origin", "HEAD:refs/heads/develop")
    git(seed, "checkout", "--quiet", "-b", "feature")
    (seed / "app.txt").write_text("unreviewed\n")
    git(seed, "commit", "--quiet", "-am", "only on a feature branch, a pull request's head")
    unreviewed = git(seed, "rev-parse", "HEAD")
    git(seed, "push", "--quiet", "origin", "HEAD:refs/heads/feature", "HEAD:refs/pull/7/head")
    return AppRepository(origin, on_develop, unreviewed)
