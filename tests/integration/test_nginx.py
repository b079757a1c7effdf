"""The shared nginx settings against a real nginx on loopback, in front of real replicas.

The stack comes from reqrep.stack.LocalStack, whose nginx config lists the
replicas' loopback ports and includes the proxy settings every target shares
(deploy/nginx/zmq-proxy.conf); where asked, a setting is given again in its
server block, such as a short ``proxy_timeout``, or a small per-address limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from reqrep import protocol
from reqrep.client import Client
from reqrep.config import ClientConfig
from reqrep.stack import LocalStack
from tests.support import needs_nginx

pytestmark = [
    pytest.mark.nginx,
    needs_nginx,
]

REPLY_TIMEOUT_S = 5.0
# nginx closes a connection after this long without traffic in either direction.
SHORT_PROXY_TIMEOUT = "1s"
HEARTBEAT_MS = 200
# Idle for three times proxy_timeout: without heartbeats nginx cuts the connection.
IDLE_S = 3.0
ZMTP_SIGNATURE_BYTES = 10


async def request(client: Client, label: str) -> protocol.Reply:
    frames = protocol.encode_request("nginx-test", label.encode())
    return await asyncio.wait_for(client.request(frames, label), REPLY_TIMEOUT_S)


def open_socket(client: Client) -> zmq.asyncio.Socket:
    """The client's current socket (opened by its first request)."""
    sock = client.socket
    if sock is None:
        pytest.fail("the client has no open socket")
    return sock


async def disconnected_within(client: Client, seconds: float) -> bool:
    """True as soon as the client's socket loses its connection; False after ``seconds``.

    The client's own monitor (``Client.events``) tells: a socket has one monitor.
    """
    events = client.events
    if events is None:
        pytest.fail("the client has no open socket")
    try:
        await asyncio.wait_for(events.wait(zmq.EVENT_DISCONNECTED), seconds)
    except TimeoutError:
        return False
    return True


@contextlib.asynccontextmanager
async def idle_stack(server_heartbeat_ms: int) -> AsyncIterator[LocalStack]:
    async with LocalStack(
        1,
        server_args=["--heartbeat-ms", str(server_heartbeat_ms)],
        nginx=True,
        nginx_overrides={"proxy_timeout": SHORT_PROXY_TIMEOUT},
    ) as stack:
        yield stack


@pytest.mark.parametrize(
    ("server_heartbeat_ms", "client_heartbeat_ms"),
    [(HEARTBEAT_MS, HEARTBEAT_MS), (HEARTBEAT_MS, 0), (0, HEARTBEAT_MS)],
    ids=["both", "server-only", "client-only"],
)
async def test_idle_connection_outlives_proxy_timeout_with_heartbeats(
    context: zmq.asyncio.Context, server_heartbeat_ms: int, client_heartbeat_ms: int
) -> None:
    async with idle_stack(server_heartbeat_ms) as stack:
        config = ClientConfig(tuple(stack.endpoints), heartbeat_ms=client_heartbeat_ms)
        async with Client(config, context) as client:
            assert (await request(client, "before")).ok
            sock = open_socket(client)
            assert not await disconnected_within(client, IDLE_S), (
                f"nginx closed a connection idle for {IDLE_S} s although heartbeats "
                f"were on (proxy_timeout {SHORT_PROXY_TIMEOUT})"
            )
            assert (await request(client, "after")).ok
            assert open_socket(client) is sock, "the reply needed a Lazy Pirate retry"


async def test_idle_connection_is_cut_after_proxy_timeout_without_heartbeats(
    context: zmq.asyncio.Context,
) -> None:
    """The control: with heartbeats off, the same idle connection is closed."""
    async with idle_stack(0) as stack:
        config = ClientConfig(tuple(stack.endpoints), heartbeat_ms=0)
        async with Client(config, context) as client:
            assert (await request(client, "before")).ok
            assert await disconnected_within(client, IDLE_S), (
                f"nginx kept an idle connection without heartbeats for {IDLE_S} s; "
                f"proxy_timeout {SHORT_PROXY_TIMEOUT} is not in force"
            )
            # ZeroMQ reconnects by itself; the next request is answered.
            assert (await request(client, "after")).ok


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def wait_for_lines(path: Path, count: int, timeout_s: float) -> list[str]:
    """The file's lines once it has at least ``count`` (nginx logs a connection when it ends)."""
    async with asyncio.timeout(timeout_s):
        while True:
            lines = read_lines(path)
            if len(lines) >= count:
                return lines
            await asyncio.sleep(0.05)  # a file written by another process: nothing to await


