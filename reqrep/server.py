"""The asyncio ZeroMQ server: the REP side of the request/reply pattern.

By default a replica serves REQ clients from a ROUTER socket, so many requests
are in flight at once (bounded by ``max_inflight``); ``socket_type="rep"`` is
the textbook REP socket that handles one request at a time. Every request is
answered by ``Answerer.answer`` (``Server.answer``), over the pure protocol in ``reqrep.protocol``.

There is one loop per socket mode:

- ``_serve_rep``: REP, one request at a time;
- ``_serve_router_inline``: ROUTER, no work to wait for, answers inline (the
  fast path; while busy, ``answer_while_busy`` answers synchronously);
- ``_serve_router_tasks``: ROUTER with ``work_ms``, one task per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from time import perf_counter_ns
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from reqrep import keys, protocol
from reqrep.config import ServerConfig, heartbeat_options
from reqrep.frames import recv_wait, send_now
from reqrep.metrics import ServerMetrics

logger = logging.getLogger(__name__)

# Router mode without work, under load: how long to wait for the next request
# before waiting in the event loop again, and how often the event loop gets a
# turn while requests keep coming.
BUSY_WAIT_MS = 1
BUSY_TURN_S = 0.005
SOCKET_TYPES = {"router": zmq.ROUTER, "rep": zmq.REP}


class Server:
    """One replica: binds its socket, answers requests until told to stop."""

    def __init__(self, config: ServerConfig, context: zmq.asyncio.Context) -> None:
        if config.socket_type not in SOCKET_TYPES:
            raise ValueError(f"socket_type must be 'router' or 'rep', not {config.socket_type!r}")
        self.config = config
        self._context = context
        self._work_s = config.work_ms / 1000
        self._socket: zmq.asyncio.Socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight = asyncio.Semaphore(config.max_inflight)
        self._authenticator: AsyncioAuthenticator | None = None
        self.endpoints: list[str] = []
        # Prometheus metrics (reqrep.metrics) when a port is configured; None: off.
        self.metrics: ServerMetrics | None = None
        if config.metrics_port is not None:
            self.metrics = ServerMetrics(lambda: self.requests_served, config.name)
        self.answerer = Answerer(config.name.encode(), config.max_message_bytes, self.metrics)
        self.answer = self.answerer.answer

    @property
    def requests_served(self) -> int:
        return self.answerer.served

    def bind(self) -> list[str]:
        """Create and bind the socket; return the endpoints actually bound."""
        self._bind_socket()
        return list(self.endpoints)

    def _bind_socket(self) -> zmq.asyncio.Socket:
        self._socket, self._authenticator, self.endpoints = open_socket(self._context, self.config)
        return self._socket

    def _stop_authenticator(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None

    async def serve(self, stop: asyncio.Event) -> None:
        """Answer requests until ``stop`` is set, then drain and close."""
        sock = self._socket if self._socket is not None else self._bind_socket()
        config = self.config
        logger.info(
            "Server %s serving on %s (socket=%s, max_inflight=%d, work_ms=%g)",
            *(config.name, ", ".join(self.endpoints), config.socket_type),
            *(config.max_inflight, config.work_ms),
        )
        receiver = StoppableReceiver(sock, stop)
        try:
            async with self._metrics_serving(sock):
                if config.socket_type == "rep":
                    await self._serve_rep(sock, receiver)
                elif self._work_s > 0:
                    await self._serve_router_tasks(sock, receiver)
                else:
                    await self._serve_router_inline(sock, receiver)
        finally:
            receiver.close()
            await close_after_drain(sock, self._tasks, self.config.grace_s)
            self._socket = None
            self._stop_authenticator()
            logger.info("Server %s stopped after %d request(s)", config.name, self.requests_served)

    def _metrics_serving(self, sock: zmq.asyncio.Socket) -> AbstractAsyncContextManager[None]:
        port = self.config.metrics_port
        if self.metrics is None or port is None:
            return contextlib.nullcontext()
        return self.metrics.serving(sock, port)

    async def _serve_rep(self, sock: zmq.asyncio.Socket, receiver: StoppableReceiver) -> None:
        while not receiver.stopped:
            request = await receiver.receive()
            if request is None:
                return
            started = perf_counter_ns()
            reply, valid = self.answer(request, "-")
            if valid and self._work_s > 0:
                await asyncio.sleep(self._work_s)
            if self.metrics is not None:
                self.metrics.handled(started)
            await sock.send_multipart(reply)

    async def _serve_router_inline(
        self, sock: zmq.asyncio.Socket, receiver: StoppableReceiver
    ) -> None:
        # A synchronous handle on the same socket, for the busy path and the
        # inline send (a ROUTER socket drops rather than blocks).
        sync_sock: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        clock = asyncio.get_running_loop().time
        # With metrics on, each answer is timed (reqrep.metrics: the one per-request cost).
        answer: Callable[[list[bytes]], list[bytes]] = self.answerer.answer_routed
        if self.metrics is not None:
            answer = self.metrics.timed(answer)
        while not receiver.stopped:
            if answer_while_busy(sync_sock, answer, clock):
                await asyncio.sleep(0)  # busy for a while: signals, stop and ZAP get a turn
                continue
            frames = await receiver.receive()
            if frames is None:
                return
            send_now(sync_sock, answer(frames))

    async def _serve_router_tasks(
        self, sock: zmq.asyncio.Socket, receiver: StoppableReceiver
    ) -> None:
        while not receiver.stopped:
            await self._inflight.acquire()
            frames = None if receiver.stopped else await receiver.receive()
            if frames is None:
                self._inflight.release()
                return
            task = asyncio.create_task(self._work_and_answer(sock, frames, perf_counter_ns()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _work_and_answer(
        self, sock: zmq.asyncio.Socket, frames: list[bytes], started_ns: int
    ) -> None:
        """Router mode with work: validate, do the work if valid, send the reply."""
        try:
            envelope, request = protocol.split_envelope(frames)
            reply, valid = self.answer(request, envelope[0])
            if valid:
                await asyncio.sleep(self._work_s)
            if self.metrics is not None:
                self.metrics.handled(started_ns)
            await sock.send_multipart(envelope + reply)
        finally:
            self._inflight.release()


def open_socket(
    context: zmq.asyncio.Context, config: ServerConfig
) -> tuple[zmq.asyncio.Socket, AsyncioAuthenticator | None, list[str]]:
    """A replica's socket, set up and bound: (socket, CURVE authenticator, endpoints bound)."""
    sock = context.socket(SOCKET_TYPES[config.socket_type])
    authenticator = None
    try:
        sock.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in heartbeat_options(config.heartbeat_ms).items():
            sock.setsockopt(option, value)
        authenticator = keys.secure_server(
            sock, context, config.curve_secret_key, config.curve_authorized_keys
        )
        endpoints = []
        for endpoint in config.bind:
            sock.bind(endpoint)
            endpoints.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    except BaseException:
        sock.close(linger=0)
        if authenticator is not None:
            authenticator.stop()
        raise
    return sock, authenticator, endpoints


