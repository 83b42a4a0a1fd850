"""The runner's own rules: it runs the same program `pulumi up` runs, changes a stack file the way an operator
would, and frees a state lock only when its holder is gone. Its updates through the real engine: tests/e2e/."""

from __future__ import annotations

import ast
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pulumi
import pytest
from pulumi import automation as auto

from components import program
from components.recorded_versions import RecordError
from embedded_default import workspace as local_workspace
from runner import commands, engine, stack_file
from runner import workspace as runner_workspace
from runner.__main__ import parser
from tests.kit import PROJECT_DIR

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def test_main_py_and_the_runner_run_the_same_program_function(
    pulumi_cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = ast.parse((PROJECT_DIR / "__main__.py").read_text())
    statements = [
        node for node in main.body if not isinstance(node, ast.Expr) or not isinstance(node.value, ast.Constant)
    ]
    assert [ast.unparse(node) for node in statements] == ["from components.program import program", "program()"]

    for name in ("Pulumi.yaml", "Pulumi.local.yaml"):
        (tmp_path / name).write_text((PROJECT_DIR / name).read_text())
    env = {"PULUMI_BACKEND_URL": f"file://{tmp_path}", "PULUMI_CONFIG_PASSPHRASE": "x", **local_workspace.OFFLINE}
    stack = runner_workspace.Workspace("local", tmp_path, pulumi_cli, env).stack()
    assert isinstance(stack.workspace, auto.LocalWorkspace)
    assert stack.workspace.program is engine.run_program
    assert program.__name__ == engine.PROGRAM_MODULE
    ran = []
    monkeypatch.setattr(program, "program", lambda: ran.append(True))
    engine.run_program()
    assert ran == [True]


def stack_file_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "Pulumi.production.yaml"
    copy.write_text((PROJECT_DIR / "Pulumi.production.yaml").read_text())
    return copy


def test_pinning_a_version_changes_one_line_and_keeps_the_comments(tmp_path: Path) -> None:
    path = stack_file_copy(tmp_path)
    before = path.read_text().splitlines()
    assert stack_file.pin(path, "v1.4.1", None)
    after = path.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert changed == [("  kametrix-deploy:version: v1.4.2", "  kametrix-deploy:version: v1.4.1")]
    assert not stack_file.pin(path, "v1.4.1", None), "pinning the pinned version changed the file"
    with pytest.raises(RecordError, match="allowed an exact version"):
        stack_file.pin(path, "latest", None)


def test_a_recorded_version_never_changes_its_bytes(tmp_path: Path) -> None:
    path = stack_file_copy(tmp_path)
    assert stack_file.record(path, "v9.0.0", DIGEST, OTHER)
    assert not stack_file.record(path, "v9.0.0", DIGEST, OTHER)
    assert "v9.0.0" in stack_file.recorded_versions(path)
    with pytest.raises(RecordError, match="never changes its bytes"):
        stack_file.record(path, "v9.0.0", OTHER, OTHER)


def dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_a_state_lock_is_freed_only_when_its_holder_died_on_this_machine() -> None:
    here = socket.gethostname()
    assert commands.StateLockHolder("root", here, dead_pid(), "2026-12-02T10:00:00Z").is_dead_here()
    assert not commands.StateLockHolder("root", here, os.getpid(), "2026-12-02T10:00:00Z").is_dead_here()
    assert not commands.StateLockHolder("root", "another-runner", dead_pid(), "2026-12-02T10:00:00Z").is_dead_here()


def test_the_engines_lock_error_names_each_holder() -> None:
    words = (
        "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or delete "
        "the lock file with `pulumi cancel`.\n  s3://state/.pulumi/locks/organization/kametrix-deploy/production/"
        "x.json: created by runner@ci-42 (pid 4711) at 2026-12-02T10:00:00Z"
    )
    error = auto.errors.CommandError(auto._cmd.CommandResult("", words, 255))
    assert commands._state_lock_holders(error) == [
        commands.StateLockHolder("runner", "ci-42", 4711, "2026-12-02T10:00:00Z")
    ]
    other = auto.errors.CommandError(auto._cmd.CommandResult("", "error: something else", 255))
    assert commands._state_lock_holders(other) is None


def test_a_real_stage_never_runs_with_the_stand_ins_plugin_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULUMI_HOME", str(local_workspace.PLUGIN_HOME))
    monkeypatch.setenv(runner_workspace.CLI_VARIABLE, "/nonexistent/pulumi")
    with pytest.raises(runner_workspace.RunnerError, match="runs only with Pulumi's real provider plugins"):
        runner_workspace.open_workspace("production")
    with pytest.raises(runner_workspace.RunnerError, match="allowed staging, production, local; received 'prod'"):
        runner_workspace.open_workspace("prod")


def test_the_cli_is_asked_its_version_only_when_install_engine_recorded_none(tmp_path: Path) -> None:
    """`pulumi version` costs a quarter second of every runner command; the version install-engine checked is kept."""
    asked = tmp_path / "asked"
    cli = tmp_path / "engine" / "bin" / "pulumi"
    cli.parent.mkdir(parents=True)
    cli.write_text(f'#!/bin/sh\necho "$*" >>{asked}\necho v3.274.1\n')
    cli.chmod(0o755)
    assert str(runner_workspace.Workspace("local", tmp_path, cli).pulumi_command.version) == "3.274.1"
    assert asked.read_text() == "version\n"
    (tmp_path / "engine" / "VERSION").write_text("3.274.1\n")
    asked.unlink()
    recorded = runner_workspace.Workspace("local", tmp_path, cli).pulumi_command
    assert (recorded.command, str(recorded.version)) == (str(cli), "3.274.1") and not asked.exists()


def local_stack_with_recording_cli(tmp_path: Path, pulumi_cli: Path) -> tuple[Path, Path]:
    """The project's local stack files in `tmp_path`, and a CLI that runs the real one after noting its arguments
    (a line each) in the file it returns beside it."""
    for name in ("Pulumi.yaml", "Pulumi.local.yaml"):
        (tmp_path / name).write_text((PROJECT_DIR / name).read_text())
    asked = tmp_path / "asked"
    cli = tmp_path / "engine" / "bin" / "pulumi"
    cli.parent.mkdir(parents=True)
    cli.write_text(f'#!/bin/sh\necho "$*" >>{asked}\nexec {pulumi_cli} "$@"\n')
    cli.chmod(0o755)
    return cli, asked


def test_a_stack_whose_checkpoint_is_a_file_here_is_used_without_selecting_it(pulumi_cli: Path, tmp_path: Path) -> None:
    """Every command the Automation API runs names its stack: `pulumi stack select` would only check that the stack
    exists, a CLI run of its own (a quarter second of each release) where its checkpoint file shows it."""
    cli, asked = local_stack_with_recording_cli(tmp_path, pulumi_cli)
    (tmp_path / "state").mkdir()
    backend = local_workspace.file_backend_url(tmp_path / "state")
    env = {"PULUMI_BACKEND_URL": backend, "PULUMI_CONFIG_PASSPHRASE": "x", **local_workspace.OFFLINE}
    checkpoint = runner_workspace.file_checkpoint(backend, "local")
    assert checkpoint == tmp_path / "state" / ".pulumi" / "stacks" / "kametrix-deploy" / "local.json"

    runner_workspace.Workspace("local", tmp_path, cli, env).stack()
    assert "stack select" in asked.read_text() and checkpoint.is_file()
    asked.unlink()
    workspace = runner_workspace.Workspace("local", tmp_path, cli, env)
    workspace.stack()
    assert "manifest" in workspace.state()
    assert "stack select" not in asked.read_text()
    assert runner_workspace.file_checkpoint("s3://bucket/state", "production") is None


def test_an_updates_first_reads_begin_before_the_runner_imports_the_pulumi_sdk(
    pulumi_cli: Path, tmp_path: Path
) -> None:
    """What the runner imports before an update's first reads holds no Pulumi SDK (a third of its start-up), so the
    CLI reads the stack's state and config meanwhile; each read begun so serves its first caller, a later one reads
    again, and a local stack not created yet is read only once its first update created it."""
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, runner.__main__; print(sorted(m for m in sys.modules if 'pulumi' in m))"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip() == "[]"

    cli, asked = local_stack_with_recording_cli(tmp_path, pulumi_cli)
    (tmp_path / "engine" / "VERSION").write_text("3.274.1\n")
    (tmp_path / "state").mkdir()
    env = {
        "PULUMI_BACKEND_URL": local_workspace.file_backend_url(tmp_path / "state"),
        "PULUMI_CONFIG_PASSPHRASE": "x",
        **local_workspace.OFFLINE,
    }
    first = runner_workspace.Workspace("local", tmp_path, cli, env)
    first.begin_reads()
    assert not asked.exists()
    first.stack()
    assert "stack select" in asked.read_text()

    asked.unlink()
    workspace = runner_workspace.Workspace("local", tmp_path, cli, env)
    workspace.begin_reads()
    deadline = time.monotonic() + 30
    while (not asked.exists() or len(asked.read_text().splitlines()) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    begun = sorted(asked.read_text().splitlines())
    assert begun == [
        "--non-interactive config --show-secrets --json --stack local",
        "--non-interactive stack export --stack local",
    ]
    assert "manifest" in workspace.state()
    assert workspace.config()["kametrix-deploy:version"] == ("v1.0.0", False)
    assert sorted(asked.read_text().splitlines()) == begun
    workspace.state()
    assert asked.read_text().splitlines()[-1] == "--non-interactive stack export --stack local"


def test_an_updates_outputs_and_its_summary_are_read_side_by_side(pulumi_cli: Path, tmp_path: Path) -> None:
    """`Stack.up` reads both once the update is over, each a CLI run: they overlap, and the result is the same."""
    (tmp_path / "Pulumi.yaml").write_text((PROJECT_DIR / "Pulumi.yaml").read_text())
    (tmp_path / "state").mkdir()
    runs = tmp_path / "runs"
    cli = tmp_path / "engine" / "bin" / "pulumi"
    cli.parent.mkdir(parents=True)
    cli.write_text(
        f'#!/bin/sh\necho "start $(date +%s.%N) $*" >>{runs}\n'
        # A slow read of the outputs: the summary's read starts within it only if the two run side by side.
        'case "$*" in *"stack output"*) sleep 1 ;; esac\n'
        f'{pulumi_cli} "$@"\nstatus=$?\n'
        f'echo "end $(date +%s.%N) $*" >>{runs}\nexit $status\n'
    )
    cli.chmod(0o755)
    (tmp_path / "engine" / "VERSION").write_text("3.274.1\n")
    env = {
        "PULUMI_BACKEND_URL": local_workspace.file_backend_url(tmp_path / "state"),
        "PULUMI_CONFIG_PASSPHRASE": "x",
        **local_workspace.OFFLINE,
    }
    workspace = runner_workspace.Workspace("local", tmp_path, cli, env)
    stack = workspace.stack()
    stack.workspace.program = lambda: pulumi.export("answer", 42)
    result = stack.up(show_secrets=False)
    assert result.outputs["answer"].value == 42
    assert result.summary.kind == "update" and result.summary.result == "succeeded"
    times = {}
    for line in runs.read_text().splitlines():
        edge, moment, *words = line.split()
        if words[:2] == ["--non-interactive", "stack"] and words[2] in ("output", "history"):
            times[(words[2], edge)] = float(moment)
    overlap = (
        times[("history", "start")] < times[("output", "end")]
        and times[("output", "start")] < times[("history", "end")]
    )
    assert overlap, times


def test_help_documents_the_operators_tool() -> None:
    text = parser().format_help()
    for command in ("preview", "up", "release", "rollback", "status", "history", "unlock"):
        assert command in text
    assert "PULUMI_BACKEND_URL" in text and "real provider" in text
    done = subprocess.run(
        [sys.executable, "-m", "runner", "--help"], cwd=PROJECT_DIR, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "rollback" in done.stdout


STATE_ID = "3f1c2a9b-0d1e-4c5f-8a7b-6e5d4c3b2a19"
STACK = f"kametrix-deploy/local@{STATE_ID.replace('-', '')[:12]}"
URN = "urn:pulumi:local::kametrix-deploy::kametrix:server_release:ServerRelease$command:remote:Command::server-"


def deployment(up_release: str) -> dict[str, object]:
    """A state as `pulumi stack export` gives it: the state marker, and the steps, `up` last made `up_release` live."""
    step = "command:remote:Command"
    return {
        "resources": [
            {"urn": "urn:pulumi:local::kametrix-deploy::pulumi:providers:command::state", "id": STATE_ID,
             "type": "pulumi:providers:command"},
            {"urn": f"{URN}database", "type": step, "inputs": {"create": "bash database.sh --postgres-image x"}},
            {"urn": f"{URN}up", "type": step, "inputs": {"create": f"bash up.sh --release {up_release} --version x"}},
        ]
    }  # fmt: skip


@pytest.mark.parametrize(
    ("lock", "up_release", "again"),
    [
        # At rest, as the state says: nothing to run again.
        ({"STEP_STATE": "", "STEP_RUNS": "no", "LIVE_RELEASE": "v2.0.0@0123"}, "v2.0.0@0123", []),
        # A step killed outright by an update of this state runs again; one another state's update sent does not
        # (one that still runs: below).
        ({"STEP_STATE": "running", "STEP_RUNS": "no", "STEP": "database", "STACK": STACK}, "v2.0.0@0123", ["database"]),
        (
            {"STEP_STATE": "running", "STEP_RUNS": "no", "STEP": "database", "STACK": STACK[:-1] + "0"},
            "v2.0.0@0123",
            [],
        ),
        # A step killed on its way out, once it had handed the lock on: the engine may have recorded its failure.
        (
            {"STEP_STATE": "handed-on", "STEP_RUNS": "no", "STEP": "database", "STACK": STACK},
            "v2.0.0@0123",
            ["database"],
        ),
        (
            {"STEP_STATE": "handed-on", "STEP_RUNS": "no", "STEP": "database", "STACK": STACK[:-1] + "0"},
            "v2.0.0@0123",
            [],
        ),
        # An up that went on after its update lost it (or a break-glass switch) left another release serving.
        ({"STEP_STATE": "", "STEP_RUNS": "no", "LIVE_RELEASE": "v2.0.0@0123"}, "v1.0.0@4567", ["up"]),
        # PostgreSQL does not run: only the database step starts it, and a new version alone does not run that step.
        (
            {"STEP_STATE": "", "STEP_RUNS": "no", "LIVE_RELEASE": "v2.0.0@0123", "DATABASE_RUNS": "no"},
            "v2.0.0@0123",
            ["database"],
        ),
        ({"STEP_STATE": "", "STEP_RUNS": "no", "LIVE_RELEASE": "v2.0.0@0123", "DATABASE_RUNS": ""}, "v2.0.0@0123", []),
    ],
)
def test_the_next_update_runs_again_each_step_the_server_says_did_what_the_state_does_not_record(
    monkeypatch: pytest.MonkeyPatch, lock: dict[str, str], up_release: str, again: list[str]
) -> None:
    class Loaded:
        stage = "local"

    monkeypatch.setattr(commands.server, "read_lock", lambda *_: lock)
    monkeypatch.setattr(commands, "_server_access", lambda _: (None, None))
    monkeypatch.setattr(commands, "_stack_config", lambda _: Loaded())
    session = commands.Session(workspace=cast(runner_workspace.Workspace, None), out=io.StringIO())
    found = commands._steps_to_run_again(session, deployment(up_release), commands._read_release_lock(session))
    assert found == [f"{URN}{step}" for step in again]


@pytest.mark.parametrize(("ends", "again"), [(True, ["database"]), (False, [])])
def test_a_step_of_the_stack_left_running_by_a_lost_connection_is_waited_for_then_runs_again(
    monkeypatch: pytest.MonkeyPatch, ends: bool, again: list[str]
) -> None:
    """It may install what the state does not record (a PostgreSQL change going on while the update went back);
    one that does not end in time is left to the update's own steps, which wait for it on the server."""
    running = {
        "STEP_STATE": "running",
        "STEP_RUNS": "yes",
        "STEP": "database",
        "STACK": STACK,
        "RELEASE": "v2.0.0@0123",
    }
    after = {"STEP_RUNS": "no", "LIVE_RELEASE": "v2.0.0@0123"} if ends else running
    reads = iter([running, running, after])
    clock = iter(range(0, 10_000, 50))
    monkeypatch.setattr(commands.server, "read_lock", lambda *_: next(reads, after))
    monkeypatch.setattr(commands.time, "sleep", lambda _: None)
    monkeypatch.setattr(commands.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(commands, "_server_access", lambda _: (None, None))
    monkeypatch.setattr(commands, "_stack_config", lambda _: type("Loaded", (), {"stage": "local"}))
    said = io.StringIO()
    session = commands.Session(workspace=cast(runner_workspace.Workspace, None), out=said)
    found = commands._steps_to_run_again(session, deployment("v2.0.0@0123"), commands._read_release_lock(session))
    assert found == [f"{URN}{step}" for step in again]
    assert "step database of v2.0.0@0123 still runs on the server" in said.getvalue()
    assert ("ended: it runs again in this update" in said.getvalue()) is ends


def test_a_step_the_engine_found_unchanged_does_not_count_as_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """After an update whose `up` ran, the lock is the next release's business; after one that left `up` as it was
    (the engine reports its outputs all the same), the update gives back a lock its last step handed on."""
    asked: list[str] = []

    def end_update(*args: object) -> str:
        asked.append(str(args[-1]))
        return ""

    monkeypatch.setattr(commands.server, "end_update", end_update)
    monkeypatch.setattr(commands, "_server_access", lambda _: (None, None))
    monkeypatch.setattr(commands, "_stack_config", lambda _: type("Loaded", (), {"stage": "local"}))

    def session_after(op: auto.OpType) -> commands.Session:
        session = commands.Session(workspace=cast(runner_workspace.Workspace, None), out=io.StringIO())
        metadata = auto.StepEventMetadata(
            op=op, urn=f"{URN}up", type="command:remote:Command", provider="", old=None, new=None, diffs=None,
            detailed_diff=None, logical=None,
        )  # fmt: skip
        session.engine_event(
            auto.EngineEvent(sequence=1, timestamp=0, res_outputs_event=auto.ResOutputsEvent(metadata))
        )
        return session

    commands._end_update(session_after(auto.OpType.UPDATE), STATE_ID)
    assert asked == []
    commands._end_update(session_after(auto.OpType.SAME), STATE_ID)
    assert asked == [STACK]
