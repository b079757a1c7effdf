"""Prometheus metrics of a server replica, served over HTTP by prometheus_client.

On with ``server.py --metrics-port PORT`` (env ``SERVER_METRICS_PORT``; 0 picks
a free port, logged); off by default. The endpoint is prometheus_client's own
HTTP server (a daemon thread), at ``http://HOST:PORT/metrics``. What each
metric means, and PromQL for the usual questions: docs/metrics.md.

    reqrep_requests_total{status}            requests answered, by the reply's status:
                                             "Server response" or "Invalid message"
    reqrep_invalid_requests_total{reason}    invalid requests by fault kind (protocol.FAULT_KINDS)
    reqrep_request_handling_seconds          histogram: from the request's frames in hand to
                                             its reply ready to send (with --work-ms, the work
                                             included); ZeroMQ's queues and the wire are not
    reqrep_requests_in_flight                requests being handled right now
    reqrep_connected_peers                   open ZeroMQ connections (socket monitor events)
    reqrep_peer_connections_total            connections accepted since start
    reqrep_build_info{version,python,pyzmq,libzmq,replica}   always 1
    process_*, python_*                      prometheus_client's process and runtime metrics

How it stays off the hot path (counting must cost at most 5% of req/s):

- No prometheus_client metric object is touched per request: their ``inc`` and
  ``observe`` take a lock each (about 1 us apiece), against the 16-20 us of
  Python the server spends on a request. The per-request figures are plain
  Python ints owned by the event loop's thread, read by a custom collector
  (prometheus_client's Collector API) when a scraper asks.
- The status counts cost nothing per request: the server already counts the
  requests it answers (``Server.requests_served``); invalid requests, rare and
  logged anyway, are counted by fault kind, and "Server response" is the
  difference.
- Handling time is the one per-request cost, and only with metrics on: two
  ``time.perf_counter_ns`` calls, a ``bisect`` into the bucket bounds and two
  list increments (``ServerMetrics.timed`` wraps the busy path's answer
  function; with metrics off the server runs the unwrapped one).
- Consistency: a scrape comes in on the HTTP server's thread, but the figures
  are read on the event loop's thread (``call_soon_threadsafe``), between two
  requests, so every scrape is one coherent snapshot and counters never step
  back. The busy path gives the event loop a turn at least every 5 ms
  (``reqrep.server.BUSY_TURN_S``), so a scrape waits at most that long; a
  loop that does not answer within ``SNAPSHOT_TIMEOUT_S`` fails the scrape
  (the target shows down), which is the truth about that replica.
- Connected peers come from the ROUTER socket's monitor (ZeroMQ's
  ACCEPTED/DISCONNECTED events), read by a task in the server's event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import logging
import platform
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from wsgiref.simple_server import WSGIServer

import zmq
import zmq.asyncio
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from zmq.utils.monitor import parse_monitor_message

import reqrep
from reqrep import protocol

logger = logging.getLogger(__name__)

NAMESPACE: Final = "reqrep"
LISTEN_ADDRESS: Final = "0.0.0.0"
SNAPSHOT_TIMEOUT_S: Final = 2.0


# Handling-time buckets, seconds: an inline answer takes microseconds, one
# with --work-ms tens of milliseconds.
BUCKETS_S: Final = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

Answer = Callable[[list[bytes]], list[bytes]]


class MetricsError(RuntimeError):
    """The metrics endpoint could not be started (e.g. its port is taken)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The figures of one scrape, read together on the event loop's thread."""

    served: int
    invalid: dict[str, int]
    buckets: tuple[int, ...]  # per bucket, not cumulative; the last one is +Inf
    handled_ns: int
    peers: int
    accepted: int

    @property
    def handled(self) -> int:
        return sum(self.buckets)


