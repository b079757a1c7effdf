"""The load process of ``bench.peers``: C closed-loop callers of one system, one process.

    python -m bench.peer_clients project-req --target tcp://127.0.0.1:5555 --callers 16 \\
        --duration-s 2 --warmup-s 0.5 --server-pid 1234 [--loop uvloop]

Each caller sends a request, waits for its reply, checks it is a ``Server
response``, and sends the next. The callers use their system's client as its
users would: one client object shared by all of them wherever the client
allows several requests in flight, else one each (``DRIVERS``):

    project-client  the project's async ``Client`` (Lazy Pirate), one per caller: a REQ
                    socket has one request in flight
    project-channel the project's multiplexing ``Channel`` (DEALER, ids), one, shared
    project-req     a bare pyzmq asyncio REQ socket per caller (same reason), same server
    ceiling         the same bare REQ socket per caller, against the sync REP echo
    grpc            one grpc.aio channel (HTTP/2), shared
    pynng           one nng REQ socket, shared, with an nng context per caller (nng's way to
                    have several requests in flight on one socket)
    zerorpc         one zerorpc.Client, shared by a greenlet per caller (gevent's loop)
    aiozmq          one aiozmq.rpc client, shared
    aiohttp         one ClientSession, shared (its pool: a keep-alive connection per caller)
    zeroapi         one zeroapi AsyncZeroClient (ZeroMQ mode: one DEALER), shared
    zeroapi-sync    one zeroapi ZeroClient shared by a thread per caller (zeroapi gives each
                    calling thread its own DEALER socket)
    zeroapi-tcp     one AsyncZeroClient in TCP mode, shared; its pool has a connection per
                    caller (each connection carries one request at a time)

The asyncio systems run on the loop ``--loop`` names (asyncio's own, or uvloop
if installed: requirements-bench.txt); zerorpc on gevent's, zeroapi-sync on
threads. The measured window is ``bench.recorder``'s; prints one JSON object
(``bench.recorder.LoadResult``).

A new system is a factory here (an async context manager that, given the
target and each caller's request fields, yields ``Callers``: a call per caller,
and how many client objects they share), a ``Driver`` in ``DRIVERS``, and a
``System`` in ``bench.peers``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from bench.peer_servers import GRPC_METHOD, decode_fields, encode_fields
from bench.recorder import LoadResult, Recorder
from reqrep import cli, protocol
from reqrep.protocol import SERVER_RESPONSE

PAYLOAD: Final = b"x" * 16
# After the window closes, how long callers get to finish the request in flight.
FINISH_TIMEOUT_S: Final = 5.0
# The RPC every RPC-style peer serves (bench.peer_servers).
RPC_NAME: Final = "request"
ASYNCIO: Final = "asyncio"
UVLOOP: Final = "uvloop"
LOOPS: Final = (ASYNCIO, UVLOOP)
GEVENT: Final = "gevent"
THREADS: Final = "threads"

Requests = Sequence[list[bytes]]
Call = Callable[[], Awaitable[bytes]]
SyncCall = Callable[[], bytes]


@dataclass(frozen=True, slots=True)
class Callers:
    """One call per caller (each returns its reply's status), and the client objects behind
    them: 1 when the callers share one client."""

    calls: list[Call]
    client_objects: int


@dataclass(frozen=True, slots=True)
class SyncCallers:
    calls: list[SyncCall]
    client_objects: int


@dataclass(frozen=True, slots=True)
class Load:
    """What to drive: the target, how many callers, the window, the server processes."""

    target: str
    callers: int
    duration_s: float
    warmup_s: float
    server_pids: Sequence[int] = ()


AsyncOpener = Callable[[str, Requests], contextlib.AbstractAsyncContextManager[Callers]]
SyncOpener = Callable[[str, Requests], contextlib.AbstractContextManager[SyncCallers]]


@dataclass(frozen=True, slots=True)
class Driver:
    """How a system's callers run: on an asyncio loop (``open_async``), or on gevent's loop
    or threads (``open_sync``)."""

    runs_on: str  # ASYNCIO (the loop --loop names), GEVENT or THREADS
    open_async: AsyncOpener | None = None
    open_sync: SyncOpener | None = None


def requests_for(callers: int) -> list[list[bytes]]:
    """Each caller's request fields: its own address and a small payload."""
    return [protocol.encode_request(f"bench-caller-{i}", PAYLOAD) for i in range(callers)]


def _status(fields: Sequence[Any] | None) -> bytes:
    """A reply's status field, or b"" if it is not a three-field reply."""
    if fields is None or len(fields) != protocol.REPLY_FRAMES or not isinstance(fields[0], bytes):
        return b""
    return fields[0]


def _host_port(target: str) -> tuple[str, int]:
    parts = urlsplit(target)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"not a tcp://host:port target: {target!r}")
    return parts.hostname, parts.port


