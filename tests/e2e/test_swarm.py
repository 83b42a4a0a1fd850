"""A stage on three hosts, on Docker Swarm, released and rolled back through the runner as one host is.

The hosts are network namespaces of this machine with a dockerd and an sshd each (tests/e2e/swarm_hosts.py),
made once for the module and removed with everything on them afterwards. The tests run in order against one
stage, each from the state the previous one left; every assertion reads the hosts: what each host's proxy answers,
what Swarm runs where, the database's rows.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from embedded_default.target import APP_VERSIONS, LocalTarget
from tests.e2e.load import Load
from tests.e2e.stage import Stage, explain, processes_running
from tests.e2e.swarm_hosts import Host, SwarmHosts, listed, new_swarm_stage, swarm_hosts

PROXY_PORT = 14000
# A release names its version in every step: all of them run, the database step among them.
RELEASE_STEPS = ["server-backup", "server-migrate", "server-up"]
ALL_STEPS = ["server-files", "server-env", "server-database", *RELEASE_STEPS]
DATABASE = ("kametrix", "kametrix_local")
# Under load through every host's proxy, a few requests a second each: enough to cross every task's switch.
RATE = 40


@pytest.fixture(scope="module")
def hosts(target: LocalTarget) -> Iterator[SwarmHosts]:
    """Four hosts: the stage starts on three, the fourth joins when the stack lists it."""
    with swarm_hosts(4, target) as made:
        yield made


@pytest.fixture(scope="module")
def stage(target: LocalTarget, prepared_stack: Path, pulumi_cli: Path, hosts: SwarmHosts) -> Stage:
    # Short health checks: a version that never turns healthy is given up after ten seconds.
    return new_swarm_stage(
        target, prepared_stack, pulumi_cli, hosts, (1, 2, 3), PROXY_PORT, {"release.healthAttempts": 10}
    )


# --- what the hosts say ------------------------------------------------------------------------------------------


def answer(host: Host, path: str = "/api/version") -> Any:
    """What the host's proxy answers, as the front load balancer would ask it."""
    url = f"http://{host.address}:{PROXY_PORT}{path}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return json.loads(response.read())


def served(hosts: SwarmHosts, *numbers: int) -> dict[str, str]:
    return {hosts[number].name: answer(hosts[number])["version"] for number in numbers}


def eventually(what: str, probe: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        failure: Exception | None = None
        try:
            found = probe()
        except (OSError, AssertionError, ValueError) as error:
            found, failure = None, error
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout}s ({failure or found!r})")
        time.sleep(1)


def nodes(hosts: SwarmHosts) -> dict[str, dict[str, str]]:
    """The Swarm's nodes by address, as its manager (the database host) lists them."""
    manager = hosts[1]
    ids = manager.docker("node", "ls", "--quiet").stdout.split()
    template = "{{.Status.Addr}} {{.Spec.Role}} {{.Status.State}} {{.Spec.Availability}} "
    template += '{{index .Spec.Labels "kametrix.database"}}'
    found = {}
    for line in manager.docker("node", "inspect", "--format", template, *ids).stdout.splitlines():
        address, role, state, availability, *label = line.split()
        found[address] = {"role": role, "state": state, "availability": availability, "database": "".join(label)}
    return found


def node_addresses(hosts: SwarmHosts) -> dict[str, str]:
    """Each node's address by its ID."""
    manager = hosts[1]
    ids = manager.docker("node", "ls", "--quiet").stdout.split()
    rows = manager.docker("node", "inspect", "--format", "{{.ID}} {{.Status.Addr}}", *ids).stdout.splitlines()
    return dict(row.split() for row in rows)


def app_tasks(hosts: SwarmHosts, stage: Stage) -> list[tuple[str, str]]:
    """(node address, image) of each app task Swarm wants running."""
    manager = hosts[1]
    service = f"{stage.project}_app"
    ids = manager.docker("service", "ps", "--quiet", "--filter", "desired-state=running", service).stdout.split()
    if not ids:
        return []
    addresses = node_addresses(hosts)
    template = "{{.NodeID}} {{.Spec.ContainerSpec.Image}}"
    rows = manager.docker("inspect", "--type", "task", "--format", template, *ids).stdout.splitlines()
    return [(addresses.get(node, node), image) for node, image in (row.split() for row in rows)]


