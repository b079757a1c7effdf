"""The asyncio ZeroMQ server: the REP side of the request/reply pattern, around a handler.

    async with Server(echo, ServerConfig(bind=("tcp://*:5555",))) as server:
        await server.serve_forever()

A replica validates each request's envelope (``reqrep.protocol``), hands a
well-formed one to its handler (``reqrep.handlers``) and sends exactly one reply
whatever the handler does: its body (``Server response``), ``Server error`` with
the exception's type and message when it raises (the traceback goes to the log),
``Server timeout`` when it runs past ``handler_timeout_ms``. ``Answerer`` is that
per-request boundary.

By default a replica serves REQ clients from a ROUTER socket, so many requests
are in flight at once; ``socket_type="rep"`` is the textbook REP socket that
handles one request at a time. The path a handler takes is decided once, when
the server is made; there is one loop per path:

- ``_serve_router_inline``: ROUTER, a synchronous handler called in the event
  loop (the default handler's fast path is one of these; while requests keep
  coming ``answer_while_busy`` answers them synchronously);
- ``_serve_router_tasks``: ROUTER, an async handler, or a synchronous one in a
  thread pool (``threads``): one task per request, at most ``max_inflight``;
- ``_serve_rep``: REP, one request at a time, whatever the handler.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Final, cast

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from reqrep import events, handlers, keys, protocol
from reqrep.config import ServerConfig, heartbeat_options
from reqrep.errors import BindError, ConfigError
from reqrep.frames import recv_now, recv_wait, send_now
from reqrep.handlers import Handler, Prepared
from reqrep.metrics import ServerMetrics
from reqrep.metrics_http import MetricsEndpoint
from reqrep.protocol import Request

logger = logging.getLogger(__name__)

# Router mode inline, under load: how long to wait for the next request before
# waiting in the event loop again, and how often the event loop gets a turn
# while requests keep coming.
_POLLIN: Final = int(zmq.POLLIN)
_EVENTS: Final = int(zmq.EVENTS)
BUSY_WAIT_MS: Final = 1
BUSY_TURN_S: Final = 0.005
# After the grace period, requests still in flight are cancelled and answered
# ``Server error``; their replies get this long to leave before the socket closes.
LAST_REPLIES_LINGER_MS: Final = 500
HANDLER_THREAD_PREFIX: Final = "reqrep-handler"
SOCKET_TYPES: Final = {"router": zmq.ROUTER, "rep": zmq.REP}

Answer = Callable[[list[bytes], bytes], list[bytes]]
AnswerAsync = Callable[[list[bytes], bytes], Awaitable[list[bytes]]]


class Server:
    """One replica: binds its socket, answers requests with ``handler`` until stopped.

    ``handler`` is a callable (``reqrep.handlers``), a ``module:attr`` string, or None
    for ``config.handler``. As an async context manager the server binds and starts
    serving on entry; on exit it stops taking requests, lets those in flight finish
    within ``config.grace_s`` and closes. ``context``: a ZeroMQ asyncio context to
    use (the caller's to terminate); by default the server makes and ends its own.
    """

    def __init__(
        self,
        handler: Handler | Prepared | str | None = None,
        config: ServerConfig | None = None,
        *,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        config = ServerConfig() if config is None else config
        if config.socket_type not in SOCKET_TYPES:
            raise ConfigError(f"socket_type must be 'router' or 'rep', not {config.socket_type!r}")
        self.config = config
        self.handler = resolve_handler(handler, config)
        self._own_context = context is None
        self._context = zmq.asyncio.Context() if context is None else context
        self._bound: Bound | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None
        self.endpoints: list[str] = []
        # Prometheus metrics (reqrep.metrics) when a port is configured; None: off.
        self.metrics: ServerMetrics | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        if config.metrics_port is not None:
            self.metrics = ServerMetrics(lambda: self.requests_served, config.name)
            self._metrics_endpoint = MetricsEndpoint(self.metrics)
        self.answerer = Answerer(config, self.handler, self.metrics)

    @property
    def requests_served(self) -> int:
        return self.answerer.served

    @property
    def metrics_port(self) -> int | None:
        """The port /metrics is served on once started (the one picked, for port 0)."""
        return None if self._metrics_endpoint is None else self._metrics_endpoint.port

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
        await self.wait_closed()

    async def start(self) -> None:
        """Bind, serve metrics if asked, and start answering; raises ``StartError`` (and
        ``CurveKeyError``) having left nothing open when any of that fails."""
        try:
            bound = self._bound = open_socket(self._context, self.config)
            if self._metrics_endpoint is not None and self.config.metrics_port is not None:
                self._metrics_endpoint.start(self.config.metrics_port, asyncio.get_running_loop())
        except BaseException:
            self._release()
            if self._own_context:
                self._context.term()  # no socket is left open: at once
            raise
        self.endpoints = bound.endpoints
        if self.config.threads > 0 and not self.handler.asynchronous:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self.config.threads, thread_name_prefix=HANDLER_THREAD_PREFIX
            )
        self.answerer.use_executor(self._executor)
        config = self.config
        logger.info(
            "Server %s serving on %s (handler=%s%s, socket=%s, max_inflight=%d)",
            *(config.name, ", ".join(self.endpoints), self.handler.name),
            f", threads={config.threads}" if self._executor is not None else "",
            *(config.socket_type, config.max_inflight),
        )
        self._serving = asyncio.create_task(self._serve(bound))

    def stop(self) -> None:
        """Stop taking requests; those in flight get ``grace_s`` to finish."""
        self._stop.set()

    async def serve_forever(self) -> None:
        """Answer requests until the server is stopped (``stop()``, e.g. on a signal: see
        ``stop_on_signals``), has drained and is closed."""
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the server has stopped, drained and closed its socket."""
        if self._serving is None:
            raise RuntimeError("the server was never started: use `async with` or start()")
        await asyncio.shield(self._serving)

    async def _serve(self, bound: Bound) -> None:
        receiver = StoppableReceiver(bound.socket, self._stop)
        watcher = asyncio.create_task(watch_connections(bound.monitor, self.metrics))
        try:
            await self._loop()(bound.socket, receiver)
        finally:
            receiver.close()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            linger_ms = await drain(self._tasks, self.config.grace_s)
            self._release(linger_ms)
            if self._own_context:  # last, and off the event loop: it waits for the linger
                await asyncio.to_thread(self._context.term)
            logger.info(
                "Server %s stopped after %d request(s)", self.config.name, self.requests_served
            )

    def _loop(self) -> Callable[[zmq.asyncio.Socket, StoppableReceiver], Awaitable[None]]:
        """The serving loop for this socket mode and handler path (decided once)."""
        if self.config.socket_type == "rep":
            return self._serve_rep
        if self.answerer.inline:
            return self._serve_router_inline
        return self._serve_router_tasks

    def _release(self, linger_ms: int = 0) -> None:
        """Close what start() opened, but the context: the socket last, with ``linger_ms``."""
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._bound is not None:
            self._bound.close(linger_ms)
            self._bound = None

    async def _serve_rep(self, sock: zmq.asyncio.Socket, receiver: StoppableReceiver) -> None:
        answer = self.answerer.answer_async_or_inline()
        while not receiver.stopped:
            request = await receiver.receive()
            if request is None:
                return
            started = time.perf_counter_ns()
            reply = await answer(request, b"")
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
        answer = self.answerer.routed(self.answerer.inline_answer())
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
        """A task per request, at most ``max_inflight`` at once; requests are read by a
        ``TaskFeeder`` from the socket's descriptor, replies sent from the tasks."""
        loop = asyncio.get_running_loop()
        feeder = TaskFeeder(
            zmq.Socket.shadow(sock.underlying),
            self.answerer.answer_async,
            self.config.max_inflight,
            self.metrics,
        )
        fd = feeder.fd
        loop.add_reader(fd, feeder.read)
        try:
            feeder.read()  # what is queued already
            await receiver.wait_stopped()
        finally:
            loop.remove_reader(fd)
            self._tasks.update(feeder.tasks)


def resolve_handler(handler: Handler | Prepared | str | None, config: ServerConfig) -> Prepared:
    """The handler a server runs: given, named by ``config.handler``, or ``--work-ms``'s.

    ``HandlerLoadError`` for a handler that cannot be loaded, ``ConfigError`` for one
    given twice or that cannot run as configured.
    """
    named = config.handler != handlers.DEFAULT
    if isinstance(handler, Prepared):
        prepared = handler
    elif config.work_ms > 0:
        if handler is not None or named:
            raise ConfigError("work_ms is a shortcut for the built-in Work handler: not both")
        prepared = handlers.prepare(handlers.Work(config.work_ms), f"work_ms={config.work_ms:g}")
    elif handler is None:
        prepared = handlers.load(config.handler, config.app_dir)
    elif named:
        raise ConfigError(f"two handlers given: {handler!r} and config.handler {config.handler!r}")
    elif isinstance(handler, str):
        prepared = handlers.load(handler, config.app_dir)
    else:
        prepared = handlers.prepare(handler)
    if config.threads > 0 and prepared.asynchronous:
        raise ConfigError(
            f"--threads is for synchronous handlers, and {prepared.name} is async: "
            "it runs in the event loop"
        )
    return prepared


@dataclass
class Bound:
    """A replica's socket, set up and bound, with its monitor and CURVE authenticator."""

    socket: zmq.asyncio.Socket
    monitor: zmq.asyncio.Socket
    authenticator: AsyncioAuthenticator | None
    endpoints: list[str]

    def close(self, linger_ms: int = 0) -> None:
        """Close the monitor, the socket (``linger_ms`` for replies queued) and ZAP."""
        if not self.socket.closed:
            self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=linger_ms)
        if self.authenticator is not None:
            self.authenticator.stop()


