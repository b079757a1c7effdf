"""A replica's socket: set up, monitored from before it binds, bound; its connections followed.

``open_socket`` gives a ``Bound``: the ROUTER (or REP) socket with its options, CURVE and
ZAP if configured, and a monitor; ``watch_connections`` reads that monitor while the replica
serves: peers for the metrics, and every refused handshake logged (why) and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from reqrep import events, keys
from reqrep.config import ServerConfig, heartbeat_options
from reqrep.errors import BindError
from reqrep.metrics import ServerMetrics

logger = logging.getLogger(__name__)

SOCKET_TYPES: Final = {"router": zmq.ROUTER, "rep": zmq.REP}


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
