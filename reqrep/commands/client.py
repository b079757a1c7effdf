"""``reqrep client`` (``client.py``): the demo client, numbered requests, request 2 malformed.

    python3 client.py --connect tcp://localhost:5555 --requests 10 --malformed 2

Prints ``Sending request: N`` and ``Received response: <status>`` per request. A
request not answered within ``--timeout-ms`` is resent on a fresh socket, up to
``--tries`` tries in all; then the client says which server did not answer and why,
and exits 1. It never hangs. Defaults live in ``reqrep.config``; the client itself
is ``reqrep.client``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from reqrep import cli
from reqrep.client import ping, run
from reqrep.config import ClientConfig, RequestPlan


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = cli.parser(prog, "ZeroMQ REQ client: numbered requests with Lazy Pirate retries.")
    cli.add_client_flags(parser)
    cli.add_deprecated_retries(parser)
    cli.add_setting(
        parser,
        ClientConfig,
        "address",
        "--address",
        shown="hostname-pid",
        help="address sent in every well-formed request",
    )
    cli.add_setting(
        parser,
        ClientConfig,
        "heartbeat_ms",
        "--heartbeat-ms",
        type=cli.int_at_least(0),
        help="ZMTP heartbeat interval, 0 disables",
    )
    parser.add_argument(
        "--ping",
        action="store_true",
        help="send one health request; exit 0 if the server answered in time, else 1",
    )
    parser.add_argument(
        "--report",
        metavar="PATH",
        help="write what was sent and every reply's status, replica, latency and tries "
        "as JSON to PATH (schema: reqrep.report.ClientReport)",
    )
    cli.add_setting(
        parser,
        ClientConfig,
        "curve_server_key",
        "--curve-server-key",
        type=cli.optional(str),
        metavar="PATH",
        shown="no encryption",
        help="CurveZMQ: the server's public .key certificate; turns encryption on",
    )
    cli.add_setting(
        parser,
        ClientConfig,
        "curve_secret_key",
        "--curve-secret-key",
        type=cli.optional(str),
        metavar="PATH",
        shown="a throwaway key pair",
        help="CurveZMQ: this client's .key_secret certificate, whose public key the server "
        "must authorize",
    )
    cli.add_log_level(parser, "WARNING")
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    cli.resolve_client_flags(parser, args)
    if args.ping and args.report:
        parser.error("--report goes with the numbered requests, not with --ping")
    if args.curve_secret_key is not None and args.curve_server_key is None:
        parser.error("--curve-secret-key needs --curve-server-key")
    return args


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    cli.setup_logging(args.log_level, "client")
    config = cli.config_from_args(ClientConfig, args)
    plan = cli.config_from_args(RequestPlan, args)
    try:
        if args.ping:
            return asyncio.run(ping(config))
        return asyncio.run(run(config, plan, args.report))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
