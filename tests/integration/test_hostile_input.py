"""Hostile input against a real server process: it never falls over and never goes silent.

A sender that floods the server without reading replies is pushed back by
ZeroMQ's high-water marks while the server's memory stays bounded. Bursts of
random multipart messages (0 to 10 frames, empty to beyond the size
limit) from REQ and DEALER sockets, raw non-ZMTP bytes and half-open TCP
connections. Every reply is checked against what the pure protocol says it
must be, so a wrong, missing or extra reply fails the test. After each burst
the server answers a valid request, is alive, and its RSS is printed; after
the last one it must not have grown past the warm-up bursts' by over 10%.

    .venv/bin/pytest -s tests/integration/test_hostile_input.py   # shows the RSS figures
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from bench.machine import open_fds, rss_kib
from reqrep import protocol
from reqrep.client import Client
from reqrep.config import ClientConfig
from reqrep.stack import LocalStack

LIMIT_BYTES = 64 * 1024
REPLICA = b"replica-1"
TIMEOUT_S = 20.0
# CI-sized; HOSTILE_BURSTS / HOSTILE_MESSAGES raise it for a longer local run.
WARMUP_BURSTS = 2
BURSTS = int(os.environ.get("HOSTILE_BURSTS", "4"))
MESSAGES = int(os.environ.get("HOSTILE_MESSAGES", "600"))
OVERSIZED = 6
GARBAGE_CONNECTIONS = 20
HALF_OPEN_CONNECTIONS = 40
SENDERS = 4
# Allowed RSS growth from after the warm-up bursts to after the last one.
MAX_RSS_GROWTH = 0.10
# A valid ZMTP 3.0 greeting (signature, version, NULL mechanism): cut short, it is half-open.
ZMTP_GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x00NULL" + bytes(16) + b"\x00" + bytes(31)


def random_frame(rng: random.Random) -> bytes:
    """One frame: empty, short, text, an address-like string, or large (within the limit)."""
    kind = rng.random()
    if kind < 0.20:
        return b""
    if kind < 0.45:
        return rng.randbytes(rng.randint(1, 32))
    if kind < 0.65:
        return f"client-{rng.randint(0, 999)}".encode()
    if kind < 0.80:
        return "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 100))).encode()
    if kind < 0.95:
        return rng.randbytes(rng.randint(33, 4096))
    return rng.randbytes(rng.randint(LIMIT_BYTES // 4, LIMIT_BYTES))


def random_message(rng: random.Random, min_frames: int = 0) -> list[bytes]:
    """0 (or ``min_frames``) to 10 random frames; a third are address-and-data shaped."""
    if rng.random() < 0.33:
        return [f"client-{rng.randint(0, 999)}".encode(), random_frame(rng)]
    return [random_frame(rng) for _ in range(rng.randint(min_frames, 10))]


def expected_reply(request: Sequence[bytes]) -> list[bytes]:
    """What the server must answer to a REQ-shaped request: the protocol decides."""
    return protocol.respond(request, REPLICA, LIMIT_BYTES)[0]


def expected_dealer_reply(message: Sequence[bytes]) -> list[bytes]:
    """What a bare DEALER gets back: the server splits the envelope as the protocol says."""
    envelope, request = protocol.split_envelope([b"routing-id", *message])
    return envelope[1:] + expected_reply(request)


@dataclass
class Tally:
    replies: Counter[str] = field(default_factory=Counter)

    def count(self, reply: Sequence[bytes]) -> None:
        self.replies[bytes(reply[-3]).decode(errors="replace")] += 1


@contextlib.asynccontextmanager
async def hostile_socket(
    context: zmq.asyncio.Context, kind: int
) -> AsyncIterator[zmq.asyncio.Socket]:
    sock = context.socket(kind)
    sock.linger = 0
    try:
        yield sock
    finally:
        sock.close(linger=0)


async def req_sender(
    context: zmq.asyncio.Context, endpoint: str, messages: list[list[bytes]], tally: Tally
) -> None:
    """A REQ socket: one request, exactly one reply, the one the protocol prescribes."""
    async with hostile_socket(context, zmq.REQ) as sock:
        sock.connect(endpoint)
        for message in messages:
            await sock.send_multipart(message)
            reply = await sock.recv_multipart()
            assert reply == expected_reply(message)
            tally.count(reply)


async def dealer_sender(
    context: zmq.asyncio.Context,
    endpoint: str,
    messages: list[list[bytes]],
    req_shaped: bool,
    tally: Tally,
) -> None:
    """A DEALER pipelines all its messages, then must get exactly one reply to each."""
    async with hostile_socket(context, zmq.DEALER) as sock:
        sock.connect(endpoint)
        wire = [[b"", *m] if req_shaped else m for m in messages]
        for message in wire:
            await sock.send_multipart(message)
        replies = [await sock.recv_multipart() for _ in wire]
        if req_shaped:
            expected = [[b"", *expected_reply(m)] for m in messages]
        else:
            expected = [expected_dealer_reply(m) for m in messages]
        assert sorted(replies) == sorted(expected)
        # Nothing extra is on its way: the next reply is the sentinel's own.
        sentinel = [b"", *protocol.encode_request("sentinel", b"last")]
        await sock.send_multipart(sentinel)
        assert await sock.recv_multipart() == [b"", *expected_reply(sentinel[1:])]
        assert not await sock.poll(0)
        for reply in replies:
            tally.count(reply)


async def oversized_sender(
    context: zmq.asyncio.Context, endpoint: str, kind: int, rng: random.Random
) -> None:
    """A frame over MAXMSGSIZE: the server drops the connection and answers nothing."""
    async with hostile_socket(context, kind) as sock:
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            sock.connect(endpoint)
            big = rng.randbytes(LIMIT_BYTES + rng.randint(1, LIMIT_BYTES))
            message = [b"addr", big] if kind == zmq.REQ else [b"", b"addr", big]
            await sock.send_multipart(message)
            event = parse_monitor_message(await monitor.recv_multipart())
            assert event["event"] == zmq.EVENT_DISCONNECTED
            assert not await sock.poll(0)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)


async def garbage_connection(host: str, port: int, data: bytes) -> None:
    """Raw bytes that are not ZMTP; whatever the server does with them, it must not fall over."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(reader.read(4096), 0.2)
    except ConnectionError:
        pass  # the server may reset the connection: that is fine
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def half_open(host: str, port: int, rng: random.Random) -> asyncio.StreamWriter:
    """A connection that stops partway through the ZMTP greeting (some also shut down writing)."""
    _, writer = await asyncio.open_connection(host, port)
    writer.write(ZMTP_GREETING[: rng.randint(0, len(ZMTP_GREETING) - 1)])
    await writer.drain()
    if rng.random() < 0.5:
        writer.write_eof()
    return writer