async def close_after_drain(
    sock: zmq.asyncio.Socket, tasks: set[asyncio.Task[None]], grace_s: float
) -> None:
    """Let the requests in flight finish within ``grace_s``, then close the socket.

    Replies already queued get the rest of the grace period to leave (linger).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    pending = set(tasks)
    if pending:
        logger.info("Stopping: finishing %d request(s) in flight", len(pending))
        _, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            logger.warning("Grace period over: %d request(s) left unanswered", len(pending))
    sock.close(linger=max(0, int((deadline - loop.time()) * 1000)))


class Answerer:
    """What a replica says to each request: the reply, the error log line, the counts."""

    def __init__(
        self, name: bytes, max_message_bytes: int, metrics: ServerMetrics | None = None
    ) -> None:
        self._name = name
        self._max_message_bytes = max_message_bytes
        self._debug = logger.isEnabledFor(logging.DEBUG)
        self.metrics = metrics
        self.served = 0

    def answer(self, request: list[bytes], peer: bytes | str) -> tuple[list[bytes], bool]:
        """The reply to one request and whether it was valid: the per-request error boundary.

        ``peer`` names the sender in the log (a ROUTER routing id, or "-").
        """
        self.served += 1
        if self._debug:
            logger.debug("Request received from peer %s", _peer_label(peer))
        try:
            reply, fault = protocol.respond(request, self._name, self._max_message_bytes)
        except Exception:
            logger.error("Failed to handle a request from %s", _peer_label(peer), exc_info=True)
            fault = protocol.INTERNAL_ERROR_FAULT
            reply = protocol.invalid_reply(self._name, fault.reason)
        else:
            if fault is None:
                return reply, True
            logger.error("Invalid message from peer %s: %s", _peer_label(peer), fault.reason)
        if self.metrics is not None:
            self.metrics.count_invalid(fault.kind)
        return reply, False

    def answer_routed(self, frames: list[bytes]) -> list[bytes]:
        """A ROUTER message in, the routed reply out (envelope echoed in front)."""
        envelope, request = protocol.split_envelope(frames)
        return envelope + self.answer(request, envelope[0])[0]


class StoppableReceiver:
    """Awaits a socket's next message until ``stop`` is set, then answers None.

    Stop cancels only the wait for the next message: a message already
    received (even one whose future just completed) is returned and answered.
    """

    def __init__(self, sock: zmq.asyncio.Socket, stop: asyncio.Event) -> None:
        self._sock = sock
        self._stop = stop
        self._receiving: asyncio.Future[list[bytes]] | None = None
        self._watcher = asyncio.create_task(self._cancel_on(stop))

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    async def _cancel_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        if self._receiving is not None:
            self._receiving.cancel()

    async def receive(self) -> list[bytes] | None:
        """The next message's frames, or None once the wait was cancelled by stop.

        A REP socket drops a message without an empty delimiter after it woke
        the reader; pyzmq then raises ``zmq.Again`` instead of waiting on, so
        that is waited through here rather than ending the replica.
        """
        while True:
            self._receiving = asyncio.ensure_future(self._sock.recv_multipart())
            try:
                return await self._receiving
            except zmq.Again:
                continue
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                return None
            finally:
                self._receiving = None

    def close(self) -> None:
        self._watcher.cancel()


def answer_while_busy(
    sock: zmq.Socket[Any],
    answer: Callable[[list[bytes]], list[bytes]],
    clock: Callable[[], float],
) -> bool:
    """Answer ROUTER messages synchronously while they keep coming.

    Under load this works like a synchronous server: after each reply it waits
    for the next message in a blocking receive, bounded by BUSY_WAIT_MS (the
    socket's RCVTIMEO while here: pyzmq's asyncio sockets take RCVTIMEO as
    their own timeout, so it is reset on the way out), instead of a future and
    an event-loop wake-up per message (the profile's biggest cost after the
    frame I/O). That wait blocks the event loop, which has nothing else to do
    in this mode but signals, stop and CURVE's ZAP handler; they get a turn at
    least every BUSY_TURN_S.

    Returns False once no message came for BUSY_WAIT_MS (the next one is then
    awaited in the event loop), True when the event loop's turn is due.
    """
    turn_at = clock() + BUSY_TURN_S
    sock.setsockopt(zmq.RCVTIMEO, BUSY_WAIT_MS)
    try:
        while True:
            try:
                frames = recv_wait(sock)
            except zmq.Again:
                return False
            send_now(sock, answer(frames))
            if clock() >= turn_at:
                return True
    finally:
        sock.setsockopt(zmq.RCVTIMEO, -1)


def _peer_label(peer: bytes | str) -> str:
    return peer.hex() if isinstance(peer, bytes) else peer


def stop_on_signals(stop: asyncio.Event, delay_s: float) -> None:
    """Set ``stop`` on SIGTERM or SIGINT: after ``delay_s`` the first time, at once the second.

    During the delay the replica goes on answering, new connections included, so a
    balancer that finds replicas by DNS (swarm, compose, Kubernetes) has time to stop
    choosing it before it goes: the preStop pattern.
    """
    loop = asyncio.get_running_loop()
    delayed: list[asyncio.TimerHandle] = []

    def on_signal(signum: signal.Signals) -> None:
        if delayed or delay_s <= 0:
            if delayed:
                logger.info("%s again: stopping now", signum.name)
            stop.set()
            return
        logger.info("%s: still answering for %g s, then stopping", signum.name, delay_s)
        delayed.append(loop.call_later(delay_s, stop.set))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def run(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT (after ``shutdown_delay_s``), then drain and exit."""
    stop = asyncio.Event()
    stop_on_signals(stop, config.shutdown_delay_s)
    context = zmq.asyncio.Context()
    try:
        server = Server(config, context)
        server.bind()
        await server.serve(stop)
    finally:
        context.term()
