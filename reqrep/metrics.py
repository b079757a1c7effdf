"""A replica's Prometheus metrics: tallies the server keeps, a registry that exposes them.

What each metric means, and PromQL for the usual questions: docs/metrics.md. The
HTTP endpoint that serves them is ``reqrep.metrics_http``.

No prometheus_client metric object is touched per request (their ``inc`` and
``observe`` take a lock each): the server keeps plain Python ints on its event
loop's thread, and a custom collector turns them into metrics when a scraper asks.
"""

from __future__ import annotations

import bisect
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import zmq
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from reqrep import protocol
from reqrep.events import REFUSAL_KINDS, Event, Refusal
from reqrep.version import __version__

NAMESPACE: Final = "reqrep"

# Handling-time buckets, seconds: an inline answer takes microseconds, a handler
# that waits on I/O tens of milliseconds.
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


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The figures of one scrape, read together on the event loop's thread."""

    served: int
    invalid: dict[str, int]
    errors: dict[str, int]  # handler exceptions, by type name
    timeouts: int
    buckets: tuple[int, ...]  # per bucket, not cumulative; the last one is +Inf
    handled_ns: int
    peers: int
    accepted: int
    refused: dict[str, int]  # refused handshakes, by kind (events.REFUSAL_KINDS)

    @property
    def handled(self) -> int:
        return sum(self.buckets)

    @property
    def in_flight(self) -> int:
        return max(0, self.served - self.handled)

    def by_status(self) -> dict[str, int]:
        """Requests answered, by the reply's status (those in flight are in none yet)."""
        invalid, errors = sum(self.invalid.values()), sum(self.errors.values())
        return {
            protocol.SERVER_RESPONSE_TEXT: self.handled - invalid - errors - self.timeouts,
            protocol.INVALID_MESSAGE_TEXT: invalid,
            protocol.SERVER_ERROR_TEXT: errors,
            protocol.SERVER_TIMEOUT_TEXT: self.timeouts,
        }


class ServerMetrics:
    """One replica's tallies, and the registry that exposes them.

    ``served`` returns the server's count of requests received so far (it counts
    them anyway). The server calls ``count_invalid``, ``count_error`` and
    ``count_timeout`` as those happen, wraps its inline answer function in
    ``timed`` (or calls ``handled`` with the start time), and passes on its socket's
    monitor events (``connection_event``). ``read`` is how the collector reads the
    figures: the HTTP endpoint (``reqrep.metrics_http``) points it at the loop's thread.
    """

    def __init__(self, served: Callable[[], int], replica: str) -> None:
        self._served = served
        self._invalid = dict.fromkeys(protocol.FAULT_KINDS, 0)  # the only label values
        self._errors: dict[str, int] = {}
        self._timeouts = 0
        self._bounds_ns = tuple(round(bound * 1e9) for bound in BUCKETS_S)
        # One slot per bucket (the last one +Inf), then the sum of nanoseconds.
        self._handled = [0] * (len(self._bounds_ns) + 2)
        self._peers: set[int] = set()
        self._accepted = 0
        self._refused = dict.fromkeys(REFUSAL_KINDS, 0)
        self.read: Callable[[], Snapshot] = self.read_now
        self.registry = _registry(self, replica)

    # -- counting (the event loop's thread) ----------------------------------

    def count_invalid(self, kind: str) -> None:
        """One invalid request, by its fault kind (one of protocol.FAULT_KINDS)."""
        self._invalid[kind] += 1

    def count_error(self, exception: str) -> None:
        """One request whose handler raised, by the exception's type name."""
        self._errors[exception] = self._errors.get(exception, 0) + 1

    def count_timeout(self) -> None:
        """One request whose handler ran out of time."""
        self._timeouts += 1

    def _record(self, elapsed_ns: int) -> None:
        """One handling time into the histogram: its bucket, and the sum."""
        self._handled[bisect.bisect_left(self._bounds_ns, elapsed_ns)] += 1
        self._handled[-1] += elapsed_ns

    def timed(self, answer: Answer) -> Answer:
        """``answer``, timing each call into the handling-time histogram."""
        clock = time.perf_counter_ns
        record = self._record

        def answer_timed(frames: list[bytes]) -> list[bytes]:
            started = clock()
            reply = answer(frames)
            record(clock() - started)
            return reply

        return answer_timed

    def handled(self, started_ns: int) -> None:
        """One request handled, from ``started_ns`` (``time.perf_counter_ns``) until now."""
        self._record(time.perf_counter_ns() - started_ns)

    def connection_event(self, event: Event, refused: Refusal | None = None) -> None:
        """A monitor event of the server's socket: a peer came or went, or was refused."""
        if event.kind == zmq.EVENT_ACCEPTED:
            self._peers.add(event.value)
            self._accepted += 1
        elif event.kind == zmq.EVENT_DISCONNECTED:
            self._peers.discard(event.value)
        if refused is not None:
            self._refused[refused.kind] += 1

    # -- reading --------------------------------------------------------------

    def read_now(self) -> Snapshot:
        """The current figures, read on the calling thread."""
        tallies = list(self._handled)
        return Snapshot(
            served=self._served(),
            invalid=dict(self._invalid),
            errors=dict(self._errors),
            timeouts=self._timeouts,
            buckets=tuple(tallies[:-1]),
            handled_ns=tallies[-1],
            peers=len(self._peers),
            accepted=self._accepted,
            refused=dict(self._refused),
        )


def _registry(metrics: ServerMetrics, replica: str) -> CollectorRegistry:
    """A registry with the replica's metrics and prometheus_client's process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Info(
        f"{NAMESPACE}_build", "Version of this replica and of its libraries", registry=registry
    ).info(
        {
            "version": __version__,
            "python": platform.python_version(),
            "pyzmq": zmq.pyzmq_version(),
            "libzmq": zmq.zmq_version(),
            "replica": replica,
        }
    )
    registry.register(_Collector(metrics))
    return registry


class _Collector:
    """prometheus_client's custom-collector protocol over a ``ServerMetrics``."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        snap = self._metrics.read()
        requests = CounterMetricFamily(
            f"{NAMESPACE}_requests",
            "Requests answered, by the status of the reply",
            labels=["status"],
        )
        for status, count in snap.by_status().items():
            requests.add_metric([status], count)
        yield requests
        reasons = CounterMetricFamily(
            f"{NAMESPACE}_invalid_requests", "Invalid requests, by fault kind", labels=["reason"]
        )
        for kind, count in snap.invalid.items():
            reasons.add_metric([kind], count)
        yield reasons
        errors = CounterMetricFamily(
            f"{NAMESPACE}_handler_errors",
            "Requests whose handler raised, by the exception's type",
            labels=["exception"],
        )
        for exception, count in sorted(snap.errors.items()):
            errors.add_metric([exception], count)
        yield errors
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
            value=snap.in_flight,
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
        refused = CounterMetricFamily(
            f"{NAMESPACE}_refused_handshakes",
            "Client handshakes refused (CURVE keys, ZAP, security mismatch), by kind",
            labels=["kind"],
        )
        for kind, count in snap.refused.items():
            refused.add_metric([kind], count)
        yield refused


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return buckets