def swarm_state(hosts: SwarmHosts, stage: Stage) -> str:
    """What Swarm says of the app and its nodes, for a failure's message."""
    manager, service = hosts[1], f"{stage.project}_app"
    template = "{{.Name}} {{.Node}} {{.Image}} {{.DesiredState}} {{.CurrentState}} {{.Error}}"
    return "\n".join(
        [
            manager.docker("service", "ps", "--format", template, service, check=False).stdout,
            manager.docker("service", "inspect", "--format", "{{json .UpdateStatus}}", service, check=False).stdout,
            manager.docker("node", "ls", check=False).stdout,
        ]
    )


def proxy_logs(hosts: SwarmHosts, stage: Stage, *numbers: int) -> str:
    """What the proxies of these hosts logged (errors only: nginx logs no access), for a failure's message."""
    found = []
    for number in numbers:
        host = hosts[number]
        label = f"label=com.docker.swarm.service.name={stage.project}_proxy"
        for container in host.docker("ps", "--all", "--quiet", "--filter", label, check=False).stdout.split():
            logs = host.docker("logs", "--tail", "40", container, check=False)
            found.append(f"{host.name} {container}:\n{logs.stdout}{logs.stderr}")
    return "\n".join(found)


def sql(hosts: SwarmHosts, stage: Stage, query: str) -> list[str]:
    container = stage.setting("app.dbContainer")
    done = hosts[1].docker("exec", container, "psql", "-U", DATABASE[0], "-d", DATABASE[1], "-Atc", query)
    return done.stdout.split()


def logins(hosts: SwarmHosts, stage: Stage) -> list[str]:
    """The app's login roles that may log in now (lib/compose.sh): only the one the serving tasks run as."""
    return sql(hosts, stage, "select rolname from pg_roles where rolcanlogin and rolname like 'kametrix\\_%'")


