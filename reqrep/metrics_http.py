"""The HTTP endpoint of a replica's metrics: prometheus_client's own server, in a thread.

``/metrics`` on the port of ``--metrics-port`` (0: any free port, logged). A scrape
comes in on the HTTP server's thread, but the figures belong to the event loop's
thread: while the endpoint serves, ``ServerMetrics.read`` hands each reading to the
loop (``call_soon_threadsafe``) and waits for it, so every scrape is one coherent
snapshot and counters never step back. A loop that does not answer within
``SNAPSHOT_TIMEOUT_S`` fails the scrape (the target shows down), which is the
truth about that replica.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from reqrep.errors import MetricsError
from reqrep.metrics import ServerMetrics, Snapshot

logger = logging.getLogger(__name__)

LISTEN_ADDRESS: Final = "0.0.0.0"
SNAPSHOT_TIMEOUT_S: Final = 2.0


class MetricsEndpoint:
    """``/metrics`` of one ``ServerMetrics``, served while started."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self, port: int, loop: asyncio.AbstractEventLoop) -> int:
        """Serve /metrics on ``port`` (0: any free one) and return the port.

        Call it on the thread of ``loop``, the loop that counts: scrapes read there.
        """
        try:
            self._httpd, self._thread = start_http_server(
                port, addr=LISTEN_ADDRESS, registry=self._metrics.registry
            )
        except OSError as error:
            raise MetricsError(f"Cannot serve metrics on port {port}: {error.strerror}") from error
        self._metrics.read = _on_loop(loop, self._metrics.read_now)
        self.port = int(self._httpd.server_port)
        logger.info("Metrics on http://%s:%d/metrics", LISTEN_ADDRESS, self.port)
        return self.port

    def stop(self) -> None:
        """Stop serving; later reads happen on the caller's thread."""
        self._metrics.read = self._metrics.read_now
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=SNAPSHOT_TIMEOUT_S)
            self._thread = None


def _on_loop(
    loop: asyncio.AbstractEventLoop, read_now: Callable[[], Snapshot]
) -> Callable[[], Snapshot]:
    """``read_now``, run on ``loop``'s thread when called from another one."""
    loop_thread = threading.get_ident()

    def read() -> Snapshot:
        if threading.get_ident() == loop_thread:
            return read_now()
        result: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def read_there() -> None:
            if result.set_running_or_notify_cancel():
                result.set_result(read_now())

        try:
            loop.call_soon_threadsafe(read_there)
        except RuntimeError:  # the loop is closed: nothing counts any more
            return read_now()
        try:
            return result.result(timeout=SNAPSHOT_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            result.cancel()
            raise

    return read
