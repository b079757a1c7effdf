"""The peers' servers for ``bench.peers``: the smallest idiomatic server of each library.

    python -m bench.peer_servers grpc --port 50051

Each answers a request the way this project's server does: the request carries an
address and data; ``protocol.respond`` (the project's own validation) decides
between ``Server response`` and ``Invalid message``; the reply is the same three
fields (status, replica name, detail). What differs is each library's own way to
carry them:

    grpc      grpc.aio server, one unary method registered with a generic handler
              (no protoc code generation): bytes in, bytes out, in the wire format below
    pynng     an nng REP socket served by asyncio, one context per concurrent request
              (a pool of ``--contexts``), the wire format below
    zerorpc   zerorpc.Server (gevent) with a ``request(address, data)`` method,
              fields as msgpack arguments and result, as zerorpc does
    aiozmq    aiozmq.rpc.serve_rpc with the same method, msgpack as aiozmq.rpc does
    aiohttp   aiohttp.web, ``POST /request``, the wire format below as the body;
              an invalid request is answered 400 with the same reply body
    zeroapi   zeroapi's ZeroServer in its ZeroMQ mode (a ROUTER/DEALER proxy in the
              main process, ``--workers`` worker processes), an RPC ``request(fields)``
              taking and returning the fields as a list of bytes (msgspec, as zeroapi
              does); ``--workers`` defaults to zeroapi's own default, one per CPU
    zeroapi-tcp  the same ZeroServer in its TCP mode (asyncio streams, each worker
              process listening on the port with SO_REUSEPORT; the workers run on
              uvloop, installed: zeroapi picks it up by itself)

The wire format for the byte-stream peers: each field as a 4-byte big-endian
length and its bytes (``encode_fields``). The project's server and the echo
ceiling are not here: they are ``server.py`` and ``bench/ceiling.py``.

Prints ``<system> serving on <address>`` once bound, then serves until killed.
Each library is imported only by its own server, so one that is missing fails
only its own row.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, Final

from reqrep import cli, protocol

REPLICA: Final = b"peer"
GRPC_METHOD: Final = "/bench.Peer/Request"
HTTP_PATH: Final = "/request"
SYSTEMS: Final = ("grpc", "pynng", "zerorpc", "aiozmq", "aiohttp", "zeroapi", "zeroapi-tcp")
ZEROAPI_SYSTEMS: Final = ("zeroapi", "zeroapi-tcp")
DEFAULT_CONTEXTS: Final = 128

_LENGTH = struct.Struct(">I")


def encode_fields(fields: Sequence[bytes]) -> bytes:
    """Fields as one byte string: each one's 4-byte big-endian length, then its bytes."""
    return b"".join([_LENGTH.pack(len(field)) + field for field in fields])


def decode_fields(body: bytes) -> list[bytes] | None:
    """The fields of ``encode_fields``'s output, or None if ``body`` is not such a string."""
    fields = []
    offset, end = 0, len(body)
    while offset < end:
        if offset + 4 > end:
            return None
        (length,) = _LENGTH.unpack_from(body, offset)
        offset += 4
        if offset + length > end:
            return None
        fields.append(body[offset : offset + length])
        offset += length
    return fields


def answer(fields: Sequence[Any]) -> tuple[list[bytes], bool]:
    """The reply's three fields to a request's fields, and whether it was valid."""
    if not all(isinstance(field, bytes) for field in fields):
        return protocol.invalid_reply(REPLICA, "fields must be bytes"), False
    reply, reason = protocol.respond(fields, REPLICA)
    return reply, reason is None


def answer_body(body: bytes) -> tuple[bytes, bool]:
    """``answer`` for the byte-stream peers: a request body in, a reply body out."""
    fields = decode_fields(body)
    if fields is None:
        return encode_fields(protocol.invalid_reply(REPLICA, "not a list of fields")), False
    reply, valid = answer(fields)
    return encode_fields(reply), valid


def _ready(system: str, address: str) -> None:
    print(f"{system} serving on {address}", flush=True)


async def serve_grpc(port: int) -> None:
    import grpc  # type: ignore[import-untyped]

    async def request(body: bytes, context: Any) -> bytes:
        return answer_body(body)[0]

    service, method = GRPC_METHOD.strip("/").split("/")
    # No (de)serializers: the method takes and returns bytes, no protobuf.
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(request)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    _ready("grpc", f"127.0.0.1:{port}")
    await server.wait_for_termination()


