"""`python -m embedded_default up|down`: the local stack, released for real on this machine.

`up` starts the local target (root: dockerd, a registry and sshd on 127.0.0.1), builds the stand-in app's versions,
prepares the local stack's folder (`.pulumi/local`) and runs `up` of the local stack through the runner: the real
Pulumi engine with the stand-in providers. It ends by saying what answers now, how to release and roll back, what it
left running and how to stop it. Run again unchanged, the update is a no-op. `down` stops what `up` started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from embedded_default import target as local_target
from embedded_default import workspace as local_workspace
from runner import __main__ as runner
from runner import stack_file
from runner.workspace import pulumi_cli

RUNNER = ".venv/bin/python -m runner --stack local"


def up() -> int:
    if os.geteuid() != 0:
        print("the local target runs dockerd and sshd: run as root (sudo bash scripts/release-local)", file=sys.stderr)
        return 1
    target = local_target.ensure_target()
    versions = sorted(local_target.build_app_versions(target))
    local_workspace.prepare(local_workspace.DEFAULT_DIR, pulumi_cli(), target.ssh_host_key, target.ssh_private_key)
    code = runner.main(["--stack", "local", "up", "--yes"])
    settings = stack_file.stack_yaml().load(local_workspace.DEFAULT_DIR.joinpath("Pulumi.local.yaml").read_text())
    url = settings["config"]["kametrix-deploy:app"]["url"]
    print()
    print(f"answering now:   {url} serves {_served_version(url)}")
    print(f"the stack file:  {local_workspace.DEFAULT_DIR / local_workspace.STACK_FILE_NAME}")
    print(f"versions built:  {', '.join(versions)} (v3.0.0 never turns healthy; v4.0.0's migration fails)")
    print(f"next release:    {RUNNER} release v2.0.0 --yes")
    print(f"a rollback:      {RUNNER} rollback --yes        (to the version that served before)")
    print(f"what serves:     {RUNNER} status")
    status = {name: pid for name, pid in local_target.target_status().items() if pid is not None}
    print(f"left running:    the local target's daemons {json.dumps(status)} and the stack's containers on them")
    print("stop them:       .venv/bin/python -m embedded_default down")
    return code


def _served_version(url: str) -> str:
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=5) as response:  # noqa: S310 - the local URL
            return str(json.loads(response.read())["version"])
    except (OSError, urllib.error.URLError, ValueError, KeyError) as error:
        return f"no answer ({error})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedded_default", description=__doc__)
    parser.add_argument("action", choices=("up", "down"))
    args = parser.parse_args(argv)
    if args.action == "down":
        local_target.stop_target()
        print(json.dumps(local_target.target_status()))
        return 0
    return up()


if __name__ == "__main__":
    sys.exit(main())
