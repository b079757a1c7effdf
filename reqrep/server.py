"""The asyncio ZeroMQ server: the REP side of the request/reply pattern, around a handler.

    async with Server(echo, ServerConfig(bind=("tcp://*:5555",))) as server:
        await server.serve_forever()

A replica validates each request's envelope (``reqrep.protocol``), hands a
well-formed one to its handler (``reqrep.handlers``) and sends exactly one reply
whatever the handler does: its body (``Server response``), ``Server error`` with
the exception's type and message when it raises (the traceback goes to the log),
``Server timeout`` when it runs past ``handler_timeout_ms``. ``Answerer`` is that
per-request boundary (``reqrep.answerer``); how requests are read in each mode is
``reqrep.readers``, the socket itself ``reqrep.replica_socket``.

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
from dataclasses import replace
from typing import Any, Final

import zmq
import zmq.asyncio

from reqrep import handlers
from reqrep.answerer import Answerer
from reqrep.config import ServerConfig
from reqrep.errors import ConfigError
from reqrep.frames import send_now
from reqrep.handlers import Handler, Prepared
from reqrep.metrics import ServerMetrics
from reqrep.metrics_http import MetricsEndpoint
from reqrep.readers import StoppableReceiver, TaskFeeder, answer_while_busy
from reqrep.replica_socket import SOCKET_TYPES, Bound, open_socket, watch_connections

logger = logging.getLogger(__name__)

# After the grace period, requests still in flight are cancelled and answered
# ``Server error``; their replies get this long to leave before the socket closes.
LAST_REPLIES_LINGER_MS: Final = 500
HANDLER_THREAD_PREFIX: Final = "reqrep-handler"


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
        """Close what start() opened, but the context. The socket first (``linger_ms`` for the
        replies queued): once nothing reads it, a request that comes is better refused at once,
        and the client's connection dropped so it resends elsewhere, than left unread while
        the metrics endpoint takes its time to stop."""
        if self._bound is not None:
            self._bound.close(linger_ms)
            self._bound = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()

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
