"""What a stage's hosts must be: one host (`server.host`), or several on Docker Swarm (`server.hosts`), with the
managers, database host and addresses Swarm can run on.

Read from the raw `server` section, entry by entry, so that an invalid key of one host hides no rule: one run
reports the invalid key and every breach of the rules below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from components.config.problems import Problem, full_key

ROLES = ("manager", "worker")
# The keys that describe the one host, and so stay out of a stage whose hosts are listed.
ONE_HOST_KEYS = ("host", "hostKey")
# The rules below in a few words each, by the key they name: the "needed in" column of docs/configuration.md.
CLUSTER_RULES: Mapping[str, str] = {
    "server.host": "every stage without server.hosts; absent with server.hosts",
    "server.hostKey": "every stage without server.hosts; absent with server.hosts",
    "server.hosts": "an odd number of managers; exactly one host with database, a manager; no host or address twice",
    "server.replicas": "only with server.hosts",
    "backup": "only without server.hosts",
}


def cluster_policy(server: Any) -> list[Problem]:
    if not isinstance(server, dict):
        return []
    hosts = server.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        return _one_host_policy(server)
    problems = [
        Problem(
            full_key(f"server.{key}"),
            "a stage on several hosts lists each of them under server.hosts, this one too; allowed: absent; "
            f"received {_shown(key, server[key])}",
        )
        for key in ONE_HOST_KEYS
        if key in server
    ]
    entries = [(index, entry) for index, entry in enumerate(hosts) if isinstance(entry, dict)]
    problems += _manager_problems(entries)
    problems += _database_problems(entries)
    problems += _repeated("host", "a host and port not listed before", entries)
    problems += _repeated("advertiseAddress", "an address no other host advertises", entries)
    return problems


def backup_policy(server: Any, backup: Any) -> list[Problem]:
    """Off-site backups run on a stage on one host: the Swarm's stack file has no scheduler service, and its database
    host's PostgreSQL archives no WAL."""
    hosts = server.get("hosts") if isinstance(server, dict) else None
    if not hosts or backup is None:
        return []
    return [
        Problem(
            full_key("backup"),
            "off-site backups (pgBackRest) run on a stage on one host only; a stage on server.hosts keeps the "
            "release's pg_dump on its database host (docs/swarm.md); allowed: absent with server.hosts; received a "
            "backup section",
        )
    ]


def _one_host_policy(server: Mapping[str, Any]) -> list[Problem]:
    problems = [
        Problem(full_key(f"server.{key}"), "required key is missing") for key in ONE_HOST_KEYS if key not in server
    ]
    if "replicas" in server:
        problems.append(
            Problem(
                full_key("server.replicas"),
                "counts the app's Swarm tasks, which only a stage on several hosts runs (server.hosts); one host "
                f"runs the app in one colour at a time; allowed: absent; received {server['replicas']!r}",
            )
        )
    return problems


def _manager_problems(entries: list[tuple[int, dict[str, Any]]]) -> list[Problem]:
    managers = [_named(index, entry) for index, entry in entries if entry.get("role") == "manager"]
    if len(managers) % 2 == 1:
        return []
    received = f"{len(managers)} ({', '.join(managers)})" if managers else "none"
    return [
        Problem(
            full_key("server.hosts"),
            "Swarm's managers keep working while a majority of them runs: 3 managers survive one host down, and 4 "
            "still only one; allowed: an odd number of hosts with role manager (1, 3, 5 or 7); "
            f"received {received}",
        )
    ]


def _database_problems(entries: list[tuple[int, dict[str, Any]]]) -> list[Problem]:
    holders = [(index, entry) for index, entry in entries if entry.get("database") is True]
    if len(holders) != 1:
        received = ", ".join(_named(index, entry) for index, entry in holders) or "none"
        return [
            Problem(
                full_key("server.hosts"),
                "PostgreSQL runs on one host, where its data and backups stay; allowed: database: true on exactly "
                f"one host; received {received}",
            )
        ]
    index, entry = holders[0]
    role = entry.get("role")
    if role in ROLES and role != "manager":
        return [
            Problem(
                full_key(f"server.hosts.{index}.role"),
                "the database host runs the release steps, which deploy to Swarm and so need a manager; allowed: "
                f"manager; received {role!r}",
            )
        ]
    return []


def _repeated(key: str, allowed: str, entries: list[tuple[int, dict[str, Any]]]) -> list[Problem]:
    first: dict[str, int] = {}
    problems = []
    for index, entry in entries:
        value = entry.get(key)
        if not isinstance(value, str):
            continue
        # Two hosts behind one address differ by their SSH port.
        identity = f"{value}:{entry.get('port')}" if key == "host" else value
        if identity in first:
            problems.append(
                Problem(
                    full_key(f"server.hosts.{index}.{key}"),
                    f"allowed: {allowed} (server.hosts.{first[identity]} has it); received {value!r}",
                )
            )
        first.setdefault(identity, index)
    return problems


def _named(index: int, entry: Mapping[str, Any]) -> str:
    host = entry.get("host")
    return f"hosts.{index} ({host})" if isinstance(host, str) else f"hosts.{index}"


def _shown(key: str, value: Any) -> str:
    # A host key is public, but long: its type tells which was given.
    if key == "hostKey" and isinstance(value, str):
        return f"a key ({value.partition(' ')[0]})"
    return repr(value)