def open_socket(context: zmq.asyncio.Context, config: ServerConfig) -> Bound:
    """A replica's socket, set up, monitored (from before it binds) and bound."""
    sock = context.socket(SOCKET_TYPES[config.socket_type])
    monitor = sock.get_monitor_socket(events.SERVER_WATCHED)
    authenticator = None
    try:
        sock.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in heartbeat_options(config.heartbeat_ms).items():
            sock.setsockopt(option, value)
        authenticator = keys.secure_server(
            sock, context, config.curve_secret_key, config.curve_authorized_keys
        )
        endpoints = [bind(sock, endpoint) for endpoint in config.bind]
    except BaseException:
        Bound(sock, monitor, authenticator, []).close()
        raise
    return Bound(sock, monitor, authenticator, endpoints)


def bind(sock: zmq.Socket[Any], endpoint: str) -> str:
    """Bind ``endpoint``; the endpoint bound (the port picked, for ``*``); ``BindError`` if not."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as error:
        raise BindError(f"Cannot serve on {endpoint}: {error.strerror}") from None
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


async def drain(tasks: set[asyncio.Task[None]], grace_s: float) -> int:
    """Let the requests in flight finish within ``grace_s``; the linger for the socket.

    What is still running then is cancelled, and each of those requests is answered
    ``Server error`` (``Answerer``); replies already queued get the rest of the grace
    period, at least LAST_REPLIES_LINGER_MS, to leave.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    pending = set(tasks)
    if pending:
        logger.info("Stopping: finishing %d request(s) in flight", len(pending))
        _, pending = await asyncio.wait(pending, timeout=grace_s)
        if pending:
            logger.warning(
                "Grace period over: %d request(s) still running are answered Server error",
                len(pending),
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=LAST_REPLIES_LINGER_MS / 1000)
    return max(LAST_REPLIES_LINGER_MS, int((deadline - loop.time()) * 1000))


