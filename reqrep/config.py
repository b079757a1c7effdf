"""Every default in one place: the configuration of a server replica and of a client.

The dataclasses hold the defaults; the entry points' argparse flags, their
environment variables and the docs read them from here (``default()``), so a
default is written once.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from reqrep import protocol

DEFAULT_PORT = 5555


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One replica: where it binds, how it answers, how it stops."""

    bind: Sequence[str] = (f"tcp://*:{DEFAULT_PORT}",)
    name: str = field(default_factory=socket.gethostname)
    socket_type: str = "router"  # "router": many requests in flight; "rep": one at a time
    max_inflight: int = 1000
    work_ms: float = 0.0
    max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES
    grace_s: float = 5.0
    # On the first SIGTERM/SIGINT, keep answering this long before stopping (so a
    # balancer that re-resolves its replicas stops choosing this one first); 0: stop at once.
    shutdown_delay_s: float = 0.0
    heartbeat_ms: int = 10_000
    # Prometheus metrics over HTTP on this port; None: off.
    metrics_port: int | None = None
    # CurveZMQ: the server's .key_secret file, and the directory of client
    # public keys allowed in (None: any client key, encrypted all the same).
    curve_secret_key: str | None = None
    curve_authorized_keys: str | None = None


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """One REQ client: where it connects and its Lazy Pirate timing."""

    endpoints: Sequence[str] = (f"tcp://localhost:{DEFAULT_PORT}",)
    timeout_ms: int = 2500
    tries: int = 3  # the first try included: 1 means no retry
    heartbeat_ms: int = 10_000
    # CurveZMQ: the server's public .key file, and this client's .key_secret
    # (None with a server key: a throwaway key pair, encrypted but not authorized).
    curve_server_key: str | None = None
    curve_secret_key: str | None = None


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """What the demo client sends: numbered requests, one of them without its address."""

    requests: int = 10
    malformed: int = 2  # the index sent without address; -1 for none
    interval_ms: float = 0.0


def default(cls: type[Any], name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls`` (its factory's value, if it has one)."""
    for item in dataclasses.fields(cls):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            if item.default_factory is not dataclasses.MISSING:
                return item.default_factory()
            break
    raise AttributeError(f"{cls.__name__} has no field {name!r} with a default")


def heartbeat_options(heartbeat_ms: int) -> dict[int, int]:
    """ZMTP heartbeat socket options for an interval; none when it is 0 (off).

    A peer that sends nothing, not even a heartbeat, for three intervals is
    taken as gone and its connection closed.
    """
    if heartbeat_ms <= 0:
        return {}
    return {zmq.HEARTBEAT_IVL: heartbeat_ms, zmq.HEARTBEAT_TIMEOUT: 3 * heartbeat_ms}
