"""The multiplexing client: many requests in flight on one object, over DEALER sockets.

    async with Channel(ChannelConfig(endpoints=("tcp://localhost:5555",))) as channel:
        bodies = await asyncio.gather(*(channel.call(b"x") for _ in range(100)))

Any number of tasks may await requests on one channel at once. Each request gets an
id; it goes out as ``[id, "", address, data]`` on one of the channel's DEALER sockets,
the server echoes the envelope (``reqrep.protocol.split_envelope``: ROUTER adds its
routing id in front, the id and the delimiter are the client's), and the reply comes
back as ``[id, "", status, replica, body]`` and is matched to the request waiting for
it. The wire format is unchanged: a REQ socket with ``ZMQ_REQ_CORRELATE`` does the same.

- **Connections.** ``connections`` DEALER sockets, each one TCP connection; through
  nginx each lands on one replica, so N connections spread the load over up to N
  replicas (they are made one after another, so that nginx's least_conn counts each
  before it places the next). A request takes the connection with the fewest requests
  pending, among those that are up.
- **Timeouts and retries.** A try lasts ``timeout_ms``; an idempotent request (the
  default, as the Lazy Pirate client assumes) is then sent again with the same id, up
  to ``tries`` tries, and a late reply to an earlier try is dropped. When a connection
  is lost (a replica died, nginx restarted) its pending idempotent requests are sent
  again at once, within the time their try has left. After the last try the request
  raises ``RequestTimeout`` (or ``ConnectFailed``/``HandshakeFailed``) saying why.
- **Nothing left behind.** A request that completes, times out or is cancelled is
  forgotten at once: its entry, and any late reply to it.
- **Reading.** Each socket has one reader on the event loop: once woken it drains
  every queued reply (the synchronous receive, while ``ZMQ_EVENTS`` shows more), so
  a busy channel pays one wake-up per batch, not per reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, cast

import zmq
import zmq.asyncio

from reqrep import endpoints, keys, protocol
from reqrep.client import client_socket
from reqrep.config import ClientConfig, setting
from reqrep.errors import ChannelClosed, MalformedReply, RequestTimeout
from reqrep.events import SILENT, ConnectionEvents, explain
from reqrep.frames import recv_now, send_or_again

logger = logging.getLogger(__name__)

_POLLIN: Final = int(zmq.POLLIN)
_POLLOUT: Final = int(zmq.POLLOUT)
_EVENTS: Final = int(zmq.EVENTS)
_DELIMITER: Final = b""
# A reply on a DEALER: the request id, the delimiter, then the three reply frames.
_REPLY_FRAMES: Final = 2 + protocol.REPLY_FRAMES
# Tries end on a sweep of every request in flight, each tick: a tenth of the timeout.
TICK_FRACTION: Final = 0.1
# Connections are made one after another: the next one once this one is up, or after this.
CONNECT_TURN_S: Final = 0.2
MIN_TICK_S: Final = 0.001


@dataclass(frozen=True, slots=True)
class ChannelConfig(ClientConfig):
    """A channel: a client's settings, and how many connections it keeps."""

    # DEALER sockets, each one TCP connection (through nginx: one replica each).
    connections: int = setting(1, env="CLIENT_CONNECTIONS")


class _Call:
    """One request in flight: its id, its frames, the future its caller awaits, its try."""

    __slots__ = (
        "deadline",
        "events_from",
        "events_on",
        "future",
        "idempotent",
        "key",
        "label",
        "message",
        "route",
        "timeout_s",
        "tries",
    )

    def __init__(
        self,
        key: bytes,
        message: list[bytes],
        future: asyncio.Future[list[bytes]],
        timeout_s: float,
        idempotent: bool,
        label: str,
    ) -> None:
        self.key = key
        self.message = message
        self.future = future
        self.timeout_s = timeout_s
        self.idempotent = idempotent
        self.label = label
        self.tries = 0
        self.route: _Connection | None = None
        self.deadline = 0.0
        self.events_from = 0  # what ``events_on`` had seen when the request first went there
        self.events_on: _Connection | None = None


