"""The service on Docker Swarm (deploy/swarm/), for real.

The tests marked ``swarm`` build the server and nginx images, make this engine
a one-node swarm if it is not one (and leave it again afterwards), deploy
deploy/swarm/docker-stack.yml under a stack name and a published port of their
own (so a compose stack on the same engine is not disturbed), and talk to it
only through nginx on 127.0.0.1, with real clients:

- the 3 replicas all answer new connections, with no reload of nginx;
- ``docker service scale`` to 5: new connections reach the 2 new replicas
  within seconds, still with no reload;
- ``docker kill`` of a replica while clients run: no request is lost (Lazy
  Pirate resends what the dead replica never answered), swarm starts a
  replacement, and new connections reach it;
- ``docker stack rm`` removes services, containers, network and config.

They run in that order on one stack and are bounded in time. Without a Docker
engine they are skipped. The tests without a mark check the stack file
offline; the one marked ``docker`` runs ``nginx -t`` on Swarm's nginx config in
the nginx image, laid out as the stack lays it out. (How the config is made up,
and that each target ships the shared settings: tests/unit/test_nginx.py.)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq.asyncio

from reqrep.stack import free_port
from tests.support import (
    BUILD_TIMEOUT_S,
    DOCKER_TIMEOUT_S,
    POLL_INTERVAL_S,
    PROJECT_DIR,
    Load,
    assert_no_request_lost,
    built_images,
    docker,
    docker_async,
    docker_unchecked,
    kill_the_replica_of_the_first_load,
    loads_running,
    needs_engine,
    nginx_t_in_image,
    probe,
    swarm_tasks,
)

SWARM_DIR = PROJECT_DIR / "deploy" / "swarm"
STACK_FILE = SWARM_DIR / "docker-stack.yml"
COMPOSE_FILE = PROJECT_DIR / "docker-compose.yml"

# Names of this test's own, so it never touches another stack on the engine.
RUN_ID = f"{os.getpid()}"
STACK = f"zmqswarmtest{RUN_ID}"
SERVER_IMAGE = f"zmq-swarm-test-server:{RUN_ID}"
NGINX_IMAGE = f"zmq-swarm-test-nginx:{RUN_ID}"

# Time for tasks to start and pass their first health check.
CONVERGE_TIMEOUT_S = 90.0
# Time for new connections to reach a replica that is running.
DISCOVERY_TIMEOUT_S = 60.0
REMOVE_TIMEOUT_S = 90.0
PROBES_PER_ROUND = 10
# Simulated work per request on the replicas (server.py --work-ms): a request
# is still being worked on when its replica is killed, however slow the kill.
WORK_MS = 1000


# --- docker commands -----------------------------------------------------------


def swarm_state() -> str:
    return docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()


def running_tasks(service: str) -> set[str]:
    """Task names (``service.slot.id``, also the container and replica names) now running."""
    return {task.name for task in swarm_tasks(docker, service) if task.running}


def all_tasks(service: str) -> list[str]:
    return docker("service", "ps", service, "--no-trunc", "--format", "{{.ID}}").split()


def diagnostics(service: str) -> str:
    tasks = docker("service", "ps", service, "--no-trunc", "--format", "{{.Name}} {{.Error}}")
    logs = docker_unchecked("service", "logs", "--tail", "10", service)
    return f"tasks:\n{tasks}\nlogs:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}"


def wait_running(service: str, count: int, gone: frozenset[str] = frozenset()) -> set[str]:
    """Wait until exactly ``count`` tasks of ``service``, none of ``gone``, are running."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:
        names = running_tasks(service)
        if len(names) == count and not names & gone:
            return names
        if time.monotonic() > deadline:
            pytest.fail(
                f"{service}: {len(names)} tasks running, not {count}, after "
                f"{CONVERGE_TIMEOUT_S:.0f} s\n{diagnostics(service)}"
            )
        time.sleep(POLL_INTERVAL_S)  # polling swarm's state: there is no event to await


async def wait_running_async(
    service: str, count: int, gone: frozenset[str] = frozenset()
) -> set[str]:
    return await asyncio.wait_for(
        asyncio.to_thread(wait_running, service, count, gone),
        CONVERGE_TIMEOUT_S + DOCKER_TIMEOUT_S,
    )


# --- the swarm, the images and the stack -----------------------------------------


