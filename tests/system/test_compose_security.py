"""Container security and shutdown under docker-compose, for real.

Two compose projects of this module's own (names and published ports of their
own, on 127.0.0.1), one after the other, each removed with ``down -v --rmi
local`` afterwards, also on failure:

``TestHardenedStack``: docker-compose.yml plus an override written by the test
(every valid request works 2.5 s, DEBUG logs, so the health check's ping gets a
longer timeout), one replica and nginx.

1. server, nginx and client containers have a read-only root filesystem (even
   root cannot write to it; nginx writes to its tmpfs mounts), no process of
   server or client runs as root, nor an nginx worker; server and client have
   no capability at all, nginx's master only SETUID and SETGID;
2. ``docker-compose stop`` while 6 requests are in flight on the replica
   (seen in its log before the stop): all 6 are answered by it, and it exits
   0, inside its grace period.

``TestCurve``: docker-compose.yml plus docker-compose.curve.yml, with keys made
by keys.py in a temporary directory, the secret ones readable by the
containers' group as docs/security.md hands them over. The replicas turn healthy (the health
check has its own authorized key), the demo client (its key a compose secret)
prints the seed's lines, 6 clients on the host with an authorized key are
answered by all 3 replicas through nginx, and clients with no CURVE, an unknown
key or a throwaway key get nothing.

Without a Docker engine (or docker-compose) the module is skipped and says why.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from reqrep import keys, protocol
from reqrep.client import Client
from reqrep.config import ClientConfig
from reqrep.errors import RequestTimeout
from tests.support import (
    ANSWER_TIMEOUT_S,
    Project,
    assert_demo_client_printed_the_seed_lines,
    compose_project,
    docker,
    docker_unchecked,
    needs_compose,
    wait_for_replica,
)

pytestmark = needs_compose()

# Building is quick once the base images exist (the layers are shared with
# the other compose tests); bounded well under pytest's 300 s per test.
UP_TIMEOUT_S = 180.0
CONTAINER_USER = 10001

# The shutdown test: this many requests in flight when the replica is told to
# stop. Each works WORK_MS, under the 3 s SERVER_GRACE_S of docker-compose.yml,
# and long enough for `docker-compose stop` to start and send SIGTERM.
IN_FLIGHT = 6
WORK_MS = 2500
HARDENED_OVERRIDE = f"""
services:
  server:
    environment:
      SERVER_WORK_MS: "{WORK_MS}"
      LOG_LEVEL: DEBUG
    healthcheck:
      test: ["CMD", "python", "client.py", "--ping", "--connect", "tcp://127.0.0.1:5555",
             "--timeout-ms", "{WORK_MS + 3000}", "--tries", "1"]
      timeout: {WORK_MS // 1000 + 5}s
"""
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.MULTILINE)


# --- looking into containers --------------------------------------------------------


def processes(container: str) -> list[tuple[int, str]]:
    """(uid, command line) of every process in the container, seen from the host."""
    lines = docker("top", container, "-o", "pid,uid,args").splitlines()[1:]
    found = []
    for line in lines:
        _, uid, args = line.split(None, 2)
        found.append((int(uid), args))
    return found


def assert_read_only_root(container: str, *directories: str) -> None:
    """Nothing can be written to /, /etc, /usr or ``directories``."""
    readonly = docker("inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", container).strip()
    assert readonly == "true", container
    # As root, so that only the read-only mount, not file permissions, can refuse.
    for path in (f"{d}/probe" for d in ("", "/etc", "/usr", *directories)):
        attempt = docker_unchecked("exec", "-u", "0", container, "touch", path)
        assert attempt.returncode != 0, f"{path} was writable in {container}"
        assert "Read-only file system" in attempt.stderr, attempt.stderr


def capabilities(container: str) -> dict[str, int]:
    """The capability sets of the container's main process (CapEff, CapBnd, ...)."""
    status = docker("exec", container, "cat", "/proc/1/status")
    found = re.findall(r"^(Cap\w+):\s+([0-9a-f]+)$", status, re.MULTILINE)
    assert found, status
    return {name: int(value, 16) for name, value in found}


def assert_no_new_privileges(container: str) -> None:
    options = docker("inspect", "-f", "{{json .HostConfig.SecurityOpt}}", container)
    assert "no-new-privileges:true" in options


def assert_unprivileged(container: str) -> None:
    """Runs as user 10001 without any capability, even in its bounding set."""
    assert docker("exec", container, "id", "-u").strip() == str(CONTAINER_USER)
    assert {uid for uid, _ in processes(container)} == {CONTAINER_USER}
    assert set(capabilities(container).values()) == {0}, capabilities(container)
    assert_no_new_privileges(container)


# --- the hardened stack -------------------------------------------------------------


@pytest.fixture(scope="class")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    override = tmp_path_factory.mktemp("compose") / "hardened.yml"
    override.write_text(HARDENED_OVERRIDE)
    with compose_project(
        "zmqsec",
        files=("docker-compose.yml", str(override)),
        services=("server", "nginx"),
        scale=1,
        up_timeout_s=UP_TIMEOUT_S,
        timeout_ms=WORK_MS + 3000,
    ) as project:
        yield project


@dataclass
class InFlight:
    """One REQ socket with a routing id of its own, so its request shows in the server's log."""

    sock: zmq.asyncio.Socket
    routing_id: bytes

    @property
    def log_line(self) -> str:
        return f"Request received from peer {self.routing_id.hex()}"

    async def reply(self) -> protocol.Reply:
        if not await self.sock.poll(WORK_MS + 10_000):
            pytest.fail(f"no reply to {self.routing_id!r}")
        return protocol.parse_reply(await self.sock.recv_multipart())


def logs(container: str) -> str:
    done = docker_unchecked("logs", container)  # the server logs to stderr
    return done.stdout + done.stderr


async def wait_for_log(container: str, lines: list[str], timeout_s: float) -> None:
    """Until every one of ``lines`` is in the container's log; bounded."""
    async with asyncio.timeout(timeout_s):
        while True:
            text = await asyncio.to_thread(logs, container)
            if all(line in text for line in lines):
                return
            await asyncio.sleep(0.1)  # polling a log: there is no event to await


def log_time_s(text: str, marker: str) -> float:
    """When the log line holding ``marker`` was written (seconds, log clock)."""
    line = next(line for line in text.splitlines() if marker in line)
    match = _LOG_TIME.match(line)
    assert match, line
    stamp = time.strptime(match.group(1)[:19], "%Y-%m-%d %H:%M:%S")
    return time.mktime(stamp) + int(match.group(1)[20:]) / 1000


class TestHardenedStack:
    @pytest.mark.parametrize("service", ["server", "nginx", "client"])
    def test_read_only_root_and_no_root_processes(self, hardened: Project, service: str) -> None:
        if service == "client":
            # The demo client exits at once: a container of the service that waits instead.
            hardened.compose("run", "-d", "--no-deps", "--entrypoint", "sleep", "client", "60")
            label = f"label=com.docker.compose.project={hardened.name}"
            (container,) = docker(
                "ps", "-q", "--filter", label, "--filter", "label=com.docker.compose.oneoff=True"
            ).split()
        else:
            (container,) = hardened.containers(service)
        try:
            if service == "nginx":
                assert_read_only_root(container)
                # Its tmpfs mounts are where it may write; its workers are not root.
                for path in ("/var/run/probe", "/var/cache/nginx/probe", "/tmp/probe"):
                    docker("exec", container, "touch", path)
                workers = [uid for uid, args in processes(container) if "worker process" in args]
                assert workers, processes(container)
                assert 0 not in workers, processes(container)
                # The root master keeps only what it needs to switch the workers' user.
                setuid_setgid = 1 << 7 | 1 << 6  # CAP_SETUID, CAP_SETGID
                assert capabilities(container)["CapBnd"] == setuid_setgid
                assert_no_new_privileges(container)
            else:
                assert_read_only_root(container, "/app")  # the code
                assert_unprivileged(container)
        finally:
            if service == "client":
                docker_unchecked("rm", "-f", container)

    async def test_stop_answers_the_requests_in_flight_and_exits_0(self, hardened: Project) -> None:
        (replica,) = hardened.containers("server")
        context = zmq.asyncio.Context()
        requests: list[InFlight] = []
        try:
            for number in range(IN_FLIGHT):
                sock = context.socket(zmq.REQ)
                sock.linger = 0
                routing_id = f"in-flight-{number}".encode()
                sock.setsockopt(zmq.ROUTING_ID, routing_id)
                sock.connect(hardened.endpoint)
                requests.append(InFlight(sock, routing_id))
            for request in requests:
                await request.sock.send_multipart(
                    protocol.encode_request(request.routing_id.decode(), b"answer me")
                )
            # All of them have reached the replica and it is working on them.
            await wait_for_log(replica, [r.log_line for r in requests], WORK_MS / 1000 + 5)
            started = time.monotonic()
            stop = asyncio.create_task(asyncio.to_thread(hardened.compose, "stop", "server"))
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                replies = await asyncio.gather(*(r.reply() for r in requests))
                await stop
            stop_s = time.monotonic() - started
        finally:
            context.destroy(linger=0)
        text = logs(replica)
        state = docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", replica).split()
        assert state == ["exited", "0"], f"{state}\n{text}"
        assert [reply.status for reply in replies] == ["Server response"] * IN_FLIGHT, replies
        assert {reply.replica for reply in replies} == {replica[:12]}
        draining = re.search(r"Stopping: finishing (\d+) request\(s\) in flight", text)
        assert draining, f"SIGTERM came after the work was done:\n{text}"
        # The health check's ping may be in flight too.
        assert int(draining.group(1)) >= IN_FLIGHT, text
        assert "Grace period over" not in text, text
        assert "stopped after" in text, text
        received = max(log_time_s(text, r.log_line) for r in requests)
        sigterm = log_time_s(text, "Stopping: finishing")
        print(
            f"docker-compose stop with {draining.group(1)} request(s) in flight "
            f"({WORK_MS} ms of work each): {stop_s:.1f} s; SIGTERM {sigterm - received:.2f} s "
            f"after the last request was received, replica drained in "
            f"{log_time_s(text, 'stopped after') - sigterm:.2f} s and exited 0"
        )


# --- CURVE ----------------------------------------------------------------------


@dataclass(frozen=True)
class CurveKeys:
    directory: Path

    def path(self, name: str) -> str:
        return str(self.directory / name)


@pytest.fixture(scope="class")
def curve_keys(tmp_path_factory: pytest.TempPathFactory) -> CurveKeys:
    """What docker-compose.curve.yml expects, made by keys.py; plus a key nobody authorized."""
    directory = tmp_path_factory.mktemp("curve") / "keys"
    keys.generate(directory, ["server", "mallory"])
    keys.generate(directory, ["healthcheck", "client1"], authorize=directory / "authorized")
    # Compose mounts secret files with their owner and mode: as docs/security.md
    # says, the containers' group reads them (0640), their owner still can.
    try:
        for name in ("server", "healthcheck", "client1"):
            os.chown(directory / f"{name}.key_secret", -1, CONTAINER_USER)
            os.chmod(directory / f"{name}.key_secret", 0o640)
    except PermissionError:
        pytest.skip(f"handing the secret keys to group {CONTAINER_USER} needs root (chgrp)")
    return CurveKeys(directory)


@pytest.fixture(scope="class")
def curve(curve_keys: CurveKeys) -> Iterator[Project]:
    # Healthy: the health check's ping, with its own key, was answered.
    with compose_project(
        "zmqcurve",
        files=("docker-compose.yml", "docker-compose.curve.yml"),
        settings={"CURVE_KEYS_DIR": str(curve_keys.directory)},
        up_timeout_s=UP_TIMEOUT_S,
        **client_keys(curve_keys, "client1"),
    ) as project:
        yield project


def client_keys(curve_keys: CurveKeys, name: str | None) -> dict[str, Any]:
    """ClientConfig settings: the server's public key and the client's secret key (if any)."""
    secret = None if name is None else curve_keys.path(f"{name}.key_secret")
    return {"curve_server_key": curve_keys.path("server.key"), "curve_secret_key": secret}


class TestCurve:
    def test_demo_client_with_its_secret_prints_the_seed_lines(self, curve: Project) -> None:
        assert_demo_client_printed_the_seed_lines(curve)

    async def test_authorized_clients_on_the_host_are_answered_by_every_replica(
        self, curve: Project, curve_keys: CurveKeys
    ) -> None:
        config = ClientConfig(endpoints=(curve.endpoint,), timeout_ms=2000, tries=1)
        settings = client_keys(curve_keys, "client1")
        context = zmq.asyncio.Context()

        async def one_client(number: int) -> list[protocol.Reply]:
            replies = []
            # One connection each; nginx spreads them over the replicas (least_conn).
            async with Client(replace(config, **settings), context) as c:
                for data in (b"one", b"two"):
                    frames = protocol.encode_request(f"alice-{number}", data)
                    replies.append(await c.request(frames, f"{number}"))
                replies.append(await c.request(protocol.encode_request_without_address(b"x")))
            return replies

        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                # Connections held at once, so least_conn cannot give them all to one replica.
                answered = await asyncio.gather(*(one_client(n) for n in range(6)))
        finally:
            context.destroy(linger=0)
        for replies in answered:
            assert [r.status for r in replies] == ["Server response"] * 2 + ["Invalid message"]
        assert {r.replica for replies in answered for r in replies} == curve.replica_names()

    @pytest.mark.parametrize(
        ("curve_on", "secret"),
        [(False, None), (True, "mallory"), (True, None)],
        ids=["no-curve", "unknown-key", "throwaway-key"],
    )
    async def test_clients_without_an_authorized_key_get_nothing(
        self, curve: Project, curve_keys: CurveKeys, curve_on: bool, secret: str | None
    ) -> None:
        overrides = client_keys(curve_keys, secret) if curve_on else {}
        config = ClientConfig(endpoints=(curve.endpoint,), timeout_ms=500, tries=2)
        context = zmq.asyncio.Context()
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                async with Client(replace(config, **overrides), context) as c:
                    with pytest.raises(RequestTimeout):
                        await c.request(protocol.encode_request("intruder", b"let me in"))
                # The service is still there for those with a key.
                await wait_for_replica(curve.endpoint, **client_keys(curve_keys, "client1"))
        finally:
            context.destroy(linger=0)
