"""A stage is one host, as it always was, or several hosts on Docker Swarm: the hosts Swarm can run on, or every
reason why not, at once."""

from __future__ import annotations

from typing import Any

import pytest

from components import config
from tests import kit

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleHostKeyOfATestHostExampleHostKey00"


def host(number: int, role: str = "worker", database: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "host": f"app-{number}.example.net",
        "hostKey": KEY,
        "role": role,
        "database": database,
        "advertiseAddress": f"10.0.0.{number}",
        **extra,
    }


THREE_HOSTS = [host(1, "manager", database=True), host(2), host(3)]
# The one host's keys give way to the list; off-site backups run on one host only (cluster_policy.backup_policy),
# so a stage on several keeps the release's pg_dump.
SWARM = {
    "server.hosts": THREE_HOSTS,
    "server.host": kit.DELETE,
    "server.hostKey": kit.DELETE,
    "backup": kit.DELETE,
    "release.backup": "before-migrations",
}


def load(stack: str = "production", **overrides: Any) -> config.StackConfig:
    values, secret_keys = kit.stack_config(stack, overrides)
    stack_files = {"staging": kit.stack_file("staging")["config"]} if stack == "production" else None
    return config.load(stack, values, set(secret_keys), stack_files)


def problems(stack: str = "production", **overrides: Any) -> list[str]:
    with pytest.raises(config.ConfigError) as refused:
        load(stack, **overrides)
    return [str(problem) for problem in refused.value.problems]


@pytest.mark.parametrize("stack", ["staging", "production", "local"])
def test_a_stage_that_lists_no_hosts_is_the_one_host_it_always_was(stack: str) -> None:
    server = load(stack).plain.server
    assert server.hosts == []
    assert server.release_host() is server, "a one-host stage releases somewhere else than its one host"


@pytest.mark.parametrize("key", ["host", "hostKey"])
def test_a_one_host_stage_still_needs_its_host_and_host_key(key: str) -> None:
    assert problems(**{f"server.{key}": kit.DELETE}) == [f"kametrix-deploy:server.{key}: required key is missing"]


def test_a_stage_on_several_hosts_releases_on_the_host_that_holds_the_database() -> None:
    hosts = [host(1, "manager"), host(2, "manager", database=True, port=2200, user="ops"), host(3, "manager")]
    server = load(**{**SWARM, "server.hosts": hosts}).plain.server
    release_host = server.release_host()
    assert (release_host.host, release_host.port, release_host.user) == ("app-2.example.net", 2200, "ops")
    assert release_host.hosts == [] and release_host.app_dir == server.app_dir
    three = load(**SWARM).plain.server.release_host()
    assert (three.port, three.user) == (22, "deploy"), "a host without its own port and user takes server.*'s"


def test_every_host_combination_swarm_cannot_run_is_refused_at_once_naming_key_allowed_and_received() -> None:
    hosts = [
        host(1, "worker", database=True),
        host(2, "manager", database=True),
        host(3, "manager", advertiseAddress="10.0.0.2"),
        host(2, "worker", advertiseAddress="10.0.0.4"),
    ]
    found = problems(**{"server.hosts": hosts})
    assert found == [
        "kametrix-deploy:server.host: a stage on several hosts lists each of them under server.hosts, this one too; "
        "allowed: absent; received 'prod.kametrix.example'",
        "kametrix-deploy:server.hostKey: a stage on several hosts lists each of them under server.hosts, this one "
        "too; allowed: absent; received a key (ssh-ed25519)",
        "kametrix-deploy:server.hosts: Swarm's managers keep working while a majority of them runs: 3 managers "
        "survive one host down, and 4 still only one; allowed: an odd number of hosts with role manager (1, 3, 5 or "
        "7); received 2 (hosts.1 (app-2.example.net), hosts.2 (app-3.example.net))",
        "kametrix-deploy:server.hosts: PostgreSQL runs on one host, where its data and backups stay; allowed: "
        "database: true on exactly one host; received hosts.0 (app-1.example.net), hosts.1 (app-2.example.net)",
        "kametrix-deploy:server.hosts.3.host: allowed: a host and port not listed before (server.hosts.1 has it); "
        "received 'app-2.example.net'",
        "kametrix-deploy:server.hosts.2.advertiseAddress: allowed: an address no other host advertises "
        "(server.hosts.1 has it); received '10.0.0.2'",
        "kametrix-deploy:backup: off-site backups (pgBackRest) run on a stage on one host only; a stage on "
        "server.hosts keeps the release's pg_dump on its database host (docs/swarm.md); allowed: absent with "
        "server.hosts; received a backup section",
    ]


def test_a_stage_without_a_manager_is_refused() -> None:
    found = problems(**{**SWARM, "server.hosts": [host(1, database=True), host(2)]})
    assert any(
        "server.hosts: Swarm's managers" in problem and problem.endswith("received none") for problem in found
    ), found


def test_a_stage_without_a_database_host_is_refused() -> None:
    found = problems(**{**SWARM, "server.hosts": [host(1, "manager"), host(2)]})
    assert found == [
        "kametrix-deploy:server.hosts: PostgreSQL runs on one host, where its data and backups stay; allowed: "
        "database: true on exactly one host; received none"
    ]


def test_the_database_host_is_a_manager() -> None:
    found = problems(**{**SWARM, "server.hosts": [host(1, "manager"), host(2, database=True)]})
    assert found == [
        "kametrix-deploy:server.hosts.1.role: the database host runs the release steps, which deploy to Swarm and so "
        "need a manager; allowed: manager; received 'worker'"
    ]


def test_an_invalid_key_of_one_host_hides_no_rule_on_the_others() -> None:
    found = problems(**{**SWARM, "server.hosts": [host(1, "manager", database=True, hostKey="none"), host(2, "boss")]})
    assert "kametrix-deploy:server.hosts.0.hostKey: allowed: an SSH public host key line; received 'none'" in found
    assert "kametrix-deploy:server.hosts.1.role: allowed: 'manager' or 'worker'; received 'boss'" in found
    assert len(found) == 2, "the one manager and the one database host, both on the invalid entry, still count"


def test_swarm_tasks_are_counted_only_where_swarm_runs_them() -> None:
    found = problems(**{"server.replicas": 3})
    assert found == [
        "kametrix-deploy:server.replicas: counts the app's Swarm tasks, which only a stage on several hosts runs "
        "(server.hosts); one host runs the app in one colour at a time; allowed: absent; received 3"
    ]
    assert load(**{**SWARM, "server.replicas": 3}).plain.server.replicas == 3


def test_a_stage_on_several_hosts_is_refused_off_site_backups_it_would_not_take() -> None:
    backup = {"repository": {"endpoint": "s3.example.net", "bucket": "kametrix-backups"}}
    found = problems(**{**SWARM, "backup": backup})
    assert [problem for problem in found if problem.startswith("kametrix-deploy:backup:")] == [
        "kametrix-deploy:backup: off-site backups (pgBackRest) run on a stage on one host only; a stage on "
        "server.hosts keeps the release's pg_dump on its database host (docs/swarm.md); allowed: absent with "
        "server.hosts; received a backup section"
    ]
