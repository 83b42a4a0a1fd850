"""Secrets stay secret from the stack file to the server."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests import kit


@pytest.mark.parametrize("stack", ["staging", "production", "local"])
def test_no_secret_value_appears_outside_a_secret(stack: str) -> None:
    deployment = kit.run_stack(stack)
    leaks = kit.find_secret_leaks(deployment)
    assert not leaks, "\n".join(f"{leak.where}: holds test secret {leak.marker!r} in the clear" for leak in leaks.leaks)


def test_the_leak_finder_finds_a_leak() -> None:
    deployment = kit.run_stack("local")
    up = next(r for r in deployment.resources if r.name == "server-up")
    up.inputs["create"] = up.inputs["create"] + " TESTSECRET-smtp-pass-bcdd"
    assert [leak.where for leak in kit.find_secret_leaks(deployment).leaks] == [up.urn]


@pytest.mark.parametrize("stack", ["staging", "production", "local"])
def test_no_command_line_carries_a_secret(stack: str) -> None:
    for resource in kit.run_stack(stack).of_type("command:remote:Command"):
        assert not resource.is_secret("create"), f"{resource.urn}: its command line depends on a secret"


PULUMI_CIPHERTEXT = re.compile(r"secure:\s*v1:")
KEY_MATERIAL = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----\s*\n[A-Za-z0-9+/=\n]{64,}")


def test_no_committed_file_holds_a_secret() -> None:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=kit.PROJECT_DIR, capture_output=True, check=True)
    offenders = []
    for path in filter(None, listed.stdout.decode().split("\0")):
        file = kit.PROJECT_DIR / path
        if not file.is_file():
            continue
        text = file.read_text(errors="replace")
        if PULUMI_CIPHERTEXT.search(text) or KEY_MATERIAL.search(text):
            offenders.append(path)
    assert offenders == [], f"secrets committed in {offenders}"