def recorded(stage: Stage, key: str) -> str:
    """A value of the database host's release record (the hosts share this machine's files)."""
    lines = Path(stage.app_dir, "release.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)[key]


def release_lock_held(stage: Stage) -> bool:
    return Path(stage.app_dir, ".release-lock").exists()


def digest_of(stage: Stage, version: str) -> str:
    return stage.digests(version)["app"]


def version_of(stage: Stage, image: str) -> str:
    """The version of an app image, by the digests the stage recorded for each version (not by what the local
    target's registry serves now: another test may stop it, or push again)."""
    digest = image.rpartition("@")[2]
    return next(version for version in APP_VERSIONS if digest_of(stage, version) == digest)


def loads(hosts: SwarmHosts, *numbers: int, path: str = "/api/version") -> dict[str, Load]:
    return {hosts[n].name: Load(f"http://{hosts[n].address}:{PROXY_PORT}{path}", rate=RATE) for n in numbers}


def failed_requests(running: dict[str, Load]) -> dict[str, Any]:
    return {name: load.result for name, load in running.items() if load.result.failed or load.result.requests < 50}


class Loaded:
    """Constant load through the proxies of the given hosts while the block runs."""

    def __init__(self, hosts: SwarmHosts, *numbers: int, path: str = "/api/version") -> None:
        self.running = loads(hosts, *numbers, path=path)

    def __enter__(self) -> Loaded:
        for load in self.running.values():
            load.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for load in self.running.values():
            load.__exit__(None, None, None)

    @property
    def failures(self) -> dict[str, Any]:
        return failed_requests(self.running)


# --- the tests ---------------------------------------------------------------------------------------------------


def test_a_first_release_makes_the_swarm_and_serves_the_version_on_every_host(hosts: SwarmHosts, stage: Stage) -> None:
    result = stage.up("v1.0.0")
    assert result.ok, explain(result)
    cluster = ["cluster-init", "cluster-tokens", "cluster-join-10.213.77.12", "cluster-join-10.213.77.13"]
    assert result.ran() == [*cluster, "cluster-nodes", *ALL_STEPS] or set(result.ran()) == {
        *cluster,
        "cluster-nodes",
        *ALL_STEPS,
    }, result.ran()
    assert served(hosts, 1, 2, 3) == {"kswarm-h1": "v1.0.0", "kswarm-h2": "v1.0.0", "kswarm-h3": "v1.0.0"}
    assert nodes(hosts) == {
        hosts[1].address: {"role": "manager", "state": "ready", "availability": "active", "database": "true"},
        hosts[2].address: {"role": "worker", "state": "ready", "availability": "active", "database": ""},
        hosts[3].address: {"role": "worker", "state": "ready", "availability": "active", "database": ""},
    }
    assert [image for _, image in app_tasks(hosts, stage)] == [f"{stage.repository}@{digest_of(stage, 'v1.0.0')}"] * 2
    assert sql(hosts, stage, "select migration_name from _prisma_migrations order by 1") == [
        "001_create_customers",
        "002_create_calls",
    ]
    assert recorded(stage, "VERSION") == "v1.0.0" and not release_lock_held(stage)
    assert logins(hosts, stage) == [f"kametrix_{recorded(stage, 'LIVE_COLOUR')}"]
    assert oct(Path(stage.app_dir, ".env").stat().st_mode & 0o777) == "0o600"
    assert not Path(stage.app_dir, ".env.stack").exists(), "the unquoted settings outlived the deploy"


def test_the_join_tokens_never_show_in_the_clear(stage: Stage) -> None:
    state = stage.state_file().read_text()
    events = (stage.work_dir / "events.jsonl").read_text()
    assert "SWMTKN" not in state, "a join token is in the stack's state in the clear"
    assert "SWMTKN" not in events, "a join token is in the engine's events"
    tokens = next(
        resource
        for resource in json.loads(state)["checkpoint"]["latest"]["resources"]
        if resource["urn"].endswith("::cluster-tokens")
    )
    assert tokens["outputs"]["stdout"].get("4dabf18193072939515e22adb298388d") == "1b47061264138c4ac30d75fd1eb44270", (
        "the tokens' output is not a secret"
    )


def test_an_unchanged_stack_changes_nothing(stage: Stage) -> None:
    result = stage.up()
    assert result.ok, explain(result)
    assert result.ran() == [], "an update of an unchanged stack ran steps"


def test_status_shows_each_host_and_the_version_its_tasks_run(hosts: SwarmHosts, stage: Stage) -> None:
    result = stage.run("status")
    assert result.ok, result.output
    lines = result.output.splitlines()
    for number in (1, 2, 3):
        line = next((line for line in lines if f" {hosts[number].address} (" in line), "")
        assert "ready, active" in line and "proxy (running)" in line, result.output
    assert "(manager, database)" in result.output, result.output
    assert sum(line.count("app v1.0.0 (running)") for line in lines) == 2, result.output


def test_a_release_under_load_fails_no_request_on_any_host(hosts: SwarmHosts, stage: Stage) -> None:
    with Loaded(hosts, 1, 2, 3) as load:
        result = stage.up("v2.0.0")
    assert result.ok, explain(result)
    assert result.ran() == RELEASE_STEPS, "a release changed the Swarm itself"
    assert load.failures == {}, load.failures
    assert served(hosts, 1, 2, 3) == {"kswarm-h1": "v2.0.0", "kswarm-h2": "v2.0.0", "kswarm-h3": "v2.0.0"}
    assert "backing up: v2.0.0 has migrations to apply" in result.step("server-backup").stdout
    assert sql(hosts, stage, "select count(*) from _prisma_migrations where migration_name like '003%'") == ["1"]
    assert recorded(stage, "PREVIOUS_VERSION") == "v1.0.0" and not release_lock_held(stage)


def test_a_version_that_never_turns_healthy_is_rolled_back_by_swarm_and_fails_no_request(
    hosts: SwarmHosts, stage: Stage
) -> None:
    record = Path(stage.app_dir, "release.env").read_text()
    with Loaded(hosts, 1, 2, 3) as load:
        result = stage.up("v3.0.0")
    failed = result.failed
    assert failed is not None and failed.name == "server-up", explain(result)
    assert "release v3.0.0 never turned healthy and Swarm rolled it back (see above); v2.0.0" in failed.error
    assert "keeps serving" in failed.error
    assert load.failures == {}, load.failures
    assert served(hosts, 1, 2, 3) == {"kswarm-h1": "v2.0.0", "kswarm-h2": "v2.0.0", "kswarm-h3": "v2.0.0"}
    assert Path(stage.app_dir, "release.env").read_text() == record, "the record names a version that does not serve"
    assert {image for _, image in app_tasks(hosts, stage)} == {f"{stage.repository}@{digest_of(stage, 'v2.0.0')}"}
    assert logins(hosts, stage) == [f"kametrix_{recorded(stage, 'LIVE_COLOUR')}"], "the failed tasks' role logs in"
    assert not release_lock_held(stage)


def test_a_rollback_by_config_runs_no_migration_and_fails_no_request(hosts: SwarmHosts, stage: Stage) -> None:
    # Without a version: the one the database host records as served before the live one.
    with Loaded(hosts, 1, 2, 3) as load:
        result = stage.run("rollback", "--yes")
    assert result.ok, explain(result)
    assert "rolling back to v1.0.0" in result.output, result.output
    assert load.failures == {}, load.failures
    assert "no backup: v1.0.0 already ran on this server" in result.step("server-backup").stdout
    assert "no migration: v1.0.0 already ran on this server" in result.step("server-migrate").stdout
    assert served(hosts, 1, 2, 3) == {"kswarm-h1": "v1.0.0", "kswarm-h2": "v1.0.0", "kswarm-h3": "v1.0.0"}
    assert "003_add_customer_email" in sql(hosts, stage, "select migration_name from _prisma_migrations"), (
        "a rollback ran down-migrations"
    )


def test_a_rotated_secret_reaches_every_task_in_one_rolling_update_with_no_failed_request(
    hosts: SwarmHosts, stage: Stage
) -> None:
    value, password = "TESTSECRET-rotated-on-every-host", "TESTSECRET-rotated-database-password-on-swarm"
    colour = recorded(stage, "LIVE_COLOUR")
    stage.set_secret("stripeSecretKey", value)
    stage.set_secret("postgresPassword", password)
    # Each /api/health asks the database on a connection of its own: a moment where a task and the database
    # disagreed on the password would fail it.
    with Loaded(hosts, 1, 2, 3, path="/api/health") as load:
        result = stage.up()
    assert result.ok, explain(result)
    assert result.ran() == ["server-env", "server-up"], "a settings change backed up, migrated or changed the Swarm"
    assert load.failures == {}, load.failures
    # Each proxy sends each request to any task: every answer, from every host, comes with the new settings.
    seen = [answer(hosts[number], "/api/env-check") for number in (1, 2, 3) * 4]
    assert {found["STRIPE_SECRET_KEY"]["sha256"] for found in seen} == {hashlib.sha256(value.encode()).hexdigest()}
    assert {found["POSTGRES_PASSWORD"]["sha256"] for found in seen} == {hashlib.sha256(password.encode()).hexdigest()}
    assert served(hosts, 1, 2, 3) == {"kswarm-h1": "v1.0.0", "kswarm-h2": "v1.0.0", "kswarm-h3": "v1.0.0"}
    # The new tasks log in as the other colour's role, with the new password; the old tasks' role logs in no more.
    assert recorded(stage, "LIVE_COLOUR") != colour
    assert logins(hosts, stage) == [f"kametrix_{recorded(stage, 'LIVE_COLOUR')}"]
    assert not release_lock_held(stage)


def test_a_host_whose_dockerd_dies_mid_release_leaves_the_others_serving_and_converges_once_back(
    hosts: SwarmHosts, stage: Stage
) -> None:
    service = f"{stage.project}_app"
    workers = {hosts[number].address: hosts[number] for number in (2, 3)}
    new_image = f"{stage.repository}@{digest_of(stage, 'v2.0.0')}"
    killed: list[Host] = []
    # Asked once: each docker call of a poll widens the gap in which a task passes unseen.
    addresses = node_addresses(hosts)

    def kill_a_worker_swarm_just_gave_a_new_task(_: object) -> bool:
        """Once Swarm places a task of the new version on a worker and before it runs there, that worker's dockerd
        dies: the hardest moment, since Swarm's update then waits for a task that cannot start. With the image on
        the worker already, a task passes from assigned to running in well under a second: starting counts too."""
        if not processes_running(f"{stage.app_dir}/bin/swarm-up.sh"):
            return False
        template = "{{.NodeID}} {{.Spec.ContainerSpec.Image}} {{.Status.State}}"
        ids = hosts[1].docker("service", "ps", "--quiet", service, check=False).stdout.split()
        rows = hosts[1].docker("inspect", "--type", "task", "--format", template, *ids, check=False).stdout.split("\n")
        # A task not placed yet has no node.
        for node, image, state in (row.split() for row in rows if len(row.split()) == 3):
            before_it_runs = state in ("assigned", "accepted", "preparing", "ready", "starting")
            if image == new_image and before_it_runs and addresses.get(node) in workers:
                killed.append(workers[addresses[node]])
                killed[0].kill_dockerd()
                return True
        return False

    with Loaded(hosts, 1, 2, 3) as load:
        result = stage.up_interrupted("v2.0.0", kill_a_worker_swarm_just_gave_a_new_task)
    assert killed, f"Swarm gave no worker a task of the new version\n{swarm_state(hosts, stage)}"
    victim = killed[0]
    survivors = [number for number in (1, 2, 3) if hosts[number] != victim]
    assert not victim.dockerd_runs(), explain(result)
    assert {name: found for name, found in load.failures.items() if name != victim.name} == {}, (
        f"{load.failures}\n{proxy_logs(hosts, stage, *survivors)}\n{swarm_state(hosts, stage)}"
    )
    # The release ends on the hosts that stayed up: every task Swarm runs there runs it, and the record says so.
    assert result.ok, f"{swarm_state(hosts, stage)}\n{explain(result)}"
    running = {version_of(stage, image) for address, image in app_tasks(hosts, stage) if address != victim.address}
    assert running == {"v2.0.0"} and recorded(stage, "VERSION") == "v2.0.0", swarm_state(hosts, stage)
    # Their proxies answer; the victim's old task, which outlives its dockerd, may answer too until it is back.
    assert set(served(hosts, *survivors).values()) <= {"v1.0.0", "v2.0.0"}

    victim.start_dockerd()
    eventually(f"{victim.name} ready again", lambda: nodes(hosts)[victim.address]["state"] == "ready")
    again = stage.up("v2.0.0")
    assert again.ok, explain(again)
    eventually(
        "every host serving v2.0.0",
        lambda: served(hosts, 1, 2, 3) == {"kswarm-h1": "v2.0.0", "kswarm-h2": "v2.0.0", "kswarm-h3": "v2.0.0"},
    )
    assert recorded(stage, "VERSION") == "v2.0.0" and not release_lock_held(stage)


def test_a_host_added_and_one_removed_by_editing_the_stack(hosts: SwarmHosts, stage: Stage) -> None:
    stage.configure({"server.hosts": listed(hosts, (1, 2, 4))})
    with Loaded(hosts, 1, 2) as load:
        result = stage.up()
    assert result.ok, explain(result)
    # Only the Swarm changes. A host that stays may check its membership again (its join step learns its node ID
    # from the Swarm's list only once it is in it): it finds itself in the Swarm and changes nothing.
    ran = result.ran()
    assert {"cluster-init", "cluster-join-10.213.77.14", "cluster-nodes"} <= set(ran), ran
    assert set(ran) <= {"cluster-init", "cluster-join-10.213.77.12", "cluster-join-10.213.77.14", "cluster-nodes"}, ran
    if "cluster-join-10.213.77.12" in ran:
        assert result.step("cluster-join-10.213.77.12").stdout.startswith("already in the Swarm as node"), ran
    assert load.failures == {}, load.failures
    assert set(nodes(hosts)) == {hosts[1].address, hosts[2].address, hosts[4].address}
    assert hosts[3].address not in {address for address, _ in app_tasks(hosts, stage)}
    eventually("the new host serving", lambda: served(hosts, 4) == {"kswarm-h4": "v2.0.0"})
    with pytest.raises(OSError):
        answer(hosts[3])

    # The removed host comes back: it leaves the Swarm it was removed from and joins again.
    stage.configure({"server.hosts": listed(hosts, (1, 2, 3))})
    result = stage.up()
    assert result.ok, explain(result)
    assert "left the Swarm it was in" in result.step("cluster-join-10.213.77.13").stdout, explain(result)
    assert set(nodes(hosts)) == {hosts[1].address, hosts[2].address, hosts[3].address}
    eventually(
        "every host serving v2.0.0",
        lambda: served(hosts, 1, 2, 3) == {"kswarm-h1": "v2.0.0", "kswarm-h2": "v2.0.0", "kswarm-h3": "v2.0.0"},
    )
