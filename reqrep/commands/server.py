"""``reqrep server`` (``server.py``): a server replica, until SIGTERM or SIGINT.

    python3 server.py --bind tcp://*:5555 --handler mypackage.handlers:echo

Every flag's default and environment variable is a field of ``reqrep.config.ServerConfig``;
the server itself is ``reqrep.server``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from reqrep import cli, handlers, server
from reqrep.config import ServerConfig
from reqrep.errors import ConfigError, CurveKeyError, StartError

logger = logging.getLogger(__name__)

LOOPS = ("asyncio", "uvloop")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = cli.parser(prog, "Asynchronous ZeroMQ request/reply server (the REP side).")
    cli.add_setting(
        parser,
        ServerConfig,
        "bind",
        "--bind",
        type=cli.endpoint(bind=True),
        metavar="ENDPOINT",
        help="endpoint to bind, repeatable (the variable comma-separated)",
    )
    cli.add_setting(
        parser,
        ServerConfig,
        "name",
        "--name",
        shown="the hostname",
        help="replica name sent back in every reply",
    )
    add_handler_flags(parser)
    add_socket_flags(parser)
    add_stop_flags(parser)
    cli.add_setting(
        parser,
        ServerConfig,
        "metrics_port",
        "--metrics-port",
        type=cli.optional(cli.port_number),
        shown="off",
        help="serve Prometheus metrics over HTTP on this port, at /metrics; 0: any free port",
    )
    add_curve_flags(parser)
    cli.add_log_level(parser, "INFO")
    return parser


def add_handler_flags(parser: argparse.ArgumentParser) -> None:
    """Who answers: the handler, its threads, its time, how many requests at once."""
    cli.add_setting(
        parser,
        ServerConfig,
        "handler",
        "--handler",
        metavar="MODULE:ATTR",
        help="the request handler, a callable taking a reqrep.Request and returning bytes "
        "(or an async def); the default answers an empty body, as the seed's server did",
    )
    cli.add_setting(
        parser,
        ServerConfig,
        "app_dir",
        "--app-dir",
        metavar="DIR",
        help="where to look for the handler's module first (put on the module search path)",
    )
    cli.add_setting(
        parser,
        ServerConfig,
        "threads",
        "--threads",
        type=cli.int_at_least(0),
        help="run a synchronous handler in a pool of this many threads, for handlers that "
        "block; 0: in the event loop (quick handlers)",
    )
    cli.add_setting(
        parser,
        ServerConfig,
        "handler_timeout_ms",
        "--handler-timeout-ms",
        type=cli.int_at_least(1),
        help="a request whose handler has not finished by then is answered Server timeout "
        "(an async handler is cancelled)",
    )
    cli.add_setting(
        parser,
        ServerConfig,
        "max_inflight",
        "--max-inflight",
        type=cli.int_at_least(1),
        help="requests handled at once by an async or threaded handler in router mode",
    )
    cli.add_setting(
        parser,
        ServerConfig,
        "work_ms",
        "--work-ms",
        type=cli.float_at_least(0),
        help="shortcut for the built-in handler that waits this long per request "
        "(reqrep.handlers.Work), for demos and benchmarks",
    )


def add_socket_flags(parser: argparse.ArgumentParser) -> None:
    """The socket: its type, its message size limit, its heartbeats."""
    cli.add_setting(
        parser,
        ServerConfig,
        "socket_type",
        "--socket",
        choices=("router", "rep"),
        help="router: many requests in flight; rep: one at a time",
    )
    cli.add_setting(
        parser,
        ServerConfig,
        "loop",
        "--loop",
        choices=LOOPS,
        help="the event loop: asyncio's own, or uvloop (optional: pip install '.[uvloop]'); "
        "docs/performance.md says what it changes",
    )
    cli.add_setting(
        parser,
        ServerConfig,
        "max_message_bytes",
        "--max-message-bytes",
        type=cli.int_at_least(1),
        help="largest request accepted; a larger frame is refused by zmq.MAXMSGSIZE",
    )
    cli.add_setting(
        parser,
        ServerConfig,
        "heartbeat_ms",
        "--heartbeat-ms",
        type=cli.int_at_least(0),
        help="ZMTP heartbeat interval, keeps idle connections open through nginx; 0 disables",
    )


def add_stop_flags(parser: argparse.ArgumentParser) -> None:
    """How a replica stops: how long it goes on answering, how long it drains."""
    cli.add_setting(
        parser,
        ServerConfig,
        "grace_s",
        "--grace-s",
        type=cli.float_at_least(0),
        help="on SIGTERM/SIGINT, time to finish requests in flight",
    )
    cli.add_setting(
        parser,
        ServerConfig,
        "shutdown_delay_s",
        "--shutdown-delay-s",
        type=cli.float_at_least(0),
        help="on the first SIGTERM/SIGINT, go on answering this long before stopping, so a "
        "balancer stops choosing this replica first; a second signal stops at once",
    )


def add_curve_flags(parser: argparse.ArgumentParser) -> None:
    """CurveZMQ: off unless a secret key is given."""
    cli.add_setting(
        parser,
        ServerConfig,
        "curve_secret_key",
        "--curve-secret-key",
        type=cli.optional(str),
        metavar="PATH",
        shown="no encryption",
        help="CurveZMQ: this server's .key_secret certificate (see keys.py); clients then "
        "need its public .key",
    )
    cli.add_setting(
        parser,
        ServerConfig,
        "curve_authorized_keys",
        "--curve-authorized-keys",
        type=cli.optional(str),
        metavar="DIR",
        shown="any client key",
        help="CurveZMQ: directory of the client public keys (*.key) allowed to connect; "
        "others are refused by ZAP",
    )


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.work_ms > 0 and args.handler != handlers.DEFAULT:
        parser.error("--work-ms is a shortcut for the built-in Work handler: give it or --handler")
    if args.curve_authorized_keys is not None and args.curve_secret_key is None:
        parser.error("--curve-authorized-keys needs --curve-secret-key")
    if args.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        parser.error("--loop uvloop: uvloop is not installed (pip install '.[uvloop]')")
    return args


def run_loop(main: Coroutine[Any, Any, None], loop: str) -> None:
    """Run ``main`` to its end on the event loop named (checked by the parser)."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    cli.setup_logging(args.log_level, "server")
    config = cli.config_from_args(ServerConfig, args)
    try:
        handler = server.resolve_handler(None, config)  # a bad --handler ends it here
        run_loop(server.run(config, handler), config.loop)
    except CurveKeyError as error:
        logger.error("Cannot set up CURVE: %s", error)
        return 1
    except (ConfigError, StartError) as error:
        logger.error("%s", error)
        return 1
    busy = server.handler_threads_running()
    if busy:  # a blocking handler no stop can interrupt: do not wait for it forever
        logger.warning("Leaving %d handler thread(s) still running", busy)
        logging.shutdown()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
