"""Prints ONE table, from one run on the local target: what constant load through a release sees.

Ours: `python -m runner ... release VERSION` under the real engine (the stand-in providers, the stage's compose
network, the proxy finding each colour through Docker's DNS), with the load on the stage's proxy. Baseline: the
old pipeline's order on the single-container layout (tests/e2e/old_pipeline.sh: stop the app, migrate, start,
poll health, restart the previous image on failure) on its own compose project, with the load on its app. For
each: no release (steady state), a release (v1.0.0 -> v2.0.0, one new migration), a release whose health check
fails (v3.0.0), a rollback by config (back to v1.0.0); for ours also a settings-only change (a rotated secret),
a settings change together with a release (v2.0.0 again), a release to a colour whose container was recreated
with another address (the address the proxy last resolved for it is gone), and the live colour recreated with
another address outside any release (the proxy's DNS cache then holds a stale address until it asks again).

Load: `hey` at a constant rate, one request per connection (tests/e2e/load.py), on GET /api/version,
starting a second before each release and ending with it. Failed = non-2xx answers + socket errors.
Goals for ours: 0 failed requests in every update; p99 during a release at most 2x steady state.

Loopback only; needs root (the target runs dockerd and sshd). Stops by itself, removes both stages, and
stops the target if it started it.
    .venv/bin/python scripts/bench_zero_downtime.py [--rate 200] [--steady-seconds 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

# The project root is on the path only now.
from embedded_default.target import LocalTarget, running_target  # noqa: E402
from runner.workspace import pulumi_cli  # noqa: E402
from tests.e2e import old_layout  # noqa: E402
from tests.e2e.load import Load, LoadResult  # noqa: E402
from tests.e2e.stage import Stage, stages_on  # noqa: E402

# scenario, version, whether the update is to succeed, what happens first: a rotated setting, or the colour the
# release switches to (the idle one) recreated with another address
RELEASES = (
    ("release", "v2.0.0", True, ""),
    ("release, health check fails", "v3.0.0", False, ""),
    ("rollback by config", "v1.0.0", True, ""),
    ("settings only", "v1.0.0", True, "settings"),
    ("settings + version", "v2.0.0", True, "settings"),
    ("release, idle colour's address moved", "v1.0.0", True, "moved"),
)
LEAD_SECONDS = 1.0
# The label of the containers that hold a colour's old address.
PLACEHOLDER = "org.kametrix.bench=address-placeholder"


def measure(url: str, rate: int, action: Callable[[], bool]) -> tuple[LoadResult, float, bool]:
    """The load `url` sees while `action` runs, the action's wall time, and whether it succeeded."""
    with Load(url, rate=rate) as load:
        time.sleep(LEAD_SECONDS)
        started = time.monotonic()
        succeeded = action()
        wall = time.monotonic() - started
    return load.result, wall, succeeded


def row(pipeline: str, scenario: str, result: LoadResult, wall: float) -> str:
    p50, p99 = (result.percentiles_ms.get(p) for p in (50, 99))
    latency = "".join(f"{value:>9.1f}" if value is not None else f"{'-':>9}" for value in (p50, p99))
    return f"{pipeline:<10}{scenario:<38}{result.requests:>9}{result.failed:>8}{latency}{wall:>9.1f}"


def steady(seconds: float) -> Callable[[], bool]:
    def no_release() -> bool:
        time.sleep(seconds)
        return True

    return no_release


def ours(stage: Stage, version: str, first: str) -> Callable[[], bool]:
    def update() -> bool:
        if first == "settings":
            stage.set_secret("smtpPass", f"BENCH-smtp-pass-{time.monotonic_ns()}")
        return stage.up(version).ok

    if first == "moved":
        move_address(stage, idle_colour(stage))
    return update


def baseline(stage: Stage, version: str, first: str) -> Callable[[], bool]:
    return lambda: old_layout.release(stage, version).returncode == 0


def colour_container(stage: Stage, colour: str) -> str:
    return f"{stage.setting('app.appContainer')}-{colour}"


def idle_colour(stage: Stage) -> str:
    live = stage.target.ssh(f"sed -n 's/^LIVE_COLOUR=//p' {stage.app_dir}/release.env").stdout.decode().strip()
    return "green" if live == "blue" else "blue"


def address_of(stage: Stage, container: str) -> str:
    network = f"{stage.project}_default"
    inspected = stage.target.docker(
        "inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}', container
    )
    return inspected.stdout.decode().strip()