async def watch_connections(monitor: zmq.asyncio.Socket, metrics: ServerMetrics | None) -> None:
    """Follow the socket's connections through its monitor until cancelled: peers for the
    metrics, and every refused handshake logged (why) and counted."""
    while True:
        event = events.parse(await monitor.recv_multipart())
        refused = events.refusal(event)
        if metrics is not None:
            metrics.connection_event(event, refused)
        if refused is not None:
            logger.warning("Refused a client's handshake: %s", refused.reason)


class Answerer:
    """The per-request boundary: every request gets exactly one reply.

    What a replica says to each request, the error log line, the counts: a
    malformed one is answered ``Invalid message`` (logged at ERROR, counted by
    fault kind); a well-formed one goes to the handler, and whatever it does (a
    body, an exception, too long a run, being cancelled by a stop) becomes one reply.
    """

    def __init__(
        self, config: ServerConfig, handler: Prepared, metrics: ServerMetrics | None = None
    ) -> None:
        self._replica = config.name
        self._name = config.name.encode()
        self._max_message_bytes = config.max_message_bytes
        self._timeout_s = config.handler_timeout_ms / 1000
        self._timeout_ms = config.handler_timeout_ms
        self._handler = handler
        self._call_async: Callable[[Request], Awaitable[object]] | None = (
            handlers.async_call(handler) if handler.asynchronous else None
        )
        self._debug = logger.isEnabledFor(logging.DEBUG)
        self.metrics = metrics
        self.served = 0

    @property
    def inline(self) -> bool:
        """A synchronous handler called in the event loop (no thread pool)."""
        return self._call_async is None

    def use_executor(self, executor: concurrent.futures.Executor | None) -> None:
        """Run the synchronous handler in ``executor`` (a thread pool), awaited as if async."""
        if executor is None:
            return
        call = handlers.sync_call(self._handler)

        def in_pool(request: Request) -> Awaitable[object]:
            return asyncio.get_running_loop().run_in_executor(executor, call, request)

        self._call_async = in_pool

    def inline_answer(self) -> Answer:
        """The synchronous answer function for this handler: the default's fast path or not."""
        if self._handler.is_default:
            return self.answer_default
        return self.answer_sync

    def answer_async_or_inline(self) -> AnswerAsync:
        """An awaitable answer function whatever the handler (REP mode: one at a time)."""
        if self._call_async is not None:
            return self.answer_async
        answer = self.inline_answer()

        async def answer_now(request: list[bytes], peer: bytes) -> list[bytes]:
            return answer(request, peer)

        return answer_now

    def routed(self, answer: Answer) -> Callable[[list[bytes]], list[bytes]]:
        """``answer`` over ROUTER messages: the routed reply out, envelope echoed in front."""

        def answer_routed(frames: list[bytes]) -> list[bytes]:
            envelope, request = protocol.split_envelope(frames)
            return envelope + answer(request, envelope[0])

        return answer_routed

    # -- the three ways to answer ------------------------------------------------

    def answer_default(self, frames: list[bytes], peer: bytes) -> list[bytes]:
        """The default handler's reply (an empty body), without building a ``Request``."""
        self.served += 1
        if self._debug:
            logger.debug("Request received from peer %s", _peer_label(peer))
        reply, fault = protocol.respond(frames, self._name, self._max_message_bytes)
        if fault is not None:
            self._log_invalid(fault, peer)
        return reply

    def answer_sync(self, frames: list[bytes], peer: bytes) -> list[bytes]:
        """A synchronous handler's reply, the handler called here and now."""
        checked = self._check(frames, peer)
        if not isinstance(checked, Request):
            return checked
        try:
            body = handlers.as_body(self._handler.handler(checked))
        except Exception as error:
            return self._failed(error, checked)
        if time.monotonic() > checked.deadline:
            return self._timed_out(checked)
        return [protocol.SERVER_RESPONSE, self._name, body]

    async def answer_async(self, frames: list[bytes], peer: bytes) -> list[bytes]:
        """An async (or thread-pooled) handler's reply, awaited within the handler timeout."""
        checked = self._check(frames, peer)
        if not isinstance(checked, Request):
            return checked
        call = self._call_async
        if call is None:  # pragma: no cover - only async paths get here
            raise RuntimeError("no awaitable handler")
        try:
            async with asyncio.timeout(self._timeout_s) as timeout:
                body = handlers.as_body(await call(checked))
        except TimeoutError as error:
            if timeout.expired():
                return self._timed_out(checked)
            return self._failed(error, checked)
        except asyncio.CancelledError as error:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                return self._cancelled(checked)
            return self._failed(error, checked)  # the handler's own, not a stop
        except Exception as error:
            return self._failed(error, checked)
        return [protocol.SERVER_RESPONSE, self._name, body]

    # -- what each outcome says, logs and counts ------------------------------------

    def _check(self, frames: list[bytes], peer: bytes) -> Request | list[bytes]:
        """The request for the handler, or the ``Invalid message`` reply if it is malformed."""
        self.served += 1
        if self._debug:
            logger.debug("Request received from peer %s", _peer_label(peer))
        fault = protocol.request_fault(frames, self._max_message_bytes)
        if fault is not None:
            self._log_invalid(fault, peer)
            return protocol.invalid_reply(self._name, fault.reason)
        return Request(
            address=bytes(frames[0]).decode("utf-8"),
            data=bytes(frames[1]),
            replica=self._replica,
            peer=peer.hex(),
            deadline=time.monotonic() + self._timeout_s,
        )

    def _log_invalid(self, fault: protocol.Fault, peer: bytes) -> None:
        logger.error("Invalid message from peer %s: %s", _peer_label(peer), fault.reason)
        if self.metrics is not None:
            self.metrics.count_invalid(fault.kind)

    def _failed(self, error: BaseException, request: Request) -> list[bytes]:
        logger.error(
            "Handler %s raised on a request from %s (peer %s)",
            *(self._handler.name, request.address, request.peer or "-"),
            exc_info=error,
        )
        if self.metrics is not None:
            self.metrics.count_error(type(error).__name__)
        return protocol.error_reply(self._name, error)

    def _timed_out(self, request: Request) -> list[bytes]:
        logger.error(
            "Handler %s did not finish within %g ms on a request from %s (peer %s)",
            *(self._handler.name, self._timeout_ms, request.address, request.peer or "-"),
        )
        if self.metrics is not None:
            self.metrics.count_timeout()
        return protocol.timeout_reply(self._name, self._timeout_ms)

    def _cancelled(self, request: Request) -> list[bytes]:
        logger.warning(
            "Stopping: the handler's run on a request from %s (peer %s) was cancelled",
            request.address,
            request.peer or "-",
        )
        error = asyncio.CancelledError("the replica stopped before the handler finished")
        if self.metrics is not None:
            self.metrics.count_error(type(error).__name__)
        return protocol.error_reply(self._name, error)


