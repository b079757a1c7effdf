"""What ZeroMQ tells a socket's owner about its connections, and why no reply came.

A ZeroMQ socket never says "refused" or "wrong key" in its return values: it
reconnects and retries by itself, and a request just goes unanswered. Its
*monitor* does say (``zmq_socket_monitor``): connected, closed, retried,
handshake failed and why. ``ConnectionEvents`` keeps a socket's events, read
without blocking when they are wanted; ``explain`` turns what a client saw into
the reason its request went unanswered, and the exception to raise for it.

    refused or unreachable    connect delayed, closed, retried; never connected
    host does not resolve     connect retried only (libzmq resolves, fails, retries)
    CURVE on one side only    handshake failed (protocol: mechanism mismatch), or closed
    wrong server key          handshake failed (no detail: the server said nothing)
    proxy with no server      the same: nginx closes the connection during the handshake
    client key not authorized handshake failed (auth, with the ZAP status code)
    message over the limit    handshaken, request sent, then disconnected by the server
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from reqrep.errors import ConnectFailed, HandshakeFailed, RequestTimeout

WATCHED: Final = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_CONNECT_DELAYED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_CLOSED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
# What a server's monitor follows: its peers (for the metrics) and refused handshakes.
SERVER_WATCHED: Final = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
# A refused handshake, by kind (a metrics label): one of these.
REFUSAL_KINDS: Final = ("auth", "key", "mechanism", "protocol")


# A connection that was up, over which no reply came.
SILENT: Final = "connected, but no reply came in time (the server may be busy or gone)"


@dataclass(frozen=True, slots=True)
class Event:
    """One monitor event: its kind (``zmq.EVENT_*``) and value (an fd, errno or code)."""

    kind: int
    value: int


def parse(message: list[bytes]) -> Event:
    """One monitor message as an ``Event``."""
    parsed = parse_monitor_message(message)
    return Event(int(parsed["event"]), int(parsed["value"]))


class ConnectionEvents:
    """The monitor of one socket: its events kept (the last KEEP), read on demand (``drain``)
    or awaited (``wait``), and whether its connection is up; ``close`` before the socket."""

    KEEP: Final = 256

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        monitor = sock.get_monitor_socket(WATCHED)
        # A synchronous handle on the monitor, read without waiting.
        self._monitor: zmq.Socket[bytes] = zmq.Socket.shadow(monitor.underlying)
        self._owner = monitor
        self._sock = sock
        self.seen: deque[Event] = deque(maxlen=self.KEEP)
        self.total = 0  # events seen so far, the forgotten ones included
        self.up = False  # handshaken, and not disconnected since

    def _record(self, event: Event) -> Event:
        self.seen.append(event)
        self.total += 1
        if event.kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.up = True
        elif event.kind in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
            self.up = False
        return event

    def drain(self) -> list[Event]:
        """The events that came since the last drain or wait (also kept in ``seen``)."""
        new = []
        while True:
            try:
                message = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            new.append(self._record(parse(message)))
        return new

    async def wait(self, kinds: int) -> Event:
        """The next event of one of ``kinds`` (a mask of ``zmq.EVENT_*``), waiting for it;
        every event on the way is kept too."""
        while True:
            event = self._record(parse(await self._owner.recv_multipart()))
            if event.kind & kinds:
                return event

    def since(self, total: int) -> list[Event]:
        """The events seen after the first ``total`` (as many of them as are kept)."""
        count = self.total - total
        return list(self.seen)[-count:] if count > 0 else []

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.disable_monitor()
        self._owner.close(linger=0)


def handshake_failure(event: Event, curve: bool) -> str | None:
    """Why a client's handshake failed, in words (``curve``: whether the client uses CURVE),
    or None if ``event`` is not a handshake failure."""
    if event.kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"the server refused this client's key (ZAP status {event.value}): "
            "its public key is not among the server's authorized keys"
        )
    if event.kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if event.value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return "security mismatch: one side uses CURVE encryption and the other does not"
        return f"the handshake broke the ZMTP protocol (error {event.value:#x})"
    if event.kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        if curve:
            return (
                "the connection closed during the handshake: the server's public key given to "
                "the client is probably not the server's, or a proxy (nginx) reaches no server"
            )
        return (
            "the connection closed during the handshake: a proxy (nginx) that reaches no "
            "server, or a server that requires CURVE encryption, which this client does not use"
        )
    return None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A client handshake a server refused: ``kind`` (one of REFUSAL_KINDS) and why, in words."""

    kind: str
    reason: str


def refusal(event: Event) -> Refusal | None:
    """What a server's monitor event says of a refused client, or None if it is not one.

    A peer that closes before any handshake (``HANDSHAKE_FAILED_NO_DETAIL`` on the
    server's side: a TCP probe, a health check, a client gone) is not a refusal.
    """
    if event.kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return Refusal(
            "auth", f"ZAP refused the client's key (status {event.value}): it is not authorized"
        )
    if event.kind != zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return None
    if event.value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return Refusal("key", "the client's CURVE handshake did not decrypt: wrong server key?")
    if event.value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return Refusal("mechanism", "one side uses CURVE encryption and the other does not")
    return Refusal("protocol", f"the handshake broke the ZMTP protocol (error {event.value:#x})")


def explain(
    tries: Sequence[Sequence[Event]], endpoints: Sequence[str], curve: bool = False
) -> tuple[type[RequestTimeout], str]:
    """Why no reply came, from the events of each try: the exception class and the reason.

    Every try sent its request and waited out its timeout; what the monitor saw
    meanwhile tells a dead or slow server from a setting to fix.
    """
    events = [event for attempt in tries for event in attempt]
    kinds = {event.kind for event in events}
    for event in events:
        reason = handshake_failure(event, curve)
        if reason is not None:
            return HandshakeFailed, reason
    if zmq.EVENT_CONNECTED not in kinds:
        if kinds and kinds <= {zmq.EVENT_CONNECT_RETRIED}:
            return ConnectFailed, unresolved(endpoints) or "no connection could be made"
        return ConnectFailed, "nothing accepted the connection (refused, or no such host or port)"
    if zmq.EVENT_HANDSHAKE_SUCCEEDED not in kinds:
        return RequestTimeout, (
            "connected, but the connection closed before the ZeroMQ handshake: a proxy "
            "(nginx) that reaches no server, or not a ZeroMQ server"
        )
    if tries and all(_dropped_after_handshake(attempt) for attempt in tries):
        return RequestTimeout, (
            "the server closed the connection after each request: it drops a message with a "
            "frame over its size limit (--max-message-bytes) this way, or it went away"
        )
    return RequestTimeout, SILENT


def _dropped_after_handshake(attempt: Sequence[Event]) -> bool:
    kinds = [event.kind for event in attempt]
    if zmq.EVENT_HANDSHAKE_SUCCEEDED not in kinds:
        return False
    return zmq.EVENT_DISCONNECTED in kinds[kinds.index(zmq.EVENT_HANDSHAKE_SUCCEEDED) :]


def unresolved(endpoints: Sequence[str]) -> str | None:
    """``host NAME does not resolve`` for the first TCP endpoint whose host does not."""
    for endpoint in endpoints:
        split = urlsplit(endpoint)
        host = split.hostname
        if split.scheme != "tcp" or host is None:
            continue
        try:
            socket.getaddrinfo(host, None)
        except (socket.gaierror, UnicodeError):
            return f"host {host!r} does not resolve"
    return None