# --- asyncio callers: one factory per system -------------------------------------


@contextlib.asynccontextmanager
async def project_client(target: str, requests: Requests) -> AsyncIterator[Callers]:
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
        calls = [caller(client, frames) for client, frames in zip(clients, requests, strict=True)]
        yield Callers(calls, len(clients))
    finally:
        for client in clients:
            client.close()
        context.term()


@contextlib.asynccontextmanager
async def project_channel(target: str, requests: Requests) -> AsyncIterator[Callers]:
    from reqrep.channel import Channel, ChannelConfig

    async with Channel(ChannelConfig(endpoints=(target,))) as channel:

        def caller(frames: list[bytes]) -> Call:
            async def call() -> bytes:
                return (await channel.request(frames)).status.encode()

            return call

        yield Callers([caller(frames) for frames in requests], 1)


@contextlib.asynccontextmanager
async def bare_req(target: str, requests: Requests, echo: bool) -> AsyncIterator[Callers]:
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
        calls = [caller(sock, frames) for sock, frames in zip(sockets, requests, strict=True)]
        yield Callers(calls, len(sockets))
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()


def project_req(target: str, requests: Requests) -> contextlib.AbstractAsyncContextManager[Callers]:
    return bare_req(target, requests, echo=False)


def ceiling_req(target: str, requests: Requests) -> contextlib.AbstractAsyncContextManager[Callers]:
    return bare_req(target, requests, echo=True)


@contextlib.asynccontextmanager
async def grpc_callers(target: str, requests: Requests) -> AsyncIterator[Callers]:
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
        yield Callers([caller(encode_fields(fields)) for fields in requests], 1)
    finally:
        await channel.close()


@contextlib.asynccontextmanager
async def pynng_callers(target: str, requests: Requests) -> AsyncIterator[Callers]:
    import pynng  # type: ignore[import-untyped]

    with pynng.Req0(dial=target) as sock:
        contexts = [sock.new_context() for _ in requests]

        def caller(context: Any, body: bytes) -> Call:
            async def call() -> bytes:
                await context.asend(body)
                return _status(decode_fields(await context.arecv()))

            return call

        try:
            calls = [
                caller(context, encode_fields(fields))
                for context, fields in zip(contexts, requests, strict=True)
            ]
            yield Callers(calls, 1)
        finally:
            for context in contexts:  # before the socket: a context outliving it complains
                context.close()


@contextlib.asynccontextmanager
async def aiozmq_callers(target: str, requests: Requests) -> AsyncIterator[Callers]:
    import aiozmq.rpc  # type: ignore[import-untyped]

    # One client: aiozmq.rpc matches each reply to its call by a request id.
    client = await aiozmq.rpc.connect_rpc(connect=target)

    def caller(fields: list[bytes]) -> Call:
        async def call() -> bytes:
            return _status(await client.call.request(*fields))

        return call

    try:
        yield Callers([caller(fields) for fields in requests], 1)
    finally:
        client.close()
        await client.wait_closed()


@contextlib.asynccontextmanager
async def aiohttp_callers(target: str, requests: Requests) -> AsyncIterator[Callers]:
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

        yield Callers([caller(encode_fields(fields)) for fields in requests], 1)


@contextlib.asynccontextmanager
async def zeroapi_callers(target: str, requests: Requests, tcp: bool) -> AsyncIterator[Callers]:
    from zero import AsyncZeroClient  # type: ignore[import-untyped]
    from zero.protocols.tcp import AsyncTCPClient  # type: ignore[import-untyped]

    host, port = _host_port(target)
    if tcp:
        # Its TCP pool carries one request per connection at a time: one per caller.
        client = AsyncZeroClient(host, port, protocol=AsyncTCPClient, pool_size=len(requests))
    else:
        client = AsyncZeroClient(host, port)
    # zeroapi connects on the first call. Make it alone: callers racing to make the first
    # call can lose a reply to its connect handshake, which takes whatever comes next.
    await client.call(RPC_NAME, requests[0])

    def caller(fields: list[bytes]) -> Call:
        async def call() -> bytes:
            return _status(await client.call(RPC_NAME, fields))

        return call

    try:
        yield Callers([caller(fields) for fields in requests], 1)
    finally:
        client.close()
        # close() schedules the TCP pool's closing as a task of its own: let it finish.
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=FINISH_TIMEOUT_S)