def move_address(stage: Stage, colour: str) -> None:
    """Recreate `colour`'s container with another address on the stage's network: a placeholder takes the address it
    had, so the proxy's DNS cache, if it still held the old one, would send requests to nobody."""
    container = colour_container(stage, colour)
    network = f"{stage.project}_default"
    stage.target.docker("start", container)
    before = address_of(stage, container)
    stage.target.docker("rm", "--force", container)
    # Placeholders take free addresses of the network (lowest first) until one holds the colour's old one.
    for _ in range(8):
        placeholder = stage.target.docker(
            "run", "--detach", "--label", PLACEHOLDER, "--network", network, stage.target.postgres_image,
            "sleep", "infinity",
        ).stdout.decode().strip()  # fmt: skip
        if address_of(stage, placeholder) == before:
            break
    compose = (
        f"cd {stage.app_dir} && APP_IMAGE=$(sed -n 's/^{colour.upper()}_IMAGE=//p' release.env) MIGRATE_IMAGE=none "
        f"POSTGRES_IMAGE=none docker compose --project-name {stage.project} --env-file .env.{colour} "
        f"up --detach --no-deps app-{colour}"
    )
    done = stage.target.ssh(compose)
    if done.returncode != 0:
        raise SystemExit(f"recreating {container}: {done.stderr.decode()}")
    after = address_of(stage, container)
    if after == before:
        raise SystemExit(f"{container} kept its address {before}")


def live_colour_moved(stage: Stage, seconds: float) -> Callable[[], bool]:
    """Outside any release: the live colour recreated with another address, then the load goes on for `seconds`."""

    def move() -> bool:
        live = "green" if idle_colour(stage) == "blue" else "blue"
        move_address(stage, live)
        time.sleep(seconds)
        return True

    return move


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=200, help="requests per second (default 200)")
    parser.add_argument("--steady-seconds", type=float, default=15, help="length of the steady-state rows")
    args = parser.parse_args()

    with running_target() as target, stages_on(target, pulumi_cli()) as new_stage:
        try:
            compare(
                target,
                new_stage(app_port=13600),
                new_stage(app_port=13700),
                args.rate,
                args.steady_seconds,
            )
        finally:
            remove_placeholders(target)


def compare(target: LocalTarget, ours_stage: Stage, baseline_stage: Stage, rate: int, steady_seconds: float) -> None:
    first = ours_stage.up("v1.0.0")
    installed = old_layout.install(baseline_stage, "v1.0.0")
    if not first.ok or installed.returncode != 0:
        raise SystemExit(f"first release failed: {first.output} {installed.stderr.decode()[-2000:]}")

    lines = []
    for pipeline, stage, run in (("ours", ours_stage, ours), ("baseline", baseline_stage, baseline)):
        url = f"http://127.0.0.1:{stage.setting('app.proxyPort')}/api/version"
        result, wall, _ = measure(url, rate, steady(steady_seconds))
        lines.append(row(pipeline, "steady state (no release)", result, wall))
        print(lines[-1], file=sys.stderr, flush=True)
        for scenario, version, expected, first_step in RELEASES:
            if first_step and pipeline == "baseline":
                continue  # the old pipeline changed settings by hand and had one container
            result, wall, succeeded = measure(url, rate, run(stage, version, first_step))
            if succeeded != expected:
                raise SystemExit(f"{pipeline}, {scenario}: expected {'success' if expected else 'a failure'}")
            lines.append(row(pipeline, scenario, result, wall))
            print(lines[-1], file=sys.stderr, flush=True)
        if pipeline == "ours":
            result, wall, _ = measure(url, rate, live_colour_moved(stage, 12))
            lines.append(row(pipeline, "live colour's address moved", result, wall))
            print(lines[-1], file=sys.stderr, flush=True)

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{when}, {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}; load: hey,")
    print(f"{rate} requests/s from 4 workers, one connection per request, GET /api/version")
    print(f"{'pipeline':<10}{'scenario':<38}{'requests':>9}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}{'wall s':>9}")
    print("\n".join(lines))
    for stage in (ours_stage, baseline_stage):
        target.docker("image", "rm", f"{stage.project}-app:rollback", check=False)


def remove_placeholders(target: LocalTarget) -> None:
    listed = target.docker("ps", "--all", "--quiet", "--filter", f"label={PLACEHOLDER}").stdout.decode().split()
    if listed:
        target.docker("rm", "--force", *listed)


if __name__ == "__main__":
    main()
