"""The REQ client: Lazy Pirate retries, and the demo's numbered requests.

``await Client(config, context).request(frames)`` returns the parsed reply,
or raises ``RequestTimeout`` after the last try: a request that is not
answered within ``timeout_ms`` is resent on a fresh socket (the ZeroMQ guide's
Lazy Pirate), ``tries`` times in all. It never hangs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import cast

import zmq
import zmq.asyncio

from reqrep import keys, protocol
from reqrep.config import ClientConfig, RequestPlan, heartbeat_options
from reqrep.report import ClientReport, Result

logger = logging.getLogger(__name__)


class Client:
    """An asynchronous REQ client with Lazy Pirate retries; one request at a time."""

    def __init__(self, config: ClientConfig, context: zmq.asyncio.Context) -> None:
        if config.tries < 1:
            raise ValueError("tries must be at least 1")
        if not config.endpoints:
            raise ValueError("at least one endpoint is needed")
        self.config = config
        self._context = context
        self._socket: zmq.asyncio.Socket | None = None
        self._timeout_s = config.timeout_ms / 1000
        self._curve = keys.ClientCurve.load(config.curve_server_key, config.curve_secret_key)
        self.last_tries = 0

    def _open(self) -> zmq.asyncio.Socket:
        sock = self._context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        if self._curve is not None:
            self._curve.apply(sock)
        for option, value in heartbeat_options(self.config.heartbeat_ms).items():
            sock.setsockopt(option, value)
        for endpoint in self.config.endpoints:
            sock.connect(endpoint)
        return sock

    @property
    def socket(self) -> zmq.asyncio.Socket | None:
        """The REQ socket in use: None before the first request and after a timeout."""
        return self._socket

    def close(self) -> None:
        """Close the socket, dropping anything unsent (linger 0)."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def request(self, frames: Sequence[bytes], label: str = "") -> protocol.Reply:
        """Send a request and wait for its reply, retrying on a fresh socket."""
        for attempt in range(1, self.config.tries + 1):
            self.last_tries = attempt
            if self._socket is None:
                self._socket = self._open()
            reply = await self._exchange(self._socket, frames)
            if reply is not None:
                return protocol.parse_reply(reply)
            # Lazy Pirate: a REQ socket that lost its reply is stuck; replace it.
            logger.warning(
                "No reply to request %s within %d ms (try %d of %d)",
                label,
                self.config.timeout_ms,
                attempt,
                self.config.tries,
            )
            self.close()
        raise protocol.RequestTimeout(self.config.endpoints, label, self.config.tries)

    async def _exchange(
        self, sock: zmq.asyncio.Socket, frames: Sequence[bytes]
    ) -> list[bytes] | None:
        """Send, then the reply's frames, or None if none came within the timeout.

        The timeout is one timer that cancels the receive: cheaper per request
        than ``poll()`` followed by a receive, or ``asyncio.wait_for``.
        """
        await sock.send_multipart(frames)
        receiving = cast("asyncio.Future[list[bytes]]", sock.recv_multipart())
        timer = asyncio.get_running_loop().call_later(self._timeout_s, receiving.cancel)
        try:
            return await receiving
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this request was cancelled, not timed out
            return None
        finally:
            timer.cancel()

    async def ping(self) -> protocol.Reply:
        return await self.request(protocol.encode_request("healthcheck", b"ping"), "ping")


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


async def run(
    config: ClientConfig, plan: RequestPlan, address: str, report_path: str | None = None
) -> int:
    """The demo client's whole job; returns the exit status (1 if a request went unanswered)."""
    context = zmq.asyncio.Context()
    progress = Progress()
    error: str | None = None
    try:
        async with Client(config, context) as client:
            await run_requests(client, address, plan, progress)
    except (protocol.ReqRepError, keys.CurveKeyError) as failure:
        error = str(failure)
        print(f"error: {error}", flush=True, file=sys.stderr)
    finally:
        context.term()
        if report_path is not None:
            report = ClientReport(address, progress.sent, tuple(progress.results), error)
            report.write(report_path)
    return 0 if error is None else 1


async def ping(config: ClientConfig) -> int:
    """One health request: 0 if answered in time, 1 if not (the reason on stderr)."""
    context = zmq.asyncio.Context()
    try:
        async with Client(config, context) as client:
            reply = await client.ping()
    except (protocol.ReqRepError, keys.CurveKeyError) as failure:
        print(f"error: {failure}", flush=True, file=sys.stderr)
        return 1
    finally:
        context.term()
    return 0 if reply.ok else 1