class _Connection:
    """One DEALER socket of a channel: its reader, its monitor, what it has pending.

    A request that the socket cannot take now (at its high-water mark, or, with several
    endpoints and ``ZMQ_IMMEDIATE``, with no connection up) waits in ``outbox`` until it
    can, where one whose caller has given up is simply dropped. A lost connection's
    pending requests wait there too, and go again once it is back.
    """

    def __init__(self, channel: Channel, owner: zmq.asyncio.Socket) -> None:
        self.channel = channel
        self.owner = owner
        # The synchronous handle on the same socket: every send and receive goes through it,
        # and the reader below drives it from the socket's file descriptor.
        self.socket: zmq.Socket[bytes] = zmq.Socket.shadow(owner.underlying)
        self.events = ConnectionEvents(owner)
        self.pending = 0
        self.outbox: deque[_Call] = deque()
        self.up = asyncio.Event()  # set while the connection is handshaken
        self._check_scheduled = False
        self._loop = asyncio.get_running_loop()
        self._fd = cast(int, self.socket.getsockopt(zmq.FD))
        # ZMQ_EVENTS is an int; pyzmq's annotation of getsockopt allows bytes too.
        self._option = cast(Callable[[int], int], self.socket.getsockopt)
        self._loop.add_reader(self._fd, self.read)
        self._watcher = asyncio.create_task(self._watch())

    def send(self, call: _Call) -> None:
        """Put ``call`` on this socket, or in the outbox until the connection is up."""
        call.route = self
        if call.events_on is not self:  # its story here starts now, and goes on over its tries
            call.events_on = self
            call.events_from = self.events.total
        self.pending += 1
        if self.outbox:
            self.outbox.append(call)
        else:
            try:
                send_or_again(self.socket, call.message)
            except zmq.Again:
                self.outbox.append(call)
        # A send on the socket may take in the notification the reader waits for (the
        # descriptor is edge-triggered): look for replies once this turn of the loop ends.
        if not self._check_scheduled:
            self._check_scheduled = True
            self._loop.call_soon(self.read)

    def read(self) -> None:
        """Hand every reply queued on the socket to its caller, send what waits in the
        outbox if it can go now, then wait for the next edge."""
        self._check_scheduled = False
        sock = self.socket
        option = self._option
        calls = self.channel.calls
        while (events := option(_EVENTS)) & _POLLIN:
            frames = recv_now(sock)
            call = calls.get(frames[0])
            if call is None or call.future.done():
                continue  # a late reply to a try already answered, or to a request gone
            if len(frames) != _REPLY_FRAMES or frames[1]:
                call.future.set_exception(MalformedReply(f"not a reply on a DEALER: {frames!r}"))
            else:
                call.future.set_result(frames)
        if self.outbox and events & _POLLOUT:
            self.flush()

    def flush(self) -> None:
        """Send what waits in the outbox, as far as the socket takes it; drop what is over."""
        outbox = self.outbox
        while outbox:
            call = outbox[0]
            if call.route is self and not call.future.done():
                try:
                    send_or_again(self.socket, call.message)
                except zmq.Again:
                    return
            outbox.popleft()

    def settle(self) -> None:
        """Let the socket take in what its I/O thread has told it (a lost connection's pipe
        is then gone, and what is sent next waits for the new one)."""
        self._option(_EVENTS)

    def hold(self, calls: list[_Call]) -> None:
        """Send ``calls`` again once the connection is up: a lost connection's requests wait
        in the outbox, since the socket may still take messages into the dying pipe."""
        queued = {id(call) for call in self.outbox}
        self.outbox.extend(call for call in calls if id(call) not in queued)

    def prune(self) -> None:
        """Drop from the outbox the requests that are over, or that went another way."""
        if self.outbox:
            self.outbox = deque(c for c in self.outbox if c.route is self and not c.future.done())

    async def _watch(self) -> None:
        """Follow the monitor: a lost connection sends its pending requests again."""
        while True:
            event = await self.events.wait(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
            if event.kind == zmq.EVENT_DISCONNECTED:
                logger.debug("Connection lost; resending what it had pending")
                self.up.clear()
                self.channel.resend_from(self)
            else:
                self.up.set()
                self.read()  # connected: what waits in the outbox can go

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        self._watcher.cancel()
        self.events.close()
        self.owner.close(linger=0)


class Channel:
    """Many requests in flight on one client: DEALER sockets, replies matched by id.

    ``context``: a ZeroMQ asyncio context to use (the caller's to terminate); by
    default the channel makes its own and ends it on ``close()``. Endpoints and CURVE
    keys are checked at once (``EndpointError``, ``CurveKeyError``); the sockets open
    on entering ``async with`` (or ``open()``), inside the running event loop.
    """

    def __init__(
        self, config: ChannelConfig | None = None, context: zmq.asyncio.Context | None = None
    ) -> None:
        config = ChannelConfig() if config is None else config
        if config.tries < 1 or config.connections < 1:
            raise ValueError("tries and connections must be at least 1")
        endpoints.check_all(config.endpoints)
        self._curve = keys.ClientCurve.load(config.curve_server_key, config.curve_secret_key)
        self.config = config
        self._own_context = context is None
        self._context = context
        self._timeout_s = config.timeout_ms / 1000
        self._ids = itertools.count(1)
        self._connections: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._tick_s = 0.0
        # Every request in flight, by id.
        self.calls: dict[bytes, _Call] = {}

    # -- opening and closing -------------------------------------------------------

    async def __aenter__(self) -> Channel:
        self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Open the connections (in the running event loop); requests may then be sent."""
        if self._connections:
            return
        self._loop = asyncio.get_running_loop()
        if self._context is None:
            self._context = zmq.asyncio.Context()
        self._connections = [
            _Connection(self, self._socket()) for _ in range(self.config.connections)
        ]
        self._connecting = asyncio.create_task(self._connect_in_turn())

    async def _connect_in_turn(self) -> None:
        """Connect the sockets one after another, each once the one before is up (or after
        CONNECT_TURN_S): nginx's least_conn then counts each connection before it places
        the next, where connections made at once could land two on one replica."""
        for connection in self._connections:
            for endpoint in self.config.endpoints:
                connection.owner.connect(endpoint)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connection.up.wait(), CONNECT_TURN_S)

    def _socket(self) -> zmq.asyncio.Socket:
        """A DEALER socket, connected by ``_connect_in_turn``."""
        assert self._context is not None
        return client_socket(self._context, zmq.DEALER, self.config, self._curve)

    def close(self) -> None:
        """Close the connections; requests still pending raise ``ChannelClosed``."""
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        for call in list(self.calls.values()):
            if not call.future.done():
                call.future.set_exception(ChannelClosed("the channel was closed"))
        for connection in self._connections:
            connection.close()
        self._connections = []
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._own_context and self._context is not None:
            self._context.term()
            self._context = None

    @property
    def pending(self) -> int:
        """Requests in flight now."""
        return len(self.calls)

    async def ready(self) -> None:
        """Wait until every connection is up (handshaken with a server). Not needed before
        sending (requests wait for a connection), but it lets a caller start once the load
        can spread over all of them; bound it with ``asyncio.timeout``."""
        await asyncio.gather(*(connection.up.wait() for connection in self._connections))

    # -- requests --------------------------------------------------------------------

    async def request(
        self,
        frames: Sequence[bytes],
        *,
        label: str = "",
        timeout_ms: float | None = None,
        idempotent: bool = True,
    ) -> protocol.Reply:
        """Send a request's frames and return its reply, whatever its status.

        ``timeout_ms`` replaces the channel's time per try for this request; a request
        that is not ``idempotent`` is sent once and never again (a timeout, or a lost
        connection, raises at once).
        """
        loop = self._loop
        if loop is None or not self._connections:
            raise ChannelClosed("the channel is not open: use `async with` or open()")
        key = next(self._ids).to_bytes(8, "little")
        timeout_s = self._timeout_s if timeout_ms is None else timeout_ms / 1000
        call = _Call(
            key, [key, _DELIMITER, *frames], loop.create_future(), timeout_s, idempotent, label
        )
        self.calls[key] = call
        try:
            self._send(call)
            reply = await call.future
        finally:
            self._forget(call)
        return protocol.parse_reply(reply[2:])

    async def call(
        self,
        data: bytes,
        *,
        address: str | None = None,
        timeout_ms: float | None = None,
        idempotent: bool = True,
    ) -> bytes:
        """Send ``data`` (from ``address``, by default ``config.address``) and return the
        reply's body; a reply other than ``Server response`` raises its ``ReplyError``."""
        frames = protocol.encode_request(address or self.config.address, data)
        reply = await self.request(frames, timeout_ms=timeout_ms, idempotent=idempotent)
        return protocol.body_of(reply)

    def _pick(self) -> _Connection:
        """The connection with the fewest requests pending, among those up if any is."""
        connections = self._connections
        if len(connections) == 1:
            return connections[0]
        up = [c for c in connections if c.events.up] or connections
        return min(up, key=_pending)

    def _send(self, call: _Call) -> None:
        """One try, on the least busy connection, until ``deadline`` (see ``_sweep``)."""
        assert self._loop is not None
        call.tries += 1
        call.deadline = self._loop.time() + call.timeout_s
        self._watch_deadline(call.timeout_s)
        self._pick().send(call)

    def _watch_deadline(self, timeout_s: float) -> None:
        """Have ``_sweep`` run often enough for a try of ``timeout_s``."""
        tick_s = max(MIN_TICK_S, timeout_s * TICK_FRACTION)
        if self._sweeper is not None and tick_s >= self._tick_s:
            return
        assert self._loop is not None
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._tick_s = tick_s
        self._sweeper = self._loop.call_later(tick_s, self._sweep)

    def _sweep(self) -> None:
        """Every tick while requests are in flight: the tries whose time is up are sent again
        or fail. One timer for the channel, not one per request: a try ends between its
        deadline and one tick (a tenth of its timeout) later."""
        assert self._loop is not None
        self._sweeper = None
        now = self._loop.time()
        for call in [c for c in self.calls.values() if c.deadline <= now]:
            self._expire(call)
        for connection in self._connections:
            connection.prune()
        if self.calls:
            tick_s = self._tick_s
            self._sweeper = self._loop.call_later(tick_s, self._sweep)

    def _leave_route(self, call: _Call) -> None:
        if call.route is not None:
            call.route.pending -= 1
            call.route = None

    def _forget(self, call: _Call) -> None:
        """The request is over (answered, failed, timed out or cancelled): drop all of it."""
        self.calls.pop(call.key, None)
        self._leave_route(call)

    def _expire(self, call: _Call) -> None:
        """A try's time is up: send it again, or fail it with why."""
        if call.future.done():
            return
        route = call.route
        self._leave_route(call)
        if call.idempotent and call.tries < self.config.tries:
            logger.debug("No reply to %s within %g s; trying again", call.label, call.timeout_s)
            self._send(call)
            return
        call.future.set_exception(self._timeout(call, route))

    def _timeout(self, call: _Call, route: _Connection | None) -> RequestTimeout:
        """Why no reply came, from what the connection's monitor saw over the request's tries."""
        if route is None:
            failure, reason = RequestTimeout, "no connection to send it on"
        else:
            route.events.drain()
            seen = route.events.since(call.events_from)
            if route.events.up and not seen:
                failure, reason = RequestTimeout, SILENT
            else:
                curve = self._curve is not None
                failure, reason = explain([seen], self.config.endpoints, curve)
        return failure(self.config.endpoints, call.label, call.tries, reason)

    def resend_from(self, lost: _Connection) -> None:
        """A connection was lost: its idempotent requests go again as soon as it is back
        (within the time their try has left); the others fail, since they may or may not
        have been handled."""
        lost.settle()
        calls = [c for c in self.calls.values() if c.route is lost and not c.future.done()]
        lost.hold([call for call in calls if call.idempotent])
        for call in calls:
            if not call.idempotent:
                self._leave_route(call)
                call.future.set_exception(
                    RequestTimeout(
                        self.config.endpoints,
                        call.label,
                        call.tries,
                        "the connection was lost before the reply; not sent again (not idempotent)",
                    )
                )


def _pending(connection: _Connection) -> int:
    return connection.pending