class TaskFeeder:
    """Router mode with tasks: reads requests off the socket as they come, a task each.

    The reader runs from the socket's descriptor (``loop.add_reader``), on the
    synchronous shadow of the socket, and takes every request queued per wake-up (the
    busy path's batching, for tasks), up to ``max_inflight`` in flight; then it stops
    reading, and ZeroMQ's queues and TCP push back, until a task ends. Tasks send their
    replies on the same shadow socket. The descriptor is edge-triggered and a send can
    take in the notification of new requests, so after sends the reader looks again
    once the loop's turn ends. pyzmq's asyncio machinery is not used on this socket here.
    """

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        answer: AnswerAsync,
        max_inflight: int,
        metrics: ServerMetrics | None,
    ) -> None:
        self._sock = sock
        self._answer = answer
        self._max_inflight = max_inflight
        self._metrics = metrics
        self._loop = asyncio.get_running_loop()
        self._option = cast(Callable[[int], int], sock.getsockopt)
        self._check_scheduled = False
        self.fd = cast(int, sock.getsockopt(zmq.FD))
        self.tasks: set[asyncio.Task[None]] = set()

    def read(self) -> None:
        """Start a task for every request queued, while there is room for one."""
        self._check_scheduled = False
        sock, option, tasks = self._sock, self._option, self.tasks
        while len(tasks) < self._max_inflight and option(_EVENTS) & _POLLIN:
            frames = recv_now(sock)
            task = self._loop.create_task(self._answer_task(frames, time.perf_counter_ns()))
            tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        full = len(self.tasks) >= self._max_inflight
        self.tasks.discard(task)
        if full:
            self._look_again()  # room again: requests may be waiting unread

    def _look_again(self) -> None:
        if not self._check_scheduled:
            self._check_scheduled = True
            self._loop.call_soon(self.read)

    async def _answer_task(self, frames: list[bytes], started_ns: int) -> None:
        """One request in its own task: exactly one reply."""
        envelope, request = protocol.split_envelope(frames)
        reply = await self._answer(request, envelope[0])
        if self._metrics is not None:
            self._metrics.handled(started_ns)
        send_now(self._sock, envelope + reply)
        self._look_again()


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

    async def wait_stopped(self) -> None:
        await self._stop.wait()

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
    in this mode but signals, stop, metrics scrapes and CURVE's ZAP handler;
    they get a turn at least every BUSY_TURN_S.

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


