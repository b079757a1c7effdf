"""A real multi-node swarm on one machine, for tests/system/test_swarm_multinode.py.

Each node is a Docker-in-Docker container (``docker:28-dind`` by default,
``SWARM_NODE_IMAGE`` to change it) with an engine of its own, on an
``--internal`` network of its own: the nodes reach each other and this host,
nothing else. The nodes form one swarm of 3 managers (the smallest that keeps
its quorum when a node dies). They reach no registry, so images go in with
``docker save | docker exec -i NODE docker load`` and are deployed with
``--resolve-image never``. Commands go to a node's engine through
``docker exec NODE docker ...``; clients on this host reach nginx's
host-mode port at each node's address on the internal network.

``swarm_of_nodes`` makes all of it and removes all of it afterwards (the node
containers with their volumes, the network), also when making it failed.
Every wait is bounded.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (
    DOCKER_TIMEOUT_S,
    POLL_INTERVAL_S,
    PROJECT_DIR,
    SETUP_HINT,
    docker,
    engine_problem,
    labelled_leftovers,
    run,
    wait_until,
)

NODE_IMAGE = os.environ.get("SWARM_NODE_IMAGE", "docker:28-dind")
# On everything made on this host's engine (nodes, network), with the run's prefix.
LABEL = "zmq-request-reply.multinode-test"
# The nodes' engines need what a dind container needs: --privileged first.
PRIVILEGED = ("--privileged",)
# Where --privileged fails (a VM whose capability bounding set lacks
# CAP_SYS_RESOURCE, which --privileged asks for: "unable to apply caps"), the
# same minus that capability, as ../shared/docker-offline/README.md lists it.
UNPRIVILEGED_FALLBACK = (
    *("--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE"),
    *("--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined"),
    *("--security-opt", "systempaths=unconfined"),
    *("--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"),
)
ENGINE_TIMEOUT_S = 60.0
LOAD_TIMEOUT_S = 240.0
# Where the project's deploy/ directory is copied in a node, as it is.
DEPLOY_DIR_IN_NODE = "/project/deploy"


def nodes_problem() -> str | None:
    """Why there can be no dind nodes here (no engine, no node image), or None."""
    problem = engine_problem(compose=False)
    if problem is not None:
        return f"{problem}; {SETUP_HINT}"
    done = subprocess.run(
        ["docker", "image", "inspect", NODE_IMAGE],
        capture_output=True,
        text=True,
        timeout=DOCKER_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        return (
            f"no {NODE_IMAGE} image here: docker pull it, or where Docker Hub is out of "
            f"reach `bash ../shared/docker-offline/setup.sh . {NODE_IMAGE}`"
        )
    return None


@dataclass(frozen=True)
class Node:
    """One node: its container's name and its address on the nodes' network."""

    name: str
    address: str

    def docker(self, *args: str, timeout_s: float = DOCKER_TIMEOUT_S, **env: str) -> str:
        """A docker command on this node's engine (``env``: variables for the node's CLI)."""
        exported = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        return run(["docker", "exec", *exported, self.name, "docker", *args], timeout_s)

    def docker_unchecked(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A docker command on the node whose failure the caller looks at (or ignores)."""
        return subprocess.run(
            ["docker", "exec", self.name, "docker", *args],
            capture_output=True,
            text=True,
            timeout=DOCKER_TIMEOUT_S,
            check=False,
        )

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.address}:{port}"


@dataclass
class Swarm:
    """The nodes, all managers; ``nodes[0]`` made the swarm and takes the commands."""

    prefix: str
    network: str
    nodes: list[Node]

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    def node(self, hostname: str) -> Node:
        (found,) = [node for node in self.nodes if node.name == hostname]
        return found

    def node_states(self) -> dict[str, str]:
        """Each node's hostname (its container's name) and its status: Ready, Down."""
        out = self.manager.docker("node", "ls", "--format", "{{.Hostname}} {{.Status}}")
        return dict(line.split(" ", 1) for line in out.splitlines())

    def leftovers(self) -> dict[str, list[str]]:
        """What this swarm made on this host's engine and still exists."""
        return labelled_leftovers(f"{LABEL}={self.prefix}")


def start_node(name: str, network: str, prefix: str, run_flags: Sequence[str]) -> bool:
    """``docker run`` one node with ``run_flags``; False if the engine could not apply them."""
    done = subprocess.run(
        [
            *("docker", "run", "-d", "--name", name, "--hostname", name),
            *("--network", network, "--label", f"{LABEL}={prefix}"),
            # A node reaches no registry: without this its engine tries to pull
            # the image before each task starts, and waits for that to fail.
            *("-e", "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1"),
            *run_flags,
            NODE_IMAGE,
        ],
        capture_output=True,
        text=True,
        timeout=DOCKER_TIMEOUT_S,
        check=False,
    )
    if done.returncode == 0:
        return True
    # A refused `docker run` leaves its container created but not started.
    docker("rm", "-f", "-v", name)
    if "operation not permitted" in done.stderr:
        return False
    pytest.fail(f"`docker run {NODE_IMAGE}` for node {name} failed: {done.stderr.strip()}")


