"""`python -m runner`: the program under the real Pulumi engine, for any stack. See `--help`."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

from components.config import ConfigError
from components.recorded_versions import RecordError
from runner.workspace import RunnerError, open_workspace

DESCRIPTION = """\
The operator's tool for every stack: runs the program (components/program.py) as an inline program of Pulumi's
Automation API with the Pulumi CLI of scripts/install-engine, in the project's workspace (Pulumi.yaml and the stack
file), and prints the engine's output as it goes.

Staging and production: run it where you would run `pulumi up`, with the stage's backend and passphrase in the
environment (PULUMI_BACKEND_URL, PULUMI_CONFIG_PASSPHRASE, cloud credentials); Pulumi downloads the real provider
plugins as usual. The local stack runs in .pulumi/local with the embedded default's stand-in providers
(bash scripts/release-local prepares it).

An update first repairs what an interrupted one left (README, "An interrupted update"): a state lock of an update
that died on this machine is removed (pulumi cancel), and pending operations of release steps are cleared
(pulumi refresh --clear-pending-creates) and replaced: the steps then run again and converge.
"""

EPILOG = """\
examples:
  python -m runner --stack production status
  python -m runner --stack production release v1.4.3 --requested-by "incident 42 (alice)"
  python -m runner --stack production rollback            # to the version that served before the live one
  python -m runner --stack local rollback v1.0.0 --yes
"""


def parser() -> argparse.ArgumentParser:
    parsed = argparse.ArgumentParser(
        prog="python -m runner",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parsed.add_argument("-s", "--stack", required=True, help="staging, production or local")
    parsed.add_argument(
        "--work-dir",
        type=Path,
        help="the folder holding Pulumi.yaml and the stack file (default: this project; local: .pulumi/local)",
    )
    parsed.add_argument("--events", type=Path, help="append the engine's events to this file, one JSON object a line")
    parsed.add_argument(
        "--log-verbosity", type=int, metavar="N", help="print the CLI's own log at this level on stderr (-v=N)"
    )
    sub = parsed.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("preview", help="what an update would change, with the diff (nothing runs on the server)")
    changing = argparse.ArgumentParser(add_help=False)
    changing.add_argument("--yes", action="store_true", help="update without asking (needed when not on a terminal)")
    changing.add_argument("--diff", action="store_true", help="show each change as a diff")
    sub.add_parser("up", parents=[changing], help="update the stack to what its stack file declares")
    release = sub.add_parser("release", parents=[changing], help="pin VERSION in the stack file, then update")
    release.add_argument("version")
    release.add_argument("--requested-by", help="who asks for it, for the server's release lock (run URL and actor)")
    rollback = sub.add_parser(
        "rollback", parents=[changing], help="release an earlier recorded version again (default: the previous one)"
    )
    rollback.add_argument("version", nargs="?", help="default: the version that served before the live one")
    rollback.add_argument("--requested-by", help="who asks for it, for the server's release lock")
    sub.add_parser("status", help="what serves, what served before, who holds the release lock, the last update")
    restore = sub.add_parser(
        "restore",
        help="restore the database from the backup repository (the server's bin/restore.sh), or from one of the "
        "releases' pg_dump backups on the server (bin/restore-dump.sh), asking first",
    )
    to = restore.add_mutually_exclusive_group(required=True)
    to.add_argument("--time", metavar="T", help="as it was at a UTC time, like 2026-12-02T03:00:00Z")
    to.add_argument("--before-release", metavar="VERSION", help="just before VERSION's release migrated")
    to.add_argument("--latest", action="store_true", help="everything the repository holds")
    to.add_argument("--dump", metavar="NAME", help="a pg_dump in <appDir>/backups (status lists them), as it was taken")
    restore.add_argument("--yes", action="store_true", help="restore without asking (needed when not on a terminal)")
    backups = sub.add_parser("backups", help="the newest backup, restorable point and drills; run a drill or backup")
    backups.add_argument("--drill", action="store_true", help="run a restore drill now")
    backups.add_argument("--backup", choices=("full", "diff"), help="take a base backup now")
    backups.add_argument("--check", action="store_true", help="fail when the backups are stale or a drill failed")
    history = sub.add_parser("history", help="the stack's updates, newest first: when, what, which version, result")
    history.add_argument("--limit", type=int, default=20)
    unlock = sub.add_parser("unlock", help="free the stack's state lock of an update that is gone (pulumi cancel)")
    unlock.add_argument("--yes", action="store_true", required=True, help="confirm the holder no longer runs")
    return parsed


# The commands that update the stack: each reads its state and config before the update begins.
UPDATES = ("up", "release", "rollback")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        workspace = open_workspace(args.stack, args.work_dir)
        if args.command in UPDATES:
            workspace.begin_reads()
    except RunnerError as error:
        print(f"runner: {error}", file=sys.stderr)
        return 1
    # Imported once the CLI reads the stack: the Pulumi SDK (runner/engine.py) is a third of the runner's start-up.
    from pulumi import automation as auto

    from runner import commands

    try:
        changes = args.command in (*UPDATES, "restore")
        if changes and not args.yes and not sys.stdin.isatty():
            raise RunnerError(f"{args.command} changes the stack: pass --yes when not on a terminal")
        with commands.opened_events(args.events) as events:
            session = commands.Session(workspace, events, args.log_verbosity)
            confirm = None if not changes or args.yes else functools.partial(_ask, args.command, args.stack)
            if args.command == "preview":
                commands.preview(session)
            elif args.command == "up":
                commands.up(session, args.diff, confirm)
            elif args.command == "release":
                commands.release(session, args.version, args.requested_by, args.diff, confirm)
            elif args.command == "rollback":
                commands.rollback(session, args.version, args.requested_by, confirm)
            elif args.command == "restore":
                target = (
                    ["--time", args.time]
                    if args.time
                    else ["--before-release", args.before_release]
                    if args.before_release
                    else ["--dump", args.dump]
                    if args.dump
                    else ["--latest"]
                )
                commands.restore(session, target, confirm)
            elif args.command == "backups":
                action = "--drill" if args.drill else f"--backup {args.backup}" if args.backup else ""
                commands.backups(session, action, args.check)
            elif args.command == "status":
                commands.status(session)
            elif args.command == "history":
                commands.history(session, args.limit)
            elif args.command == "unlock":
                commands.unlock(session)
    except (RunnerError, ConfigError, RecordError) as error:
        print(f"runner: {error}", file=sys.stderr)
        return 1
    except auto.errors.CommandError as error:
        print(f"runner: the engine failed (its output is above):\n{commands._engine_failure(error)}", file=sys.stderr)
        return 1
    return 0


def _ask(command: str, stack: str) -> None:
    answer = input(f"{command} {stack} as {'planned' if command == 'restore' else 'previewed'} above? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        from runner.commands import NOT_CONFIRMED  # imported by main already

        raise RunnerError(NOT_CONFIRMED)


if __name__ == "__main__":
    sys.exit(main())