@pytest.fixture(scope="module")
def swarm() -> Iterator[None]:
    """A swarm manager: this engine, made one if it is in no swarm yet."""
    state = swarm_state()
    initialised = False
    # `swarm init` creates this bridge and `swarm leave` keeps it.
    had_gwbridge = bool(docker("network", "ls", "-q", "--filter", "name=^docker_gwbridge$").split())
    if state == "inactive":
        docker("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377")
        initialised = True
    elif state != "active":
        pytest.skip(f"this engine's swarm state is {state!r}; needs 'inactive' or 'active'")
    elif docker("info", "--format", "{{.Swarm.ControlAvailable}}").strip() != "true":
        pytest.skip("this engine is a swarm worker; deploying a stack needs a manager")
    try:
        yield
    finally:
        # Leave the swarm this test made, unless someone else deployed a stack
        # on it meanwhile (leaving would remove it under them).
        if initialised and not docker("stack", "ls", "--format", "{{.Name}}").split():
            docker("swarm", "leave", "--force")
            if not had_gwbridge:
                docker("network", "rm", "docker_gwbridge")


@pytest.fixture(scope="module")
def images() -> Iterator[None]:
    """The server and nginx images, built from the project's Dockerfiles (no BuildKit)."""
    with built_images({SERVER_IMAGE: "Dockerfile_server", NGINX_IMAGE: "Dockerfile_nginx"}):
        yield


@dataclass
class Stack:
    name: str
    port: int

    @property
    def server(self) -> str:
        return f"{self.name}_server"

    @property
    def nginx(self) -> str:
        return f"{self.name}_nginx"

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def leftovers(self) -> dict[str, list[str]]:
        """What of this stack still exists on the engine."""
        label = f"label=com.docker.stack.namespace={self.name}"
        found = {
            "services": docker("service", "ls", "-q", "--filter", label).split(),
            "containers": docker("ps", "-aq", "--filter", label).split(),
            "networks": docker("network", "ls", "-q", "--filter", label).split(),
            "configs": docker("config", "ls", "-q", "--filter", label).split(),
        }
        return {kind: ids for kind, ids in found.items() if ids}

    def remove(self) -> dict[str, list[str]]:
        """``docker stack rm``, then wait until all is gone; what is left after the bound."""
        if self.leftovers():
            docker("stack", "rm", self.name)
        deadline = time.monotonic() + REMOVE_TIMEOUT_S
        while (left := self.leftovers()) and time.monotonic() < deadline:
            # The network goes only after the last container, which drains first.
            time.sleep(POLL_INTERVAL_S)  # polling the engine: there is no event to await
        return left


@pytest.fixture(scope="module")
def stack(swarm: None, images: None) -> Iterator[Stack]:
    deployed = Stack(STACK, free_port())
    env = {
        "SERVER_IMAGE": SERVER_IMAGE,
        "NGINX_IMAGE": NGINX_IMAGE,
        "NGINX_PORT": str(deployed.port),
        "SERVER_WORK_MS": str(WORK_MS),
    }
    try:
        docker("stack", "deploy", "-c", str(STACK_FILE), deployed.name, env=env)
        yield deployed
    finally:
        deployed.remove()


# --- clients through nginx --------------------------------------------------------


async def wait_answering(
    context: zmq.asyncio.Context, endpoint: str, replicas: set[str]
) -> tuple[float, Counter[str]]:
    """Open new connections until each of ``replicas`` has answered one.

    Returns the seconds it took and the replies per replica. Each connection
    goes to one replica, picked by nginx, so this takes a few rounds.
    """
    started = time.monotonic()
    seen: Counter[str] = Counter()
    async with asyncio.timeout(DISCOVERY_TIMEOUT_S):
        while not replicas <= seen.keys():
            seen.update(
                await asyncio.gather(
                    *(
                        probe(context, endpoint, timeout_ms=WORK_MS + 1500, tries=3)
                        for _ in range(PROBES_PER_ROUND)
                    )
                )
            )
            if not replicas <= seen.keys():
                await asyncio.sleep(0.2)  # polling nginx's DNS cache: no event to await
    return time.monotonic() - started, seen


# --- the tests on a running swarm ----------------------------------------------------


@pytest.mark.swarm
@needs_engine()
@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
async def test_all_three_replicas_answer_through_nginx_without_reload(
    stack: Stack, context: zmq.asyncio.Context
) -> None:
    replicas = await wait_running_async(stack.server, 3)
    await wait_running_async(stack.nginx, 1)
    took_s, seen = await wait_answering(context, stack.endpoint, replicas)
    print(f"all 3 replicas answered new connections {took_s:.1f} s after running: {dict(seen)}")
    assert seen.keys() == replicas
    # nginx was never restarted or reloaded by anyone: one task, the first.
    assert len(all_tasks(stack.nginx)) == 1