async def valid_request(context: zmq.asyncio.Context, endpoint: str) -> protocol.Reply:
    config = ClientConfig(endpoints=(endpoint,), timeout_ms=5000, tries=2)
    async with Client(config, context) as client:
        return await client.request(protocol.encode_request("checker", b"still there?"))


async def burst(
    context: zmq.asyncio.Context, endpoint: str, seed: int
) -> tuple[Tally, list[asyncio.StreamWriter]]:
    """One burst, all at once; returns the tally and the half-open connections (still open)."""
    rng = random.Random(seed)
    host, port_text = endpoint.removeprefix("tcp://").rsplit(":", 1)
    port = int(port_text)
    tally = Tally()
    per_sender = MESSAGES // (3 * SENDERS)
    senders = []
    for _ in range(SENDERS):
        senders.append(
            req_sender(
                context, endpoint, [random_message(rng, 1) for _ in range(per_sender)], tally
            )
        )
        senders.append(
            dealer_sender(
                context, endpoint, [random_message(rng) for _ in range(per_sender)], True, tally
            )
        )
        senders.append(
            dealer_sender(
                context, endpoint, [random_message(rng, 1) for _ in range(per_sender)], False, tally
            )
        )
    senders += [
        oversized_sender(context, endpoint, zmq.REQ if i % 2 else zmq.DEALER, rng)
        for i in range(OVERSIZED)
    ]
    garbage = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff" + rng.randbytes(200), b"\x00" * 64]
    garbage += [rng.randbytes(rng.randint(1, 8192)) for _ in range(GARBAGE_CONNECTIONS - 3)]
    senders += [garbage_connection(host, port, data) for data in garbage]
    writers = await asyncio.gather(
        *(half_open(host, port, rng) for _ in range(HALF_OPEN_CONNECTIONS))
    )
    await asyncio.gather(*senders)
    return tally, list(writers)


