"""A stage on several hosts: its Swarm declared from the hosts the stack lists, then released on the database host by
the one-host stage's own steps, with Swarm rolling the app forward one health-gated task at a time."""

from __future__ import annotations

import base64
import io
import itertools
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import yaml

from components import server_files, shared_facts, swarm_files
from tests import kit
from tests.kit import Deployment, Resource
from tests.test_swarm_config import KEY

COMMAND = "command:remote:Command"
CLUSTER_STEPS = ["cluster-init", "cluster-tokens", "cluster-join-10.0.0.2", "cluster-join-10.0.0.3", "cluster-nodes"]
RELEASE_STEPS = ["server-files", "server-env", "server-database", "server-backup", "server-migrate", "server-up"]


def host(number: int, role: str = "worker", database: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "host": f"app-{number}.example.net",
        "hostKey": KEY.replace("00", f"{number:02d}"),
        "role": role,
        "database": database,
        "advertiseAddress": f"10.0.0.{number}",
        **extra,
    }


THREE = [host(1, "manager", database=True), host(2, port=2202, user="ops"), host(3)]


def on_hosts(hosts: list[dict[str, Any]] = THREE, **overrides: Any) -> Deployment:
    return kit.run_stack(
        "local",
        overrides={"server.hosts": hosts, "server.host": kit.DELETE, "server.hostKey": kit.DELETE, **overrides},
    )


def steps(deployment: Deployment) -> dict[str, Resource]:
    return {resource.name: resource for resource in deployment.of_type(COMMAND)}


def bundled(step: Resource) -> dict[str, str]:
    """The files a step's stdin carries (the files step's bundle)."""
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(step.plain("stdin")))) as tar:
        return {member.name: tar.extractfile(member).read().decode() for member in tar.getmembers()}  # type: ignore[union-attr]


def stack_file(deployment: Deployment) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(bundled(steps(deployment)["server-files"])[swarm_files.STACK_FILE])
    return loaded


def test_the_swarm_is_made_from_the_database_host_before_anything_is_released() -> None:
    deployment = on_hosts()
    declared = steps(deployment)
    assert sorted(declared) == sorted([*CLUSTER_STEPS, *RELEASE_STEPS])
    for earlier, later in itertools.pairwise(["cluster-init", "cluster-tokens", "cluster-join-10.0.0.2"]):
        assert deployment.depends_on(declared[later], declared[earlier]), f"{later} does not wait for {earlier}"
    for join in ("cluster-join-10.0.0.2", "cluster-join-10.0.0.3"):
        assert deployment.depends_on(declared["cluster-nodes"], declared[join]), f"nodes runs before {join}"
    assert deployment.depends_on(declared["server-files"], declared["cluster-nodes"]), "a release before the Swarm"
    for earlier, later in itertools.pairwise(RELEASE_STEPS):
        assert deployment.depends_on(declared[later], declared[earlier]), f"{later} does not wait for {earlier}"


def test_each_step_reaches_its_host_with_that_hosts_pinned_key_port_and_user() -> None:
    declared = steps(on_hosts(**{"server.port": 2200, "server.user": "deploy"}))
    on_database_host = [*RELEASE_STEPS, "cluster-init", "cluster-tokens", "cluster-nodes"]
    expected = {name: ("app-1.example.net", 2200, "deploy") for name in on_database_host}
    expected |= {"cluster-join-10.0.0.2": ("app-2.example.net", 2202, "ops")}
    expected |= {"cluster-join-10.0.0.3": ("app-3.example.net", 2200, "deploy")}
    for name, (address, port, user) in expected.items():
        connection = declared[name].plain("connection")
        assert (connection["host"], connection["port"], connection["user"]) == (address, port, user), name
        number = address.split("-")[1].split(".")[0]
        assert connection["hostKey"] == KEY.replace("00", f"0{number}"), f"{name} does not pin its host's key"
        assert declared[name].is_secret("connection"), f"{name}'s deploy key is not a secret"


def test_a_join_token_reaches_its_host_only_on_stdin_and_the_step_that_reads_them_logs_nothing() -> None:
    declared = steps(on_hosts())
    tokens = declared["cluster-tokens"]
    assert tokens.plain("logging") == "none"
    assert {"stdout", "stderr"} <= set(tokens.additional_secret_outputs or [])
    for name in ("cluster-join-10.0.0.2", "cluster-join-10.0.0.3"):
        join = declared[name]
        assert join.is_secret("stdin"), f"{name}'s stdin carries a join token in the clear"
        assert not join.is_secret("create"), f"{name}'s command line depends on a secret"
        create = join.plain("create")
        assert '--token-file "$shipped/join-token"' in create, create
        # The token's file is the deploy user's alone, in a folder of its own that goes with the command.
        assert create.startswith("umask 077 && ") and "tar -x --no-same-owner --no-same-permissions " in create
        assert """trap 'rm -rf "$shipped"' EXIT""" in create, create
        assert "join-token" in bundled(join), f"{name} ships no token file"