class ServerMetrics:
    """One replica's metrics: tallies kept by the server, a registry that exposes them.

    ``served`` returns the server's count of requests answered so far (it
    counts them anyway); the server calls ``count_invalid`` for each invalid
    request, wraps its busy-path answer function in ``timed`` (or calls
    ``handled`` with the start time), and runs ``watch_peers`` as a task.
    """

    def __init__(self, served: Callable[[], int], replica: str) -> None:
        self._served = served
        self._invalid = dict.fromkeys(protocol.FAULT_KINDS, 0)  # the only label values
        self._bounds_ns = tuple(round(bound * 1e9) for bound in BUCKETS_S)
        # One slot per bucket (the last one +Inf), then the sum of nanoseconds.
        self._handled = [0] * (len(self._bounds_ns) + 2)
        self._peers: set[int] = set()
        self._accepted = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self._endpoint = Endpoint(self.registry, self._read)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        Info(
            f"{NAMESPACE}_build",
            "Version of this replica and of its libraries",
            registry=self.registry,
        ).info(
            {
                "version": reqrep.__version__,
                "python": platform.python_version(),
                "pyzmq": zmq.pyzmq_version(),
                "libzmq": zmq.zmq_version(),
                "replica": replica,
            }
        )
        self.registry.register(_Collector(self))

    # -- counting (the event loop's thread) ----------------------------------

    def count_invalid(self, kind: str) -> None:
        """One invalid request, by its fault kind (one of protocol.FAULT_KINDS)."""
        self._invalid[kind] += 1

    def timed(self, answer: Answer) -> Answer:
        """``answer``, timing each call into the handling-time histogram."""
        tallies = self._handled
        bounds = self._bounds_ns
        total = len(tallies) - 1
        clock = time.perf_counter_ns
        bucket = bisect.bisect_left

        def answer_timed(frames: list[bytes]) -> list[bytes]:
            started = clock()
            reply = answer(frames)
            elapsed = clock() - started
            tallies[bucket(bounds, elapsed)] += 1
            tallies[total] += elapsed
            return reply

        return answer_timed

    def handled(self, started_ns: int) -> None:
        """One request handled, from ``started_ns`` (``time.perf_counter_ns``) until now."""
        elapsed = time.perf_counter_ns() - started_ns
        self._handled[bisect.bisect_left(self._bounds_ns, elapsed)] += 1
        self._handled[-1] += elapsed

    async def watch_peers(self, sock: zmq.asyncio.Socket) -> None:
        """Follow ``sock``'s connections through its monitor until cancelled."""
        monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())
                if event["event"] == zmq.EVENT_ACCEPTED:
                    self._peers.add(event["value"])
                    self._accepted += 1
                elif event["event"] == zmq.EVENT_DISCONNECTED:
                    self._peers.discard(event["value"])
        finally:
            if not sock.closed:
                sock.disable_monitor()
            monitor.close(linger=0)

    # -- exposing ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serving(self, sock: zmq.asyncio.Socket, port: int) -> AsyncIterator[None]:
        """While inside: /metrics served on ``port``, ``sock``'s connections followed."""
        self.start_http(port, asyncio.get_running_loop())
        peers = asyncio.create_task(self.watch_peers(sock))
        try:
            yield
        finally:
            peers.cancel()  # closes the monitor socket, before the socket and context end
            await asyncio.gather(peers, return_exceptions=True)
            self.stop_http()

    @property
    def port(self) -> int | None:
        """The endpoint's port once it serves, else None."""
        return self._endpoint.port

    def start_http(self, port: int, loop: asyncio.AbstractEventLoop) -> int:
        """Serve /metrics on ``port`` (0: any free one); scrapes read on ``loop``'s thread."""
        return self._endpoint.start(port, loop)

    def stop_http(self) -> None:
        self._endpoint.stop()

    def snapshot(self) -> Snapshot:
        """The current figures, read on the event loop's thread when one serves them."""
        return self._endpoint.read()

    def _read(self) -> Snapshot:
        tallies = list(self._handled)
        return Snapshot(
            served=self._served(),
            invalid=dict(self._invalid),
            buckets=tuple(tallies[:-1]),
            handled_ns=tallies[-1],
            peers=len(self._peers),
            accepted=self._accepted,
        )


class Endpoint:
    """prometheus_client's HTTP server for one registry, whose figures are read on the loop.

    A scrape comes in on the HTTP server's thread; ``read`` hands the reading to
    the event loop's thread and waits for it, so a scrape sees one coherent snapshot.
    """

    def __init__(self, registry: CollectorRegistry, read_now: Callable[[], Snapshot]) -> None:
        self._registry = registry
        self._read_now = read_now
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._httpd: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self, port: int, loop: asyncio.AbstractEventLoop) -> int:
        """Serve /metrics on ``port`` (0: any free one) and return the port.

        Call it on the thread of ``loop``, the loop that counts: scrapes read there.
        """
        self._loop = loop
        self._loop_thread = threading.get_ident()
        try:
            self._httpd, self._http_thread = start_http_server(
                port, addr=LISTEN_ADDRESS, registry=self._registry
            )
        except OSError as error:
            self._loop = None
            raise MetricsError(f"port {port}: {error}") from error
        self.port = int(self._httpd.server_port)
        logger.info("Metrics on http://%s:%d/metrics", LISTEN_ADDRESS, self.port)
        return self.port

    def stop(self) -> None:
        """Stop the endpoint; later reads happen on the caller's thread."""
        self._loop = None
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._http_thread is not None:
            self._http_thread.join(timeout=SNAPSHOT_TIMEOUT_S)
            self._http_thread = None

    def read(self) -> Snapshot:
        """The current figures, read on the event loop's thread when one serves them."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            return self._read_now()
        result: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def read() -> None:
            if result.set_running_or_notify_cancel():
                result.set_result(self._read_now())

        try:
            loop.call_soon_threadsafe(read)
        except RuntimeError:  # the loop is closed: nothing counts any more
            return self._read_now()
        try:
            return result.result(timeout=SNAPSHOT_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            result.cancel()
            raise


class _Collector:
    """prometheus_client's custom-collector protocol over a ``ServerMetrics``."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        snap = self._metrics.snapshot()
        invalid = sum(snap.invalid.values())
        requests = CounterMetricFamily(
            f"{NAMESPACE}_requests",
            "Requests answered, by the status of the reply",
            labels=["status"],
        )
        requests.add_metric([protocol.SERVER_RESPONSE_TEXT], snap.served - invalid)
        requests.add_metric([protocol.INVALID_MESSAGE_TEXT], invalid)
        yield requests
        reasons = CounterMetricFamily(
            f"{NAMESPACE}_invalid_requests",
            "Invalid requests, by fault kind",
            labels=["reason"],
        )
        for cls, count in snap.invalid.items():
            reasons.add_metric([cls], count)
        yield reasons
        histogram = HistogramMetricFamily(
            f"{NAMESPACE}_request_handling_seconds",
            "Time from a request's frames in hand to its reply ready to send",
            labels=[],
        )
        histogram.add_metric([], _cumulative(BUCKETS_S, snap.buckets), snap.handled_ns / 1e9)
        yield histogram
        yield GaugeMetricFamily(
            f"{NAMESPACE}_requests_in_flight",
            "Requests being handled: received, reply not yet ready",
            value=max(0, snap.served - snap.handled),
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_connected_peers",
            "Open ZeroMQ connections to this replica (socket monitor events)",
            value=snap.peers,
        )
        yield CounterMetricFamily(
            f"{NAMESPACE}_peer_connections",
            "ZeroMQ connections accepted since the replica started",
            value=snap.accepted,
        )


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return buckets
