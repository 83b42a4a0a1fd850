"""What the runner does for an operator: each command runs the real engine on one stack and prints its output."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import IO, Any, TypeVar

from pulumi import automation as auto

from components import config, shared_facts
from components.config import NAMESPACE
from runner import server, stack_file
from runner.engine import program_module
from runner.workspace import RunnerError, Workspace

T = TypeVar("T")
# The engine's words for a stack another update holds (the file and S3 backends' lock).
_LOCKED = "the stack is currently locked by"
_LOCK_HOLDER = re.compile(r"created by (?P<user>\S+)@(?P<host>\S+) \(pid (?P<pid>\d+)\) at (?P<since>\S+)")
# Resource types whose steps converge when run again: a pending operation of theirs is safe to clear.
_STEPS_THAT_CONVERGE = ("command:remote:Command",)
# The resource whose ID names the stack's state (components/program.py).
_STATE_MARKER_TYPE = "pulumi:providers:command"
# The release a step's command line names.
_RELEASE_FLAG = re.compile(r"--release (\S+)")
# The engine's operations that leave a resource as it was.
_UNCHANGED = (auto.OpType.SAME, auto.OpType.READ, auto.OpType.REFRESH)


@dataclass
class Session:
    """One command of the runner on one stack: where the engine's output, its log and its events go."""

    workspace: Workspace
    events: IO[str] | None = None
    log_verbosity: int | None = None
    """The CLI's own log (`-v=N --logtostderr`), printed on stderr as it comes."""
    out: IO[str] = sys.stdout
    started: float = field(default_factory=time.monotonic)
    finished: set[str] = field(default_factory=set)
    """The URNs of the resources the engine created, updated, replaced or deleted in this session (not those it
    found unchanged: the engine reports their outputs too)."""

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def engine_output(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def engine_log(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def engine_event(self, event: auto.EngineEvent) -> None:
        done = event.res_outputs_event
        if done is not None and done.metadata.op not in _UNCHANGED:
            self.finished.add(done.metadata.urn)
        if self.events is None:
            return
        record = _event_record(event)
        if record is not None:
            record["at"] = round(time.monotonic() - self.started, 3)
            self.events.write(json.dumps(record, sort_keys=True) + "\n")
            self.events.flush()

    def engine_options(self) -> dict[str, Any]:
        """What every engine operation of the runner is run with."""
        options: dict[str, Any] = {
            "on_output": self.engine_output,
            "on_error": self.engine_log,
            "on_event": self.engine_event,
        }
        if self.log_verbosity is not None:
            options.update(log_verbosity=self.log_verbosity, log_to_std_err=True, log_flow=True)
        return options


def _event_record(event: auto.EngineEvent) -> dict[str, Any] | None:
    """The parts of an engine event a caller needs, as the engine gave them (secrets shown as the engine shows
    them: masked)."""
    if event.resource_pre_event is not None:
        meta = event.resource_pre_event.metadata
        return {"event": "pre", "urn": meta.urn, "type": meta.type, "op": str(meta.op.value)}
    if event.res_outputs_event is not None:
        meta = event.res_outputs_event.metadata
        outputs = meta.new.outputs if meta.new is not None else None
        return {"event": "done", "urn": meta.urn, "type": meta.type, "op": str(meta.op.value), "outputs": outputs}
    if event.res_op_failed_event is not None:
        meta = event.res_op_failed_event.metadata
        return {"event": "failed", "urn": meta.urn, "type": meta.type, "op": str(meta.op.value)}
    if event.diagnostic_event is not None:
        diagnostic = event.diagnostic_event
        return {
            "event": "diagnostic",
            "urn": diagnostic.urn,
            "severity": diagnostic.severity,
            "message": diagnostic.message,
            "ephemeral": bool(diagnostic.ephemeral),
        }
    if event.summary_event is not None:
        summary = event.summary_event
        return {
            "event": "summary",
            "changes": {str(k.value if hasattr(k, "value") else k): v for k, v in summary.resource_changes.items()},
            "seconds": summary.duration_seconds,
        }
    return None


def _engine_failure(error: auto.errors.CommandError) -> str:
    """What the CLI said on stderr: its output on stdout was printed as it went."""
    text = str(error)
    return text.partition("\n stderr: ")[2].strip() or text.strip()


# --- locks and interrupted updates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateLockHolder:
    user: str
    host: str
    pid: int
    since: str

    def is_dead_here(self) -> bool:
        """True when the holder ran on this machine and its process is gone (or a zombie nobody reaped): its
        update died."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        stat = Path(f"/proc/{self.pid}/stat")
        return stat.exists() and stat.read_text().rpartition(")")[2].split()[0] == "Z"

    def __str__(self) -> str:
        return f"pid {self.pid} of {self.user} on {self.host}, since {self.since}"


def _state_lock_holders(error: auto.errors.CommandError) -> list[StateLockHolder] | None:
    text = _engine_failure(error)
    if _LOCKED not in text:
        return None
    return [StateLockHolder(m["user"], m["host"], int(m["pid"]), m["since"]) for m in _LOCK_HOLDER.finditer(text)]


def _with_state_lock(session: Session, stack: auto.Stack, operation: Callable[[], T]) -> T:
    """Run `operation`; if the stack's state is locked by an update that died on this machine (its process is gone),
    remove that lock as `pulumi cancel` does and run it once more. A lock held by a live process, or by another
    machine, stops the runner with who holds it."""
    try:
        return operation()
    except auto.errors.CommandError as error:
        holders = _state_lock_holders(error)
        if holders is None:
            raise
        if not holders or not all(holder.is_dead_here() for holder in holders):
            named = "; ".join(str(holder) for holder in holders) or "a holder the backend does not name"
            raise RunnerError(
                f"the stack's state is locked by another update: {named}. Wait for it to end. If it is gone (its "
                f"machine or process died), free the lock: python -m runner --stack {stack.name} unlock --yes"
            ) from None
        session.say(
            "the stack's state was locked by an update that died on this machine "
            f"({'; '.join(str(holder) for holder in holders)}): removing its lock (pulumi cancel)"
        )
        stack.cancel()
        return operation()


def _clear_interrupted_operations(session: Session, stack: auto.Stack, deployment: dict[str, Any]) -> list[str]:
    """An update killed mid-step leaves pending operations in the state. Pulumi's documented repair is
    `pulumi refresh` (with --clear-pending-creates for creates). Done here only when every pending operation is
    a release step, which converges when it runs again; anything else is left to the operator.

    The interrupted steps, by URN, for the next update to replace: a killed step may have run on on the server (a
    cutover finished), while the state keeps the inputs of its last success, so an update back to those inputs
    would not run it again."""
    pending = deployment.get("pending_operations") or []
    if not pending:
        return []
    described = [f"{op['resource']['urn']} (interrupted while {op['type']})" for op in pending]
    if any(op["resource"]["type"] not in _STEPS_THAT_CONVERGE for op in pending):
        raise RunnerError(
            "the last update was interrupted with operations pending that are not release steps:\n  "
            + "\n  ".join(described)
            + "\nCheck each resource, then: pulumi refresh --stack "
            + stack.name
        )
    session.say(
        "the last update was interrupted while these release steps ran; each converges when it runs again, "
        "so their pending operations are cleared (pulumi refresh --clear-pending-creates) and the update runs "
        "them again:\n  " + "\n  ".join(described)
    )
    stack.refresh(clear_pending_creates=True, show_secrets=False, **session.engine_options())
    return sorted({op["resource"]["urn"] for op in pending})


def _read_release_lock(session: Session) -> dict[str, str] | None:
    """The server's release lock (`release-lock.sh --fields`); None, said, when the server cannot be asked."""
    try:
        return server.read_lock(*_server_access(session))
    except server.ServerUnreachableError as error:
        session.say(f"the server's release lock could not be asked: {error}")
        return None


def _steps_to_run_again(session: Session, deployment: dict[str, Any], lock: dict[str, str] | None) -> list[str]:
    """Steps the server says did what the state does not record, by URN, for the update to replace (so that each
    runs again, whatever its inputs), as the server's release lock tells them (`release-lock.sh --fields`):

    - a step killed outright (SIGKILL, or the server restarted) ran no undo, and the engine recorded only its failure,
      so the state keeps its inputs of before: an update back to them would not run it again, and what it changed
      would stay. The lock names it: marked running, no step holding the mutex, sent by an update of this state. A
      lock that such a step handed on (it was killed after its work, on its way out) names it too: the engine may
      have recorded that step's failure or its success, and running a step again converges either way;
    - a step of this state that still runs on the server, as its update lost the connection (Pulumi runs one update
      of a state at a time, and this one has not begun): it goes on until it ends or next writes, and may install
      what the state does not record. It is waited for, as the next step would wait for it, then runs again;
    - the database step, when the stage's PostgreSQL does not run: only that step starts it, and a release does not
      run it (it names no release);
    - `up`, when the release that serves is not the one the state says `up` made live: an `up` that went on after
      its update lost it (a dropped connection) finished a cutover the engine recorded as failed, or a break-glass
      switch went back. Run again, `up` makes the stack's release serve.

    Empty when the server could not be asked (`lock` None)."""
    if lock is None:
        return []
    steps = {
        found["urn"].rpartition("::")[2]: found
        for found in deployment.get("resources") or []
        if found["type"] in _STEPS_THAT_CONVERGE
    }
    again: list[str] = []
    state_ids = [
        found["id"]
        for found in deployment.get("resources") or []
        if found["type"] == _STATE_MARKER_TYPE and found["urn"].endswith(f"::{shared_facts.STATE_MARKER}")
    ]
    left_by = steps.get(f"{shared_facts.SERVER_RELEASE}-{lock.get('STEP', '')}")
    ours = bool(state_ids) and lock.get("STACK") == _stack_name(session, state_ids[0])
    step = f"step {lock.get('STEP')} of {lock.get('RELEASE') or 'the stage'}"
    if ours and left_by is not None and lock.get("STEP_RUNS") == "yes":
        lock = _await_step(session, step, lock)
        if lock.get("STEP_RUNS") != "yes":
            session.say(f"{step} ended: it runs again in this update")
            again.append(left_by["urn"])
    elif ours and left_by is not None and lock.get("STEP_STATE") in ("running", "handed-on"):
        how = (
            "died without ending (killed outright)"
            if lock["STEP_STATE"] == "running"
            else "handed the lock on to a step of its update that never came"
        )
        session.say(f"the server's release lock says {step} {how}: it runs again in this update")
        again.append(left_by["urn"])
    database = steps.get(shared_facts.DATABASE_STEP)
    if database is not None and lock.get("DATABASE_RUNS") == "no":
        session.say("the stage's PostgreSQL does not run on the server: the database step runs again to start it")
        again.append(database["urn"])
    up = steps.get(shared_facts.UP_STEP)
    made_live = _RELEASE_FLAG.search(str((up or {}).get("inputs", {}).get("create", "")))
    serving = lock.get("LIVE_RELEASE", "")
    if up is not None and made_live and serving and serving != made_live[1]:
        session.say(
            f"{serving} serves, but the state says up made {made_live[1]} live: an update it does not record changed "
            "what serves, so up runs again in this update"
        )
        again.append(up["urn"])
    return again


def _await_step(session: Session, step: str, lock: dict[str, str]) -> dict[str, str]:
    """The release lock once no step runs on the server; as it was last read after STEP_WAIT_SECONDS, or when the
    server stops answering (the update's own steps then wait for the step, or say why they cannot)."""
    session.say(
        f"{step} still runs on the server while no update of its stack does (its connection was lost): waiting up "
        f"to {shared_facts.STEP_WAIT_SECONDS} s for it to end"
    )
    deadline = time.monotonic() + shared_facts.STEP_WAIT_SECONDS
    while lock.get("STEP_RUNS") == "yes" and time.monotonic() < deadline:
        time.sleep(1)
        asked = _read_release_lock(session)
        if asked is None:
            break
        lock = asked
    return lock


def _stack_name(session: Session, state_id: str) -> str:
    return shared_facts.stack_name(_stack_config(session.workspace).stage, state_id)


def _end_update(session: Session, state_id: str) -> None:
    """After an update that did not run `up`: a lock its last step handed on to an `up` that did not come, or left
    by a step killed outright that this update did not run again, is given back (no other update of the stack's state
    can be waiting for it: Pulumi runs one at a time), so the stage is at rest."""
    if any(urn.endswith(f"::{shared_facts.UP_STEP}") for urn in session.finished):
        return
    try:
        said = server.end_update(*_server_access(session), _stack_name(session, state_id))
    except server.ServerUnreachableError as error:
        session.say(f"the server's release lock could not be checked after the update: {error}")
        return
    if said:
        session.say(said)


# --- the commands ------------------------------------------------------------------------------------------------


def preview(session: Session, replace: list[str] | None = None) -> None:
    stack = session.workspace.stack()
    _with_state_lock(
        session,
        stack,
        lambda: stack.preview(diff=True, replace=replace or None, **session.engine_options()),
    )


Confirm = Callable[[], None]
"""Asks the operator to go on after the preview; raises RunnerError when they do not."""


def up(session: Session, diff: bool = False, confirm: Confirm | None = None) -> auto.UpResult:
    """Bring the stack to what its stack file declares; record the released version's digests if they are not."""
    workspace = session.workspace
    stack = workspace.stack()
    # The state and the server's release lock are read side by side: each waits on a process of its own (the CLI, ssh).
    # Meanwhile the program's module is imported, which the update runs next.
    with ThreadPoolExecutor(max_workers=2) as reader:
        asked = reader.submit(_read_release_lock, session)
        reader.submit(program_module)
        deployment = workspace.state()
        lock = asked.result()
    interrupted = _with_state_lock(session, stack, lambda: _clear_interrupted_operations(session, stack, deployment))
    again = sorted({*interrupted, *_steps_to_run_again(session, deployment, lock)})
    if confirm is not None:
        preview(session, again)
        confirm()
    result = _with_state_lock(
        session,
        stack,
        lambda: stack.up(diff=diff, show_secrets=False, replace=again or None, **session.engine_options()),
    )
    outputs = {name: value.value for name, value in result.outputs.items()}
    _end_update(session, str(outputs["stateId"]))
    version = str(outputs.get("version", ""))
    if version and version not in stack_file.recorded_versions(workspace.stack_file):
        stack_file.record(workspace.stack_file, version, outputs["imageRef"], outputs["migrateImageRef"])
        session.say(
            f"recorded {version}'s digests under image.digests in {workspace.stack_file}: from now on {version} "
            "means exactly these bytes (commit the stack file on a real stage)"
        )
    return result


def release(
    session: Session, version: str, requested_by: str | None, diff: bool = False, confirm: Confirm | None = None
) -> auto.UpResult:
    """Pin `version` in the stack file, then update: a release, or a rollback when it ran before. Not confirmed,
    the stack file is put back as it was."""
    workspace = session.workspace
    before = workspace.stack_file.read_text()
    pinned = stack_file.pinned_version(workspace.stack_file)
    if stack_file.pin(workspace.stack_file, version, requested_by):
        session.say(f"pinned {version} in {workspace.stack_file} (was {pinned}); commit it on a real stage")
    try:
        return up(session, diff, confirm)
    except RunnerError as refused:
        if refused.args and refused.args[0] == NOT_CONFIRMED:
            workspace.stack_file.write_text(before)
        raise


NOT_CONFIRMED = "not confirmed; nothing was changed"


def rollback(
    session: Session, version: str | None, requested_by: str | None, confirm: Confirm | None = None
) -> auto.UpResult:
    """Release an earlier version again: `version`, or the one that served before the live one. Only a recorded
    version: its bytes are known, it is never built again, and its schema is already in the database."""
    workspace = session.workspace
    target = version or _previous_version(session)
    recorded = stack_file.recorded_versions(workspace.stack_file)
    if target not in recorded:
        raise RunnerError(
            f"rollback: allowed a version that was released and recorded under image.digests in "
            f"{workspace.stack_file} ({', '.join(recorded) or 'none recorded yet'}); received {target!r}"
        )
    session.say(f"rolling back to {target}")
    return release(session, target, requested_by, confirm=confirm)


def _previous_version(session: Session) -> str:
    """The version that served before the live one, as the server recorded it."""
    state = _server_state(session)
    previous = state.record.get("PREVIOUS_VERSION", "") if state is not None else ""
    if not previous:
        raise RunnerError(
            "rollback: the server records no version that served before the live one; name one: rollback VERSION"
        )
    return previous


_loaded: dict[tuple[Path, int], config.StackConfig] = {}


def _stack_config(workspace: Workspace) -> config.StackConfig:
    """The stack's config, read (and its secrets decrypted) once per version of the stack file: `status` needs it
    three times, and each read costs the passphrase's key derivation. An update's first read may be of the stack
    file as the command found it (`Workspace.begin_reads`): what the runner writes into it (the version, who asked
    for it, recorded digests) is none of what the runner reads from it."""
    key = (workspace.stack_file, workspace.stack_file.stat().st_mtime_ns)
    if key not in _loaded:
        _loaded[key] = _read_stack_config(workspace)
    return _loaded[key]


def _read_stack_config(workspace: Workspace) -> config.StackConfig:
    values = workspace.config()
    raw = {key: value for key, (value, _) in values.items()}
    secret_keys = {key for key, (_, secret) in values.items() if secret}
    return config.load(workspace.stack_name, raw, secret_keys)


def _server_state(session: Session, loaded: config.StackConfig | None = None) -> server.ServerState | None:
    loaded = loaded or _stack_config(session.workspace)
    try:
        return server.read_state(loaded.plain.server.release_host(), loaded.secrets.ssh_private_key)
    except server.ServerUnreachableError as error:
        session.say(f"the server could not be asked: {error}")
        return None


def _say_hosts(session: Session, loaded: config.StackConfig) -> None:
    """Each host of a stage on Swarm: its node, and which version each of its tasks runs."""
    versions = {digest: version for version, digest in stack_file.recorded_app_digests(session.workspace.stack_file)}
    try:
        nodes = server.read_swarm(loaded.plain.server, loaded.secrets.ssh_private_key, loaded.plain.app.compose_project)
    except server.ServerUnreachableError as error:
        session.say(f"hosts          the Swarm could not be asked: {error}")
        return
    found = {node.address: node for node in nodes}
    label = "hosts"
    for host in loaded.plain.server.hosts:
        node = found.pop(host.advertise_address, None)
        if node is None:
            line = "not in the Swarm (the next update joins it)"
        else:
            # An app task by the version its image's digest is recorded for; the proxy by its name alone.
            tasks = ", ".join(
                f"{service} {versions.get(image.rpartition('@')[2], image)} ({state})"
                if service == "app"
                else f"{service} ({state})"
                for service, image, state in node.tasks
            )
            line = f"{node.hostname}, {node.role}, {node.state}, {node.availability}: {tasks or 'no task'}"
        database = ", database" if host.database else ""
        session.say(f"{label:<15}{host.advertise_address} ({host.role}{database}) {line}")
        label = ""
    for node in found.values():
        session.say(
            f"{label:<15}{node.address} not declared: {node.state}, {node.availability} (the next update removes it)"
        )
        label = ""


def status(session: Session) -> None:
    workspace = session.workspace
    stack = workspace.stack()
    pinned = stack_file.pinned_version(workspace.stack_file)
    session.say(f"stack          {workspace.stack_name} ({workspace.stack_file}; backend {workspace.backend()})")
    session.say(f"pinned         {pinned}")
    loaded = _stack_config(workspace)
    state = _server_state(session, loaded)
    if state is not None:
        record = state.record
        live = record.get("VERSION")
        # A stage on Swarm has no colours: its hosts say where each version runs.
        where = f" on {record.get('LIVE_COLOUR', '?')}" if not loaded.plain.server.hosts else ""
        if live:
            session.say(f"live           {live}{where} ({record.get('APP_IMAGE', '?')})")
            session.say(f"previous       {record.get('PREVIOUS_VERSION') or 'none recorded'}")
        else:
            session.say("live           nothing released on the server yet")
        session.say(f"release lock   {state.lock}")
        if loaded.plain.server.hosts:
            _say_hosts(session, loaded)
        if live and live != pinned:
            session.say(
                f"note           the stack pins {pinned} but {live} serves: the last update did not reach its "
                "switch; `up` finishes it, or pin the live version back"
            )
    if state is not None:
        backups = server.backup_status(*_server_access(session))
        if loaded_backups(session):
            _say_backups(session, backups)
        else:
            _say_dumps(session, backups)
    history = stack.history(page_size=1)
    if history:
        session.say(f"last update    {_describe_update(history[0])}")
    else:
        session.say("last update    none")


def _server_access(session: Session) -> tuple[config.ServerSettings, Any]:
    loaded = _stack_config(session.workspace)
    return loaded.plain.server.release_host(), loaded.secrets.ssh_private_key


def loaded_backups(session: Session) -> bool:
    return _stack_config(session.workspace).plain.backup is not None


def _say_backups(session: Session, status: server.BackupStatus) -> None:
    """The backup lines of `status`: what an operator needs to know before trusting a restore."""
    for line in status.said:
        session.say(line)
    found = status.values
    session.say(f"backups        {found.get('BACKUPS', 'no answer from the server')}")
    session.say(f"  newest base  {found.get('NEWEST_BACKUP') or 'none yet'}")
    session.say(f"  restorable   up to {found.get('ARCHIVED_UNTIL') or 'nothing archived yet'} (the WAL archived last)")
    session.say(f"  last drill   {found.get('LAST_DRILL') or 'none yet'}")
    session.say(f"  good drill   {found.get('LAST_GOOD_DRILL') or 'none yet'}")
    if found.get("LAST_BACKUP"):
        session.say(f"  last backup  {found['LAST_BACKUP']}")
    if found.get("LAST_RESTORE_POINT"):
        session.say(f"  restore pt   {found['LAST_RESTORE_POINT']}")
    if found.get("LAST_RESTORE"):
        session.say(f"  restored     {found['LAST_RESTORE']}")
    _say_dumps(session, status, indent="  ")


def _say_dumps(session: Session, status: server.BackupStatus, indent: str = "") -> None:
    """The releases' pg_dump backups on the server, by name: what `restore --dump NAME` restores."""
    found = status.values
    session.say(f"{indent}{'pg_dump':<{15 - len(indent)}}{found.get('DUMPS') or 'not listed'} (the releases' dumps)")
    for name in found.get("DUMP_NAMES", "").split():
        session.say(f"{'':<15}{name}")


def backups(session: Session, action: str, check: bool) -> None:
    """The stage's backups as `status` shows them; `action` runs a drill or a base backup first. With `check`, stale
    backups or a failed drill are an error (what the drift check turns into an issue)."""
    if not loaded_backups(session):
        raise RunnerError("the stack declares no backup section: its only backups are the releases' pg_dump files")
    status = server.backup_status(*_server_access(session), action)
    _say_backups(session, status)
    if action and status.values.get("ASKED") != "ok":
        raise RunnerError(f"backups {action}: it did not succeed (what the server said is above)")
    verdict = status.values.get("BACKUPS", "no answer from the server")
    if check and verdict != "ok":
        raise RunnerError(f"the backups of {session.workspace.stack_name} need attention: {verdict}")


def restore(session: Session, target: list[str], confirm: Confirm | None) -> None:
    """The break-glass restore (bin/restore.sh, or bin/restore-dump.sh for `--dump`) through the stack's SSH access:
    its plan first, then, confirmed, the restore itself. The server takes the release lock; the stack file is not
    changed."""
    if target[0] != "--dump" and not loaded_backups(session):
        raise RunnerError(
            "restore: the stack declares no backup section, so there is no repository to restore from; the "
            "releases' pg_dump backups on the server restore with --dump NAME (status lists them)"
        )
    access = _server_access(session)
    if server.restore(*access, target, plan_only=True, echo=session.say) != 0:
        raise RunnerError("restore: the server refused the plan (see above); nothing was changed")
    if confirm is not None:
        confirm()
    if server.restore(*access, target, plan_only=False, echo=session.say) != 0:
        raise RunnerError("restore: it did not finish (see above)")


def history(session: Session, limit: int) -> None:
    stack = session.workspace.stack()
    updates = stack.history(page_size=limit)
    if not updates:
        session.say("no updates yet")
        return
    for update in updates:
        session.say(_describe_update(update))


def _describe_update(update: auto.UpdateSummary) -> str:
    version = update.config.get(f"{NAMESPACE}:version")
    requested = ""
    release_settings = update.config.get(f"{NAMESPACE}:release")
    if release_settings is not None and not release_settings.secret:
        requested_by = json.loads(release_settings.value or "{}").get("requestedBy")
        requested = f", requested by {requested_by}" if requested_by else ""
    seconds = ""
    if update.end_time is not None:
        seconds = f" in {(update.end_time - update.start_time).total_seconds():.0f} s"
    changes = ", ".join(f"{count} {op}" for op, count in (update.resource_changes or {}).items() if count)
    when = update.start_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    pinned = version.value if version is not None else "?"
    return f"{when} {update.kind} {update.result}{seconds}: {pinned}{requested}" + (f" ({changes})" if changes else "")


def unlock(session: Session) -> None:
    """Free the stack's state lock (`pulumi cancel`): only after checking that the update holding it is gone."""
    session.workspace.stack().cancel()
    session.say("the stack's state lock is freed (pulumi cancel); pending operations are repaired by the next up")


@contextmanager
def opened_events(path: Path | None) -> Iterator[IO[str] | None]:
    if path is None:
        yield None
        return
    with path.open("a") as handle:
        yield handle
