"""The demo client: numbered requests, request 2 without its address, Lazy Pirate.

    python3 client.py --connect tcp://localhost:5555 --requests 10 --malformed 2

Prints ``Sending request: N`` and ``Received response: <status>`` per request.
A request not answered within ``--timeout-ms`` is resent on a fresh socket, up
to ``--tries`` tries in all; then the client says which server did not answer
and exits 1. It never hangs. Defaults live in ``reqrep.config``; the client
itself is ``reqrep.client``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Sequence

from reqrep import cli
from reqrep.client import ping, run
from reqrep.config import ClientConfig, RequestPlan, default


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="ZeroMQ REQ client: numbered requests with Lazy Pirate retries.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cli.add_client_flags(parser)
    cli.add_deprecated_retries(parser)
    parser.add_argument(
        "--address",
        default=cli.env("CLIENT_ADDRESS", f"{socket.gethostname()}-{os.getpid()}"),
        help="address sent in every well-formed request (env CLIENT_ADDRESS; default hostname-pid)",
    )
    parser.add_argument(
        "--heartbeat-ms",
        type=cli.int_at_least(0),
        default=cli.env("CLIENT_HEARTBEAT_MS", default(ClientConfig, "heartbeat_ms")),
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
        help="write what was sent and every reply's status, replica, latency and tries "
        "as JSON to PATH (schema: reqrep.report.ClientReport)",
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
    cli.resolve_client_flags(parser, args)
    cli.resolve_connect(parser, args)
    if args.ping and args.report:
        parser.error("--report goes with the numbered requests, not with --ping")
    return args


def config_from_args(args: argparse.Namespace) -> ClientConfig:
    return ClientConfig(
        endpoints=tuple(args.connect),
        timeout_ms=args.timeout_ms,
        tries=args.tries,
        heartbeat_ms=args.heartbeat_ms,
        curve_server_key=args.curve_server_key,
        curve_secret_key=args.curve_secret_key,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level, "client")
    config = config_from_args(args)
    plan = RequestPlan(args.requests, args.malformed, args.interval_ms)
    try:
        if args.ping:
            return asyncio.run(ping(config))
        return asyncio.run(run(config, plan, args.address, args.report))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