def zeroapi_zmq(target: str, requests: Requests) -> contextlib.AbstractAsyncContextManager[Callers]:
    return zeroapi_callers(target, requests, tcp=False)


def zeroapi_tcp(target: str, requests: Requests) -> contextlib.AbstractAsyncContextManager[Callers]:
    return zeroapi_callers(target, requests, tcp=True)


async def drive_async(open_callers: AsyncOpener, loop: str, load: Load) -> LoadResult:
    clock = time.perf_counter
    async with open_callers(load.target, requests_for(load.callers)) as made:
        recorder = Recorder(load.server_pids, load.callers, made.client_objects, loop)

        async def run(call: Call) -> None:
            while not recorder.stopped:
                sent = clock()
                try:
                    status = await call()
                except Exception as error:
                    recorder.failed(error)
                    break
                recorder.record(sent, clock(), status == SERVER_RESPONSE)

        tasks = [asyncio.create_task(run(call)) for call in made.calls]
        await asyncio.sleep(load.warmup_s)
        recorder.open()
        await asyncio.sleep(load.duration_s)
        recorder.close()
        _, pending = await asyncio.wait(tasks, timeout=FINISH_TIMEOUT_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return recorder.result()


async def probe_async(open_callers: AsyncOpener, target: str, requests: Requests) -> list[bytes]:
    """One request per caller, at once; each reply's status."""
    async with open_callers(target, requests) as made:
        return list(await asyncio.gather(*(call() for call in made.calls)))


def run_on(loop: str, coroutine: Awaitable[Any]) -> Any:
    """Run ``coroutine`` to its end on a new event loop of the kind ``loop`` names."""

    async def main() -> Any:
        return await coroutine

    if loop == UVLOOP:
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


# --- callers on gevent's loop (zerorpc) or on threads (zeroapi's sync client) ------


@contextlib.contextmanager
def zerorpc_callers(target: str, requests: Requests) -> Iterator[SyncCallers]:
    import zerorpc  # type: ignore[import-untyped]

    # One client: each call is a zerorpc channel of its own on the client's one socket.
    client = zerorpc.Client(connect_to=target)

    def caller(fields: list[bytes]) -> SyncCall:
        return lambda: _status(client.request(*fields))

    try:
        yield SyncCallers([caller(fields) for fields in requests], 1)
    finally:
        client.close()


@contextlib.contextmanager
def zeroapi_sync_callers(target: str, requests: Requests) -> Iterator[SyncCallers]:
    from zero import ZeroClient

    # One client; zeroapi gives each calling thread a DEALER socket of its own.
    client = ZeroClient(*_host_port(target))

    def caller(fields: list[bytes]) -> SyncCall:
        return lambda: _status(client.call(RPC_NAME, fields))

    try:
        yield SyncCallers([caller(fields) for fields in requests], 1)
    finally:
        client.close()


class _Spawner:
    """Runs functions concurrently, as greenlets (gevent) or threads; joins them."""

    def __init__(self, runs_on: str) -> None:
        self.gevent = runs_on == GEVENT
        self.running: list[Any] = []

    def spawn(self, function: Callable[[], Any]) -> None:
        if self.gevent:
            import gevent  # type: ignore[import-untyped]

            self.running.append(gevent.spawn(function))
        else:
            thread = threading.Thread(target=function, daemon=True)
            thread.start()
            self.running.append(thread)

    def sleep(self, seconds: float) -> None:
        if self.gevent:
            import gevent

            gevent.sleep(seconds)
        else:
            time.sleep(seconds)

    def join(self, timeout_s: float) -> None:
        """Wait for them all, at most ``timeout_s``; greenlets still running are killed."""
        if self.gevent:
            import gevent

            gevent.joinall(self.running, timeout=timeout_s)
            gevent.killall(self.running)
            return
        deadline = time.monotonic() + timeout_s
        for thread in self.running:
            thread.join(max(0.0, deadline - time.monotonic()))


def drive_sync(runs_on: str, open_callers: SyncOpener, load: Load) -> LoadResult:
    spawner = _Spawner(runs_on)
    with open_callers(load.target, requests_for(load.callers)) as made:
        recorder = Recorder(load.server_pids, load.callers, made.client_objects, runs_on)

        def run(call: SyncCall) -> None:
            while not recorder.stopped:
                sent = time.perf_counter()
                try:
                    status = call()
                except Exception as error:
                    recorder.failed(error)
                    break
                recorder.record(sent, time.perf_counter(), status == SERVER_RESPONSE)

        for call in made.calls:
            spawner.spawn(functools.partial(run, call))
        spawner.sleep(load.warmup_s)
        recorder.open()
        spawner.sleep(load.duration_s)
        recorder.close()
        spawner.join(FINISH_TIMEOUT_S)
    return recorder.result()


def probe_sync(
    runs_on: str, open_callers: SyncOpener, target: str, requests: Requests
) -> list[bytes]:
    spawner = _Spawner(runs_on)
    statuses = [b""] * len(requests)

    def one(index: int, call: SyncCall) -> None:
        statuses[index] = call()

    with open_callers(target, requests) as made:
        for index, call in enumerate(made.calls):
            spawner.spawn(functools.partial(one, index, call))
        spawner.join(FINISH_TIMEOUT_S)
    return statuses


# --- the systems ---------------------------------------------------------------------

DRIVERS: Final[dict[str, Driver]] = {
    "project-client": Driver(ASYNCIO, open_async=project_client),
    "project-channel": Driver(ASYNCIO, open_async=project_channel),
    "project-req": Driver(ASYNCIO, open_async=project_req),
    "ceiling": Driver(ASYNCIO, open_async=ceiling_req),
    "grpc": Driver(ASYNCIO, open_async=grpc_callers),
    "pynng": Driver(ASYNCIO, open_async=pynng_callers),
    "zerorpc": Driver(GEVENT, open_sync=zerorpc_callers),
    "aiozmq": Driver(ASYNCIO, open_async=aiozmq_callers),
    "aiohttp": Driver(ASYNCIO, open_async=aiohttp_callers),
    "zeroapi": Driver(ASYNCIO, open_async=zeroapi_zmq),
    "zeroapi-sync": Driver(THREADS, open_sync=zeroapi_sync_callers),
    "zeroapi-tcp": Driver(ASYNCIO, open_async=zeroapi_tcp),
}


def run_load(system: str, load: Load, loop: str = ASYNCIO) -> LoadResult:
    if load.callers < 1:
        raise ValueError("at least one caller is needed")
    driver = DRIVERS[system]
    if driver.open_async is not None:
        result: LoadResult = run_on(loop, drive_async(driver.open_async, loop, load))
        return result
    if driver.open_sync is None:
        raise ValueError(f"{system}: a driver without callers")
    return drive_sync(driver.runs_on, driver.open_sync, load)


PROBE_REQUESTS: Final = (
    protocol.encode_request("bench-probe", PAYLOAD),  # well-formed
    protocol.encode_request_without_address(PAYLOAD),  # the seed's malformed request
    [b"", PAYLOAD],  # empty address
)


def probe(system: str, target: str, loop: str = ASYNCIO) -> list[str]:
    """The status each system answers ``PROBE_REQUESTS`` with, through its own client."""
    requests = [list(fields) for fields in PROBE_REQUESTS]
    driver = DRIVERS[system]
    if driver.open_async is not None:
        statuses: list[bytes] = run_on(loop, probe_async(driver.open_async, target, requests))
    elif driver.open_sync is not None:
        statuses = probe_sync(driver.runs_on, driver.open_sync, target, requests)
    else:
        raise ValueError(f"{system}: a driver without callers")
    return [status.decode(errors="replace") for status in statuses]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Closed-loop callers of one system (bench.peers).")
    parser.add_argument("system", choices=list(DRIVERS))
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
        help="a server process, for its CPU time, children included (repeatable)",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default=ASYNCIO,
        help="the event loop of an asyncio system's callers (uvloop: requirements-bench.txt)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="no load: send a well-formed request and two malformed ones (no address, "
        "empty address) and print the statuses answered, as JSON",
    )
    args = parser.parse_args(argv)
    check_loop(parser, args.loop, [args.system])
    return args


def check_loop(parser: argparse.ArgumentParser, loop: str, systems: Sequence[str]) -> None:
    """A usage error if ``--loop uvloop`` would be ignored, or uvloop is not installed."""
    if loop != UVLOOP:
        return
    if not any(DRIVERS[system].runs_on == ASYNCIO for system in systems):
        parser.error(f"--loop {UVLOOP}: none of {', '.join(systems)} runs on asyncio")
    try:
        import uvloop  # noqa: F401
    except ImportError:
        parser.error(f"--loop {UVLOOP}: uvloop is not installed (requirements-bench.txt)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.system, args.target, args.loop)), flush=True)
        return 0
    load = Load(args.target, args.callers, args.duration_s, args.warmup_s, args.server_pid)
    result = run_load(args.system, load, args.loop)
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
