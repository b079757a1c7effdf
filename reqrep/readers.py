"""How a replica reads its requests, in each way it serves them.

- ``StoppableReceiver``: the next message, awaited on the asyncio socket, until stop (REP,
  and router mode inline between bursts);
- ``answer_while_busy``: router mode inline under load: answer synchronously while requests
  keep coming, giving the event loop a turn every BUSY_TURN_S;
- ``TaskFeeder``: router mode with tasks: every queued request a task, up to max_inflight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final, cast

import zmq
import zmq.asyncio

from reqrep import protocol
from reqrep.answerer import AnswerAsync
from reqrep.frames import recv_now, recv_wait, send_now
from reqrep.metrics import ServerMetrics

_POLLIN: Final = int(zmq.POLLIN)
_EVENTS: Final = int(zmq.EVENTS)
# Router mode inline, under load: how long to wait for the next request before
# waiting in the event loop again, and how often the event loop gets a turn
# while requests keep coming.
BUSY_WAIT_MS: Final = 1
BUSY_TURN_S: Final = 0.005


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
