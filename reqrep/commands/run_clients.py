"""``reqrep run-clients`` (``run_clients.py``): many clients at once, interleaved, a summary.

    python3 run_clients.py --local 3              # no Docker: 3 replicas (+ nginx) on loopback
    python3 run_clients.py --local 3 --handler examples.handlers.echo:echo   # your handler on them
    python3 run_clients.py --clients 6            # against tcp://localhost:5555 (docker-compose up)
    python3 run_clients.py --docker --clients 4   # as `docker-compose run --rm client` containers

Each client is a separate client process; the summary says, per client and in
total, what was sent and answered, latency percentiles, the request rate and how
many replies each replica gave. Exits 1 if any client failed, or if the local stack
could not start (a replica's own error, e.g. a handler that cannot be loaded, says why).
The work is done by ``reqrep.runner``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from reqrep import cli
from reqrep.errors import StartError
from reqrep.runner import RunPlan, format_summary, run

Flags = list[argparse.Action]


def build_parser(prog: str | None = None) -> tuple[argparse.ArgumentParser, Flags, Flags]:
    """The parser, the flags passed on to every client, and those passed on to every local
    replica."""
    parser = cli.parser(prog, "Run many client processes at once and summarize the results.")
    cli.add_setting(
        parser, RunPlan, "clients", "--clients", type=cli.int_at_least(1), help="clients at once"
    )
    client_flags = cli.add_client_flags(parser)
    cli.add_deprecated_retries(parser)
    add_mode_flags(parser)
    server_flags = add_server_flags(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print only the summary, as JSON, on stdout (the clients' lines go to stderr)",
    )
    return parser, client_flags, server_flags


def add_mode_flags(parser: argparse.ArgumentParser) -> None:
    """Where the clients run: against a local stack, or as compose's client containers."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--local",
        type=cli.int_at_least(1),
        metavar="R",
        help="start R server replicas on loopback (with nginx in front if installed), "
        "run the clients against them, stop them afterwards",
    )
    mode.add_argument(
        "--docker",
        action="store_true",
        help="run each client as a `docker-compose run --rm client` container, from the "
        "docker-compose.yml in the current directory (they connect to the service nginx)",
    )
    parser.add_argument(
        "--no-nginx",
        action="store_true",
        help="with --local: connect clients to every replica directly, even if nginx is installed",
    )


def add_server_flags(parser: argparse.ArgumentParser) -> Flags:
    """With --local: what the replicas run, passed on to each as ``reqrep server`` flags.

    Not given, a replica takes its own default, from its environment (``SERVER_HANDLER``,
    ``SERVER_THREADS``, ...), which it inherits from this process.
    """
    return [
        parser.add_argument(
            "--work-ms",
            type=cli.float_at_least(0),
            help="with --local: simulated work per request on the servers (the built-in "
            "Work handler)",
        ),
        parser.add_argument(
            "--handler",
            metavar="MODULE:ATTR",
            help="with --local: the replicas' request handler, importable from the current "
            "directory or PYTHONPATH (default: theirs, SERVER_HANDLER or the built-in one)",
        ),
        parser.add_argument(
            "--threads",
            type=cli.int_at_least(0),
            metavar="N",
            help="with --local: each replica runs its synchronous handler in a pool of N "
            "threads (for handlers that block)",
        ),
    ]


def check_server_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The replicas' flags: only with --local, and not two handlers at once."""
    if not args.local:
        only_local = {
            "--no-nginx": args.no_nginx,
            "--work-ms": args.work_ms is not None,
            "--handler": args.handler is not None,
            "--threads": args.threads is not None,
        }
        for flag, given in only_local.items():
            if given:
                parser.error(f"{flag} only applies with --local")
    if args.work_ms and args.handler is not None:
        parser.error("--work-ms is a shortcut for the built-in Work handler: give it or --handler")
    if args.work_ms and args.threads:
        parser.error("--threads is for synchronous handlers, and --work-ms's handler is async")


def check_combinations(
    parser: argparse.ArgumentParser, args: argparse.Namespace, connect_given: bool
) -> None:
    """Flags that would be silently ignored together are a usage error instead."""
    check_server_flags(parser, args)
    if connect_given and (args.local or args.docker):
        which = "--local starts its own servers" if args.local else "--docker clients use nginx"
        parser.error(
            f"--connect cannot be combined with {'--local' if args.local else '--docker'} ({which})"
        )
    if args.docker and not Path("docker-compose.yml").exists():
        parser.error(
            "--docker runs `docker-compose run client` here, and there is no "
            "docker-compose.yml in the current directory: run it from the project directory"
        )


def parse_args(
    argv: Sequence[str] | None = None, prog: str | None = None
) -> tuple[argparse.Namespace, RunPlan]:
    parser, client_flags, server_flags = build_parser(prog)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    connect_given = cli.given(argv, "--connect")
    check_combinations(parser, args, connect_given)
    cli.resolve_client_flags(parser, args)
    # Endpoints go to the clients only when given here; otherwise each client reads
    # SERVER_CONNECT (or its default) itself, or is told the local stack's.
    forwarded = [a for a in client_flags if a.dest != "endpoints" or connect_given]
    plan = RunPlan(
        clients=args.clients,
        client_args=cli.forward(forwarded, args),
        requests=args.requests,
        docker=args.docker,
        local_replicas=args.local or 0,
        local_nginx=False if args.no_nginx else None,
        local_server_args=cli.forward(server_flags, args),
        out=sys.stderr if args.json else sys.stdout,
    )
    return args, plan


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args, plan = parse_args(argv, prog)
    try:
        summary = asyncio.run(run(plan))
    except KeyboardInterrupt:
        print("Interrupted; everything started was stopped.", file=sys.stderr)
        return 130
    except StartError as error:  # the local stack: a replica (or nginx) did not start
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary.to_json(), indent=2), flush=True)
    else:
        print(format_summary(summary), flush=True)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
