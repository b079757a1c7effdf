"""The measured window of a load process, and the one result every load process prints.

Both load processes (``bench.loadgen`` for ``bench.run``'s rows, ``bench.peer_clients``
for ``bench.peers``'s) drive closed-loop callers for a warm-up, then open a
``Recorder``'s window for the measured time: every reply that arrives inside it
counts, with its latency; both sides' CPU time is read at the window's two ends.
The result is a ``LoadResult``, printed as one JSON object.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.machine import process_cpu_s
from reqrep.report import percentile


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load process measured in one window (one row, one caller count, one round)."""

    callers: int  # concurrent callers, each with one request outstanding
    client_objects: int  # client objects they used: 1 if they share one, else one each
    loop: str  # what drove the callers: asyncio, uvloop, gevent, threads or poll
    duration_s: float  # the measured window as it was, not as asked
    replies: int  # correct replies in the window
    errors: int  # wrong replies and failed calls in the window
    first_error: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    # CPU time (user + system) per correct reply, in microseconds: the server's
    # processes (every thread and child process) and the load process (every thread).
    server_cpu_us_per_reply: float
    load_cpu_us_per_reply: float
    # The same CPU times in percent of one core over the window, and the load
    # process's main thread alone (its event loop or poll loop).
    server_cpu_percent: float
    load_cpu_percent: float
    load_main_thread_cpu_percent: float


class Recorder:
    """The measured window: the replies that arrived in it, and CPU times at its two ends.

    ``open`` and ``close`` are called from the load process's main thread;
    ``record`` and ``error`` from any of its callers (threads included).
    """

    def __init__(
        self, server_pids: Sequence[int], callers: int, client_objects: int, loop: str
    ) -> None:
        self.server_pids = server_pids
        self.callers = callers
        self.client_objects = client_objects
        self.loop = loop
        self.start = self.end = math.inf
        self.stopped = False
        self.latencies_s: list[float] = []
        self.errors = 0
        self.first_error = ""
        self._lock = threading.Lock()
        self._cpu_s = (0.0, 0.0, 0.0)
        self._cpu_used_s = (0.0, 0.0, 0.0)

    def _cpu_now(self) -> tuple[float, float, float]:
        return time.process_time(), time.thread_time(), process_cpu_s(self.server_pids)

    def open(self) -> None:
        self._cpu_s = self._cpu_now()
        self.start = time.perf_counter()

    def close(self) -> None:
        self.end = time.perf_counter()
        now = self._cpu_now()
        self._cpu_used_s = (
            now[0] - self._cpu_s[0],
            now[1] - self._cpu_s[1],
            now[2] - self._cpu_s[2],
        )
        self.stopped = True

    def record(self, sent: float, received: float, correct: bool) -> None:
        """A reply received at ``received`` (perf_counter) to a request sent at ``sent``."""
        if self.start <= received < self.end:
            if correct:
                self.latencies_s.append(received - sent)
            else:
                self.error("wrong reply")

    def failed(self, error: Exception) -> None:
        """A call that raised ``error``: its caller stops."""
        self.error(f"{type(error).__name__}: {error}")

    def error(self, text: str) -> None:
        with self._lock:
            self.errors += 1
            if not self.first_error:
                self.first_error = text

    def result(self) -> LoadResult:
        duration_s = self.end - self.start if math.isfinite(self.end - self.start) else 0.0
        replies = len(self.latencies_s)
        ordered = sorted(self.latencies_s)  # percentile sorts again: linear on sorted values
        load_s, main_thread_s, server_s = self._cpu_used_s
        per_reply = 1e6 / replies if replies else 0.0
        share = 100 / duration_s if duration_s > 0 else 0.0
        return LoadResult(
            callers=self.callers,
            client_objects=self.client_objects,
            loop=self.loop,
            duration_s=duration_s,
            replies=replies,
            errors=self.errors,
            first_error=self.first_error,
            requests_per_s=replies / duration_s if duration_s > 0 else 0.0,
            p50_ms=1000 * percentile(ordered, 0.50),
            p99_ms=1000 * percentile(ordered, 0.99),
            server_cpu_us_per_reply=server_s * per_reply,
            load_cpu_us_per_reply=load_s * per_reply,
            server_cpu_percent=server_s * share,
            load_cpu_percent=load_s * share,
            load_main_thread_cpu_percent=main_thread_s * share,
        )
