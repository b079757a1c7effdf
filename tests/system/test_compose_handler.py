"""A handler of the user's in the server containers, both recipes of docs/handlers.md, for real.

``TestMountedHandler``: docker-compose.yml plus docker-compose.handler.yml with its defaults
(examples/handlers mounted read-only at /handlers, ``SERVER_HANDLER=echo:echo``), in a compose
project of its own, removed afterwards (``down -v --rmi local``), also on failure:

1. the 3 replicas turned healthy (their health check pings through the handler) and the demo
   client printed the seed's lines, as without the override;
2. clients on the host, through nginx's published port, get their data back byte for byte from
   every replica;
3. the handler directory is a read-only bind mount in every replica, and ``HANDLER_DIR`` and
   ``SERVER_HANDLER`` from the environment replace the defaults (``docker-compose config``).

``test_an_image_built_from_the_server_image_serves_its_handler``: examples/handlers/Dockerfile
built FROM the server image (Dockerfile_server, both tagged for this test), run alone with its
port published on 127.0.0.1, turns healthy and echoes. Its container and images are removed
afterwards.

Without a Docker engine (or docker-compose) the module is skipped and says why.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reqrep import Channel, ChannelConfig, Client, ClientConfig, protocol
from reqrep.stack import free_port
from tests.support import (
    ANSWER_TIMEOUT_S,
    COMPOSE_REPLICAS,
    HEALTHY_TIMEOUT_S,
    PROJECT_DIR,
    Project,
    assert_demo_client_printed_the_seed_lines,
    compose_project,
    docker,
    docker_unchecked,
    needs_compose,
    wait_for_replica,
    wait_until,
)

pytestmark = needs_compose()

FILES = ("docker-compose.yml", "docker-compose.handler.yml")
HANDLERS_DIR = PROJECT_DIR / "examples" / "handlers"
BUILD_TIMEOUT_S = 180.0
# Each of the replicas gets several of the channel's connections from nginx (least_conn).
CONNECTIONS = 3 * COMPOSE_REPLICAS
REQUESTS = 10 * CONNECTIONS


async def echoed_by(endpoint: str) -> set[str]:
    """Requests over many connections at once, each with data of its own; the replicas whose
    replies gave every request's data back."""
    config = ChannelConfig(endpoints=(endpoint,), connections=CONNECTIONS, timeout_ms=5000, tries=1)
    sent = [b"echo %d " % number + os.urandom(64) for number in range(REQUESTS)]
    async with Channel(config) as channel:
        replies = await asyncio.gather(
            *(channel.request(protocol.encode_request("host", data)) for data in sent)
        )
    assert [reply.body for reply in replies] == sent
    assert all(reply.ok for reply in replies)
    return {reply.replica for reply in replies}


@pytest.fixture(scope="class")
def mounted() -> Iterator[Project]:
    with compose_project("zmqhandler", files=FILES) as started:
        yield started


class TestMountedHandler:
    def test_replicas_are_healthy_and_the_demo_client_is_unchanged(self, mounted: Project) -> None:
        assert_demo_client_printed_the_seed_lines(mounted)

    async def test_host_clients_get_their_data_back_from_every_replica(
        self, mounted: Project
    ) -> None:
        replicas = await asyncio.wait_for(echoed_by(mounted.endpoint), ANSWER_TIMEOUT_S)
        assert replicas == mounted.replica_names()

    def test_the_handler_directory_is_mounted_read_only(self, mounted: Project) -> None:
        for container in mounted.containers("server"):
            mounts = json.loads(docker("inspect", "-f", "{{json .Mounts}}", container))
            (mount,) = [m for m in mounts if m["Destination"] == "/handlers"]
            assert (mount["Type"], mount["Source"], mount["RW"]) == (
                "bind",
                str(HANDLERS_DIR),
                False,
            )


def test_handler_dir_and_handler_come_from_the_environment(tmp_path: Path) -> None:
    settings = {"HANDLER_DIR": str(tmp_path), "SERVER_HANDLER": "service:handle"}
    project = Project(f"zmqhandlerconfig{os.getpid()}", free_port(), FILES, settings)
    server = yaml.safe_load(project.compose("config"))["services"]["server"]
    assert server["environment"]["SERVER_HANDLER"] == "service:handle"
    assert server["environment"]["PYTHONPATH"] == "/handlers"
    (mount,) = server["volumes"]
    assert (mount["source"], mount["target"], mount["read_only"]) == (
        str(tmp_path),
        "/handlers",
        True,
    )


# --- the other recipe: an image FROM the server image -------------------------------------


def wait_container_healthy(container: str) -> None:
    """Until the container's health check passes; bounded."""
    state = ""

    def healthy() -> bool:
        nonlocal state
        state = docker("inspect", "-f", "{{.State.Health.Status}}", container).strip()
        return state == "healthy"

    def diagnostics() -> str:
        logs = docker_unchecked("logs", "--tail", "20", container)
        return f"{container} is {state}:\n{logs.stderr}"

    wait_until(f"{container} healthy", healthy, HEALTHY_TIMEOUT_S, diagnostics)


async def test_an_image_built_from_the_server_image_serves_its_handler() -> None:
    name = f"zmqhandlerimage{os.getpid()}"
    server_image, handler_image = f"{name}-server:test", f"{name}-echo:test"
    port = free_port()
    try:
        build = ["build", "-q", "-t"]
        docker(*build, server_image, "-f", "Dockerfile_server", ".", timeout_s=BUILD_TIMEOUT_S)
        base = f"SERVER_IMAGE={server_image}"
        docker(
            *build, handler_image, "--build-arg", base, str(HANDLERS_DIR), timeout_s=BUILD_TIMEOUT_S
        )
        docker("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:5555", handler_image)
        await asyncio.to_thread(wait_container_healthy, name)
        endpoint = f"tcp://127.0.0.1:{port}"
        await wait_for_replica(endpoint)
        config = ClientConfig(endpoints=(endpoint,), timeout_ms=5000, tries=1)
        async with Client(config) as client:
            assert await client.call(b"baked in") == b"baked in"
    finally:
        docker_unchecked("rm", "-f", "-v", name)
        docker_unchecked("rmi", handler_image, server_image)