async def test_least_conn_sends_new_connections_to_the_least_busy_replicas(
    context: zmq.asyncio.Context, tmp_path: Path
) -> None:
    """Round robin would give the 4th connection to the 1st replica; least_conn does not."""
    access_log = tmp_path / "access.log"
    async with LocalStack(
        3, nginx=True, nginx_overrides={"access_log": f"{access_log} zmq"}
    ) as stack:
        # LocalStack's own probe of the port is the first connection logged.
        logged = len(await wait_for_lines(access_log, 1, REPLY_TIMEOUT_S))
        first = [Client(ClientConfig(tuple(stack.endpoints)), context) for _ in range(3)]
        try:
            replicas = [(await request(c, f"first-{i}")).replica for i, c in enumerate(first)]
            assert sorted(replicas) == ["replica-1", "replica-2", "replica-3"]
            # Keep the 1st connection; close the others and wait until nginx logged both.
            for client in first[1:]:
                client.close()
            lines = await wait_for_lines(access_log, logged + 2, REPLY_TIMEOUT_S)
            for line in lines[logged:]:
                assert re.search(r"upstream=127\.0\.0\.1:\d+ status=200 ", line), line
            later = [Client(ClientConfig(tuple(stack.endpoints)), context) for _ in range(2)]
            try:
                again = {(await request(c, f"later-{i}")).replica for i, c in enumerate(later)}
            finally:
                for client in later:
                    client.close()
        finally:
            for client in first:
                client.close()
    assert again == set(replicas[1:]), (
        f"new connections went to {sorted(again)}, not to the idle replicas {replicas[1:]}"
    )


async def zmtp_greeting(port: int) -> bytes:
    """Connect through nginx and read the first bytes the replica sends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.readexactly(ZMTP_SIGNATURE_BYTES), REPLY_TIMEOUT_S)
    except asyncio.IncompleteReadError as closed:
        return closed.partial
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_connections_skip_replicas_that_are_down() -> None:
    """A refused connect is retried on the next replica (the shared settings' next upstream).

    Two of three replicas are stopped. Every connection through nginx must
    still reach the live one and read its ZMTP greeting; without the retry on
    the next upstream, a connection that nginx first sends to a stopped
    replica is closed before any byte arrives.
    """
    async with LocalStack(3, nginx=True) as stack:
        for replica in stack.replicas[1:]:
            assert await stack.stop_replica(replica) == 0
        greetings = [await zmtp_greeting(stack.nginx_port) for _ in range(6)]
    for greeting in greetings:
        assert len(greeting) == ZMTP_SIGNATURE_BYTES, f"connection closed early: {greeting!r}"
        assert greeting[0] == 0xFF
        assert greeting[-1] == 0x7F


async def test_connections_over_the_per_address_limit_are_refused_and_logged(
    tmp_path: Path,
) -> None:
    """limit_conn: beyond the limit, a connection from the same address is closed at once.

    On loopback every connection comes from 127.0.0.1. With a limit of 3, three
    held connections reach a replica (its ZMTP greeting arrives); the next ones
    are closed before any byte, logged with status=503; once one of the three
    closes, a new connection is let through again.
    """
    limit = 3
    access_log = tmp_path / "access.log"
    async with LocalStack(
        1, nginx=True, conn_limit=limit, nginx_overrides={"access_log": f"{access_log} zmq"}
    ) as stack:
        # LocalStack's own probe of the port is the first connection logged.
        logged = len(await wait_for_lines(access_log, 1, REPLY_TIMEOUT_S))
        held = [await asyncio.open_connection("127.0.0.1", stack.nginx_port) for _ in range(limit)]
        try:
            for reader, _ in held:
                greeting = await asyncio.wait_for(
                    reader.readexactly(ZMTP_SIGNATURE_BYTES), REPLY_TIMEOUT_S
                )
                assert greeting[0] == 0xFF
            refused = [await zmtp_greeting(stack.nginx_port) for _ in range(2)]
            assert refused == [b"", b""], "connections over the limit got through"
            lines = await wait_for_lines(access_log, logged + 2, REPLY_TIMEOUT_S)
            assert all(" status=503 " in line for line in lines[logged:]), lines[logged:]
            assert all(line.startswith("127.0.0.1 ") for line in lines[logged:])
            _, writer = held.pop()
            writer.close()
            await wait_for_lines(access_log, logged + 3, REPLY_TIMEOUT_S)
            again = await zmtp_greeting(stack.nginx_port)
            assert len(again) == ZMTP_SIGNATURE_BYTES, "a slot freed, but still refused"
        finally:
            for _, writer in held:
                writer.close()