def _peer_label(peer: bytes) -> str:
    return peer.hex() if peer else "-"


def stop_on_signals(server: Server, delay_s: float) -> None:
    """Stop ``server`` on SIGTERM or SIGINT: after ``delay_s`` the first time, at once the second.

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
            server.stop()
            return
        logger.info("%s: still answering for %g s, then stopping", signum.name, delay_s)
        delayed.append(loop.call_later(delay_s, server.stop))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


def serve(handler: Handler | str | None = None, *bind: str, **settings: Any) -> Server:
    """A server for ``handler`` bound to ``bind`` (default ``tcp://*:5555``), to use as
    ``async with serve(echo, "tcp://*:5555") as server: await server.serve_forever()``.

    ``settings`` are ``ServerConfig`` fields, e.g. ``threads=4`` or ``name="replica-1"``.
    """
    config = replace(ServerConfig(), **settings)
    if bind:
        config = replace(config, bind=tuple(bind))
    return Server(handler, config)


async def run(config: ServerConfig, handler: Handler | Prepared | str | None = None) -> None:
    """Serve until SIGTERM or SIGINT (after ``shutdown_delay_s``), then drain and exit."""
    async with Server(handler, config) as server:
        stop_on_signals(server, config.shutdown_delay_s)
        await server.serve_forever()


def handler_threads_running() -> int:
    """Handler threads still busy (a blocking handler a stop could not interrupt)."""
    return sum(
        thread.is_alive() and thread.name.startswith(HANDLER_THREAD_PREFIX)
        for thread in threading.enumerate()
    )
