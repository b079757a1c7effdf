"""The server with real sockets on loopback: answers, errors, concurrency, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from reqrep import protocol
from reqrep.client import Client
from reqrep.config import ClientConfig
from reqrep.errors import ServerError, ServerTimeout
from reqrep.protocol import Request
from reqrep.server import serve
from reqrep.stack import LocalStack
from tests.support import run_script, wait_for_log

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
    assert server.server.requests_served == 1


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
            await wait_for_log(replica, "Request received", count=5)
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
            await wait_for_log(replica, "still answering for 30 s")
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
    assert f"Cannot serve on {taken}: Address already in use" in done.stderr


# --- the user's handler -------------------------------------------------------------------

# What ``blocking`` writes to its replica's log (stderr) just before it blocks its thread.
BLOCKING = "userhandlers.blocking: blocking the thread now"

# A handler module outside the repository, put on PYTHONPATH for the server processes below.
HANDLERS_MODULE = f"""
import asyncio
import sys
import time


def echo(request):
    return request.data


async def sleepy(request):
    await asyncio.sleep(0.05)
    return b"slept " + request.data


def broken(request):
    raise ValueError("no such key: 42")


def blocking(request):
    if request.data == b"block":
        print({BLOCKING!r}, file=sys.stderr, flush=True)
        time.sleep(1.0)
    return b"done " + request.data
"""


@pytest.fixture
def handlers_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a server that finds ``userhandlers`` (outside the repo) on its path."""
    (tmp_path / "userhandlers.py").write_text(HANDLERS_MODULE)
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


async def test_a_handler_module_outside_the_repo_answers_echo_async_and_errors(
    make_client: Callable[..., Client], handlers_env: dict[str, str]
) -> None:
    """The issue's acceptance: echo, an async 50 ms handler (50 at once), one that raises."""
    specs = ["userhandlers:echo", "userhandlers:sleepy", "userhandlers:broken"]
    stacks = [
        LocalStack(1, nginx=False, server_args=["--handler", spec], env=handlers_env)
        for spec in specs
    ]
    async with stacks[0] as echo, stacks[1] as sleepy, stacks[2] as broken:
        async with asyncio.timeout(TIMEOUT_S):
            assert (
                await make_client(echo.endpoints).call(b"\x00any bytes\xff") == b"\x00any bytes\xff"
            )
            pool = [make_client(sleepy.endpoints) for _ in range(50)]
            started = time.perf_counter()
            bodies = await asyncio.gather(*(c.call(f"{i}".encode()) for i, c in enumerate(pool)))
            elapsed_s = time.perf_counter() - started
            reply = await make_client(broken.endpoints).request(protocol.encode_request("c", b"42"))
    print(f"50 concurrent requests to a 50 ms async handler: {elapsed_s:.3f} s")
    assert bodies == [f"slept {i}".encode() for i in range(50)]
    assert elapsed_s < 1.0  # one at a time they would take 2.5 s
    assert reply.status == "Server error"
    assert reply.status not in (protocol.SERVER_RESPONSE_TEXT, protocol.INVALID_MESSAGE_TEXT)
    assert reply.detail == "ValueError: no such key: 42"
    assert "Traceback" in "\n".join(broken.replicas[0].log)  # the log has it, the reply not