@pytest.mark.swarm
@needs_engine()
@pytest.mark.timeout(300)
async def test_scaled_up_replicas_get_new_connections_within_seconds(
    stack: Stack, context: zmq.asyncio.Context
) -> None:
    before = await wait_running_async(stack.server, 3)
    await docker_async("service", "scale", "--detach", f"{stack.server}=5")
    scaled = time.monotonic()
    after = await wait_running_async(stack.server, 5)
    running_s = time.monotonic() - scaled
    new = after - before
    assert len(new) == 2
    took_s, seen = await wait_answering(context, stack.endpoint, new)
    print(
        f"scaled 3 -> 5: new replicas running after {running_s:.1f} s, "
        f"answering new connections after {running_s + took_s:.1f} s; replies {dict(seen)}"
    )
    assert seen.keys() <= after
    assert len(all_tasks(stack.nginx)) == 1, "nginx was not restarted"


@pytest.mark.swarm
@needs_engine()
@pytest.mark.timeout(300)
async def test_killed_replica_loses_no_request_and_is_replaced(
    stack: Stack, context: zmq.asyncio.Context
) -> None:
    before = await asyncio.to_thread(running_tasks, stack.server)
    assert len(before) >= 3
    # 5 tries cover nginx's 5 s DNS cache still naming a dead replica.
    loads = [Load(f"load-{i}", timeout_ms=WORK_MS + 1500, tries=5) for i in range(6)]
    async with asyncio.timeout(240), loads_running(context, stack.endpoint, loads):
        # The replica works on load-0's request for WORK_MS, so it dies with it unanswered.
        killed = await kill_the_replica_of_the_first_load(
            loads, lambda victim: docker_async("kill", victim)
        )
        after = await wait_running_async(stack.server, len(before), frozenset({killed.victim}))
        replacement = after - before
        await wait_answering(context, stack.endpoint, replacement)
        replaced_s = time.monotonic() - killed.at
    print(
        f"killed {killed.victim} (docker kill took {killed.kill_s:.2f} s): its client answered "
        f"again within {killed.recovered_s:.1f} s "
        f"({sum(load.retried for load in loads)} requests resent), replacement "
        f"{replacement} answering new connections {replaced_s:.1f} s after the kill"
    )
    assert_no_request_lost(loads, killed)
    # The request the killed replica held was resent and answered by another.
    assert loads[0].retried >= 1
    assert loads[0].replies[killed.answered_at_kill[0]] != killed.victim
    assert killed.victim not in after
    (new_task,) = replacement
    slot = killed.victim.rsplit(".", 1)[0]
    assert new_task.startswith(f"{slot}."), "swarm replaced the task in the same slot"
    assert len(all_tasks(stack.nginx)) == 1, "nginx was not restarted"


@pytest.mark.swarm
@needs_engine()
@pytest.mark.timeout(REMOVE_TIMEOUT_S + 60)
def test_stack_rm_removes_everything(stack: Stack) -> None:
    assert stack.leftovers().keys() == {"services", "containers", "networks", "configs"}
    started = time.monotonic()
    left = stack.remove()
    print(f"docker stack rm: all gone after {time.monotonic() - started:.1f} s")
    assert left == {}


# --- the stack file and its nginx config, offline --------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def test_stack_file_avoids_the_routing_mesh_and_virtual_ips() -> None:
    services = load_yaml(STACK_FILE)["services"]
    assert services["server"]["deploy"]["replicas"] == 3
    assert services["server"]["deploy"]["endpoint_mode"] == "dnsrr"
    assert services["nginx"]["deploy"]["endpoint_mode"] == "dnsrr"
    (port,) = services["nginx"]["ports"]
    assert port["mode"] == "host"
    assert port["target"] == 5555
    for service in services.values():
        assert "build" not in service
        assert "image" in service


def test_stack_server_runs_like_the_compose_server() -> None:
    """Same environment and stop grace period as docker-compose.yml's server."""
    stack_server = load_yaml(STACK_FILE)["services"]["server"]
    compose_server = load_yaml(COMPOSE_FILE)["services"]["server"]
    assert compose_server["environment"].items() <= stack_server["environment"].items()
    assert stack_server["stop_grace_period"] == compose_server["stop_grace_period"]
    # The replica name in replies is the task (= container) name.
    assert stack_server["environment"]["SERVER_NAME"] == "{{.Task.Name}}"


@pytest.mark.docker
@needs_engine()
def test_swarm_nginx_config_passes_nginx_t_in_the_nginx_image() -> None:
    """The stack's configs, where the stack puts them, in the image nginx runs."""
    stack_file = load_yaml(STACK_FILE)
    files = {}
    for config in stack_file["services"]["nginx"]["configs"]:
        directory, name = config["target"].rsplit("/", 1)
        assert directory == "/etc/nginx"
        files[name] = (SWARM_DIR / stack_file["configs"][config["source"]]["file"]).read_text()
    checked = nginx_t_in_image(files, "/etc/nginx")
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr
