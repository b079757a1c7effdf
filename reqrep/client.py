"""The REQ client: one request at a time, Lazy Pirate retries, and the demo's numbered requests.

    async with Client(ClientConfig(endpoints=("tcp://localhost:5555",))) as client:
        body = await client.call(b"hello")          # the body, or a ReplyError
        reply = await client.request(frames)        # any reply, parsed

A request that is not answered within ``timeout_ms`` is resent on a fresh socket
(the ZeroMQ guide's Lazy Pirate), ``tries`` times in all; then ``RequestTimeout``
(or ``ConnectFailed``/``HandshakeFailed``) says why, from what the socket's monitor
saw (``reqrep.events``). It never hangs. For many requests in flight on one
client, see ``reqrep.channel.Channel``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from reqrep import endpoints, keys, protocol
from reqrep.config import ClientConfig, RequestPlan, heartbeat_options
from reqrep.errors import ReqRepError
from reqrep.events import ConnectionEvents, Event, explain
from reqrep.report import ClientReport, Result

logger = logging.getLogger(__name__)

PING_ADDRESS = "healthcheck"
PING_DATA = b"ping"


def immediate(endpoints: Sequence[str]) -> int:
    """``ZMQ_IMMEDIATE`` for a client of these endpoints: on (1) with several of them.

    With it a request goes only to a connection that is up, so a client given every
    node's address skips a dead one instead of queueing requests there. It costs this:
    when a connection drops, libzmq discards what came on it and was not read yet, so a
    reply that arrives just before its server closes (a graceful stop) may be lost and
    the request sent again. With one endpoint (nginx in front) there is nothing to skip,
    and it stays off.
    """
    return 1 if len(endpoints) > 1 else 0


def client_socket(
    context: zmq.asyncio.Context,
    socket_type: int,
    config: ClientConfig,
    curve: keys.ClientCurve | None,
) -> zmq.asyncio.Socket:
    """A client's socket with its options (linger 0, IMMEDIATE, CURVE, heartbeats); not
    connected yet. The REQ client's and the Channel's."""
    sock = context.socket(socket_type)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IMMEDIATE, immediate(config.endpoints))
    if curve is not None:
        curve.apply(sock)
    for option, value in heartbeat_options(config.heartbeat_ms).items():
        sock.setsockopt(option, value)
    return sock


class Client:
    """An asynchronous REQ client with Lazy Pirate retries; one request at a time.

    ``context``: a ZeroMQ asyncio context to use (the caller's to terminate); by
    default the client makes its own and ends it on ``close()``. Endpoints and
    CURVE keys are checked here: ``EndpointError``/``CurveKeyError``, nothing opened.
    A client holds three ZeroMQ sockets (its REQ socket and its monitor's pair); a
    context allows 1023 by default (``zmq.MAX_SOCKETS``). For many requests at once,
    one ``Channel`` is the lighter way.
    """

    def __init__(
        self, config: ClientConfig | None = None, context: zmq.asyncio.Context | None = None
    ) -> None:
        config = ClientConfig() if config is None else config
        if config.tries < 1:
            raise ValueError("tries must be at least 1")
        endpoints.check_all(config.endpoints)
        self._curve = keys.ClientCurve.load(config.curve_server_key, config.curve_secret_key)
        self.config = config
        self._own_context = context is None
        self._context = zmq.asyncio.Context() if context is None else context
        self._socket: zmq.asyncio.Socket | None = None
        self._events: ConnectionEvents | None = None
        self._timeout_s = config.timeout_ms / 1000
        self.last_tries = 0

    def _open(self) -> zmq.asyncio.Socket:
        sock = client_socket(self._context, zmq.REQ, self.config, self._curve)
        self._events = ConnectionEvents(sock)
        for endpoint in self.config.endpoints:
            sock.connect(endpoint)
        return sock

    @property
    def socket(self) -> zmq.asyncio.Socket | None:
        """The REQ socket in use: None before the first request and after a timeout."""
        return self._socket

    @property
    def events(self) -> ConnectionEvents | None:
        """What the current socket's monitor saw (None with no socket): ``reqrep.events``."""
        return self._events

    def _close_socket(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def close(self) -> None:
        """Close the socket, dropping anything unsent (linger 0); end the context if ours."""
        self._close_socket()
        if self._own_context and not self._context.closed:
            self._context.term()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def request(self, frames: Sequence[bytes], label: str = "") -> protocol.Reply:
        """Send a request's frames and return the parsed reply, whatever its status.

        Retries on a fresh socket; after the last try raises ``RequestTimeout`` (or
        its subclass ``ConnectFailed``/``HandshakeFailed``) with the reason.
        """
        seen: list[list[Event]] = []
        for attempt in range(1, self.config.tries + 1):
            self.last_tries = attempt
            if self._socket is None:
                self._socket = self._open()
            events = self._events
            started = events.total if events is not None else 0
            reply = await self._exchange(self._socket, frames)
            if reply is not None:
                return protocol.parse_reply(reply)
            if events is not None:
                events.drain()
                seen.append(events.since(started))
            # Lazy Pirate: a REQ socket that lost its reply is stuck; replace it.
            logger.warning(
                "No reply to %s within %d ms (try %d of %d)",
                f"request {label}" if label else "the request",
                *(self.config.timeout_ms, attempt, self.config.tries),
            )
            self._close_socket()
        failure, reason = explain(seen, self.config.endpoints, self._curve is not None)
        raise failure(self.config.endpoints, label, self.config.tries, reason)

    async def call(self, data: bytes, address: str | None = None) -> bytes:
        """Send ``data`` (from ``address``, by default ``config.address``) and return the reply's
        body; a reply other than ``Server response`` raises its ``ReplyError``."""
        frames = protocol.encode_request(address or self.config.address, data)
        return protocol.body_of(await self.request(frames))

    async def _exchange(
        self, sock: zmq.asyncio.Socket, frames: Sequence[bytes]
    ) -> list[bytes] | None:
        """Send, then the reply's frames, or None if none came within the timeout.

        The timeout covers the send too: with ``ZMQ_IMMEDIATE`` (several endpoints) a REQ
        socket takes a request only once a connection is up, so the send itself may wait.
        """
        try:
            async with asyncio.timeout(self._timeout_s) as deadline:
                await sock.send_multipart(frames)
                return await sock.recv_multipart()
        except TimeoutError:
            if deadline.expired():
                return None
            raise

    async def ping(self) -> protocol.Reply:
        """One health request through the handler: any reply means the replica is alive."""
        return await self.request(protocol.encode_request(PING_ADDRESS, PING_DATA), "ping")


@dataclass
class Progress:
    """What a run of requests has sent and what came back, so far."""

    sent: int = 0
    results: list[Result] = field(default_factory=list)


async def run_requests(client: Client, address: str, plan: RequestPlan, progress: Progress) -> None:
    """Send the plan's numbered requests, printing the seed's two lines for each.

    ``progress`` is updated as requests go and replies arrive, so a caller
    keeps what was answered even when a later request times out.
    """
    for number in range(plan.requests):
        data = f"request {number}".encode()
        if number == plan.malformed:
            frames = protocol.encode_request_without_address(data)
        else:
            frames = protocol.encode_request(address, data)
        print(f"Sending request: {number}", flush=True)
        progress.sent += 1
        started = time.perf_counter()
        reply = await client.request(frames, str(number))
        latency_ms = (time.perf_counter() - started) * 1000
        print(f"Received response: {reply.status}", flush=True)
        progress.results.append(
            Result(number, reply.status, reply.replica, latency_ms, client.last_tries)
        )
        if plan.interval_ms > 0 and number + 1 < plan.requests:
            await asyncio.sleep(plan.interval_ms / 1000)


async def run(config: ClientConfig, plan: RequestPlan, report_path: str | None = None) -> int:
    """The demo client's whole job; returns the exit status (1 if a request went unanswered)."""
    progress = Progress()
    error: str | None = None
    try:
        async with Client(config) as client:
            await run_requests(client, config.address, plan, progress)
    except ReqRepError as failure:
        error = str(failure)
        print(f"error: {error}", flush=True, file=sys.stderr)
    finally:
        if report_path is not None:
            report = ClientReport(config.address, progress.sent, tuple(progress.results), error)
            report.write(report_path)
    return 0 if error is None else 1


async def ping(config: ClientConfig) -> int:
    """One health request: 0 if the replica answered in time (any status), 1 if not."""
    try:
        async with Client(config) as client:
            await client.ping()
    except ReqRepError as failure:
        print(f"error: {failure}", flush=True, file=sys.stderr)
        return 1
    return 0
