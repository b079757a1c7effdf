"""Command-line plumbing shared by the commands (``reqrep.commands``).

A flag that sets a configuration field is added with ``add_setting``: its default
and its environment variable come from the dataclass field (``reqrep.config``),
named there once; ``--help`` shows the default in effect (the environment's value
if it is set) once. argparse applies a flag's ``type`` to a string default too, so
a bad value from the environment gets the same usage error (exit 2) as a bad
value on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from reqrep import endpoints
from reqrep.config import LOG_LEVEL_ENV, ClientConfig, RequestPlan, default, env_name
from reqrep.errors import EndpointError

# The usual spellings, any case; WARN is WARNING.
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LOG_LEVEL_ALIASES: Final = {"WARN": "WARNING"}
Config = TypeVar("Config")


def parser(prog: str | None, description: str) -> argparse.ArgumentParser:
    """An argument parser for a command; ``prog`` as the user typed it (``server.py``,
    ``reqrep server``)."""
    # No abbreviations: a flag is given under its own name (``given`` relies on it).
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)


def given(argv: Sequence[str], flag: str) -> bool:
    """Whether ``flag`` is on the command line (as ``--flag VALUE`` or ``--flag=VALUE``)."""
    return any(arg == flag or arg.startswith(f"{flag}=") for arg in argv)


def add_setting(
    parser: argparse.ArgumentParser,
    cls: type[Any],
    name: str,
    *flags: str,
    help: str,
    type: Callable[[str], Any] | None = None,
    shown: str | None = None,
    **options: Any,
) -> argparse.Action:
    """A flag for field ``name`` of ``cls``: its default from the field, overridden by the
    field's environment variable, both shown once in ``--help``.

    ``shown`` describes a default that is not a value to type (``off``, ``the hostname``).
    A list field's flag is repeatable, its variable comma-separated; either way each item
    goes through ``type``.
    """
    env = env_name(cls, name)
    built_in = default(cls, name)
    text = os.environ.get(env)
    value: object
    if isinstance(built_in, tuple):
        value = text if text is not None else ",".join(built_in)
        type = comma_list(type or str)
        options.setdefault("action", _Repeated)
        effective: object = value
    elif text:
        value = effective = text
    else:
        value, effective = built_in, shown or built_in
    if type is not None:
        options["type"] = type
    return parser.add_argument(
        *flags,
        dest=name,
        default=value,
        help=f"{help} ({default_note(env, text, effective)})",
        **options,
    )


def default_note(env: str, text: str | None, effective: object) -> str:
    """What ``--help`` says of a flag's default: its variable, and the value in effect
    (``text``, the variable's value, when it is set)."""
    where = f"from env {env}" if text else f"env {env}"
    return f"{where}; default {effective}"


class _Repeated(argparse.Action):
    """A repeatable flag of lists: the first use replaces the default, later ones add to it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given = getattr(namespace, self.dest)
        earlier = [] if given is self.default or given is None else list(given)
        setattr(namespace, self.dest, [*earlier, *values])


def comma_list(parse: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse type: comma-separated items, at least one, each through ``parse``."""

    def parse_list(text: str) -> list[Any]:
        items = [parse(item.strip()) for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"at least one value is needed, not {text!r}")
        return items

    return parse_list


def config_from_args(cls: type[Config], args: argparse.Namespace) -> Config:
    """``cls`` with every field the arguments hold (list fields as tuples)."""
    fields = {item.name for item in dataclasses.fields(cls) if hasattr(args, item.name)}  # type: ignore[arg-type]
    values = {name: getattr(args, name) for name in fields}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# --- argparse types ------------------------------------------------------------


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
    return comma_list(int_at_least(minimum))


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


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: ``parse``'s, or None for an empty value (an unset optional setting)."""

    def parse_optional(text: str) -> Any:
        return None if text == "" else parse(text)

    return parse_optional


def endpoint(*, bind: bool) -> Callable[[str], str]:
    """An argparse type: a ZeroMQ endpoint that can be bound (``bind``) or connected."""

    def parse(text: str) -> str:
        try:
            return endpoints.check(text, bind=bind)
        except EndpointError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def log_level(text: str) -> str:
    """An argparse type: a logging level in any case (``debug``, ``Warn``, ``INFO``...)."""
    level = _LOG_LEVEL_ALIASES.get(text.upper(), text.upper())
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"not a log level: {text!r} (choose from {', '.join(LOG_LEVELS)}, any case)"
        )
    return level


def add_log_level(parser: argparse.ArgumentParser, built_in: str) -> None:
    text = os.environ.get(LOG_LEVEL_ENV)
    parser.add_argument(
        "--log-level",
        type=log_level,
        default=text or built_in,
        metavar="LEVEL",
        help=f"logging level: {', '.join(LOG_LEVELS)}, any case "
        f"({default_note(LOG_LEVEL_ENV, text, text or built_in)})",
    )


def setup_logging(level: str, program: str) -> None:
    """Configure logging once, in a command's main(): one line per record on stderr."""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s {program}: %(message)s",
        stream=sys.stderr,
    )


# --- the flags every client shares (client.py, run_clients.py) ----------------------


def add_client_flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The flags every client of a run shares; returned so run_clients.py can pass them on."""
    tries_env = env_name(ClientConfig, "tries")
    tries_text = os.environ.get(tries_env)
    tries_effective = tries_text or default(ClientConfig, "tries")
    return [
        add_setting(
            parser,
            ClientConfig,
            "endpoints",
            "--connect",
            type=endpoint(bind=False),
            metavar="ENDPOINT",
            help="server endpoint, repeatable (the variable comma-separated)",
        ),
        add_setting(
            parser,
            RequestPlan,
            "requests",
            "--requests",
            type=int_at_least(0),
            help="number of requests to send",
        ),
        add_setting(
            parser,
            RequestPlan,
            "malformed",
            "--malformed",
            type=int_at_least(-1),
            help="index of the request sent without its address; -1 for none",
        ),
        add_setting(
            parser,
            RequestPlan,
            "interval_ms",
            "--interval-ms",
            type=float_at_least(0),
            help="pause between requests",
        ),
        add_setting(
            parser,
            ClientConfig,
            "timeout_ms",
            "--timeout-ms",
            type=int_at_least(1),
            help="how long to wait for each reply",
        ),
        parser.add_argument(
            "--tries",
            type=int_at_least(1),
            help="tries per request, the first included: 1 means no retry "
            f"({default_note(tries_env, tries_text, tries_effective)})",
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
    tries_env = env_name(ClientConfig, "tries")
    if args.tries is not None and args.retries is not None:
        parser.error("--retries is the deprecated name of --tries: give only --tries")
    if args.retries is not None:
        deprecated("--retries is deprecated; use --tries (same meaning)")
        args.tries = args.retries
    if args.tries is None:
        text = os.environ.get(tries_env)
        if text is None and "CLIENT_RETRIES" in os.environ:
            deprecated(f"CLIENT_RETRIES is deprecated; use {tries_env} (same meaning)")
            text = os.environ["CLIENT_RETRIES"]
        try:
            args.tries = int_at_least(1)(text or str(default(ClientConfig, "tries")))
        except argparse.ArgumentTypeError as error:
            parser.error(f"--tries (env {tries_env}): {error}")


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
