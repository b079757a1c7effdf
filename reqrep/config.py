"""Every default in one place: the configuration of a server replica and of a client.

The dataclasses hold each setting's default and the environment variable that
overrides it on the command line (``setting(default, env=...)``); the entry
points' argparse flags, ``--help`` and the docs read both from here
(``default()``, ``env_name()``), so neither is written twice.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import zmq

from reqrep import handlers, protocol

DEFAULT_PORT: Final = 5555
LOG_LEVEL_ENV: Final = "LOG_LEVEL"


def setting(
    default: Any = dataclasses.MISSING,
    *,
    env: str,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with its default (or ``factory``) and its environment variable."""
    if factory is not None:
        return field(default_factory=factory, metadata={"env": env})
    return field(default=default, metadata={"env": env})


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One replica: where it binds, how it answers, how it stops."""

    bind: tuple[str, ...] = setting((f"tcp://*:{DEFAULT_PORT}",), env="SERVER_BIND")
    name: str = setting(env="SERVER_NAME", factory=socket.gethostname)
    # The request handler, as ``package.module:attr`` (``reqrep.handlers``); the
    # default answers ``Server response`` with an empty body, as the seed did.
    handler: str = setting(handlers.DEFAULT, env="SERVER_HANDLER")
    # Where a handler given as module:attr is looked for first (put on sys.path), as
    # uvicorn's --app-dir: the working directory, whatever script started the server.
    app_dir: str = setting(".", env="SERVER_APP_DIR")
    # A synchronous handler runs in the event loop (0) or in a pool of this many threads.
    threads: int = setting(0, env="SERVER_THREADS")
    # A request whose handler has not finished by then is answered ``Server timeout``.
    handler_timeout_ms: int = setting(30_000, env="SERVER_HANDLER_TIMEOUT_MS")
    socket_type: str = setting("router", env="SERVER_SOCKET")  # "router": many at once; "rep"
    # The event loop `reqrep server` runs on: "asyncio", or "uvloop" (pip install .[uvloop]).
    loop: str = setting("asyncio", env="SERVER_LOOP")
    max_inflight: int = setting(1000, env="SERVER_MAX_INFLIGHT")
    # A shortcut for the built-in handler that waits this long (reqrep.handlers.Work).
    work_ms: float = setting(0.0, env="SERVER_WORK_MS")
    max_message_bytes: int = setting(
        protocol.DEFAULT_MAX_MESSAGE_BYTES, env="SERVER_MAX_MESSAGE_BYTES"
    )
    grace_s: float = setting(5.0, env="SERVER_GRACE_S")
    # On the first SIGTERM/SIGINT, keep answering this long before stopping (so a
    # balancer that re-resolves its replicas stops choosing this one first); 0: stop at once.
    shutdown_delay_s: float = setting(0.0, env="SERVER_SHUTDOWN_DELAY_S")
    heartbeat_ms: int = setting(10_000, env="SERVER_HEARTBEAT_MS")
    # Prometheus metrics over HTTP on this port; None: off.
    metrics_port: int | None = setting(None, env="SERVER_METRICS_PORT")
    # CurveZMQ: the server's .key_secret file, and the directory of client
    # public keys allowed in (None: any client key, encrypted all the same).
    curve_secret_key: str | None = setting(None, env="SERVER_CURVE_SECRET_KEY")
    curve_authorized_keys: str | None = setting(None, env="SERVER_CURVE_AUTHORIZED_KEYS")


def default_address() -> str:
    """Who a client says it is when not told: ``hostname-pid``."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """One REQ client: where it connects, who it says it is, and its Lazy Pirate timing."""

    endpoints: tuple[str, ...] = setting((f"tcp://localhost:{DEFAULT_PORT}",), env="SERVER_CONNECT")
    # The address sent in every well-formed request.
    address: str = setting(env="CLIENT_ADDRESS", factory=default_address)
    timeout_ms: int = setting(2500, env="CLIENT_TIMEOUT_MS")
    tries: int = setting(3, env="CLIENT_TRIES")  # the first try included: 1 means no retry
    heartbeat_ms: int = setting(10_000, env="CLIENT_HEARTBEAT_MS")
    # CurveZMQ: the server's public .key file, and this client's .key_secret
    # (None with a server key: a throwaway key pair, encrypted but not authorized).
    curve_server_key: str | None = setting(None, env="CLIENT_CURVE_SERVER_KEY")
    curve_secret_key: str | None = setting(None, env="CLIENT_CURVE_SECRET_KEY")


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """What the demo client sends: numbered requests, one of them without its address."""

    requests: int = setting(10, env="CLIENT_REQUESTS")
    malformed: int = setting(2, env="CLIENT_MALFORMED")  # the index sent without address; -1: none
    interval_ms: float = setting(0.0, env="CLIENT_INTERVAL_MS")


def _field(cls: type[Any], name: str) -> dataclasses.Field[Any]:
    for item in dataclasses.fields(cls):
        if item.name == name:
            return item
    raise AttributeError(f"{cls.__name__} has no field {name!r}")


def default(cls: type[Any], name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls`` (its factory's value, if it has one)."""
    item = _field(cls, name)
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    raise AttributeError(f"{cls.__name__}.{name} has no default")


def env_name(cls: type[Any], name: str) -> str:
    """The environment variable that sets field ``name`` of ``cls`` on the command line."""
    env: str = _field(cls, name).metadata["env"]
    return env


def heartbeat_options(heartbeat_ms: int) -> dict[int, int]:
    """ZMTP heartbeat socket options for an interval; none when it is 0 (off).

    A peer that sends nothing, not even a heartbeat, for three intervals is
    taken as gone and its connection closed.
    """
    if heartbeat_ms <= 0:
        return {}
    return {zmq.HEARTBEAT_IVL: heartbeat_ms, zmq.HEARTBEAT_TIMEOUT: 3 * heartbeat_ms}
