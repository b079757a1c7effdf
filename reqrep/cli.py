"""Command-line plumbing shared by the entry points (server.py, client.py, run_clients.py, keys.py).

Flags take their defaults from environment variables (so docker-compose can
configure a service without changing its command); argparse applies a flag's
``type`` to a string default too, so a bad value from the environment gets the
same usage error as a bad value on the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from reqrep.config import ClientConfig, RequestPlan, default

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def env(name: str, default: object) -> str:
    """The environment variable ``name``, or ``default`` as text if unset.

    Entry points pass a default from ``reqrep.config``, so argparse, the
    environment and ``--help`` all show the one value written there.
    """
    return os.environ.get(name, str(default))


def env_optional(name: str) -> str | None:
    """The environment variable ``name``, or None if it is unset or empty."""
    return os.environ.get(name) or None


def env_list(name: str, default: Sequence[str]) -> list[str]:
    """A comma-separated environment variable as a list, blanks dropped."""
    return [item.strip() for item in env(name, ",".join(default)).split(",") if item.strip()]


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
        return value

    return parse


def port_number(text: str) -> int:
    """An argparse type: a TCP port number, 0 (any free port) to 65535."""
    value = int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (0-65535): {text!r}")
    return value


def int_list_at_least(minimum: int) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated integers, at least one, none below ``minimum``."""
    parse_one = int_at_least(minimum)

    def parse(text: str) -> list[int]:
        values = [parse_one(part) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"no number in {text!r}")
        return values

    return parse


def float_at_least(minimum: float) -> Callable[[str], float]:
    """An argparse type: a number no smaller than ``minimum`` (NaN refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}: {text!r}")
        return value

    return parse


def add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=env("LOG_LEVEL", default),
        help="logging level (env LOG_LEVEL)",
    )


def setup_logging(level: str, program: str) -> None:
    """Configure logging once, in an entry point's main(): one line per record on stderr."""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {program}: %(message)s",
        stream=sys.stderr,
    )


def add_client_flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The flags every client of a run shares; returned so run_clients.py can pass them on."""
    return [
        parser.add_argument(
            "--connect",
            action="append",
            help="server endpoint, repeatable (env SERVER_CONNECT, comma-separated; "
            f"default {','.join(ClientConfig().endpoints)})",
        ),
        parser.add_argument(
            "--requests",
            type=int_at_least(0),
            default=env("CLIENT_REQUESTS", default(RequestPlan, "requests")),
            help="number of requests to send (env CLIENT_REQUESTS)",
        ),
        parser.add_argument(
            "--malformed",
            type=int_at_least(-1),
            default=env("CLIENT_MALFORMED", default(RequestPlan, "malformed")),
            help="index of the request sent without its address; -1 for none "
            "(env CLIENT_MALFORMED)",
        ),
        parser.add_argument(
            "--interval-ms",
            type=float_at_least(0),
            default=env("CLIENT_INTERVAL_MS", default(RequestPlan, "interval_ms")),
            help="pause between requests (env CLIENT_INTERVAL_MS)",
        ),
        parser.add_argument(
            "--timeout-ms",
            type=int_at_least(1),
            default=env("CLIENT_TIMEOUT_MS", default(ClientConfig, "timeout_ms")),
            help="how long to wait for each reply (env CLIENT_TIMEOUT_MS)",
        ),
        parser.add_argument(
            "--tries",
            type=int_at_least(1),
            help="tries per request, the first included: 1 means no retry (env CLIENT_TRIES; "
            f"default {default(ClientConfig, 'tries')})",
        ),
    ]


def add_deprecated_retries(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retries",
        type=int_at_least(1),
        help="deprecated name of --tries (it always counted tries); env CLIENT_RETRIES likewise",
    )


def resolve_client_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Settle ``args.tries`` (from --tries, deprecated --retries, or the environment)."""
    if args.tries is not None and args.retries is not None:
        parser.error("--retries is the deprecated name of --tries: give only --tries")
    if args.retries is not None:
        deprecated("--retries is deprecated; use --tries (same meaning)")
        args.tries = args.retries
    if args.tries is None:
        text = os.environ.get("CLIENT_TRIES")
        if text is None and "CLIENT_RETRIES" in os.environ:
            deprecated("CLIENT_RETRIES is deprecated; use CLIENT_TRIES (same meaning)")
            text = os.environ["CLIENT_RETRIES"]
        try:
            args.tries = int_at_least(1)(text or str(default(ClientConfig, "tries")))
        except argparse.ArgumentTypeError as error:
            parser.error(f"--tries (env CLIENT_TRIES): {error}")


def resolve_connect(
    parser: argparse.ArgumentParser, args: argparse.Namespace, env_name: str = "SERVER_CONNECT"
) -> None:
    """``args.connect`` from the flags, else the environment, else the default."""
    if args.connect is None:
        args.connect = env_list(env_name, ClientConfig().endpoints)
    if not args.connect:
        parser.error("--connect: at least one endpoint is needed")


def deprecated(message: str) -> None:
    """Say once, on stderr, that a flag or variable is deprecated."""
    print(f"{Path(sys.argv[0]).name}: warning: {message}", file=sys.stderr)


def forward(actions: Sequence[argparse.Action], args: argparse.Namespace) -> list[str]:
    """The command-line arguments that give another process these flags' parsed values."""
    argv: list[str] = []
    for action in actions:
        value = getattr(args, action.dest)
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            argv += [action.option_strings[0], str(item)]
    return argv
