"""The stage's Docker Swarm, as its stack lists the hosts: the database host initialises it and creates the
stage's overlay network, every other host joins it with a join token that the stack keeps as a secret, and the
database host then keeps the nodes as declared (roles, the database label, a host no longer listed drained and
removed).

Each step is a command over SSH that runs only when what it is told changes: an unchanged stack runs none. The
scripts travel with each command (stdin), so a host needs none of the stage's files; a join token travels there
too, never on a command line, and the step that reads the tokens prints to no log.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pulumi
from pulumi_command import remote
from pydantic import SecretStr

from components import remote_steps
from components.config import ClusterHost, ServerSettings

SWARM_PORT = 2377
TOKEN_FILE = "join-token"


@dataclass(frozen=True)
class SwarmClusterArgs:
    server: ServerSettings
    network: str
    """The stage's overlay network (components/swarm_files.py)."""
    drain_timeout_seconds: int
    """How long a removed host's tasks may take to finish before it leaves regardless."""
    ssh_private_key: SecretStr


def declared(hosts: list[ClusterHost]) -> str:
    """The hosts as swarm-nodes.sh reads them: ADDRESS=ROLE[+database], one word each."""
    return " ".join(f"{host.advertise_address}={host.role}{'+database' if host.database else ''}" for host in hosts)


def node_of(init_stdout: str | None, address: str) -> str:
    """The node ID the Swarm lists at `address`, as swarm-init.sh printed it; empty for a host not in it yet."""
    nodes = dict(value.partition("=")[::2] for value in _values(init_stdout, "node"))
    return nodes.get(address, "")


def join_bundle(tokens_stdout: str | None, role: str) -> str:
    """The join script, and the join token of `role` as a file, for a join step's stdin."""
    return remote_steps.shipped_bundle("swarm-join.sh", {TOKEN_FILE: remote_steps.reported(tokens_stdout, role)})


def _values(stdout: str | None, key: str) -> list[str]:
    return [line.partition("=")[2] for line in (stdout or "").splitlines() if line.startswith(f"{key}=")]


class SwarmCluster(pulumi.ComponentResource):
    ready: remote.Command
    """The last step: the Swarm is as declared once it ran."""

    def __init__(self, name: str, args: SwarmClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kametrix:swarm_cluster:SwarmCluster", name, None, opts)
        server = args.server
        database = next(host for host in server.hosts if host.database)

        def step(
            step_name: str,
            host: ClusterHost,
            create: pulumi.Input[str],
            stdin: pulumi.Input[str],
            triggers: list[pulumi.Input[str]] | None = None,
            prints_secrets: bool = False,
            after: list[pulumi.Resource] | None = None,
        ) -> remote.Command:
            connection = remote_steps.connection(server, args.ssh_private_key, host)
            return remote_steps.command(
                f"{name}-{step_name}", self, connection, create, stdin, triggers, prints_secrets, after
            )

        # Runs again whenever the list of hosts changes, so that the joins read which hosts the Swarm lists now.
        init = step(
            "init",
            database,
            remote_steps.shipped(
                "swarm-init.sh", {"advertise-address": database.advertise_address, "network": args.network}
            ),
            remote_steps.shipped_bundle("swarm-init.sh"),
            triggers=[declared(server.hosts)],
        )
        leader = init.stdout.apply(lambda out: remote_steps.reported(out, "leader"))
        tokens = step(
            "tokens",
            database,
            remote_steps.shipped("swarm-tokens.sh", {"leader": leader}),
            remote_steps.shipped_bundle("swarm-tokens.sh"),
            prints_secrets=True,
        )
        # A join is told the node ID the Swarm lists at its host, to tell a host in the Swarm from one in another
        # Swarm or removed from this one. A host joining learns it only from init's next run: its join then runs
        # once more, and finds it is in the Swarm.
        joins = [
            step(
                f"join-{host.advertise_address}",
                host,
                remote_steps.shipped(
                    "swarm-join.sh",
                    {
                        "advertise-address": host.advertise_address,
                        "manager-address": database.advertise_address,
                        "node-id": init.stdout.apply(functools.partial(node_of, address=host.advertise_address)),
                    },
                    file_flag=("token-file", TOKEN_FILE),
                ),
                pulumi.Output.secret(tokens.stdout.apply(functools.partial(join_bundle, role=host.role))),
            )
            for host in server.hosts
            if not host.database
        ]
        self.ready = step(
            "nodes",
            database,
            remote_steps.shipped(
                "swarm-nodes.sh",
                {"declared": declared(server.hosts), "drain-timeout-seconds": str(args.drain_timeout_seconds)},
            ),
            remote_steps.shipped_bundle("swarm-nodes.sh"),
            after=[init, *joins],
        )
        self.register_outputs({})
