"""The Swarm stack on a real 3-node swarm, under load: failures and deploys lose nothing.

Three Docker-in-Docker nodes (tests/system/swarm_nodes.py) form one swarm on
a network of their own; the server and nginx images are built here once and
loaded into every node; deploy/swarm/docker-stack.yml is deployed as users
deploy it (its own variables only: image names, simulated work). Clients in
this process reach nginx's host-mode port at each node's address. One swarm
and one stack serve the whole module, in this order:

1. the 3 replicas run on several nodes and every node's nginx reaches them all;
2. a rolling update of the 3 replicas (``docker service update --force``):
   nothing lost, and no 502 nor upstream timeout in any nginx's log;
3. an update to an image whose health check fails: Swarm rolls it back by
   itself (``failure_action: rollback``) and nothing is lost meanwhile;
4. ``docker node update --availability drain`` of a node with replicas:
   nothing lost, the replicas move to the other nodes;
5. a node with a replica killed (its whole engine, ``docker kill`` of the
   node): nothing lost, and Swarm brings the service back to 3 replicas;
6. with that node gone, new clients given every node's address work, the
   dead node's address first for some of them.

The load (``DeployLoad``): clients given every node's nginx address (each
list in another order), on long-lived connections, plus clients opening new
connections for each request, so that nginx picks a replica many times a
second. In 4 and 5 a node's nginx goes too: the clients carry on through the
others. Each scenario
prints the requests answered and retried, the longest stall, p99, nginx's
counts of 502s, timeouts and failed connects, and its own timings
(``pytest -s``). Marked ``multinode`` (and ``docker``); skipped without a Docker
engine or the node image.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import (
    BUILD_TIMEOUT_S,
    DOCKER_TIMEOUT_S,
    DeployLoad,
    MeasuredClients,
    SwarmTask,
    assert_nginx_served_every_connection,
    built_images,
    docker,
    nginx_trouble,
    probe_until,
    swarm_tasks,
    wait_until,
)
from tests.system.swarm_nodes import (
    DEPLOY_DIR_IN_NODE,
    Node,
    Swarm,
    copy_deploy_dir,
    load_images,
    nodes_problem,
    service_logs,
    swarm_of_nodes,
)

_nodes_problem = nodes_problem()
pytestmark = [
    pytest.mark.docker,
    pytest.mark.multinode,
    pytest.mark.skipif(_nodes_problem is not None, reason=str(_nodes_problem)),
]

RUN_ID = f"{os.getpid()}"
PREFIX = f"zmqmn{RUN_ID}"
# Inside the test's own swarm, the stack has the name the docs give it.
STACK = "zmq"
SERVER = f"{STACK}_server"
NGINX = f"{STACK}_nginx"
NGINX_PORT = 5555
SERVER_IMAGE = f"zmq-multinode-server:{RUN_ID}"
NGINX_IMAGE = f"zmq-multinode-nginx:{RUN_ID}"
# A release that starts but never answers: its server listens on another
# port, so the image's own health check (a request to :5555) fails.
UNHEALTHY_IMAGE = f"zmq-multinode-server:{RUN_ID}-unhealthy"
UNHEALTHY_DOCKERFILE = (
    f'FROM {SERVER_IMAGE}\nCMD ["python", "server.py", "--bind", "tcp://*:5599"]\n'
)
REPLICAS = 3
STACK_FILE_IN_NODE = f"{DEPLOY_DIR_IN_NODE}/swarm/docker-stack.yml"

CONVERGE_TIMEOUT_S = 120.0
UPDATE_TIMEOUT_S = 180.0
ANSWER_TIMEOUT_S = 60.0
# Simulated work per request (server.py --work-ms): requests are in flight
# when replicas go.
WORK_MS = 20
# Clients given every node's address, one of them dead.
CLIENTS_EVERY_ADDRESS = 6


# --- the swarm, its images and the stack -------------------------------------------


@pytest.fixture(scope="module")
def images() -> Iterator[None]:
    """The server and nginx images (the project's Dockerfiles) and the unhealthy one."""
    with built_images(
        {SERVER_IMAGE: "Dockerfile_server", NGINX_IMAGE: "Dockerfile_nginx"},
        {UNHEALTHY_IMAGE: UNHEALTHY_DOCKERFILE},
    ):
        yield


@pytest.fixture(scope="module")
def swarm(images: None) -> Iterator[Swarm]:
    """Three dind nodes in one swarm, with the images and the project's deploy/ directory."""
    started = time.monotonic()
    with swarm_of_nodes(PREFIX, 3) as made:
        formed_s = time.monotonic() - started
        load_images(made.nodes, [SERVER_IMAGE, NGINX_IMAGE, UNHEALTHY_IMAGE])
        copy_deploy_dir(made.manager)
        print(
            f"\n3-node swarm formed in {formed_s:.1f} s, images in every node "
            f"{time.monotonic() - started:.1f} s after the start"
        )
        yield made
    # The nodes took their engines, swarm, stack and images with them.
    assert made.leftovers() == {}


@dataclass
class Stack:
    """The stack on the swarm, driven through the first node's CLI."""

    swarm: Swarm

    @property
    def manager(self) -> Node:
        return self.swarm.manager

    def tasks(self, service: str) -> list[SwarmTask]:
        """The tasks Swarm wants running, with their state."""
        return swarm_tasks(self.manager.docker, service)

    def running(self, service: str) -> list[SwarmTask]:
        return [task for task in self.tasks(service) if task.running]

    def wait(
        self,
        what: str,
        check: Callable[[], bool],
        timeout_s: float = CONVERGE_TIMEOUT_S,
    ) -> float:
        """Seconds until ``check()`` holds; fail after ``timeout_s`` with the tasks' states."""
        return wait_until(what, check, timeout_s, self.diagnostics)

    async def wait_async(
        self, what: str, check: Callable[[], bool], timeout_s: float = CONVERGE_TIMEOUT_S
    ) -> float:
        return await asyncio.wait_for(
            asyncio.to_thread(self.wait, what, check, timeout_s), timeout_s + DOCKER_TIMEOUT_S
        )

    def full_strength(self, avoid: Sequence[str] = ()) -> bool:
        """3 replicas running, none on a node in ``avoid``; no task still starting."""
        tasks = self.tasks(SERVER)
        running = [task for task in tasks if task.running and task.node not in avoid]
        return len(running) == REPLICAS == len(tasks)

    def nginx_everywhere(self, nodes: Sequence[Node]) -> bool:
        return {task.node for task in self.running(NGINX)} >= {node.name for node in nodes}

    def update_state(self) -> str:
        """The service's UpdateStatus.State: updating, completed, rollback_completed, ..."""
        status = self.manager.docker(
            "service", "inspect", SERVER, "--format", "{{json .UpdateStatus}}"
        )
        parsed: dict[str, Any] | None = json.loads(status)
        return "" if parsed is None else str(parsed.get("State", ""))

    def image(self) -> str:
        return self.manager.docker(
            "service", "inspect", SERVER, "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}"
        ).strip()

    def diagnostics(self) -> str:
        tasks = self.manager.docker_unchecked(
            "service",
            "ps",
            SERVER,
            NGINX,
            "--no-trunc",
            "--format",
            "{{.Name}} {{.Node}} {{.DesiredState}} {{.CurrentState}} {{.Error}}",
        )
        nodes = self.manager.docker_unchecked("node", "ls")
        return f"tasks:\n{tasks.stdout}{tasks.stderr}\nnodes:\n{nodes.stdout}{nodes.stderr}"


@pytest.fixture(scope="module")
def stack(swarm: Swarm) -> Stack:
    """deploy/swarm/docker-stack.yml, deployed as users deploy it, at full strength."""
    deployed = Stack(swarm)
    started = time.monotonic()
    swarm.manager.docker(
        "stack",
        "deploy",
        "--resolve-image",
        "never",
        "-c",
        STACK_FILE_IN_NODE,
        STACK,
        SERVER_IMAGE=SERVER_IMAGE,
        NGINX_IMAGE=NGINX_IMAGE,
        NGINX_PORT=str(NGINX_PORT),
        SERVER_WORK_MS=str(WORK_MS),
    )
    deployed.wait("3 replicas running", deployed.full_strength)
    deployed.wait("nginx on every node", lambda: deployed.nginx_everywhere(swarm.nodes))
    # nginx may start before any replica is listed (Swarm ignores depends_on):
    # it finds them when it asks the DNS again, within seconds.
    for node in swarm.nodes:
        asyncio.run(wait_answering(node, set()))
    print(
        f"\nstack deployed: 3 replicas and 3 nginx running after {time.monotonic() - started:.1f} s"
    )
    return deployed


# --- load and what it saw --------------------------------------------------------------


def every_address(nodes: Sequence[Node]) -> list[tuple[str, ...]]:
    """Every node's nginx address, once starting with each node's."""
    each = [node.endpoint(NGINX_PORT) for node in nodes]
    return [tuple(each[i:] + each[:i]) for i in range(len(each))]


def load_on(nodes: Sequence[Node]) -> DeployLoad:
    """Clients given every node's nginx address (the REQ socket balances over them)."""
    return DeployLoad.on(every_address(nodes))


async def trouble_since(stack: Stack, since: float, dead: Sequence[str] = ()) -> Counter[str]:
    """nginx's trouble lines since ``since`` on every live node."""
    logs = await asyncio.to_thread(service_logs, stack.swarm, NGINX, since, dead)
    return nginx_trouble(logs)


async def wait_answering(node: Node, replicas: set[str]) -> None:
    """Until each of ``replicas`` (or, if none is given, any replica) has answered a new
    connection through ``node``'s nginx."""
    await probe_until(
        node.endpoint(NGINX_PORT),
        lambda seen: replicas <= seen.keys() and bool(seen),
        per_round=6,
        timeout_s=ANSWER_TIMEOUT_S,
    )


# --- the scenarios -----------------------------------------------------------------------


@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
async def test_replicas_on_several_nodes_answer_through_every_nodes_nginx(stack: Stack) -> None:
    replicas = await asyncio.to_thread(stack.running, SERVER)
    nodes = {task.node for task in replicas}
    assert len(nodes) >= 2, replicas
    names = {task.name for task in replicas}
    for node in stack.swarm.nodes:
        took_s, seen = await probe_until(
            node.endpoint(NGINX_PORT),
            lambda seen: names <= seen.keys(),
            per_round=6,
            timeout_s=ANSWER_TIMEOUT_S,
        )
        print(f"nginx on {node.name} reached all 3 replicas in {took_s:.1f} s: {dict(seen)}")
        assert seen.keys() == names
    print(f"replicas on {len(nodes)} nodes: {sorted(task.node for task in replicas)}")


async def on_manager(stack: Stack, *args: str) -> str:
    """A docker command on the manager's engine, without blocking the clients."""
    return await asyncio.to_thread(stack.manager.docker, *args)


def names(tasks: Sequence[SwarmTask]) -> set[str]:
    return {task.name for task in tasks}


@pytest.mark.timeout(UPDATE_TIMEOUT_S + 120)
async def test_rolling_update_loses_nothing_and_nginx_never_fails(stack: Stack) -> None:
    before = names(await asyncio.to_thread(stack.running, SERVER))
    load = load_on(stack.swarm.nodes)
    since = time.time()

    def replaced() -> bool:
        return (
            stack.update_state() == "completed"
            and stack.full_strength()
            and not names(stack.running(SERVER)) & before
        )

    async with load.running():
        await on_manager(stack, "service", "update", "--detach", "--force", SERVER)
        took_s = await stack.wait_async("update completed", replaced, UPDATE_TIMEOUT_S)
    trouble = await trouble_since(stack, since)
    print(load.report(f"rolling update of 3 replicas: completed in {took_s:.1f} s", trouble))
    load.assert_nothing_lost()
    assert_nginx_served_every_connection(trouble)


@pytest.mark.timeout(UPDATE_TIMEOUT_S + 120)
async def test_update_to_an_unhealthy_image_is_rolled_back_by_swarm(stack: Stack) -> None:
    load = load_on(stack.swarm.nodes)
    since = time.time()

    def rolled_back() -> bool:
        return stack.update_state() == "rollback_completed" and stack.full_strength()

    async with load.running():
        await on_manager(
            stack,
            *("service", "update", "--detach", "--no-resolve-image"),
            *("--image", UNHEALTHY_IMAGE, SERVER),
        )
        took_s = await stack.wait_async("rolled back", rolled_back, UPDATE_TIMEOUT_S)
    trouble = await trouble_since(stack, since)
    tasks = await asyncio.to_thread(stack.running, SERVER)
    print(
        load.report(
            f"update to an image whose health check fails: Swarm rolled it back, done "
            f"after {took_s:.1f} s",
            trouble,
        )
    )
    load.assert_nothing_lost()
    assert await asyncio.to_thread(stack.image) == SERVER_IMAGE
    assert {task.image for task in tasks} == {SERVER_IMAGE}
    assert_nginx_served_every_connection(trouble)


def node_with_most_replicas(stack: Stack) -> Node:
    """The node, the manager apart, running the most replicas (at least one)."""
    placed = Counter(task.node for task in stack.running(SERVER))
    placed.pop(stack.manager.name, None)
    if not placed:
        pytest.fail(f"no replica on a node but the manager\n{stack.diagnostics()}")
    return stack.swarm.node(placed.most_common(1)[0][0])


@pytest.mark.timeout(CONVERGE_TIMEOUT_S * 2 + 120)
async def test_drain_of_a_node_with_replicas_loses_nothing(stack: Stack) -> None:
    drained = await asyncio.to_thread(node_with_most_replicas, stack)
    on_it = [
        task for task in await asyncio.to_thread(stack.running, SERVER) if task.node == drained.name
    ]
    # Its nginx goes too: the clients carry on through the other nodes'.
    load = load_on(stack.swarm.nodes)
    since = time.time()
    try:
        async with load.running():
            await on_manager(stack, "node", "update", "--availability", "drain", drained.name)
            moved_s = await stack.wait_async(
                "replicas moved off the drained node",
                lambda: stack.full_strength(avoid=[drained.name]),
            )
    finally:
        await on_manager(stack, "node", "update", "--availability", "active", drained.name)
    trouble = await trouble_since(stack, since)
    print(
        load.report(
            f"drain of {drained.name} ({len(on_it)} replica(s)): 3 replicas running on the "
            f"other nodes {moved_s:.1f} s later",
            trouble,
        )
    )
    load.assert_nothing_lost()
    assert_nginx_served_every_connection(trouble)
    back_s = await stack.wait_async(
        "nginx back on the reactivated node", lambda: stack.nginx_everywhere(stack.swarm.nodes)
    )
    print(f"  nginx running on {drained.name} again {back_s:.1f} s after it was made active")


@pytest.mark.timeout(CONVERGE_TIMEOUT_S * 2 + 120)
async def test_killed_node_loses_nothing_and_swarm_restores_full_strength(stack: Stack) -> None:
    victim = await asyncio.to_thread(node_with_most_replicas, stack)
    before = await asyncio.to_thread(stack.running, SERVER)
    on_it = [task for task in before if task.node == victim.name]
    staying = [node for node in stack.swarm.nodes if node != victim]
    load = load_on(stack.swarm.nodes)
    since = time.time()
    async with load.running():
        killed = time.monotonic()
        await asyncio.to_thread(docker, "kill", victim.name)
        await stack.wait_async(
            "node marked down", lambda: stack.swarm.node_states()[victim.name] == "Down"
        )
        down_s = time.monotonic() - killed
        await stack.wait_async(
            "3 replicas running again", lambda: stack.full_strength(avoid=[victim.name])
        )
        running_s = time.monotonic() - killed
        replacements = names(await asyncio.to_thread(stack.running, SERVER)) - names(before)
        await wait_answering(staying[0], replacements)
        answering_s = time.monotonic() - killed
    trouble = await trouble_since(stack, since, [victim.name])
    print(
        load.report(
            f"{victim.name} killed with {len(on_it)} replica(s): marked down after "
            f"{down_s:.1f} s, 3 replicas running after {running_s:.1f} s, the "
            f"replacement(s) answering through nginx after {answering_s:.1f} s",
            trouble,
        )
    )
    load.assert_nothing_lost()
    assert len(replacements) == len(on_it)


@pytest.mark.timeout(120)
async def test_client_given_every_nodes_address_works_with_one_node_gone(stack: Stack) -> None:
    states = await asyncio.to_thread(stack.swarm.node_states)
    assert sorted(states.values()) == ["Down", "Ready", "Ready"], states
    # Each address first for some client: the dead node's too.
    rotations = every_address(stack.swarm.nodes)
    clients = MeasuredClients(
        rotations[0][0], CLIENTS_EVERY_ADDRESS, 30, client_endpoints=rotations
    )
    await asyncio.wait_for(clients.run(), 90)
    print(f"\nclients given all 3 nodes' addresses, one node dead: {clients}")
    assert clients.lost == []
    assert clients.answered == clients.sent
