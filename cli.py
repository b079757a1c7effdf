"""Command-line plumbing shared by server.py, client.py and run_clients.py.

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
from collections.abc import Callable

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def env(name: str, default: str) -> str:
    """The environment variable ``name``, or ``default`` if unset."""
    return os.environ.get(name, default)


def env_optional(name: str) -> str | None:
    """The environment variable ``name``, or None if it is unset or empty."""
    return os.environ.get(name) or None


def env_list(name: str, default: str) -> list[str]:
    """A comma-separated environment variable as a list, blanks dropped."""
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


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
