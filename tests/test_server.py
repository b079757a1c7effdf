"""The server with real sockets on loopback: answers, errors, concurrency, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq
import zmq.asyncio

import protocol
from client import Client
from local_stack import LocalStack
from protocol import RequestTimeout

TIMEOUT_S = 10.0


async def test_answers_valid_and_malformed_and_keeps_serving(
    start_server: Callable[..., Any],
    make_client: Callable[..., Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_server(name="replica-a")
    client = make_client([server.endpoint])
    caplog.set_level(logging.ERROR, logger="server")
    async with asyncio.timeout(TIMEOUT_S):
        first = await client.request(protocol.encode_request("c1", b"zero"))
        bad = await client.request(protocol.encode_request_without_address(b"two"))
        after = await client.request(protocol.encode_request("c1", b"three"))
    assert (first.status, first.replica, first.detail) == ("Server response", "replica-a", "")
    assert bad.status == "Invalid message"
    assert bad.replica == "replica-a"
    assert "missing address" in bad.detail
    assert after.status == "Server response"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "Invalid message from peer" in errors[0]
    assert "missing address" in errors[0]


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([b"", b"data"], "empty address"),
        ([b"addr", b"data", b"extra"], "wrong number of frames"),
        ([b"\xff\xfe", b"data"], "not valid UTF-8"),
        ([b"a" * 300, b"data"], "exceeds 256"),
        # Each frame is under MAXMSGSIZE, the message is over the limit.
        ([b"a", b"x" * 600, b"y" * 600], "exceeds the 1000-byte limit"),
    ],
)
@pytest.mark.parametrize("socket_type", ["router", "rep"])
async def test_every_malformed_kind_gets_invalid_message_with_reason(
    start_server: Callable[..., Any],
    make_client: Callable[..., Client],
    frames: list[bytes],
    reason: str,
    socket_type: str,
) -> None:
    server = await start_server(socket_type=socket_type, max_message_bytes=1000)
    client = make_client([server.endpoint])
    async with asyncio.timeout(TIMEOUT_S):
        reply = await client.request(frames)
        still = await client.request(protocol.encode_request("c", b"ok"))
    assert reply.status == "Invalid message"
    assert reason in reply.detail
    assert still.ok


async def test_frame_over_maxmsgsize_is_refused_without_harming_others(
    start_server: Callable[..., Any], make_client: Callable[..., Client]
) -> None:
    server = await start_server(max_message_bytes=1000)
    hostile = make_client([server.endpoint], timeout_ms=300, tries=1)
    friendly = make_client([server.endpoint])
    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(RequestTimeout):
            await hostile.request([b"addr", b"x" * 5000])
        reply = await friendly.request(protocol.encode_request("c", b"ok"))
    assert reply.ok


async def test_bare_dealer_without_delimiter_gets_answers_too(
    start_server: Callable[..., Any], context: zmq.asyncio.Context
) -> None:
    server = await start_server()
    dealer = context.socket(zmq.DEALER)
    try:
        dealer.connect(server.endpoint)
        async with asyncio.timeout(TIMEOUT_S):
            await dealer.send_multipart([b"addr", b"data"])
            good = await dealer.recv_multipart()
            await dealer.send_multipart([b"data only"])
            bad = await dealer.recv_multipart()
    finally:
        dealer.close(linger=0)
    # No delimiter: the reply comes back behind the routing id alone.
    assert good == [protocol.SERVER_RESPONSE, b"test-replica", b""]
    assert bad[0] == protocol.INVALID_MESSAGE
    assert b"missing address" in bad[2]


async def _concurrent_round(
    start_server: Callable[..., Any],
    make_client: Callable[..., Client],
    socket_type: str,
    clients: int,
) -> float:
    server = await start_server(socket_type=socket_type, work_ms=100)
    pool = [make_client([server.endpoint], timeout_ms=10_000, tries=1) for _ in range(clients)]
    started = time.perf_counter()
    async with asyncio.timeout(TIMEOUT_S):
        replies = await asyncio.gather(
            *(c.request(protocol.encode_request(f"c{i}", b"x")) for i, c in enumerate(pool))
        )
    elapsed_s = time.perf_counter() - started
    assert all(reply.ok for reply in replies)
    await server.stop()
    return elapsed_s


async def test_router_mode_serves_concurrently_rep_mode_one_at_a_time(
    start_server: Callable[..., Any], make_client: Callable[..., Client]
) -> None:
    """20 requests of 100 ms work: one at a time takes 2 s, concurrently far less."""
    router_s = await _concurrent_round(start_server, make_client, "router", 20)
    rep_s = await _concurrent_round(start_server, make_client, "rep", 20)
    print(f"20 x 100 ms requests: router {router_s:.3f} s, rep {rep_s:.3f} s")
    # REP cannot overlap requests: 20 x 100 ms of sleeping is a hard lower bound.
    assert rep_s >= 1.95
    # ROUTER overlaps them; well under the serial 2 s even on a loaded machine.
    assert router_s < 1.0


async def test_max_inflight_bounds_concurrent_work(
    start_server: Callable[..., Any], make_client: Callable[..., Client]
) -> None:
    """With 2 slots, 6 requests of 200 ms run in 3 waves and all are answered."""
    server = await start_server(work_ms=200, max_inflight=2)
    pool = [make_client([server.endpoint], timeout_ms=10_000, tries=1) for _ in range(6)]
    started = time.perf_counter()
    async with asyncio.timeout(TIMEOUT_S):
        replies = await asyncio.gather(
            *(c.request(protocol.encode_request(f"c{i}", b"x")) for i, c in enumerate(pool))
        )
    elapsed_s = time.perf_counter() - started
    assert all(reply.ok for reply in replies)
    assert elapsed_s >= 0.59  # three waves of 200 ms: the bound held


async def test_sigterm_drains_in_flight_requests_and_exits_zero(
    make_client: Callable[..., Client],
) -> None:
    """A real server process: SIGTERM while 5 requests work; all answered, exit 0."""
    async with LocalStack(
        1, nginx=False, server_args=["--work-ms", "500", "--grace-s", "5", "--log-level", "DEBUG"]
    ) as stack:
        replica = stack.replicas[0]
        pool = [make_client(stack.endpoints, timeout_ms=10_000, tries=1) for _ in range(5)]
        async with asyncio.timeout(TIMEOUT_S):
            pending = [
                asyncio.create_task(c.request(protocol.encode_request(f"c{i}", b"x")))
                for i, c in enumerate(pool)
            ]
            await replica.wait_for_log("Request received", count=5)
            started = time.perf_counter()
            status = await stack.stop_replica(replica, signal.SIGTERM)
            stopped_s = time.perf_counter() - started
            replies = await asyncio.gather(*pending)
    print(f"SIGTERM with 5 requests in flight: exited {status} after {stopped_s:.2f} s")
    assert status == 0
    assert all(reply.ok for reply in replies)
    assert any("finishing 5 request(s) in flight" in line for line in replica.log)


async def test_sigterm_on_idle_server_exits_zero() -> None:
    async with LocalStack(1, nginx=False) as stack:
        status = await stack.stop_replica(stack.replicas[0], signal.SIGTERM)
    assert status == 0


async def test_bind_failure_is_reported_with_exit_status_1() -> None:
    async with LocalStack(1, nginx=False) as stack:
        taken = stack.replicas[0].endpoint
        process = await asyncio.create_subprocess_exec(
            *stack.server_command("second", taken),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
    assert process.returncode == 1
    assert b"Cannot serve on" in stderr
