"""The REQ client: numbered requests, one deliberately malformed, Lazy Pirate.

    python3 client.py --connect tcp://localhost:5555 --requests 10 --malformed 2

Prints ``Sending request: N`` and ``Received response: <status>`` per request.
A request that is not answered within ``--timeout-ms`` is resent on a fresh
socket (the ZeroMQ guide's Lazy Pirate) up to ``--retries`` tries in all; then
the client reports which server did not answer and exits 1. It never hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import zmq
import zmq.asyncio

import cli
import keys
import protocol

logger = logging.getLogger(__name__)

DEFAULT_CONNECT = "tcp://localhost:5555"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    endpoints: Sequence[str] = (DEFAULT_CONNECT,)
    timeout_ms: int = 2500
    tries: int = 3
    heartbeat_ms: int = 10_000
    # CurveZMQ: the server's public .key file, and this client's .key_secret
    # (None with a server key: a throwaway key pair, encrypted but not authorized).
    curve_server_key: str | None = None
    curve_secret_key: str | None = None


class Client:
    """An asynchronous REQ client with Lazy Pirate retries.

    ``await client.request(frames)`` returns the parsed reply, or raises
    ``protocol.RequestTimeout`` after the last try.
    """

    def __init__(self, config: ClientConfig, context: zmq.asyncio.Context) -> None:
        if config.tries < 1:
            raise ValueError("tries must be at least 1")
        if not config.endpoints:
            raise ValueError("at least one endpoint is needed")
        self.config = config
        self._context = context
        self._socket: zmq.asyncio.Socket | None = None
        self.last_tries = 0
        self._curve = keys.ClientCurve.load(config.curve_server_key, config.curve_secret_key)

    def _open(self) -> zmq.asyncio.Socket:
        sock = self._context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        if self._curve is not None:
            self._curve.apply(sock)
        if self.config.heartbeat_ms > 0:
            sock.setsockopt(zmq.HEARTBEAT_IVL, self.config.heartbeat_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * self.config.heartbeat_ms)
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
            sock = self._socket
            await sock.send_multipart(list(frames))
            if await sock.poll(self.config.timeout_ms):
                return protocol.parse_reply(await sock.recv_multipart())
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

    async def ping(self) -> protocol.Reply:
        return await self.request(protocol.encode_request("healthcheck", b"ping"), "ping")


@dataclass(frozen=True, slots=True)
class Result:
    request: int
    status: str
    replica: str
    detail: str
    latency_ms: float
    tries: int


async def run_requests(
    client: Client,
    address: str,
    count: int,
    malformed: int,
    interval_ms: float = 0.0,
    results: list[Result] | None = None,
) -> list[Result]:
    """Send ``count`` numbered requests, request ``malformed`` without address.

    Results are appended to ``results`` (if given) as they arrive, so a caller
    keeps what was answered even when a later request times out.
    """
    results = [] if results is None else results
    for number in range(count):
        data = f"request {number}".encode()
        if number == malformed:
            frames = protocol.encode_request_without_address(data)
        else:
            frames = protocol.encode_request(address, data)
        print(f"Sending request: {number}", flush=True)
        started = time.perf_counter()
        reply = await client.request(frames, str(number))
        latency_ms = (time.perf_counter() - started) * 1000
        print(f"Received response: {reply.status}", flush=True)
        results.append(
            Result(number, reply.status, reply.replica, reply.detail, latency_ms, client.last_tries)
        )
        if interval_ms > 0 and number + 1 < count:
            await asyncio.sleep(interval_ms / 1000)
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="ZeroMQ REQ client: numbered requests with Lazy Pirate retries.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--connect",
        action="append",
        help=f"server endpoint, repeatable (env SERVER_CONNECT, comma-separated; "
        f"default {DEFAULT_CONNECT})",
    )
    parser.add_argument(
        "--requests",
        type=cli.int_at_least(0),
        default=cli.env("CLIENT_REQUESTS", "10"),
        help="number of requests to send (env CLIENT_REQUESTS)",
    )
    parser.add_argument(
        "--malformed",
        type=cli.int_at_least(-1),
        default=cli.env("CLIENT_MALFORMED", "2"),
        help="index of the request sent without its address; -1 for none (env CLIENT_MALFORMED)",
    )
    parser.add_argument(
        "--timeout-ms",
        type=cli.int_at_least(1),
        default=cli.env("CLIENT_TIMEOUT_MS", "2500"),
        help="how long to wait for each reply (env CLIENT_TIMEOUT_MS)",
    )
    parser.add_argument(
        "--retries",
        type=cli.int_at_least(1),
        default=cli.env("CLIENT_RETRIES", "3"),
        help="tries per request, the first included, before giving up (env CLIENT_RETRIES)",
    )
    parser.add_argument(
        "--address",
        default=cli.env("CLIENT_ADDRESS", f"{socket.gethostname()}-{os.getpid()}"),
        help="address sent in every well-formed request (env CLIENT_ADDRESS; default hostname-pid)",
    )
    parser.add_argument(
        "--interval-ms",
        type=cli.float_at_least(0),
        default=cli.env("CLIENT_INTERVAL_MS", "0"),
        help="pause between requests (env CLIENT_INTERVAL_MS)",
    )
    parser.add_argument(
        "--heartbeat-ms",
        type=cli.int_at_least(0),
        default=cli.env("CLIENT_HEARTBEAT_MS", "10000"),
        help="ZMTP heartbeat interval, 0 disables (env CLIENT_HEARTBEAT_MS)",
    )
    parser.add_argument(
        "--ping",
        action="store_true",
        help="send one health request; exit 0 if answered in time, else 1",
    )
    parser.add_argument(
        "--report",
        metavar="PATH",
        help="write every request's status, replica, latency and tries as JSON to PATH",
    )
    parser.add_argument(
        "--curve-server-key",
        metavar="PATH",
        default=cli.env_optional("CLIENT_CURVE_SERVER_KEY"),
        help="CurveZMQ: the server's public .key certificate; turns encryption on "
        "(env CLIENT_CURVE_SERVER_KEY; default: no encryption)",
    )
    parser.add_argument(
        "--curve-secret-key",
        metavar="PATH",
        default=cli.env_optional("CLIENT_CURVE_SECRET_KEY"),
        help="CurveZMQ: this client's .key_secret certificate, whose public key the server "
        "must authorize (env CLIENT_CURVE_SECRET_KEY; default: a throwaway key pair)",
    )
    cli.add_log_level(parser, "WARNING")
    args = parser.parse_args(argv)
    if args.connect is None:
        args.connect = cli.env_list("SERVER_CONNECT", DEFAULT_CONNECT)
    if not args.connect:
        parser.error("--connect: at least one endpoint is needed")
    return args


def config_from_args(args: argparse.Namespace) -> ClientConfig:
    return ClientConfig(
        endpoints=tuple(args.connect),
        timeout_ms=args.timeout_ms,
        tries=args.retries,
        heartbeat_ms=args.heartbeat_ms,
        curve_server_key=args.curve_server_key,
        curve_secret_key=args.curve_secret_key,
    )


def _write_report(path: str, address: str, results: list[Result], error: str | None) -> None:
    report = {
        "client": address,
        "results": [
            {
                "request": r.request,
                "status": r.status,
                "replica": r.replica,
                "latency_ms": round(r.latency_ms, 3),
                "tries": r.tries,
            }
            for r in results
        ],
        "error": error,
    }
    with open(path, "w", encoding="utf-8") as file:
        json.dump(report, file)


async def run(args: argparse.Namespace) -> int:
    """The client's whole job; returns the exit status."""
    context = zmq.asyncio.Context()
    results: list[Result] = []
    error: str | None = None
    try:
        async with Client(config_from_args(args), context) as client:
            if args.ping:
                reply = await client.ping()
                return 0 if reply.ok else 1
            await run_requests(
                client, args.address, args.requests, args.malformed, args.interval_ms, results
            )
    except (protocol.ProtocolError, keys.CurveKeyError) as failure:
        error = str(failure)
        print(f"error: {error}", file=sys.stderr, flush=True)
    finally:
        context.term()
        if args.report and not args.ping:
            _write_report(args.report, args.address, results, error)
    return 0 if error is None else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level, "client")
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