async def test_a_raising_handler_is_answered_server_error_logged_and_the_replica_goes_on(
    start_server: Callable[..., Any],
    make_client: Callable[..., Client],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def lookup(request: Request) -> bytes:
        if request.data == b"42":
            raise KeyError("no such key: 42")
        return b"value of " + request.data

    server = await start_server(lookup)
    client = make_client([server.endpoint])
    caplog.set_level(logging.ERROR, logger="reqrep.server")
    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(ServerError) as raised:
            await client.call(b"42")
        after = await client.call(b"7")
    assert raised.value.reply.detail == "KeyError: 'no such key: 42'"
    assert after == b"value of 7"
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "raised on a request from" in record.getMessage()
    assert record.exc_info is not None  # the traceback is logged


async def slow_async(request: Request) -> bytes:
    await asyncio.sleep(float(request.data))
    return b"late"


@pytest.mark.parametrize("threads", [0, 2])
async def test_a_handler_past_its_time_is_answered_server_timeout(
    start_server: Callable[..., Any], make_client: Callable[..., Client], threads: int
) -> None:
    def slow_sync(request: Request) -> bytes:
        time.sleep(float(request.data))
        return b"late"

    handler = slow_sync if threads else slow_async
    server = await start_server(handler, handler_timeout_ms=100, threads=threads)
    client = make_client([server.endpoint], timeout_ms=5000, tries=1)
    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(ServerTimeout, match="did not finish within 100 ms"):
            await client.call(b"0.3")
        assert await client.call(b"0") == b"late"


async def test_an_async_handler_past_its_time_is_cancelled(
    start_server: Callable[..., Any], make_client: Callable[..., Client]
) -> None:
    outcome: list[str] = []

    async def watched(request: Request) -> bytes:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        return b""

    server = await start_server(watched, handler_timeout_ms=50)
    async with asyncio.timeout(TIMEOUT_S):
        reply = await make_client([server.endpoint]).request(protocol.encode_request("c", b""))
    assert reply.status == "Server timeout"
    assert outcome == ["cancelled"]


async def test_every_request_gets_exactly_one_reply_whatever_its_handler_does(
    start_server: Callable[..., Any], context: zmq.asyncio.Context
) -> None:
    """A DEALER pipelines requests whose handler answers, raises, returns the wrong type,
    raises CancelledError of its own, runs out of time, or that are malformed."""

    async def moody(request: Request) -> bytes:
        match request.data:
            case b"raise":
                raise RuntimeError("boom")
            case b"text":
                return "not bytes"  # type: ignore[return-value]
            case b"cancel":
                raise asyncio.CancelledError
            case b"slow":
                await asyncio.sleep(5)
        return request.data

    server = await start_server(moody, handler_timeout_ms=200)
    kinds = [b"ok", b"raise", b"text", b"cancel", b"slow", None]
    expected = [
        [b"Server response", b"ok"],
        [b"Server error", b"RuntimeError: boom"],
        [b"Server error", b"TypeError: handler returned str, not bytes"],
        [b"Server error", b"CancelledError"],
        [b"Server timeout", b"handler did not finish within 200 ms"],
        [b"Invalid message", b"missing address: 1 frame, expected address and data"],
    ]
    dealer = context.socket(zmq.DEALER)
    dealer.connect(server.endpoint)
    try:
        for index, data in enumerate(kinds):
            request = [b"c", data] if data is not None else [b"no address"]
            await dealer.send_multipart([str(index).encode(), b"", *request])
        answers: dict[bytes, list[bytes]] = {}
        async with asyncio.timeout(TIMEOUT_S):
            while len(answers) < len(kinds):
                key, _, status, _, body = await dealer.recv_multipart()
                assert key not in answers, "a second reply to one request"
                answers[key] = [status, body]
        assert not await dealer.poll(300)  # and nothing more comes
    finally:
        dealer.close(linger=0)
    assert [answers[str(n).encode()] for n in range(len(kinds))] == expected


async def test_a_stop_cancels_what_outlives_the_grace_period_and_answers_it(
    start_server: Callable[..., Any], make_client: Callable[..., Client]
) -> None:
    started = asyncio.Event()

    async def slow_once_started(request: Request) -> bytes:
        started.set()
        return await slow_async(request)

    server = await start_server(slow_once_started, grace_s=0.2)
    client = make_client([server.endpoint], timeout_ms=5000, tries=1)
    async with asyncio.timeout(TIMEOUT_S):
        pending = asyncio.create_task(client.request(protocol.encode_request("c", b"30")))
        await started.wait()  # the request is in its handler
        await server.stop()
        reply = await pending
    assert reply.status == "Server error"
    assert reply.detail == "CancelledError: the replica stopped before the handler finished"


async def test_async_handlers_run_at_most_max_inflight_at_once(
    start_server: Callable[..., Any], make_client: Callable[..., Client]
) -> None:
    running, most = 0, 0

    async def counted(request: Request) -> bytes:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)
        running -= 1
        return b""

    server = await start_server(counted, max_inflight=5)
    pool = [make_client([server.endpoint], timeout_ms=10_000, tries=1) for _ in range(30)]
    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(*(c.call(b"") for c in pool))
    assert most == 5


async def test_the_request_tells_the_handler_where_it_is_and_how_long_it_has(
    start_server: Callable[..., Any], make_client: Callable[..., Client]
) -> None:
    seen: list[Request] = []

    def recorder(request: Request) -> bytes:
        seen.append(request)
        return f"{request.time_left_s:.3f}".encode()

    server = await start_server(recorder, name="replica-x", handler_timeout_ms=5000)
    async with asyncio.timeout(TIMEOUT_S):
        left_s = float(await make_client([server.endpoint]).call(b"d", address="alice"))
    (request,) = seen
    assert (request.address, request.data, request.replica) == ("alice", b"d", "replica-x")
    assert len(bytes.fromhex(request.peer)) == 5  # a ROUTER's routing id
    assert 4.0 < left_s <= 5.0


@pytest.mark.parametrize("socket_type", ["router", "rep"])
async def test_serve_runs_a_handler_in_either_socket_mode(socket_type: str) -> None:
    async def shout(request: Request) -> bytes:
        return request.data.upper()

    async with asyncio.timeout(TIMEOUT_S):
        async with serve(shout, "tcp://127.0.0.1:*", socket_type=socket_type) as server:
            config = ClientConfig(endpoints=tuple(server.endpoints))
            async with Client(config) as client:
                assert await client.call(b"hi") == b"HI"
        assert server.requests_served == 1


async def test_a_blocking_handler_in_threads_leaves_the_replica_answering_and_draining(
    make_client: Callable[..., Client], handlers_env: dict[str, str]
) -> None:
    """--threads 2: while one request blocks a thread for 1 s, a ping is answered at once,
    and SIGTERM drains: the blocked request gets its reply, the replica exits 0."""
    server_args = ["--handler", "userhandlers:blocking", "--threads", "2", "--grace-s", "5"]
    async with LocalStack(1, nginx=False, server_args=server_args, env=handlers_env) as stack:
        replica = stack.replicas[0]
        async with asyncio.timeout(TIMEOUT_S):
            blocked = asyncio.create_task(make_client(stack.endpoints).call(b"block"))
            await wait_for_log(replica, BLOCKING)  # the blocking request holds its thread
            started = time.perf_counter()
            pinged = await make_client(stack.endpoints, timeout_ms=500, tries=1).ping()
            ping_s = time.perf_counter() - started
            status = await stack.stop_replica(replica, signal.SIGTERM)
            body = await blocked
    print(f"ping while a thread blocks: {1000 * ping_s:.1f} ms; exit {status}")
    assert pinged.ok
    assert ping_s < 0.5
    assert body == b"done block"
    assert status == 0