async def close_all(writers: Sequence[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_hostile_bursts_leave_the_server_answering_alive_and_flat(
    context: zmq.asyncio.Context,
) -> None:
    server_args = ["--max-message-bytes", str(LIMIT_BYTES)]
    async with LocalStack(1, nginx=False, server_args=server_args) as stack:
        replica = stack.replicas[0]
        (endpoint,) = stack.endpoints
        pid = replica.process.pid
        started_kib = rss_kib(pid)
        print(f"\nserver pid {pid}: RSS {started_kib} KiB, {open_fds(pid)} fds before any burst")
        rss_after: list[int] = []
        for number in range(WARMUP_BURSTS + BURSTS):
            async with asyncio.timeout(TIMEOUT_S):
                tally, writers = await burst(context, endpoint, seed=number)
                # With the half-open connections still hanging: a valid request is answered.
                reply = await valid_request(context, endpoint)
            assert reply.ok
            assert replica.process.returncode is None
            await close_all(writers)
            rss_after.append(rss_kib(pid))
            label = f"{'warm-up ' if number < WARMUP_BURSTS else ''}burst {number}"
            print(
                f"{label} (seed {number}): replies {dict(sorted(tally.replies.items()))}, "
                f"{OVERSIZED} oversized dropped, {GARBAGE_CONNECTIONS} garbage and "
                f"{HALF_OPEN_CONNECTIONS} half-open connections; "
                f"RSS {rss_after[-1]} KiB, {open_fds(pid)} fds"
            )
            assert sum(tally.replies.values()) == 3 * SENDERS * (MESSAGES // (3 * SENDERS))
        # The allocator's high-water mark is set by the warm-up; a leak grows past it.
        warm_kib = max(rss_after[:WARMUP_BURSTS])
        growth = (rss_after[-1] - warm_kib) / warm_kib
        print(
            f"RSS after warm-up {warm_kib} KiB -> after {BURSTS} more bursts "
            f"{rss_after[-1]} KiB ({100 * growth:+.1f}%)"
        )
        assert growth <= MAX_RSS_GROWTH, rss_after


@pytest.mark.parametrize("kind", [zmq.REQ, zmq.DEALER], ids=["REQ", "DEALER"])
async def test_oversized_frames_are_refused_while_other_clients_are_served(
    context: zmq.asyncio.Context, kind: int
) -> None:
    """MAXMSGSIZE drops only the offending connections; 8 other clients get every reply."""
    server_args = ["--max-message-bytes", str(LIMIT_BYTES)]
    async with LocalStack(1, nginx=False, server_args=server_args) as stack:
        (endpoint,) = stack.endpoints
        rng = random.Random(7)

        async def friendly(number: int) -> int:
            config = ClientConfig(endpoints=(endpoint,), timeout_ms=5000, tries=1)
            async with Client(config, context) as client:
                replies = [
                    await client.request(protocol.encode_request(f"friend-{number}", b"x" * 1000))
                    for _ in range(25)
                ]
            return sum(reply.ok for reply in replies)

        async with asyncio.timeout(TIMEOUT_S):
            results = await asyncio.gather(
                *(friendly(i) for i in range(8)),
                *(oversized_sender(context, endpoint, kind, rng) for _ in range(10)),
            )
        assert results[:8] == [25] * 8
        assert stack.replicas[0].process.returncode is None


async def test_flood_is_pushed_back_to_the_sender_and_server_memory_stays_bounded(
    context: zmq.asyncio.Context, sync_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A sender that never waits for replies is stopped by the high-water marks, not the server.

    The server reads no more than --max-inflight requests at a time; the rest
    wait in ZeroMQ's queues (bounded by the HWMs) and then in TCP, until the
    sender's own send would block. Meanwhile another client is still served.
    """
    payload = b"x" * 16 * 1024
    server_args = ["--work-ms", "200", "--max-inflight", "4", "--grace-s", "1"]
    async with LocalStack(1, nginx=False, server_args=server_args) as stack:
        (endpoint,) = stack.endpoints
        pid = stack.replicas[0].process.pid
        before_kib = rss_kib(pid)
        flood = sync_context.socket(zmq.DEALER)
        try:
            flood.linger = 0
            flood.connect(endpoint)
            sent, pushed_back = 0, False
            deadline = time.monotonic() + 30
            # Cap at 20000 x 16 KiB = 320 MiB offered; the HWMs stop it long before.
            while sent < 20_000 and time.monotonic() < deadline:
                try:
                    flood.send_multipart([b"", b"flood", payload], zmq.NOBLOCK)
                except zmq.Again:
                    # Full. Still full after the I/O thread had 100 ms to move data: pushed back.
                    if not flood.poll(100, zmq.POLLOUT):
                        pushed_back = True
                        break
                    continue
                sent += 1
            flooded_kib = rss_kib(pid)
            config = ClientConfig(endpoints=(endpoint,), timeout_ms=10_000, tries=1)
            async with Client(config, context) as other, asyncio.timeout(TIMEOUT_S):
                reply = await other.request(protocol.encode_request("other", b"me too"))
            after_kib = rss_kib(pid)
        finally:
            flood.close(linger=0)
        assert await stack.stop_replica(stack.replicas[0], signal.SIGTERM) == 0
    grown_mib = (max(flooded_kib, after_kib) - before_kib) / 1024
    print(
        f"\nflood: the sender was pushed back after {sent} x 16 KiB "
        f"({sent * len(payload) / 2**20:.0f} MiB); server RSS {before_kib} -> {flooded_kib} -> "
        f"{after_kib} KiB (+{grown_mib:.1f} MiB); another client was answered meanwhile"
    )
    assert pushed_back, f"{sent} messages sent and the sender was never pushed back"
    assert reply.ok
    # ZeroMQ's receive queue (RCVHWM 1000 messages of 16 KiB) plus slack, not the whole flood.
    assert grown_mib < 1000 * len(payload) / 2**20 * 2
