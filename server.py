"""The server replica: parse the command line, serve until SIGTERM/SIGINT.

    python3 server.py --bind tcp://*:5555

Every flag has an environment variable (for docker-compose) and its default
in ``reqrep.config.ServerConfig``; the server itself is ``reqrep.server``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import zmq

from reqrep import cli, keys, metrics
from reqrep.config import ServerConfig, default
from reqrep.server import run

logger = logging.getLogger(__name__)


def _default(name: str) -> object:
    return default(ServerConfig, name)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Asynchronous ZeroMQ request/reply server (the REP side).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bind_default = ",".join(ServerConfig().bind)
    parser.add_argument(
        "--bind",
        action="append",
        help=f"endpoint to bind, repeatable (env SERVER_BIND, comma-separated; "
        f"default {bind_default})",
    )
    parser.add_argument(
        "--name",
        default=cli.env("SERVER_NAME", _default("name")),
        help="replica name sent back in every reply (env SERVER_NAME; default the hostname)",
    )
    parser.add_argument(
        "--socket",
        choices=("router", "rep"),
        default=cli.env("SERVER_SOCKET", _default("socket_type")),
        help="router: many requests in flight; rep: one at a time (env SERVER_SOCKET)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=cli.int_at_least(1),
        default=cli.env("SERVER_MAX_MESSAGE_BYTES", _default("max_message_bytes")),
        help="largest request accepted; larger frames are refused by zmq.MAXMSGSIZE "
        "(env SERVER_MAX_MESSAGE_BYTES)",
    )
    parser.add_argument(
        "--heartbeat-ms",
        type=cli.int_at_least(0),
        default=cli.env("SERVER_HEARTBEAT_MS", _default("heartbeat_ms")),
        help="ZMTP heartbeat interval, keeps idle connections open through nginx; "
        "0 disables (env SERVER_HEARTBEAT_MS)",
    )
    add_handling_flags(parser)
    add_metrics_flags(parser)
    add_curve_flags(parser)
    cli.add_log_level(parser, "INFO")
    args = parser.parse_args(argv)
    if args.bind is None:
        args.bind = cli.env_list("SERVER_BIND", ServerConfig().bind)
    if not args.bind:
        parser.error("--bind: at least one endpoint is needed")
    return args


def add_handling_flags(parser: argparse.ArgumentParser) -> None:
    """How requests are handled: how many at once, simulated work, how long a stop may take."""
    parser.add_argument(
        "--max-inflight",
        type=cli.int_at_least(1),
        default=cli.env("SERVER_MAX_INFLIGHT", _default("max_inflight")),
        help="requests handled at once in router mode (env SERVER_MAX_INFLIGHT)",
    )
    parser.add_argument(
        "--work-ms",
        type=cli.float_at_least(0),
        default=cli.env("SERVER_WORK_MS", _default("work_ms")),
        help="simulated asynchronous work per valid request, ms (env SERVER_WORK_MS)",
    )
    parser.add_argument(
        "--grace-s",
        type=cli.float_at_least(0),
        default=cli.env("SERVER_GRACE_S", _default("grace_s")),
        help="on SIGTERM/SIGINT, time to finish requests in flight (env SERVER_GRACE_S)",
    )
    parser.add_argument(
        "--shutdown-delay-s",
        type=cli.float_at_least(0),
        default=cli.env("SERVER_SHUTDOWN_DELAY_S", _default("shutdown_delay_s")),
        help="on the first SIGTERM/SIGINT, go on answering this long before stopping, so a "
        "balancer stops choosing this replica first; a second signal stops at once "
        "(env SERVER_SHUTDOWN_DELAY_S)",
    )


def add_metrics_flags(parser: argparse.ArgumentParser) -> None:
    """Prometheus metrics (reqrep.metrics): off unless a port is given."""
    parser.add_argument(
        "--metrics-port",
        type=cli.port_number,
        default=cli.env_optional("SERVER_METRICS_PORT") or _default("metrics_port"),
        help="serve Prometheus metrics over HTTP on this port, at /metrics; 0: any free port "
        "(env SERVER_METRICS_PORT; default: off)",
    )


def add_curve_flags(parser: argparse.ArgumentParser) -> None:
    """CurveZMQ: off unless a secret key is given."""
    parser.add_argument(
        "--curve-secret-key",
        metavar="PATH",
        default=cli.env_optional("SERVER_CURVE_SECRET_KEY"),
        help="CurveZMQ: this server's .key_secret certificate (see keys.py); clients then "
        "need its public .key (env SERVER_CURVE_SECRET_KEY; default: no encryption)",
    )
    parser.add_argument(
        "--curve-authorized-keys",
        metavar="DIR",
        default=cli.env_optional("SERVER_CURVE_AUTHORIZED_KEYS"),
        help="CurveZMQ: directory of the client public keys (*.key) allowed to connect; "
        "others are refused by ZAP (env SERVER_CURVE_AUTHORIZED_KEYS; default: any client key)",
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        bind=tuple(args.bind),
        name=args.name,
        socket_type=args.socket,
        max_inflight=args.max_inflight,
        work_ms=args.work_ms,
        max_message_bytes=args.max_message_bytes,
        grace_s=args.grace_s,
        shutdown_delay_s=args.shutdown_delay_s,
        heartbeat_ms=args.heartbeat_ms,
        metrics_port=args.metrics_port,
        curve_secret_key=args.curve_secret_key,
        curve_authorized_keys=args.curve_authorized_keys,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level, "server")
    try:
        asyncio.run(run(config_from_args(args)))
    except zmq.ZMQError as error:
        logger.error("Cannot serve on %s: %s", ", ".join(args.bind), error)
        return 1
    except keys.CurveKeyError as error:
        logger.error("Cannot set up CURVE: %s", error)
        return 1
    except metrics.MetricsError as error:
        logger.error("Cannot serve metrics: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