async def serve_pynng(port: int, contexts: int) -> None:
    import pynng  # type: ignore[import-untyped]

    address = f"tcp://127.0.0.1:{port}"
    with pynng.Rep0(listen=address) as sock:

        async def serve_context() -> None:
            context = sock.new_context()
            while True:
                body = await context.arecv()
                await context.asend(answer_body(body)[0])

        _ready("pynng", address)
        await asyncio.gather(*(serve_context() for _ in range(contexts)))


def serve_zerorpc(port: int) -> None:
    import zerorpc  # type: ignore[import-untyped]

    class Peer:
        def request(self, *fields: Any) -> list[bytes]:
            return answer(fields)[0]

    address = f"tcp://127.0.0.1:{port}"
    server = zerorpc.Server(Peer())
    server.bind(address)
    _ready("zerorpc", address)
    server.run()


async def serve_aiozmq(port: int) -> None:
    import aiozmq.rpc  # type: ignore[import-untyped]

    class Peer(aiozmq.rpc.AttrHandler):  # type: ignore[misc]
        @aiozmq.rpc.method  # type: ignore[untyped-decorator]
        def request(self, *fields: Any) -> list[bytes]:
            return answer(fields)[0]

    address = f"tcp://127.0.0.1:{port}"
    server = await aiozmq.rpc.serve_rpc(Peer(), bind=address)
    _ready("aiozmq", address)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()


def serve_aiohttp(port: int) -> None:
    from aiohttp import web

    async def request(http_request: web.Request) -> web.Response:
        body, valid = answer_body(await http_request.read())
        return web.Response(
            body=body, status=200 if valid else 400, content_type="application/octet-stream"
        )

    app = web.Application()
    app.router.add_post(HTTP_PATH, request)
    _ready("aiohttp", f"http://127.0.0.1:{port}{HTTP_PATH}")
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def request(fields: list[bytes]) -> list[bytes]:
    """zeroapi's RPC function: one argument, type-hinted, as zeroapi requires; at module level
    because its worker processes are handed it by name."""
    return answer(fields)[0]


def serve_zeroapi(port: int, tcp: bool, workers: int | None) -> None:
    from zero import ZeroServer  # type: ignore[import-untyped]
    from zero.protocols.tcp import TCPServer  # type: ignore[import-untyped]
    from zero.protocols.zeromq import ZMQServer  # type: ignore[import-untyped]

    app = ZeroServer(host="127.0.0.1", port=port, protocol=TCPServer if tcp else ZMQServer)
    app.register_rpc(request)
    # The ZeroMQ mode's proxy makes its IPC socket file in the working directory.
    with tempfile.TemporaryDirectory(prefix="bench-zeroapi-") as workdir:
        os.chdir(workdir)
        _ready("zeroapi-tcp" if tcp else "zeroapi", f"tcp://127.0.0.1:{port}")
        if workers is None:
            app.run()  # zeroapi's default: a worker per CPU
        else:
            app.run(workers)


def serve(
    system: str, port: int, contexts: int = DEFAULT_CONTEXTS, workers: int | None = None
) -> None:
    if system == "grpc":
        asyncio.run(serve_grpc(port))
    elif system == "pynng":
        asyncio.run(serve_pynng(port, contexts))
    elif system == "zerorpc":
        serve_zerorpc(port)
    elif system == "aiozmq":
        asyncio.run(serve_aiozmq(port))
    elif system == "aiohttp":
        serve_aiohttp(port)
    elif system in ZEROAPI_SYSTEMS:
        serve_zeroapi(port, system == "zeroapi-tcp", workers)
    else:
        raise ValueError(f"unknown system {system!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One peer's server for bench.peers.")
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--port", type=cli.port_number, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument(
        "--contexts",
        type=cli.int_at_least(1),
        default=DEFAULT_CONTEXTS,
        help="pynng: requests served at once (one nng context each)",
    )
    parser.add_argument(
        "--workers",
        type=cli.int_at_least(1),
        help="zeroapi: worker processes (default: zeroapi's own, one per CPU)",
    )
    args = parser.parse_args(argv)
    if args.workers is not None and args.system not in ZEROAPI_SYSTEMS:
        parser.error(f"--workers is for {' and '.join(ZEROAPI_SYSTEMS)} only")
    serve(args.system, args.port, args.contexts, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
