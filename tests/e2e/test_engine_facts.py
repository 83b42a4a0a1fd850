"""What the real engine does with the program, each fact on a stage of its own, through the runner."""

from __future__ import annotations

import json
import os
import pty
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components.config import APP_SECRET_KEYS, REGISTRY_KEY, SSH_KEY
from components.config.secrets import BACKUP_CIPHER_KEY, BACKUP_SECRET_KEYS
from embedded_default import workspace as local_workspace
from embedded_default.providers import plugins
from embedded_default.target import LocalTarget
from tests.e2e.stage import COMMAND, Stage, explain, staged
from tests.kit import PROJECT_DIR

# Distinctive values for the secrets of this module's stage, found by searching for them.
SECRETS = {
    "postgresPassword": "ENGINEFACT-postgres-7c1d",
    "stripeSecretKey": "ENGINEFACT-stripe-0a9e",
    "smtpPass": "ENGINEFACT-smtp-55f2",
}
MARKER = "ENGINEFACT-"
# A line of the CLI's own log: one JSON object with its time, level and verbosity.
CLI_LOG_LINE = re.compile(r'^\{"time":"\d{4}-\d\d-\d\dT[^"]+","level":"[A-Z]+",.*"v":\d+\}$', re.MULTILINE)
ALL_STEPS = ["server-files", "server-env", "server-database", "server-backup", "server-migrate", "server-up"]


@pytest.fixture(scope="module")
def stage(target: LocalTarget, prepared_stack: Path, pulumi_cli: Path) -> Iterator[Stage]:
    with staged(target, prepared_stack, pulumi_cli, app_port=13300) as created:
        for name, value in SECRETS.items():
            created.set_secret(name, value)
        yield created


def on_server(stage: Stage, command: str) -> subprocess.CompletedProcess[bytes]:
    return stage.target.ssh(command)


def app_dir_exists(stage: Stage) -> bool:
    return on_server(stage, f"test -e {shlex.quote(stage.app_dir)}").returncode == 0


def test_preview_runs_nothing_on_the_server(stage: Stage) -> None:
    result = stage.run("preview")
    assert result.ok, explain(result)
    planned = [event["op"] for event in result.events if event["event"] == "pre" and event["type"] == COMMAND]
    assert planned == ["create"] * len(ALL_STEPS), explain(result)
    assert not app_dir_exists(stage), "the preview touched the server"


def test_a_wrong_pinned_host_key_is_refused_before_any_command_runs(stage: Stage, tmp_path: Path) -> None:
    other_key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    kind, blob, *_ = other_key.with_suffix(".pub").read_text().split()
    stage.configure({"server.hostKey": f"{kind} {blob}"})
    try:
        result = stage.up("v1.0.0")
    finally:
        stage.configure({"server.hostKey": stage.target.ssh_host_key})
    assert not result.ok
    assert result.failed is not None and result.failed.name == "server-files", explain(result)
    assert "host key mismatch" in result.failed.error.lower(), explain(result)
    assert not app_dir_exists(stage), "a command ran on a server whose host key is not the pinned one"


def test_the_first_release_creates_every_step_and_an_unchanged_stack_is_a_no_op(stage: Stage) -> None:
    first = stage.up("v1.0.0")
    assert first.ok, explain(first)
    assert first.ran() == ALL_STEPS
    again = stage.up()
    assert again.ok, explain(again)
    assert again.ran() == [], "an unchanged stack ran a step"
    summary = next(event for event in again.events if event["event"] == "summary")
    assert set(summary["changes"]) == {"same"}, summary


def test_a_changed_setting_reruns_only_what_depends_on_it(stage: Stage) -> None:
    stage.configure({"release.backupsToKeep": 4})
    result = stage.up()
    assert result.ok, explain(result)
    assert result.ran() == ["server-backup"]


def test_a_failed_step_is_run_again_by_the_next_update_and_nothing_else(stage: Stage) -> None:
    failed = stage.up("v4.0.0")
    assert failed.failed is not None and failed.failed.name == "server-migrate", explain(failed)
    assert failed.ran() == ["server-backup", "server-migrate"], explain(failed)
    again = stage.up()
    assert again.failed is not None and again.failed.name == "server-migrate", explain(again)
    assert again.ran() == ["server-migrate"], "a step that succeeded ran again"
    back = stage.up("v1.0.0")
    assert back.ok, explain(back)


def secret_values(stage: Stage) -> dict[str, str]:
    """Every secret of the stack, decrypted here only to look for it elsewhere: each value, and each line of the
    deploy key's body."""
    raw = json.loads(stage.pulumi("config", "--show-secrets", "--json", "--stack", "local"))
    found: dict[str, str] = {}
    for key, entry in raw.items():
        if not entry.get("secret"):
            continue
        value = entry["value"]
        lines = [line for line in value.splitlines() if len(line) >= 16 and "PRIVATE KEY" not in line]
        for number, line in enumerate(lines or [value]):
            found[f"{key} (part {number})"] = line
    return found


