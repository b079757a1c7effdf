"""Helpers for the tests that drive a real Docker engine (compose and swarm).

Every command runs from the project directory and is bounded in time; a
failing command fails the test with its stderr. A ``Project`` is one compose
project with a name and a published port of its own, so tests never touch
another project on the same engine.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio

import protocol
from client import Client, ClientConfig
from run_clients import compose_command

PROJECT_DIR = Path(__file__).resolve().parent.parent
SETUP_HINT = "as root, `bash ../shared/docker-offline/setup.sh .` installs and starts one"

DOCKER_TIMEOUT_S = 60.0
HEALTHY_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.5


@functools.cache
def engine_problem(compose: bool = True) -> str | None:
    """Why there is no Docker engine (and, if asked, compose) to test with, or None.

    Asked once per test run, however many modules need to know.
    """
    checks = [(["docker", "info", "--format", "{{.ServerVersion}}"], "no Docker engine answers")]
    if compose:
        checks.append(([*compose_command(), "version"], "no docker-compose (nor `docker compose`)"))
    for command, problem in checks:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        except FileNotFoundError:
            return f"{problem}: `{command[0]}` is not installed"
        except subprocess.TimeoutExpired:
            return f"{problem}: `{' '.join(command)}` took over 30 s"
        if done.returncode != 0:
            return f"{problem}: {done.stderr.strip()[:200]}"
    return None


def run(command: Sequence[str], timeout_s: float, env: dict[str, str] | None = None) -> str:
    """Run a command from the project directory; its stdout, or a test failure with stderr."""
    try:
        done = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=env,
            cwd=PROJECT_DIR,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(command)}` took over {timeout_s} s")
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def docker(
    *args: str, timeout_s: float = DOCKER_TIMEOUT_S, env: dict[str, str] | None = None
) -> str:
    """A docker command (``env``: variables added to this process's); its stdout."""
    return run(["docker", *args], timeout_s, None if env is None else {**os.environ, **env})


def docker_unchecked(*args: str) -> subprocess.CompletedProcess[str]:
    """A docker command whose failure the caller looks at (or ignores, when cleaning up)."""
    return subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=DOCKER_TIMEOUT_S,
        check=False,
        cwd=PROJECT_DIR,
    )


@dataclass(frozen=True)
class Project:
    """A test's compose project: its own name and published port.

    ``files`` are the compose files (``COMPOSE_FILE``; default docker-compose.yml),
    ``settings`` more variables for compose to substitute.
    """

    name: str
    port: int
    files: tuple[str, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
        if self.files:
            env["COMPOSE_FILE"] = os.pathsep.join(self.files)
        return {
            **env,
            **self.settings,
            "COMPOSE_PROJECT_NAME": self.name,
            "NGINX_PORT": str(self.port),
            "NGINX_HOST_IP": "127.0.0.1",
        }

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def compose(self, *args: str, timeout_s: float = DOCKER_TIMEOUT_S) -> str:
        return run([*compose_command(), *args], timeout_s, self.env)

    def compose_unchecked(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A compose command whose failure is not the test's (diagnostics, clean-up)."""
        return subprocess.run(
            [*compose_command(), *args],
            capture_output=True,
            text=True,
            timeout=DOCKER_TIMEOUT_S,
            check=False,
            env=self.env,
            cwd=PROJECT_DIR,
        )

    def down(self) -> None:
        """Remove everything of the project, also the images it built (tagged with its name)."""
        self.compose_unchecked("down", "-v", "--rmi", "local", "--remove-orphans", "-t", "10")

    def containers(self, service: str) -> list[str]:
        """Full ids of the service's containers, running or not, not `run` ones.

        By label, which docker-compose 1.29 and `docker compose` v2 both set
        (their `ps` commands differ in what they list).
        """
        labels = {"project": self.name, "service": service, "oneoff": "False"}
        filters = [f"--filter=label=com.docker.compose.{k}={v}" for k, v in labels.items()]
        return docker("ps", "-aq", "--no-trunc", *filters).split()

    def replica_names(self) -> set[str]:
        """What the servers put in their replies: the hostname, the id's first 12 digits."""
        return {container[:12] for container in self.containers("server")}

    def diagnostics(self) -> str:
        """The containers' states and the last lines of their logs, for a failure message."""
        parts = []
        for args in (("ps",), ("logs", "--no-color", "--tail", "15", "server", "nginx")):
            done = self.compose_unchecked(*args)
            parts.append(done.stdout + done.stderr)
        return "\n".join(parts)

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.name}"
        found = {
            "containers": docker("ps", "-aq", "--filter", label).split(),
            "networks": docker("network", "ls", "-q", "--filter", label).split(),
        }
        return {kind: ids for kind, ids in found.items() if ids}


def wait_healthy(project: Project, count: int) -> None:
    """Until ``count`` server containers report healthy; bounded."""
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    while True:
        ids = project.containers("server")
        states = docker("inspect", "-f", "{{.State.Health.Status}}", *ids).split() if ids else []
        if states.count("healthy") >= count:
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"servers not healthy after {HEALTHY_TIMEOUT_S} s: {states}\n"
                f"{project.diagnostics()}"
            )
        time.sleep(POLL_INTERVAL_S)  # polling the engine's health state: no event to await


async def probe(context: zmq.asyncio.Context, endpoint: str, **settings: Any) -> str:
    """One request on a new connection; the replica that answered.

    ``settings`` override the ClientConfig (a longer timeout, CURVE keys).
    """
    config = ClientConfig(endpoints=(endpoint,), timeout_ms=1000, tries=1, heartbeat_ms=0)
    async with Client(replace(config, **settings), context) as client:
        reply = await client.request(protocol.encode_request("probe", b"which replica?"), "probe")
    assert reply.ok, reply
    return reply.replica


async def wait_for_replica(endpoint: str, replica: str | None = None, **settings: Any) -> None:
    """Until a new connection is answered (by ``replica``, if given); bounded."""
    context = zmq.asyncio.Context()
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            while True:
                try:
                    answered = await probe(context, endpoint, **settings)
                except protocol.RequestTimeout:
                    continue
                if replica is None or answered == replica:
                    return
    finally:
        context.destroy(linger=0)
