"""The client: the seed's output, Lazy Pirate retries, clear failures, the CLI."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio

from reqrep import protocol
from reqrep.channel import Channel, ChannelConfig
from reqrep.client import Client
from reqrep.config import ClientConfig
from reqrep.errors import ConnectFailed, EndpointError, RequestTimeout
from reqrep.stack import LocalStack, free_port
from tests.support import run_script, seed_lines, silent_router

TIMEOUT_S = 15.0


async def run_client_cli(*args: str) -> tuple[int, str, str, float]:
    """Run client.py; return exit status, stdout, stderr and seconds taken."""
    started = time.perf_counter()
    done = await run_script("client.py", *args, timeout_s=TIMEOUT_S)
    return done.status, done.stdout, done.stderr, time.perf_counter() - started


async def test_cli_prints_the_seed_lines_and_exits_zero(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    async with LocalStack(1, nginx=False) as stack:
        status, stdout, stderr, _ = await run_client_cli(
            "--connect", stack.endpoints[0], "--requests", "5", "--report", str(report)
        )
    assert status == 0, stderr
    assert stdout.splitlines() == seed_lines(5)
    assert '"replica": "replica-1"' in report.read_text()


async def test_cli_without_server_fails_fast_and_clearly() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    status, stdout, stderr, elapsed_s = await run_client_cli(
        "--connect", endpoint, "--timeout-ms", "200", "--tries", "3"
    )
    print(f"no server: exit {status} after {elapsed_s:.2f} s (3 x 200 ms of waiting)")
    assert status == 1
    assert stdout.splitlines() == ["Sending request: 0"]
    assert f"error: server at {endpoint} did not answer request 0 after 3 tries" in stderr
    # 3 x 200 ms of polling plus interpreter start-up: bounded, never a hang.
    assert elapsed_s < 0.6 + 5.0


async def test_ping_exits_0_when_answered_and_1_when_not(
    make_client: Callable[..., Client],
) -> None:
    async with LocalStack(1, nginx=False) as stack:
        status, _, _, _ = await run_client_cli("--ping", "--connect", stack.endpoints[0])
    assert status == 0
    down = f"tcp://127.0.0.1:{free_port()}"
    status, _, stderr, _ = await run_client_cli(
        "--ping", "--connect", down, "--timeout-ms", "200", "--tries", "1"
    )
    assert status == 1
    assert "did not answer request ping after 1 try: nothing accepted the connection" in stderr


async def test_request_raises_timeout_after_last_try(make_client: Callable[..., Client]) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    client = make_client([endpoint], timeout_ms=100, tries=2)
    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(RequestTimeout) as raised:
            await client.request(protocol.encode_request("c", b"x"), "7")
    assert raised.value.tries == 2
    assert str(raised.value) == (
        f"server at {endpoint} did not answer request 7 after 2 tries: "
        "nothing accepted the connection (refused, or no such host or port)"
    )
    assert isinstance(raised.value, ConnectFailed)


async def test_a_cancelled_request_is_cancelled_not_retried(
    make_client: Callable[..., Client], context: zmq.asyncio.Context
) -> None:
    async with silent_router(context) as router:
        client = make_client([router.endpoint], timeout_ms=10_000, tries=3)
        pending = asyncio.create_task(client.request(protocol.encode_request("c", b"x")))
        async with asyncio.timeout(TIMEOUT_S):
            await router.received_at_least(1)  # the request is out: the client awaits its reply
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
    assert client.last_tries == 1


class _RetryWatcher(logging.Handler):
    """Sets an event when the client logs that a try went unanswered."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.timed_out = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "No reply to the request" in record.getMessage():
            self.timed_out.set()


async def test_server_started_late_is_reached_by_a_retry(
    start_server: Callable[..., Any], make_client: Callable[..., Client]
) -> None:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    client = make_client([endpoint], timeout_ms=200, tries=20)
    watcher = _RetryWatcher()
    logging.getLogger("reqrep.client").addHandler(watcher)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            pending = asyncio.create_task(client.request(protocol.encode_request("c", b"x")))
            await watcher.timed_out.wait()  # the first try went unanswered
            await start_server(bind=(endpoint,))
            reply = await pending
    finally:
        logging.getLogger("reqrep.client").removeHandler(watcher)
    assert reply.ok
    assert client.last_tries >= 2


async def test_requests_through_several_endpoints_are_balanced(
    start_server: Callable[..., Any], make_client: Callable[..., Client]
) -> None:
    servers = [await start_server(name=f"r{i}") for i in range(3)]
    client = make_client([s.endpoint for s in servers])
    async with asyncio.timeout(TIMEOUT_S):
        replies = [await client.request(protocol.encode_request("c", b"x")) for _ in range(9)]
    assert {reply.replica for reply in replies} == {"r0", "r1", "r2"}


async def test_client_closes_its_socket_so_the_context_terminates(
    context: zmq.asyncio.Context, make_client: Callable[..., Client]
) -> None:
    """After a timeout the socket is closed with linger 0 (the fixture checks term)."""
    client = make_client([f"tcp://127.0.0.1:{free_port()}"], timeout_ms=50, tries=1)
    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(RequestTimeout):
            await client.request(protocol.encode_request("c", b"x"))


@pytest.mark.parametrize("endpoint", ["notanendpoint", "tcp://localhost", "tcp://*:5555"])
def test_a_malformed_endpoint_raises_at_once_leaving_nothing_open(endpoint: str) -> None:
    """The library's clients check endpoints before they make a context or a socket."""
    before = threading.active_count()  # each ZeroMQ context starts threads of its own
    with pytest.raises(EndpointError):
        Client(ClientConfig(endpoints=(endpoint,)))
    with pytest.raises(EndpointError):
        Channel(ChannelConfig(endpoints=(endpoint,)))
    assert threading.active_count() == before


async def test_a_dead_endpoint_among_several_is_skipped(
    start_server: Callable[..., Any], make_client: Callable[..., Client]
) -> None:
    """Given every node's address, one of them dead (first, even): each request goes to a
    connection that is up (ZMQ_IMMEDIATE), none waits on the dead one for a retry."""
    server = await start_server()
    dead = f"tcp://127.0.0.1:{free_port()}"
    client = make_client([dead, server.endpoint], timeout_ms=2000, tries=1)
    async with asyncio.timeout(TIMEOUT_S):
        replies = [await client.request(protocol.encode_request("c", b"x")) for _ in range(10)]
    assert all(reply.ok for reply in replies)
    assert client.last_tries == 1
