"""Least privilege: every job states its permissions, and holds a scope only where its own steps use it."""

from __future__ import annotations

import re

from tests.workflows.model import SCRIPT_DIR, WORKFLOWS, Job, jobs, triggers

# Scope -> how a job shows it needs that scope.
NEEDS = {
    ("contents", "write"): "never: pushes use the release App's token",
    ("issues", "write"): "opens or comments on an issue (upsert-issue)",
    ("pull-requests", "write"): "posts the preview comment (the preview action)",
    ("pull-requests", "read"): "finds develop's newest merged pull request (the reviewed-develop guard)",
    ("actions", "write"): "dispatches a workflow (gh workflow run) or cancels runs (cancel-waiting-runs)",
    ("actions", "read"): "checks its environment's protection (the setup action)",
    ("id-token", "write"): "assumes the state backend's AWS role through OIDC (the setup action)",
    ("attestations", "write"): "attests the provenance of the images it built (actions/attest)",
    ("attestations", "read"): "verifies the provenance of a version's images (verify-provenance)",
}


def called_scripts_text(j: Job) -> str:
    """The scripts the job's steps call, and the scripts those call beside them (`$(dirname "$0")/NAME`)."""
    pending = [name for step in j.steps() for name in step.scripts()]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name not in seen and (SCRIPT_DIR / name).is_file():
            seen.add(name)
            pending += re.findall(r'\$\(dirname "\$0"\)/([\w.-]+)"', (SCRIPT_DIR / name).read_text())
    return "\n".join((SCRIPT_DIR / name).read_text() for name in sorted(seen))


def evidence(j: Job) -> dict[tuple[str, str], bool]:
    return {
        ("contents", "write"): False,
        ("issues", "write"): "upsert-issue" in j.run_text() or "gh issue" in j.run_text(),
        ("pull-requests", "write"): bool(j.uses_action("preview")),
        ("pull-requests", "read"): bool(j.uses_action("reviewed-develop")),
        ("actions", "write"): re.search(r"(?m)^\s*gh workflow run ", j.run_text()) is not None
        or "cancel-waiting-runs" in j.run_text(),
        ("actions", "read"): bool(j.uses_action("setup")),
        ("id-token", "write"): bool(j.uses_action("setup")),
        ("attestations", "write"): any(step.uses.startswith("actions/attest@") for step in j.steps()),
        ("attestations", "read"): "gh attestation verify" in called_scripts_text(j),
    }


def test_top_level_permissions_are_empty() -> None:
    for name, workflow in WORKFLOWS.items():
        assert workflow.get("permissions") == {}, f"{name}: each job states its own permissions"


def test_every_job_holds_exactly_the_scopes_its_steps_use() -> None:
    offenders = []
    for j in jobs():
        permissions = j.raw.get("permissions")
        if not isinstance(permissions, dict):
            offenders.append(f"{j.label}: permissions must be an explicit mapping, not {permissions!r}")
            continue
        held = {(scope, level) for scope, level in permissions.items() if level != "none"}
        held.discard(("contents", "read"))
        for scope, needed in evidence(j).items():
            if needed and scope not in held:
                offenders.append(f"{j.label}: {NEEDS[scope]} without {scope[0]}: {scope[1]}")
            if scope in held and not needed:
                offenders.append(f"{j.label}: {scope[0]}: {scope[1]} but it never {NEEDS[scope]}")
        unknown = held - set(NEEDS)
        if unknown:
            offenders.append(f"{j.label}: {sorted(unknown)} is never needed here")
    assert not offenders, "\n".join(offenders)


def test_only_dispatched_jobs_change_a_branch() -> None:
    """Only a human's Run workflow commits a version: no push, schedule or PR run changes a branch."""
    pushing = 0
    for j in jobs():
        if "commit-version-change" not in j.run_text():
            continue
        pushing += 1
        dispatch_only = set(triggers(j.workflow)) == {"workflow_dispatch"}
        assert dispatch_only or "github.event_name == 'workflow_dispatch'" in j.condition, j.label
    assert pushing == 3
