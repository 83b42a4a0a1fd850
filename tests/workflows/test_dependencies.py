"""The program's dependencies: locked with hashes, installed before any credential, kept current by Dependabot.

Every job that runs pulumi imports these packages with the stage's secrets in reach: a package that is not the
one reviewed (a new release of a transitive dependency, a file swapped on the index) must fail the install.
"""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.workflows.model import ACTIONS, ROOT, jobs

REQUIREMENTS = ROOT / "requirements.txt"
LOCK = ROOT / "requirements.lock.txt"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+?)(?:\s*;.*)?\s*(?:\\)?$")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        match = PIN.match(line.strip())
        if match:
            found[canonical(match["name"])] = match["version"]
    return found


def lock_entries(text: str) -> dict[str, list[str]]:
    """Each locked package -> its hashes (the continuation lines of its entry)."""
    entries: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            match = PIN.match(line.strip())
            assert match, f"requirements.lock.txt: {line!r} is not an exact pin (name==version)"
            current = canonical(match["name"])
            entries[current] = []
        else:
            assert current is not None, f"requirements.lock.txt: {line!r} belongs to no package"
            entries[current] += HASH.findall(line)
    return entries


def lock_problems(requirements: str, lock: str) -> list[str]:
    top_level, locked = pins(requirements), pins(lock)
    problems = [
        f"requirements.txt pins {name}=={version}, the lock {locked.get(name, 'lacks it')}"
        for name, version in sorted(top_level.items())
        if locked.get(name) != version
    ]
    problems += [f"{name} has no --hash in the lock" for name, hashes in lock_entries(lock).items() if not hashes]
    return problems


def test_requirements_txt_pins_exactly_the_top_level_packages() -> None:
    lines = [line for line in REQUIREMENTS.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert all(PIN.match(line) for line in lines), f"requirements.txt pins each package exactly: {lines}"
    assert {"pulumi", "pulumi-docker", "pulumi-command", "pulumi-github", "pydantic", "pytest"} <= set(
        pins(REQUIREMENTS.read_text())
    )


def test_the_lock_covers_requirements_txt_exactly_and_hashes_every_package() -> None:
    problems = lock_problems(REQUIREMENTS.read_text(), LOCK.read_text())
    assert not problems, "regenerate it with the command in its header:\n" + "\n".join(problems)
    assert len(lock_entries(LOCK.read_text())) > len(pins(REQUIREMENTS.read_text())), "transitive packages too"


def test_a_lock_that_drifted_from_requirements_txt_or_lost_a_hash_is_refused() -> None:
    lock = LOCK.read_text()
    bumped = REQUIREMENTS.read_text().replace("pydantic==", "pydantic==0.0.0+") + "extra-package==1.0\n"
    assert any("pydantic" in p for p in lock_problems(bumped, lock))
    assert any("extra-package" in p for p in lock_problems(bumped, lock))
    unhashed = re.sub(r"(?m)^(annotated-types==\S+) \\\n(\s+--hash=\S+ \\\n)*\s+--hash=\S+", r"\1", lock)
    assert lock_problems(REQUIREMENTS.read_text(), unhashed) == ["annotated-types has no --hash in the lock"]


def test_the_lock_is_what_pip_compile_writes_from_requirements_txt() -> None:
    """Its header names the command that regenerates it from requirements.txt (Dependabot runs it too)."""
    header = [line for line in LOCK.read_text().splitlines() if line.startswith("#")][:6]
    command = "pip-compile --allow-unsafe --generate-hashes --output-file=requirements.lock.txt --strip-extras"
    assert f"#    {command} requirements.txt" in header, header


def install_step() -> dict[str, object]:
    steps = ACTIONS["setup"]["runs"]["steps"]
    (install,) = [step for step in steps if ".venv/bin/pip install" in str(step.get("run", ""))]
    return install


def test_the_program_is_installed_from_the_lock_with_hashes_before_any_credential() -> None:
    """Install scripts of a package run as pip installs it: no secret, no OIDC token, no AWS role yet."""
    steps = ACTIONS["setup"]["runs"]["steps"]
    install = install_step()
    command = " ".join(str(install["run"]).replace("\\\n", " ").split())
    assert "--require-hashes" in command and "-r requirements.lock.txt" in command, command
    assert "requirements.txt" not in command.replace("requirements.lock.txt", ""), "the lock, not the top-level pins"
    index = steps.index(install)
    for earlier in steps[:index]:
        assert not earlier.get("env"), f"{earlier.get('name')}: a step before the install holds {earlier.get('env')}"
    credential_steps = [
        i for i, step in enumerate(steps) if step.get("env") or "configure-aws-credentials" in str(step.get("uses"))
    ]
    assert credential_steps and min(credential_steps) > index, "every credential comes after the install"
    for j in jobs():
        setup = j.uses_action("setup")
        if not setup:
            continue
        own = j.own_steps()
        before = own[: own.index(setup[0])]
        for step in before:
            secrets = [name for name, value in step.env.items() if "secrets." in value]
            assert not secrets, f"{j.label}: {step.raw.get('name')} holds {secrets} before the locked install"


def test_dependabot_updates_the_pinned_actions_and_the_python_dependencies() -> None:
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    ecosystems = {update["package-ecosystem"]: update for update in config["updates"]}
    assert set(ecosystems) == {"github-actions", "pip"}
    assert {"/", "/.github/actions/*"} <= set(ecosystems["github-actions"]["directories"]), "local actions too"
    assert ecosystems["pip"]["directory"] == "/"
    schema = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "check-jsonschema"),
            "--builtin-schema",
            "vendor.dependabot",
            str(ROOT / ".github" / "dependabot.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert schema.returncode == 0, schema.stdout + schema.stderr