def test_no_secret_value_appears_outside_a_secret_on_several_hosts() -> None:
    leaks = kit.find_secret_leaks(on_hosts())
    assert not leaks, [f"{leak.where}: {leak.marker}" for leak in leaks.leaks]


def test_the_app_rolls_forward_one_health_gated_task_at_a_time_and_swarm_rolls_a_failed_one_back() -> None:
    release = {"healthAttempts": 12, "healthIntervalSeconds": 3, "drainSeconds": 20}
    services = stack_file(on_hosts(**{"server.replicas": 3, **{f"release.{k}": v for k, v in release.items()}}))
    app = services["services"]["app"]
    assert app["deploy"]["replicas"] == 3 and app["deploy"]["endpoint_mode"] == "dnsrr"
    update = app["deploy"]["update_config"]
    assert (update["parallelism"], update["order"], update["failure_action"]) == (1, "start-first", "rollback")
    assert update["max_failure_ratio"] == 0 and update["monitor"] == "9s"
    assert app["deploy"]["rollback_config"]["order"] == "start-first"
    health = app["healthcheck"]
    assert health["test"][-1].endswith("/api/health?quick=true")
    assert (health["retries"], health["interval"]) == (12, "3s"), "Swarm's gate is not the stage's health gate"
    assert app["stop_grace_period"] == "20s"
    assert app["image"].startswith("${APP_IMAGE:?")


def test_every_host_runs_the_proxy_on_its_own_port_without_swarms_routing_mesh() -> None:
    deployment = on_hosts()
    proxy = stack_file(deployment)["services"]["proxy"]
    assert proxy["deploy"]["mode"] == "global" and proxy["deploy"]["endpoint_mode"] == "dnsrr"
    assert proxy["ports"] == [{"target": 13000, "published": 13000, "protocol": "tcp", "mode": "host"}]
    nginx = bundled(steps(deployment)["server-files"])[swarm_files.PROXY_CONFIG]
    assert "resolver 127.0.0.11 valid=1s" in nginx, "the proxy keeps sending to tasks Swarm stopped"
    assert "set $kametrix_tasks tasks.kametrix-local_app:3000;" in nginx
    assert "proxy_pass http://$kametrix_tasks;" in nginx, "nginx resolves a literal upstream once, at start"
    assert "proxy_next_upstream error timeout;" in nginx and "proxy_connect_timeout 2s;" in nginx


def test_postgres_and_migrations_are_the_one_host_stages_own_on_the_stages_overlay_network() -> None:
    deployment = on_hosts()
    swarm = yaml.safe_load(bundled(steps(deployment)["server-files"])[server_files.COMPOSE_FILE])
    one_host = yaml.safe_load(bundled(steps(kit.run_stack("local"))["server-files"])[server_files.COMPOSE_FILE])
    assert swarm["services"] == {name: one_host["services"][name] for name in ("postgres", "migrate")}
    assert swarm["volumes"] == one_host["volumes"], "the database's volume is not the one host's"
    network = {"name": "kametrix-local_net", "external": True}
    assert swarm["networks"] == {"default": network} and stack_file(deployment)["networks"] == {"default": network}


def test_the_steps_before_up_are_the_one_host_stages_own_and_up_deploys_to_swarm() -> None:
    swarm, one_host = steps(on_hosts()), steps(kit.run_stack("local"))
    for name in ("server-env", "server-database", "server-backup", "server-migrate"):
        assert swarm[name].plain("create") == one_host[name].plain("create"), name
        assert swarm[name].plain("triggers") == one_host[name].plain("triggers"), name
    assert "/bin/swarm-up.sh " in swarm["server-up"].plain("create")
    assert "/bin/up.sh " in one_host["server-up"].plain("create")
    # The database host holds the one-host stage's settings, scripts and libraries, but no switch of colours.
    files = bundled(swarm["server-files"])
    one_host_files = bundled(one_host["server-files"])
    for path in ("settings.env", "bin/lib/facts.sh", *(f"bin/{library}" for library in server_files.LIBRARIES)):
        assert files[path] == one_host_files[path], path
    assert not {"bin/switch.sh", "bin/up.sh", "bin/switch-back.sh"} & set(files)
    assert files["bin/lib/swarm-facts.sh"] == shared_facts.swarm_facts_sh()


def test_a_one_host_stages_bundle_holds_nothing_of_swarm() -> None:
    files = bundled(steps(kit.run_stack("local"))["server-files"])
    assert not [path for path in files if "swarm" in path], "a one-host stage's files changed with the Swarm's"