def start_nodes(prefix: str, network: str, count: int) -> list[Node]:
    """Start the node containers: --privileged, or the fallback where that is refused."""
    flags: Sequence[str] = PRIVILEGED
    names = [f"{prefix}-node{number}" for number in range(1, count + 1)]
    for name in names:
        if start_node(name, network, prefix, flags):
            continue
        if flags is PRIVILEGED and start_node(name, network, prefix, UNPRIVILEGED_FALLBACK):
            flags = UNPRIVILEGED_FALLBACK
            continue
        pytest.fail(f"node {name}: the engine refused both --privileged and the fallback flags")
    return [Node(name, container_address(name, network)) for name in names]


def container_address(container: str, network: str) -> str:
    template = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
    return docker("inspect", "-f", template, container).strip()


def wait_engines(nodes: Sequence[Node]) -> None:
    """Until every node's own engine answers; bounded."""
    deadline = time.monotonic() + ENGINE_TIMEOUT_S
    for node in nodes:
        while node.docker_unchecked("info", "--format", "{{.ServerVersion}}").returncode != 0:
            if time.monotonic() > deadline:
                logs = docker("logs", "--tail", "20", node.name)
                pytest.fail(f"{node.name}'s engine not up after {ENGINE_TIMEOUT_S:.0f} s:\n{logs}")
            time.sleep(POLL_INTERVAL_S)  # polling an engine starting up: no event to await


def form_swarm(nodes: Sequence[Node]) -> None:
    """The first node makes the swarm; the others join it as managers."""
    first = nodes[0]
    first.docker("swarm", "init", "--advertise-addr", first.address)
    token = first.docker("swarm", "join-token", "-q", "manager").strip()
    for node in nodes[1:]:
        node.docker(
            "swarm", "join", "--advertise-addr", node.address, "--token", token, first.address
        )


def wait_nodes_ready(swarm: Swarm) -> None:
    """Until the swarm lists every node, all Ready; bounded."""
    states: dict[str, str] = {}

    def all_ready() -> bool:
        nonlocal states
        states = swarm.node_states()
        return set(states.values()) == {"Ready"} and len(states) >= len(swarm.nodes)

    wait_until("swarm nodes all Ready", all_ready, ENGINE_TIMEOUT_S, lambda: str(states))


@contextlib.contextmanager
def swarm_of_nodes(prefix: str, count: int = 3) -> Iterator[Swarm]:
    """``count`` dind nodes in one swarm, all managers; removed afterwards, whatever happens."""
    network = f"{prefix}-net"
    swarm = Swarm(prefix, network, [])
    try:
        docker("network", "create", "--internal", "--label", f"{LABEL}={prefix}", network)
        swarm.nodes = start_nodes(prefix, network, count)
        wait_engines(swarm.nodes)
        form_swarm(swarm.nodes)
        wait_nodes_ready(swarm)
        yield swarm
    finally:
        remove(swarm)


def remove(swarm: Swarm) -> None:
    """The node containers (their engines, swarm and images go with them) and the network."""
    left = swarm.leftovers()
    if "containers" in left:
        docker("rm", "-f", "-v", *left["containers"], timeout_s=120)
    if "networks" in left:
        docker("network", "rm", *left["networks"])


def load_images(nodes: Sequence[Node], images: Sequence[str]) -> None:
    """``docker save`` the images once, then ``docker load`` them into every node at once."""
    with tempfile.TemporaryDirectory(prefix="zmq-multinode-") as workdir:
        archive = Path(workdir) / "images.tar"
        docker("save", "-o", str(archive), *images, timeout_s=LOAD_TIMEOUT_S)
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            loads = [pool.submit(load_archive, node, archive) for node in nodes]
            for done in loads:
                done.result()


def load_archive(node: Node, archive: Path) -> None:
    with archive.open("rb") as stream:
        done = subprocess.run(
            ["docker", "exec", "-i", node.name, "docker", "load", "-q"],
            stdin=stream,
            capture_output=True,
            text=True,
            timeout=LOAD_TIMEOUT_S,
            check=False,
        )
    if done.returncode != 0:
        pytest.fail(f"docker load into {node.name} failed: {done.stderr.strip()}")


def copy_deploy_dir(node: Node) -> None:
    """The project's deploy/ directory, as it is, into the node (its CLI reads the stack there)."""
    docker("exec", node.name, "mkdir", "-p", str(Path(DEPLOY_DIR_IN_NODE).parent))
    docker("cp", str(PROJECT_DIR / "deploy"), f"{node.name}:{DEPLOY_DIR_IN_NODE}")


def service_logs(swarm: Swarm, service: str, since: float, dead: Sequence[str] = ()) -> str:
    """The logs since ``since`` (a time.time()) of every container of ``service``, stopped
    ones too, on every node not in ``dead``."""
    logs = []
    label = f"label=com.docker.swarm.service.name={service}"
    for node in swarm.nodes:
        if node.name in dead:
            continue
        for container in node.docker("ps", "-aq", "--filter", label).split():
            done = node.docker_unchecked("logs", "--since", f"{since:.3f}", container)
            logs += [done.stdout, done.stderr]
    return "".join(logs)
