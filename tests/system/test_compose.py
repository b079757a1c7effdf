"""The whole system under docker-compose, for real: build, run, scale, kill, stop.

One compose project of its own (name and published port of its own, on
127.0.0.1), started once for the module with ``docker-compose up -d --build``
and always removed with ``down -v --rmi local`` afterwards. The tests run in file order on
that one project:

1. the ``client`` service (the seed's demo) printed the seed's lines, exit 0;
2. ``run_clients.py`` on the host, 6 clients through the published port: every
   request answered as it should be, by all 3 replicas;
3. ``run_clients.py --docker``: the clients as ``docker-compose run`` containers;
4. ``docker kill`` of a replica while 6 clients send: no request lost (the helpers are
   shared with the swarm test's kill);
5. ``--scale server=4`` (no other step): the new replica gets connections;
6. ``docker-compose stop`` in under 5 s, every container exiting 0; ``down -v``
   leaves no container and no network.

Without a Docker engine (or without docker-compose) the module is skipped and
says why; ``bash ../shared/docker-offline/setup.sh .`` provides both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import zmq.asyncio

from tests.support import (
    ClientsRun,
    Load,
    Project,
    assert_demo_client_printed_the_seed_lines,
    assert_no_request_lost,
    compose_project,
    docker,
    docker_async,
    kill_the_replica_of_the_first_load,
    lines_per_client,
    loads_running,
    needs_compose,
    run_clients,
    seed_lines,
    wait_for_replica,
    wait_healthy,
)

# Bounds on every wait (building from cold is support.UP_TIMEOUT_S).
CLIENTS_TIMEOUT_S = 120.0
STOP_LIMIT_S = 5.0

# The kill test: this many clients, each on a connection of its own, so nginx
# (least_conn) gives every replica some of them.
KILL_CLIENTS = 6


pytestmark = needs_compose()


@pytest.fixture(scope="module")
def project() -> Iterator[Project]:
    # Removed afterwards with the images it built (tagged with its name): runs leave none behind.
    with compose_project("zmqe2e") as started:
        yield started


# --- reading the clients' output ----------------------------------------------------


def assert_every_request_answered(output: str, clients: int, requests: int) -> None:
    found = lines_per_client(output)
    assert sorted(found) == sorted(f"client_{i}" for i in range(1, clients + 1)), output
    for name, lines in found.items():
        assert lines == seed_lines(requests), f"{name}:\n" + "\n".join(lines)


def assert_all_answered(result: ClientsRun, clients: int, requests: int, project: Project) -> None:
    assert result.status == 0, f"{result.lines}\n{project.diagnostics()}"
    assert result.summary["ok"], result.lines
    total = result.summary["total"]
    assert total["sent"] == clients * requests
    assert total["failed"] == 0
    assert total["invalid_message"] == clients
    assert_every_request_answered(result.lines, clients, requests)


# --- the tests, in order ---------------------------------------------------------


def test_client_service_prints_the_seed_lines(project: Project) -> None:
    assert_demo_client_printed_the_seed_lines(project)


async def test_clients_on_the_host_are_answered_by_all_replicas(project: Project) -> None:
    result = await run_clients(
        project,
        *("--clients", "6", "--requests", "20", "--interval-ms", "20"),
        *("--connect", project.endpoint),
        timeout_s=CLIENTS_TIMEOUT_S,
    )
    assert_all_answered(result, 6, 20, project)
    assert set(result.summary["replicas"]) == project.replica_names(), result.summary["replicas"]


async def test_clients_in_containers(project: Project) -> None:
    result = await run_clients(
        project, "--docker", "--clients", "2", "--requests", "5", timeout_s=CLIENTS_TIMEOUT_S
    )
    assert_all_answered(result, 2, 5, project)
    assert set(result.summary["replicas"]) <= project.replica_names()


async def test_killed_replica_loses_no_request(
    project: Project, context: zmq.asyncio.Context
) -> None:
    loads = [Load(f"load-{i}", timeout_ms=1000, tries=5) for i in range(KILL_CLIENTS)]
    async with asyncio.timeout(CLIENTS_TIMEOUT_S), loads_running(context, project.endpoint, loads):
        killed = await kill_the_replica_of_the_first_load(
            loads, lambda victim: docker_async("kill", victim)
        )
    print(
        f"killed {killed.victim} (docker kill took {killed.kill_s:.2f} s): every client answered "
        f"again within {killed.recovered_s:.1f} s "
        f"({sum(load.retried for load in loads)} requests resent)"
    )
    assert_no_request_lost(loads, killed)
    # The victim held connections of this run when it died; the others took over.
    replicas = {replica for load in loads for replica in load.replies}
    assert replicas == project.replica_names(), replicas
    victim = project.container_of(killed.victim)
    state = docker("inspect", "-f", "{{.State.Running}}", victim).strip()
    assert state == "false"


async def test_scaled_up_replica_gets_connections_without_a_reload(project: Project) -> None:
    before = project.replica_names()
    # Starts the killed replica again, adds a 4th; nginx is left as it is.
    project.compose("up", "-d", "--no-recreate", "--scale", "server=4", "server")
    await asyncio.to_thread(wait_healthy, project, 4)
    (added,) = project.replica_names() - before
    # nginx asks Docker's DNS for `server` again every 2 s (`resolve`).
    await wait_for_replica(project.endpoint, added)
    result = await run_clients(
        project,
        *("--clients", "8", "--requests", "20", "--interval-ms", "20"),
        *("--connect", project.endpoint),
        timeout_s=CLIENTS_TIMEOUT_S,
    )
    assert_all_answered(result, 8, 20, project)
    assert set(result.summary["replicas"]) == project.replica_names(), result.summary["replicas"]


def test_stop_is_quick_and_graceful_and_down_leaves_nothing(project: Project) -> None:
    label = f"label=com.docker.compose.project={project.name}"
    containers = docker("ps", "-q", "--filter", label).split()
    assert len(containers) >= 4, "servers and nginx should be running"
    started = time.monotonic()
    project.compose("stop")
    stop_s = time.monotonic() - started
    assert stop_s < STOP_LIMIT_S, f"docker-compose stop took {stop_s:.1f} s"
    exit_codes = docker("inspect", "-f", "{{.Name}} {{.State.ExitCode}}", *containers)
    assert all(line.endswith(" 0") for line in exit_codes.splitlines()), exit_codes
    project.compose("down", "-v")
    assert project.leftovers() == {}
