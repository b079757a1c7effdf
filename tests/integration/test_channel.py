"""reqrep.channel with real sockets: many requests in flight on one Channel, each reply to its
own caller; retries with the same id and late replies dropped; nothing left behind by a
timed-out or cancelled request; a lost replica survived; load spread over connections."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
import zmq
import zmq.asyncio

from bench.machine import rss_kib
from reqrep import protocol
from reqrep.channel import Channel, ChannelConfig
from reqrep.errors import (
    ChannelClosed,
    ConnectFailed,
    InvalidRequest,
    RequestTimeout,
    ServerError,
)
from reqrep.events import SILENT
from reqrep.protocol import Request
from reqrep.stack import LocalStack, free_port
from tests.support import needs_nginx, silent_router

TIMEOUT_S = 20.0


@asynccontextmanager
async def channel(endpoints: list[str], **settings: Any) -> AsyncIterator[Channel]:
    config = replace(ChannelConfig(endpoints=tuple(endpoints)), **settings)
    async with Channel(config) as opened:
        yield opened


async def test_many_requests_on_one_channel_each_get_their_own_reply(
    start_server: Callable[..., Any],
) -> None:
    def tagged(request: Request) -> bytes:
        return request.address.encode() + b":" + request.data

    server = await start_server(tagged)
    async with channel([server.endpoint]) as opened, asyncio.timeout(TIMEOUT_S):
        bodies = await asyncio.gather(
            *(opened.call(str(i).encode(), address=f"caller-{i % 7}") for i in range(3000))
        )
        assert opened.pending == 0
    assert bodies == [f"caller-{i % 7}:{i}".encode() for i in range(3000)]


async def test_statuses_come_back_as_replies_or_as_their_errors(
    start_server: Callable[..., Any],
) -> None:
    def picky(request: Request) -> bytes:
        if request.data == b"bad":
            raise ValueError("no such key: bad")
        return b"fine"

    server = await start_server(picky)
    async with channel([server.endpoint]) as opened, asyncio.timeout(TIMEOUT_S):
        assert await opened.call(b"good") == b"fine"
        with pytest.raises(ServerError, match="ValueError: no such key: bad"):
            await opened.call(b"bad")
        with pytest.raises(InvalidRequest, match="missing address"):
            protocol.body_of(await opened.request(protocol.encode_request_without_address(b"x")))
        reply = await opened.request(protocol.encode_request("c", b"bad"))
    assert (reply.status, reply.replica) == ("Server error", "test-replica")


async def test_a_try_that_times_out_is_sent_again_with_the_same_id(
    context: zmq.asyncio.Context,
) -> None:
    async with (
        silent_router(context) as router,
        channel([router.endpoint], timeout_ms=100, tries=3) as opened,
    ):
        async with asyncio.timeout(TIMEOUT_S):
            with pytest.raises(RequestTimeout) as raised:
                await opened.call(b"x")
        assert opened.pending == 0
    assert len(router.received) == 3
    assert len({tuple(message[1:]) for message in router.received}) == 1  # same id, same request
    assert raised.value.tries == 3
    assert raised.value.reason == SILENT


async def test_a_request_that_is_not_idempotent_is_sent_once(context: zmq.asyncio.Context) -> None:
    async with (
        silent_router(context) as router,
        channel([router.endpoint], timeout_ms=100, tries=3) as opened,
    ):
        async with asyncio.timeout(TIMEOUT_S):
            with pytest.raises(RequestTimeout):
                await opened.call(b"x", idempotent=False)
    assert len(router.received) == 1


async def test_a_late_reply_to_an_earlier_try_is_dropped(context: zmq.asyncio.Context) -> None:
    """The server answers each try, the first one only after the second was sent: the caller
    gets one reply, the other is dropped, and nothing is left pending."""
    sock = context.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")

    async def answer_twice_late() -> None:
        first = await sock.recv_multipart()
        second = await sock.recv_multipart()  # the retry, after 100 ms
        for message, body in ((first, b"late"), (second, b"second")):
            await sock.send_multipart([*message[:3], b"Server response", b"r", body])

    try:
        async with channel([f"tcp://127.0.0.1:{port}"], timeout_ms=100, tries=3) as opened:
            server = asyncio.create_task(answer_twice_late())
            async with asyncio.timeout(TIMEOUT_S):
                body = await opened.call(b"x")
                await server
                follow_up = asyncio.create_task(opened.call(b"y", timeout_ms=300, idempotent=False))
                with pytest.raises(RequestTimeout):
                    await follow_up  # the second reply did not answer this one
            assert opened.pending == 0
    finally:
        sock.close(linger=0)
    assert body == b"late"


async def test_a_cancelled_request_leaves_nothing_behind(context: zmq.asyncio.Context) -> None:
    async with (
        silent_router(context) as router,
        channel([router.endpoint], timeout_ms=10_000) as opened,
    ):
        pending = [asyncio.create_task(opened.call(b"x")) for _ in range(50)]
        async with asyncio.timeout(TIMEOUT_S):
            await router.received_at_least(50)  # the requests are out
            for task in pending:
                task.cancel()
            results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert opened.pending == 0


async def test_100k_timed_out_requests_leave_memory_flat(context: zmq.asyncio.Context) -> None:
    """aiozmq's issue #100 leaked every timed-out request; here each is forgotten at once."""
    batch, rounds = 5000, 20
    async with (
        silent_router(context, keep=False) as router,
        channel([router.endpoint], timeout_ms=20, tries=1) as opened,
    ):

        async def one_round() -> None:
            results = await asyncio.gather(
                *(opened.call(b"x" * 32) for _ in range(batch)), return_exceptions=True
            )
            assert all(isinstance(r, RequestTimeout) for r in results)

        async with asyncio.timeout(120):
            # The first half warms up (the allocators' arenas grow to their working size, about
            # 5 MB here); over the second half a leak would show.
            for _ in range(rounds // 2):
                await one_round()
            before_kib, before_objects = rss_kib(os.getpid()), live_objects()
            for _ in range(rounds - rounds // 2):
                await one_round()
            after_kib, after_objects = rss_kib(os.getpid()), live_objects()
        assert opened.pending == 0
    print(
        f"\n{batch * rounds} timed-out requests, over the last half: "
        f"RSS {before_kib} -> {after_kib} KiB, Python objects {before_objects} -> {after_objects}"
    )
    # One object kept per request would be 50000 more; the allocators' own growth is not a leak.
    assert after_objects - before_objects < 1000
    assert after_kib - before_kib < 8192  # 160 bytes a request


def live_objects() -> int:
    """Objects the garbage collector tracks, once it has collected what it can."""
    gc.collect()
    return len(gc.get_objects())


async def test_no_server_fails_each_request_saying_so() -> None:
    async with channel([f"tcp://127.0.0.1:{free_port()}"], timeout_ms=100, tries=2) as opened:
        async with asyncio.timeout(TIMEOUT_S):
            results = await asyncio.gather(
                *(opened.call(b"x") for _ in range(10)), return_exceptions=True
            )
        assert opened.pending == 0
    assert all(isinstance(r, ConnectFailed) for r in results)
    assert "nothing accepted the connection" in str(results[0])


async def test_a_closed_channel_refuses_and_fails_what_was_pending(
    context: zmq.asyncio.Context,
) -> None:
    async with silent_router(context) as router:
        opened = Channel(ChannelConfig(endpoints=(router.endpoint,)))
        with pytest.raises(ChannelClosed, match="not open"):
            await opened.call(b"x")
        opened.open()
        pending = asyncio.create_task(opened.call(b"x"))
        async with asyncio.timeout(TIMEOUT_S):
            await router.received_at_least(1)
            opened.close()
            with pytest.raises(ChannelClosed, match="closed"):
                await pending


@pytest.mark.nginx
@needs_nginx
async def test_connections_spread_over_the_replicas_behind_nginx() -> None:
    """nginx balances connections: 3 connections land on 3 replicas, and callers that keep
    sending spread over all of them (each request takes the connection least busy)."""
    replicas: Counter[str] = Counter()

    async def caller(opened: Channel) -> None:
        for _ in range(60):
            reply = await opened.request(protocol.encode_request("c", b"x"))
            replicas[reply.replica] += 1

    async with (
        LocalStack(3, nginx=True) as stack,
        channel(stack.endpoints, connections=3) as opened,
        asyncio.timeout(TIMEOUT_S),
    ):
        await opened.ready()  # all three connections up, each on a replica of its own
        await asyncio.gather(*(caller(opened) for _ in range(16)))
    print(f"\n960 requests on 3 connections through nginx: {dict(replicas)}")
    assert set(replicas) == {"replica-1", "replica-2", "replica-3"}
    assert min(replicas.values()) >= 48  # 5% each at least, whatever the machine is doing


@pytest.mark.nginx
@needs_nginx
async def test_a_replica_killed_under_load_loses_nothing() -> None:
    """Through nginx: the connection's replica is SIGKILLed while requests are in flight; the
    lost connection's requests go again at once and land on the other replica."""
    async with (
        LocalStack(2, nginx=True, server_args=["--work-ms", "20"]) as stack,
        channel(stack.endpoints, timeout_ms=5000, tries=3) as opened,
    ):
        answered: list[str] = []
        replied = asyncio.Event()  # set whenever a caller gets a reply
        stop = asyncio.Event()

        async def caller() -> None:
            while not stop.is_set():
                reply = await opened.request(protocol.encode_request("c", b"x"))
                answered.append(reply.replica)
                replied.set()

        async def until(condition: Callable[[], bool]) -> None:
            while not condition():
                replied.clear()
                await replied.wait()

        async with asyncio.timeout(TIMEOUT_S):
            callers = [asyncio.create_task(caller()) for _ in range(16)]
            await until(lambda: len(answered) >= 200)
            victim = next(r for r in stack.replicas if r.name == answered[-1])
            killed_at = time.monotonic()
            victim.process.send_signal(signal.SIGKILL)
            mark = len(answered)
            await until(lambda: any(name != victim.name for name in answered[mark:]))
            stall_s = time.monotonic() - killed_at
            stop.set()
            await asyncio.gather(*callers)  # any lost request would raise here
    print(f"\nreplica killed: first reply from the other one {1000 * stall_s:.0f} ms later")
    assert stall_s < 5.0  # resent on the lost connection, not after a 5 s try
