"""An asynchronous ZeroMQ request/reply service: your handler behind replicas, clients for it.

    import reqrep

    async def echo(request: reqrep.Request) -> bytes:
        return request.data

    async with reqrep.serve(echo, "tcp://*:5555") as server:
        await server.serve_forever()

    async with reqrep.Client() as client:          # one request at a time (REQ)
        body = await client.call(b"hello")

    async with reqrep.Channel() as channel:        # many at once (DEALER, ids)
        bodies = await asyncio.gather(*(channel.call(b"x") for _ in range(100)))

The modules, each with one job:

- ``protocol``: the wire format, pure functions over ``list[bytes]``; ``errors``: every
  exception, under ``ReqRepError``;
- ``handlers``: the handler contract, loading ``module:attr``, the built-in handlers;
- ``server``: the asyncio replica around a handler; ``client``: the REQ client (Lazy
  Pirate); ``channel``: the multiplexing client; ``events``: why no reply came, from
  ZeroMQ's socket monitor;
- ``config``: every default and its environment variable; ``endpoints``: endpoint checks;
- ``frames``: the server's hot-path frame I/O (the one place on pyzmq internals);
- ``metrics`` and ``metrics_http``: a replica's Prometheus metrics and their endpoint;
- ``report``: the JSON report schema; ``runner``: many client processes at once;
  ``stack`` and ``nginx``: replicas and nginx on loopback; ``keys``: CurveZMQ keys;
- ``commands`` and ``cli``: ``python -m reqrep server|client|run-clients|keys``.

What this module exports (``__all__``) is the library's API.
"""

from __future__ import annotations

from reqrep.channel import Channel, ChannelConfig
from reqrep.client import Client
from reqrep.config import ClientConfig, ServerConfig
from reqrep.errors import *  # noqa: F403 - every exception, as errors.__all__ lists them
from reqrep.errors import __all__ as _errors
from reqrep.handlers import Handler
from reqrep.protocol import Reply, Request
from reqrep.server import Server, serve, stop_on_signals
from reqrep.version import __version__

__all__ = [
    "Channel",
    "ChannelConfig",
    "Client",
    "ClientConfig",
    "Handler",
    "Reply",
    "Request",
    "Server",
    "ServerConfig",
    "serve",
    "stop_on_signals",
    "__version__",
    *_errors,
]