def test_no_secret_reaches_the_state_the_output_the_events_or_the_clis_log(stage: Stage) -> None:
    stage.set_secret("smtpPass", "ENGINEFACT-smtp-rotated-93b0")
    preview = stage.run("--log-verbosity", "9", "preview")
    assert preview.ok, explain(preview)
    update = stage.run("--log-verbosity", "9", "up", "--yes", "--diff")
    assert update.ok, explain(update)
    assert update.ran() == ["server-env", "server-up"], explain(update)
    assert CLI_LOG_LINE.search(update.output), "the CLI's own log (-v=9 --logtostderr) was not captured"

    secrets = secret_values(stage)
    assert len(secrets) >= 13 and any(MARKER in value for value in secrets.values())
    for where, text in {
        "preview --diff output and CLI log": preview.output,
        "up --diff output and CLI log": update.output,
        "the engine's events": (stage.work_dir / "events.jsonl").read_text(),
        "the state file": stage.state_file().read_text(),
        "the state export": stage.pulumi("stack", "export", "--stack", "local"),
        "the stack file": stage.stack_file.read_text(),
    }.items():
        leaked = [key for key, value in secrets.items() if value in text]
        assert not leaked, f"in plaintext in {where}: {leaked}"


def staging_on_the_local_target(stage: Stage, folder: Path, plugin_home: Path) -> dict[str, str]:
    """A staging stack of the project's own stack file, pointed at the local target, in a backend of its own; the
    runner's environment for it, with `plugin_home` as its PULUMI_HOME."""
    folder.mkdir()
    (folder / "state").mkdir()
    (folder / "Pulumi.yaml").write_text((PROJECT_DIR / "Pulumi.yaml").read_text())
    document = yaml.safe_load((PROJECT_DIR / "Pulumi.staging.yaml").read_text())
    document["config"]["kametrix-deploy:server"].update(
        host=stage.target.ssh_host,
        port=stage.target.ssh_port,
        user=stage.target.ssh_user,
        hostKey=stage.target.ssh_host_key,
        appDir=f"{stage.app_dir}-staging",
    )
    (folder / "Pulumi.staging.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    env = {
        **os.environ,
        "PULUMI_BACKEND_URL": local_workspace.file_backend_url(folder / "state"),
        "PULUMI_CONFIG_PASSPHRASE": "staging-through-a-stand-in",
        "PULUMI_HOME": str(plugin_home),
        **local_workspace.OFFLINE,
    }

    def pulumi(*args: str, stdin: str | None = None) -> None:
        subprocess.run([str(stage.cli), *args], cwd=folder, env=env, input=stdin, text=True, check=True)

    pulumi("stack", "init", "staging", "--secrets-provider", "passphrase")
    throwaway = {name: f"throwaway-{name}" for name in (*APP_SECRET_KEYS, *BACKUP_SECRET_KEYS)}
    throwaway |= {"googleEncryptionKey": "ab" * 32, REGISTRY_KEY: "throwaway", SSH_KEY: stage.target.ssh_private_key}
    throwaway |= {BACKUP_CIPHER_KEY: "throwaway-" + "c" * 32}
    for name, value in throwaway.items():
        pulumi("config", "set", "--secret", "--stack", "staging", name, stdin=value)
    return env


def run_staging(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", "--stack", "staging", "--work-dir", str(folder), "up", "--yes"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_staging_is_never_updated_through_a_stand_in(stage: Stage, tmp_path: Path) -> None:
    # The stand-ins installed where a careless operator could have them: a Pulumi home the engine reads.
    plugin_home = tmp_path / "home"
    plugins.install(stage.cli, plugin_home)
    env = staging_on_the_local_target(stage, tmp_path / "staging", plugin_home)

    refused = run_staging(tmp_path / "staging", env)
    assert refused.returncode != 0
    assert "a test double that never touches a real stage" in refused.stdout + refused.stderr, refused.stdout
    assert on_server(stage, f"test -e {shlex.quote(stage.app_dir)}-staging").returncode != 0, "a step ran"

    # The local stack's own plugin home never even reaches the engine for a real stage.
    env["PULUMI_HOME"] = str(local_workspace.PLUGIN_HOME)
    refused = run_staging(tmp_path / "staging", env)
    assert refused.returncode == 1 and "runs only with Pulumi's real provider plugins" in refused.stderr


def on_a_terminal(stage: Stage, answer: str, *args: str) -> tuple[int, str]:
    """The runner on a terminal of its own (a pty), answering `answer` to its question."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child: the runner, as an operator types it
        os.chdir(PROJECT_DIR)
        os.execve(sys.executable, stage.runner_argv(*args), {**os.environ, "KAMETRIX_PULUMI_CLI": str(stage.cli)})  # noqa: S606
    output, answered = b"", False
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
        if not answered and b"[y/N]" in output:
            os.write(terminal, f"{answer}\n".encode())
            answered = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_on_a_terminal_a_release_shows_its_preview_and_asks_first(stage: Stage) -> None:
    before = stage.stack_file.read_text()
    code, output = on_a_terminal(stage, "n", "release", "v2.0.0")
    assert code == 1 and "[y/N]" in output and "not confirmed; nothing was changed" in output, output
    assert "Previewing update" in output and "server-up" in output, "no preview was shown before the question"
    assert stage.stack_file.read_text() == before, "a declined release left its pin in the stack file"
    assert "v1.0.0" in stage.target.ssh(f"cat {shlex.quote(stage.app_dir)}/release.env").stdout.decode()

    code, output = on_a_terminal(stage, "y", "release", "v2.0.0")
    assert code == 0, output
    assert "VERSION=v2.0.0" in stage.target.ssh(f"cat {shlex.quote(stage.app_dir)}/release.env").stdout.decode()
