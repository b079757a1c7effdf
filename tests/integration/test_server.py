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

from reqrep import protocol
from reqrep.client import Client
from reqrep.stack import LocalStack
from tests.support import run_script

TIMEOUT_S = 10.0


async def test_answers_valid_and_malformed_and_keeps_serving(
    start_server: Callable[..., Any],
    make_client: Callable[..., Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_server(name="replica-a")
    client = make_client([server.endpoint])
    caplog.set_level(logging.ERROR, logger="reqrep.server")
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


async def test_rep_mode_drops_a_message_without_delimiter_and_keeps_serving(
    start_server: Callable[..., Any],
    make_client: Callable[..., Client],
    context: zmq.asyncio.Context,
) -> None:
    server = await start_server(socket_type="rep")
    dealer = context.socket(zmq.DEALER)
    try:
        dealer.connect(server.endpoint)
        async with asyncio.timeout(TIMEOUT_S):
            for message in ([b"addr", b"data"], [b""], [b"addr"]):
                await dealer.send_multipart(message)  # REP drops these: no envelope to reply to
            reply = await make_client([server.endpoint]).request(
                protocol.encode_request("after", b"x")
            )
    finally:
        dealer.close(linger=0)
    assert reply.ok
    assert not server.task.done()


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


async def test_max_inflight_queues_the_excess_in_waves_and_drops_none(
    make_client: Callable[..., Client],
) -> None:
    """server.py --max-inflight 4, 200 ms of work: 32 concurrent requests wait their turn.

    One try each: a request that was dropped would fail, not be retried.
    """
    work_ms, slots, count = 200, 4, 32
    server_args = ["--work-ms", str(work_ms), "--max-inflight", str(slots)]
    async with LocalStack(1, nginx=False, server_args=server_args) as stack:
        pool = [make_client(stack.endpoints, timeout_ms=60_000, tries=1) for _ in range(count)]
        started = time.perf_counter()
        async with asyncio.timeout(TIMEOUT_S + count // slots * work_ms / 1000):
            replies = await asyncio.gather(
                *(c.request(protocol.encode_request(f"c{i}", b"x")) for i, c in enumerate(pool))
            )
        elapsed_s = time.perf_counter() - started
    assert [reply.ok for reply in replies] == [True] * count
    waves = count // slots
    print(f"\n{count} requests, {slots} slots of {work_ms} ms: all answered in {elapsed_s:.2f} s")
    # A lower bound (slowness cannot break it): with more than 4 at once it would be shorter.
    assert elapsed_s >= 0.9 * waves * work_ms / 1000


async def test_pipelined_bursts_are_all_answered_in_order_with_one_error_line_each(
    start_server: Callable[..., Any],
    context: zmq.asyncio.Context,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Requests queued faster than answered (the synchronous busy path): all answered, in order."""
    running = await start_server(name="burst")
    caplog.set_level(logging.ERROR, logger="reqrep.server")
    count = 600
    dealers = [context.socket(zmq.DEALER) for _ in range(2)]
    try:
        for dealer in dealers:
            dealer.connect(running.endpoint)
        requests = [
            [b"", b"", b"no address"] if i % 10 == 3 else [b"", f"c{i}".encode(), b"x"]
            for i in range(count)
        ]
        async with asyncio.timeout(30):
            for dealer in dealers:
                for request in requests:
                    await dealer.send_multipart(request)
            replies = [[await d.recv_multipart() for _ in requests] for d in dealers]
    finally:
        for dealer in dealers:
            dealer.close(linger=0)
    expected = [
        protocol.INVALID_MESSAGE if i % 10 == 3 else protocol.SERVER_RESPONSE for i in range(count)
    ]
    for answered in replies:
        assert [reply[1] for reply in answered] == expected
        assert all(reply[0] == b"" and reply[2] == b"burst" for reply in answered)
    malformed = 2 * expected.count(protocol.INVALID_MESSAGE)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == malformed
    assert all("Invalid message from peer" in e and "empty address" in e for e in errors)
    assert running.server.requests_served == 2 * count


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


async def test_shutdown_delay_keeps_answering_new_clients_then_exits_zero(
    make_client: Callable[..., Client],
) -> None:
    """With --shutdown-delay-s a SIGTERMed replica still answers (new connections too) for
    the delay, then drains and exits 0; a second signal ends the delay at once."""
    async with LocalStack(1, nginx=False, server_args=["--shutdown-delay-s", "30"]) as stack:
        replica = stack.replicas[0]
        async with asyncio.timeout(TIMEOUT_S):
            replica.process.send_signal(signal.SIGTERM)
            await replica.wait_for_log("still answering for 30 s")
            late = make_client(stack.endpoints, timeout_ms=2000, tries=1)
            assert (await late.ping()).ok
            assert replica.process.returncode is None
            status = await stack.stop_replica(replica, signal.SIGTERM)
    assert status == 0
    assert any("SIGTERM again: stopping now" in line for line in replica.log)


async def test_sigterm_on_idle_server_exits_zero() -> None:
    async with LocalStack(1, nginx=False) as stack:
        status = await stack.stop_replica(stack.replicas[0], signal.SIGTERM)
    assert status == 0


async def test_bind_failure_is_reported_with_exit_status_1() -> None:
    async with LocalStack(1, nginx=False) as stack:
        taken = stack.replicas[0].endpoint
        done = await run_script(
            "server.py", "--bind", taken, "--name", "second", timeout_s=TIMEOUT_S
        )
    assert done.status == 1
    assert "Cannot serve on" in done.stderr
