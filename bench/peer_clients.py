"""The load process of ``bench.peers``: C closed-loop callers of one system, one process.

    python -m bench.peer_clients project-req --target tcp://127.0.0.1:5555 --callers 16 \\
        --duration-s 2 --warmup-s 0.5 --server-pid 1234

Each caller sends a request, waits for its reply, checks it is a ``Server
response``, and sends the next; all callers share one event loop (asyncio, or
gevent's for zerorpc), each with its own client as its library intends:

    project-client  the project's async ``Client`` (Lazy Pirate), one per caller
    project-req     a bare pyzmq asyncio REQ socket per caller, same server
    ceiling         the same bare REQ socket per caller, against the sync REP echo
    grpc            one grpc.aio channel (HTTP/2, as gRPC intends), a call per caller
    pynng           one nng REQ socket, an nng context per caller
    zerorpc         a zerorpc.Client per caller, each in its own greenlet
    aiozmq          an aiozmq.rpc client per caller
    aiohttp         one ClientSession, a keep-alive connection per caller

After ``--warmup-s`` the measured window opens for ``--duration-s``: every
reply that arrives in it counts, with its latency; this process's CPU time
(``time.process_time``: every thread, ZeroMQ's and gRPC's included) and the
server's (``/proc/PID/stat`` utime+stime, all its threads) are read at the
window's two ends. Prints one JSON object (``LoadResult``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from bench.machine import process_cpu_s
from bench.peer_servers import GRPC_METHOD, decode_fields, encode_fields
from reqrep import cli, protocol
from reqrep.protocol import SERVER_RESPONSE
from reqrep.report import percentile

ASYNC_SYSTEMS: Final = (
    "project-client",
    "project-req",
    "ceiling",
    "grpc",
    "pynng",
    "aiozmq",
    "aiohttp",
)
SYSTEMS: Final = (*ASYNC_SYSTEMS, "zerorpc")
PAYLOAD: Final = b"x" * 16
# After the window closes, how long callers get to finish the request in flight.
FINISH_TIMEOUT_S: Final = 5.0

Requests = Sequence[list[bytes]]
Call = Callable[[], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class LoadResult:
    system: str
    callers: int
    duration_s: float  # the measured window as it was, not as asked
    replies: int  # correct replies in the window
    errors: int  # wrong replies and failed calls in the window
    first_error: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_reply: float
    load_cpu_us_per_reply: float
    server_cpu_percent: float  # of one core, over the window
    load_cpu_percent: float


class Recorder:
    """The measured window: what arrived in it, and both sides' CPU at its two ends."""

    def __init__(self, server_pids: Sequence[int]) -> None:
        self.server_pids = server_pids
        self.start = self.end = math.inf
        self.stopped = False
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = ""
        self._cpu = (0.0, 0.0)
        self._cpu_used = (0.0, 0.0)

    def _cpu_now(self) -> tuple[float, float]:
        return time.process_time(), process_cpu_s(self.server_pids)

    def open(self) -> None:
        self._cpu = self._cpu_now()
        self.start = time.perf_counter()

    def close(self) -> None:
        self.end = time.perf_counter()
        load, server = self._cpu_now()
        self._cpu_used = (load - self._cpu[0], server - self._cpu[1])
        self.stopped = True

    def record(self, sent: float, received: float, correct: bool) -> None:
        if self.start <= received < self.end:
            if correct:
                self.latencies.append(received - sent)
            else:
                self.error("wrong reply")

    def error(self, text: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = text

    def result(self, system: str, callers: int) -> LoadResult:
        duration = self.end - self.start if math.isfinite(self.end - self.start) else 0.0
        replies = len(self.latencies)
        ordered = sorted(self.latencies)  # percentile sorts again: linear on sorted values
        load_cpu, server_cpu = self._cpu_used
        per_reply = 1e6 / replies if replies else 0.0
        share = 100 / duration if duration > 0 else 0.0
        return LoadResult(
            system=system,
            callers=callers,
            duration_s=duration,
            replies=replies,
            errors=self.errors,
            first_error=self.first_error,
            requests_per_s=replies / duration if duration > 0 else 0.0,
            p50_ms=1000 * percentile(ordered, 0.50),
            p99_ms=1000 * percentile(ordered, 0.99),
            server_cpu_us_per_reply=server_cpu * per_reply,
            load_cpu_us_per_reply=load_cpu * per_reply,
            server_cpu_percent=server_cpu * share,
            load_cpu_percent=load_cpu * share,
        )


def requests_for(callers: int) -> list[list[bytes]]:
    """Each caller's request fields: its own address and a small payload."""
    return [protocol.encode_request(f"bench-caller-{i}", PAYLOAD) for i in range(callers)]


def _status(fields: Sequence[Any] | None) -> bytes:
    """A reply's status field, or b"" if it is not a three-field reply."""
    if fields is None or len(fields) != protocol.REPLY_FRAMES or not isinstance(fields[0], bytes):
        return b""
    return fields[0]


# --- asyncio callers: one factory per system, given each caller's request
# fields, yields one Call per caller that returns the reply's status ---


@contextlib.asynccontextmanager
async def project_client(target: str, requests: Requests) -> AsyncIterator[list[Call]]:
    import zmq.asyncio

    from reqrep.client import Client
    from reqrep.config import ClientConfig

    context = zmq.asyncio.Context()
    clients = [Client(ClientConfig(endpoints=(target,)), context) for _ in requests]

    def caller(client: Client, frames: list[bytes]) -> Call:
        async def call() -> bytes:
            return (await client.request(frames)).status.encode()

        return call

    try:
        yield [caller(client, frames) for client, frames in zip(clients, requests, strict=True)]
    finally:
        for client in clients:
            client.close()
        context.term()


@contextlib.asynccontextmanager
async def bare_req(target: str, requests: Requests, echo: bool) -> AsyncIterator[list[Call]]:
    import zmq
    import zmq.asyncio

    context = zmq.asyncio.Context()
    sockets = []
    for _ in requests:
        sock = context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(target)
        sockets.append(sock)

    def caller(sock: zmq.asyncio.Socket, frames: list[bytes]) -> Call:
        async def call() -> bytes:
            await sock.send_multipart(frames)
            reply = await sock.recv_multipart()
            if echo:  # the echo's reply is correct when it is the request itself
                return SERVER_RESPONSE if reply == frames else b""
            return _status(reply)

        return call

    try:
        yield [caller(sock, frames) for sock, frames in zip(sockets, requests, strict=True)]
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()


@contextlib.asynccontextmanager
async def grpc_callers(target: str, requests: Requests) -> AsyncIterator[list[Call]]:
    import grpc  # type: ignore[import-untyped]

    channel = grpc.aio.insecure_channel(target)
    await channel.channel_ready()
    # No (de)serializers: bytes in, bytes out, as the server's generic handler.
    method = channel.unary_unary(GRPC_METHOD)

    def caller(body: bytes) -> Call:
        async def call() -> bytes:
            return _status(decode_fields(await method(body)))

        return call

    try:
        yield [caller(encode_fields(fields)) for fields in requests]
    finally:
        await channel.close()


@contextlib.asynccontextmanager
async def pynng_callers(target: str, requests: Requests) -> AsyncIterator[list[Call]]:
    import pynng  # type: ignore[import-untyped]

    with pynng.Req0(dial=target) as sock:
        contexts = [sock.new_context() for _ in requests]

        def caller(context: Any, body: bytes) -> Call:
            async def call() -> bytes:
                await context.asend(body)
                return _status(decode_fields(await context.arecv()))

            return call

        try:
            yield [
                caller(context, encode_fields(fields))
                for context, fields in zip(contexts, requests, strict=True)
            ]
        finally:
            for context in contexts:  # before the socket: a context outliving it complains
                context.close()


@contextlib.asynccontextmanager
async def aiozmq_callers(target: str, requests: Requests) -> AsyncIterator[list[Call]]:
    import aiozmq.rpc  # type: ignore[import-untyped]

    clients = [await aiozmq.rpc.connect_rpc(connect=target) for _ in requests]

    def caller(client: Any, fields: list[bytes]) -> Call:
        async def call() -> bytes:
            return _status(await client.call.request(*fields))

        return call

    try:
        yield [caller(client, fields) for client, fields in zip(clients, requests, strict=True)]
    finally:
        for client in clients:
            client.close()
            await client.wait_closed()


@contextlib.asynccontextmanager
async def aiohttp_callers(target: str, requests: Requests) -> AsyncIterator[list[Call]]:
    import aiohttp

    # Keep-alive: the pool holds one connection per caller and reuses it.
    connector = aiohttp.TCPConnector(limit=len(requests))
    async with aiohttp.ClientSession(connector=connector) as session:

        def caller(body: bytes) -> Call:
            async def call() -> bytes:
                async with session.post(target, data=body) as response:
                    status = _status(decode_fields(await response.read()))
                # The HTTP status agrees with the reply's: 200 only for Server response.
                return status if (response.status == 200) == (status == SERVER_RESPONSE) else b""

            return call

        yield [caller(encode_fields(fields)) for fields in requests]


def _callers(
    system: str, target: str, requests: Requests
) -> contextlib.AbstractAsyncContextManager[list[Call]]:
    if system == "project-client":
        return project_client(target, requests)
    if system in ("project-req", "ceiling"):
        return bare_req(target, requests, echo=system == "ceiling")
    if system == "grpc":
        return grpc_callers(target, requests)
    if system == "pynng":
        return pynng_callers(target, requests)
    if system == "aiozmq":
        return aiozmq_callers(target, requests)
    if system == "aiohttp":
        return aiohttp_callers(target, requests)
    raise ValueError(f"not an asyncio system: {system!r}")


async def drive_async(
    system: str,
    target: str,
    callers: int,
    duration_s: float,
    warmup_s: float,
    server_pids: Sequence[int],
) -> LoadResult:
    recorder = Recorder(server_pids)
    clock = time.perf_counter
    requests = requests_for(callers)

    async def loop(call: Call) -> None:
        while not recorder.stopped:
            sent = clock()
            try:
                status = await call()
            except Exception as error:
                recorder.error(f"{type(error).__name__}: {error}")
                return
            recorder.record(sent, clock(), status == SERVER_RESPONSE)

    async with _callers(system, target, requests) as calls:
        tasks = [asyncio.create_task(loop(call)) for call in calls]
        await asyncio.sleep(warmup_s)
        recorder.open()
        await asyncio.sleep(duration_s)
        recorder.close()
        _, pending = await asyncio.wait(tasks, timeout=FINISH_TIMEOUT_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return recorder.result(system, callers)


async def probe_async(system: str, target: str, requests: Requests) -> list[str]:
    """One request per caller, at once; each reply's status."""
    async with _callers(system, target, requests) as calls:
        statuses = await asyncio.gather(*(call() for call in calls))
    return [status.decode(errors="replace") for status in statuses]


# --- zerorpc: gevent, not asyncio; a greenlet per caller in gevent's own loop ---


def drive_zerorpc(
    target: str, callers: int, duration_s: float, warmup_s: float, server_pids: Sequence[int]
) -> LoadResult:
    import gevent  # type: ignore[import-untyped]
    import zerorpc  # type: ignore[import-untyped]

    recorder = Recorder(server_pids)
    clock = time.perf_counter
    clients = [zerorpc.Client(connect_to=target) for _ in range(callers)]

    def loop(client: Any, fields: list[bytes]) -> None:
        while not recorder.stopped:
            sent = clock()
            try:
                status = _status(client.request(*fields))
            except Exception as error:
                recorder.error(f"{type(error).__name__}: {error}")
                return
            recorder.record(sent, clock(), status == SERVER_RESPONSE)

    try:
        greenlets = [
            gevent.spawn(loop, client, fields)
            for client, fields in zip(clients, requests_for(callers), strict=True)
        ]
        gevent.sleep(warmup_s)
        recorder.open()
        gevent.sleep(duration_s)
        recorder.close()
        gevent.joinall(greenlets, timeout=FINISH_TIMEOUT_S)
        gevent.killall(greenlets)
    finally:
        for client in clients:
            client.close()
    return recorder.result("zerorpc", callers)


def probe_zerorpc(target: str, requests: Requests) -> list[str]:
    import gevent
    import zerorpc

    clients = [zerorpc.Client(connect_to=target) for _ in requests]
    try:
        greenlets = [
            gevent.spawn(client.request, *fields)
            for client, fields in zip(clients, requests, strict=True)
        ]
        gevent.joinall(greenlets, timeout=FINISH_TIMEOUT_S, raise_error=True)
        return [_status(greenlet.value).decode(errors="replace") for greenlet in greenlets]
    finally:
        for client in clients:
            client.close()


def run_load(
    system: str,
    target: str,
    callers: int,
    duration_s: float,
    warmup_s: float,
    server_pids: Sequence[int] = (),
) -> LoadResult:
    if callers < 1:
        raise ValueError("at least one caller is needed")
    if system == "zerorpc":
        return drive_zerorpc(target, callers, duration_s, warmup_s, server_pids)
    return asyncio.run(drive_async(system, target, callers, duration_s, warmup_s, server_pids))


PROBE_REQUESTS: Final = (
    protocol.encode_request("bench-probe", PAYLOAD),  # well-formed
    protocol.encode_request_without_address(PAYLOAD),  # the seed's malformed request
    [b"", PAYLOAD],  # empty address
)


def probe(system: str, target: str) -> list[str]:
    """The status each system answers ``PROBE_REQUESTS`` with, through its own client."""
    requests = [list(fields) for fields in PROBE_REQUESTS]
    if system == "zerorpc":
        return probe_zerorpc(target, requests)
    return asyncio.run(probe_async(system, target, requests))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Closed-loop callers of one system (bench.peers).")
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument(
        "--target", required=True, help="the server's address, as its client takes it"
    )
    parser.add_argument("--callers", type=cli.int_at_least(1), default=16)
    parser.add_argument("--duration-s", type=cli.float_at_least(0.01), default=2.0)
    parser.add_argument("--warmup-s", type=cli.float_at_least(0), default=0.5)
    parser.add_argument(
        "--server-pid",
        type=cli.int_at_least(1),
        action="append",
        default=[],
        help="a server process, for its CPU time (repeatable)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="no load: send a well-formed request and two malformed ones (no address, "
        "empty address) and print the statuses answered, as JSON",
    )
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.system, args.target)), flush=True)
        return 0
    result = run_load(
        args.system, args.target, args.callers, args.duration_s, args.warmup_s, args.server_pid
    )
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
