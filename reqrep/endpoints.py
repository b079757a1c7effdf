"""ZeroMQ endpoints, checked before any socket sees them.

libzmq refuses a malformed endpoint in ``connect()`` or ``bind()`` with a bare
"Invalid argument", and accepts some that can never work (``tcp://host:99999``).
Every endpoint a user gives goes through ``check`` first, so the answer names the
endpoint and what is wrong with it, and nothing is left half open.

    tcp://HOST:PORT       connect: a host name or address (IPv6 in brackets) and 1-65535
    tcp://IFACE:PORT      bind: ``*``, an address or interface; 0-65535, ``*`` or ``!`` (any)
    ipc://PATH            a Unix socket path
    inproc://NAME         within one process
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from reqrep.errors import EndpointError

TRANSPORTS: Final = ("tcp", "ipc", "inproc")
_BIND_ANY_PORT: Final = re.compile(r"\*|!|\[\d*-\d*\]")


def check(endpoint: str, *, bind: bool = False) -> str:
    """``endpoint`` itself if it can be bound (``bind``) or connected; ``EndpointError`` if not."""
    transport, sep, address = endpoint.partition("://")
    if not sep:
        raise EndpointError(f"{endpoint!r} is not an endpoint: expected tcp://HOST:PORT")
    if transport not in TRANSPORTS:
        known = ", ".join(f"{name}://" for name in TRANSPORTS)
        raise EndpointError(f"{endpoint!r}: unsupported transport {transport!r} (use {known})")
    if not address:
        raise EndpointError(f"{endpoint!r} has nothing after {transport}://")
    if transport == "tcp":
        _check_tcp(endpoint, address.rpartition(";")[2], bind)
    return endpoint


def check_all(endpoints: Iterable[str], *, bind: bool = False) -> tuple[str, ...]:
    """Every endpoint checked; at least one is needed."""
    checked = tuple(check(endpoint, bind=bind) for endpoint in endpoints)
    if not checked:
        raise EndpointError("at least one endpoint is needed")
    return checked


def _check_tcp(endpoint: str, address: str, bind: bool) -> None:
    host, sep, port = address.rpartition(":")
    if not sep:
        raise EndpointError(f"{endpoint!r} has no port: expected tcp://HOST:PORT")
    if not host:
        raise EndpointError(f"{endpoint!r} has no host: expected tcp://HOST:PORT")
    if host.startswith("[") != host.endswith("]"):
        raise EndpointError(f"{endpoint!r}: unbalanced brackets around the IPv6 address")
    if not bind and host == "*":
        raise EndpointError(f"{endpoint!r}: '*' can be bound, not connected to: name a host")
    if bind and _BIND_ANY_PORT.fullmatch(port):
        return
    if not port.isdigit() or not (0 if bind else 1) <= int(port) <= 65535:
        lowest = 0 if bind else 1
        raise EndpointError(f"{endpoint!r}: port {port!r} is not a number from {lowest} to 65535")
