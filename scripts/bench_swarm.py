"""Prints ONE table, from one run: a stage on Docker Swarm with 1, 2 and 3 hosts, its release and its rollback under
load, through the runner under the real engine.

For each host count, a stage of its own on hosts 1..n (tests/e2e/swarm_hosts.py: network namespaces of this machine,
each with its own dockerd and sshd; host 1 holds the database), two app tasks: a first release (v1.0.0: the Swarm
joined, PostgreSQL started, migrations, the stack deployed), then a release (v2.0.0, one new migration) and a
rollback (`runner rollback`, back to v1.0.0) under constant load through every host's proxy (tests/e2e/load.py:
`hey`, one request per connection, GET /api/version, from a second before the update to its end). Wall time is the
runner's, from its start to its exit; failed = non-2xx answers and socket errors on all hosts together; p99 is the
slowest host's. Goal: 0 failed requests in every update.

Needs root (the local target and the hosts run dockerd and sshd); everything it starts is removed at the end.
    .venv/bin/python scripts/bench_swarm.py [--rate 40]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from embedded_default import workspace as local_workspace  # noqa: E402  - the project root is on the path only now
from embedded_default.target import running_target  # noqa: E402
from runner.workspace import pulumi_cli  # noqa: E402
from tests.e2e.load import Load  # noqa: E402
from tests.e2e.stage import Stage, UpdateResult, explain  # noqa: E402
from tests.e2e.swarm_hosts import SwarmHosts, new_swarm_stage, swarm_hosts  # noqa: E402

HOST_COUNTS = (1, 2, 3)
LEAD_SECONDS = 1.0


def under_load(stage: Stage, hosts: SwarmHosts, numbers: tuple[int, ...], rate: int, *args: str) -> str:
    """One runner command with load on every host's proxy: a row of the table."""
    port = stage.setting("app.proxyPort")
    loads = [Load(f"http://{hosts[number].address}:{port}/api/version", rate=rate) for number in numbers]
    with contextlib.ExitStack() as running:
        for load in loads:
            running.enter_context(load)
        time.sleep(LEAD_SECONDS)
        result = stage.run(*args)
    requests = sum(load.result.requests for load in loads)
    failed = sum(load.result.failed for load in loads)
    p99 = max(load.result.percentiles_ms.get(99, 0.0) for load in loads)
    return f"{result.wall:8.1f} {requests:9d} {failed:7d} {p99:8.0f}  {outcome(result)}"


def outcome(result: UpdateResult) -> str:
    if result.ok:
        return "ok"
    print(explain(result), file=sys.stderr)
    return f"failed in {result.failed.name if result.failed else 'the engine'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=40, help="requests per second on each host's proxy")
    rate = parser.parse_args().rate
    cli = pulumi_cli()
    rows = [f"{'hosts':>5}  {'update':<14} {'wall s':>8} {'requests':>9} {'failed':>7} {'p99 ms':>8}"]
    with (
        running_target() as target,
        swarm_hosts(max(HOST_COUNTS), target) as hosts,
        tempfile.TemporaryDirectory(prefix="kametrix-stacks-") as root,
    ):
        prepared = Path(root, "prepared")
        local_workspace.prepare(prepared, cli, target.ssh_host_key, target.ssh_private_key)
        for count in HOST_COUNTS:
            numbers = tuple(range(1, count + 1))
            stage = new_swarm_stage(target, prepared, cli, hosts, numbers, 14000 + 10 * count)
            first = stage.run("release", "v1.0.0", "--yes")
            rows.append(f"{count:>5}  {'first release':<14} {first.wall:8.1f} {'':>26}  {outcome(first)}")
            release = under_load(stage, hosts, numbers, rate, "release", "v2.0.0", "--yes")
            rows.append(f"{count:>5}  {'release':<14} {release}")
            rollback = under_load(stage, hosts, numbers, rate, "rollback", "v1.0.0", "--yes")
            rows.append(f"{count:>5}  {'rollback':<14} {rollback}")
            print("\n".join(rows[-3:]), flush=True)
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    print(f"\nscripts/bench_swarm.py, {when}, {platform.node()}: {rate} requests/s on each host's proxy, 2 app tasks")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