def test_a_rollback_runs_exactly_the_server_commands_of_the_original_release() -> None:
    def release(version: str) -> dict[str, Any]:
        return {name: step.plain("create") for name, step in steps(on_hosts(version=version)).items()}

    assert release("v1.0.0") == release("v1.0.0")
    assert release("v1.0.0") != release("v2.0.0"), "the version does not reach the server"


def test_a_host_added_and_one_removed_change_the_swarm_steps_and_release_nothing() -> None:
    before = steps(on_hosts())
    after = steps(on_hosts([*THREE[:2], host(4)]))
    assert set(before) - set(after) == {"cluster-join-10.0.0.3"}
    assert set(after) - set(before) == {"cluster-join-10.0.0.4"}
    changed = {
        name for name in set(before) & set(after) if kit.unwrap(before[name].inputs) != kit.unwrap(after[name].inputs)
    }
    assert changed == {"cluster-init", "cluster-nodes"}, changed
    assert "10.0.0.4=worker" in after["cluster-nodes"].plain("create")


def test_a_one_host_stage_declares_no_swarm() -> None:
    declared = steps(kit.run_stack("local"))
    assert list(declared) == RELEASE_STEPS
    assert "/bin/up.sh " in declared["server-up"].plain("create")


def test_the_scripts_read_the_labels_the_stack_file_and_the_nodes_step_set_from_the_shared_facts() -> None:
    labels = stack_file(on_hosts())["services"]["app"]["labels"]
    assert set(labels) == {shared_facts.RELEASE_LABEL, shared_facts.SETTINGS_LABEL, shared_facts.COLOUR_LABEL}
    facts = shared_facts.swarm_facts_sh()
    for name in ("RELEASE_LABEL", "SETTINGS_LABEL", "COLOUR_LABEL", "DATABASE_LABEL"):
        assert f"{name}={getattr(shared_facts, name)}\n" in facts, name
    scripts = server_files.SCRIPTS_DIR
    up, nodes, status = ((scripts / name).read_text() for name in ("swarm-up.sh", "swarm-nodes.sh", "swarm-status.sh"))
    assert all(f'\\"${name}\\"' in up for name in ("RELEASE_LABEL", "SETTINGS_LABEL", "COLOUR_LABEL"))
    assert 'label="$DATABASE_LABEL"' in nodes and '\\"$DATABASE_LABEL\\"' in status


def test_the_app_tasks_take_the_database_url_of_the_login_role_they_run_as() -> None:
    app = stack_file(on_hosts())["services"]["app"]
    assert "DATABASE_URL" not in app["environment"], "every task would log in as one colour's role"
    assert app["env_file"] == [swarm_files.STACK_ENV_FILE]


def test_each_cluster_step_runs_its_shipped_script_with_exactly_its_flags(tmp_path: Path) -> None:
    """Each cluster step's command line, run as SSH runs it with its stdin: the script it ships sources its libraries
    and facts, takes every flag it is given, checks their values and reaches the Docker Engine (a stand-in that
    records what it is asked)."""
    fakes = tmp_path / "bin"
    fakes.mkdir()
    calls = tmp_path / "calls"
    (fakes / "docker").write_text(f'#!/bin/sh\necho "docker $*" >>{calls}\nexit 3\n')
    (fakes / "docker").chmod(0o755)
    declared = steps(on_hosts())
    for name, script in {"cluster-init": "swarm-init.sh", "cluster-tokens": "swarm-tokens.sh"}.items():
        assert f'bash "$shipped/bin/{script}" ' in declared[name].plain("create"), name
    for name in CLUSTER_STEPS:
        calls.unlink(missing_ok=True)
        step = declared[name]
        ran = subprocess.run(
            ["bash", "-c", step.plain("create")],
            input=step.plain("stdin"),
            capture_output=True,
            text=True,
            env={**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}"},
            timeout=30,
            check=False,
        )
        if name.startswith("cluster-join"):
            # The stand-in's tokens step printed no token: the join refuses it before it asks the Engine anything.
            assert "token-file: allowed a Swarm join token; received another text (not shown)" in ran.stderr
        else:
            assert "usage:" not in ran.stderr and "allowed" not in ran.stderr, f"{name}: {ran.stderr}"
            assert calls.read_text().startswith("docker "), f"{name}: {ran.stderr}"


def test_the_swarm_facts_pass_shellcheck(tmp_path: Path) -> None:
    facts = tmp_path / "swarm-facts.sh"
    facts.write_text(shared_facts.swarm_facts_sh())
    checked = subprocess.run(
        [str(Path(sys.executable).parent / "shellcheck"), str(facts)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
