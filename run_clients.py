"""Run many clients at once, show their interleaved output and a summary.

    python3 run_clients.py --local 3              # no Docker: 3 replicas (+ nginx) on loopback
    python3 run_clients.py --clients 6            # against tcp://localhost:5555 (docker-compose up)
    python3 run_clients.py --docker --clients 4   # as `docker-compose run --rm client` containers

Each client is a separate ``client.py`` process; the summary says, per client
and in total, what was sent and answered, latency percentiles, the request
rate and how many replies each replica gave. Exits 1 if any client failed.
The work is done by ``reqrep.runner``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from reqrep import cli
from reqrep.runner import RunPlan, format_summary, run


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, RunPlan]:
    parser = argparse.ArgumentParser(
        description="Run many client.py processes at once and summarize the results.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--clients",
        type=cli.int_at_least(1),
        default=cli.env("RUN_CLIENTS", RunPlan().clients),
        help="clients to run at once (env RUN_CLIENTS)",
    )
    client_flags = cli.add_client_flags(parser)
    cli.add_deprecated_retries(parser)
    add_mode_flags(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print only the summary, as JSON, on stdout (the clients' lines go to stderr)",
    )
    args = parser.parse_args(argv)
    check_combinations(parser, args)
    cli.resolve_client_flags(parser, args)
    out = sys.stderr if args.json else sys.stdout
    plan = RunPlan(
        clients=args.clients,
        client_args=cli.forward(client_flags, args),
        requests=args.requests,
        docker=args.docker,
        local_replicas=args.local or 0,
        local_nginx=False if args.no_nginx else None,
        local_server_args=["--work-ms", str(args.work_ms)] if args.work_ms else [],
        out=out,
    )
    return args, plan


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
        help="run each client as a `docker-compose run --rm client` container "
        "(they connect to the compose service nginx)",
    )
    parser.add_argument(
        "--no-nginx",
        action="store_true",
        help="with --local: connect clients to every replica directly, even if nginx is installed",
    )
    parser.add_argument(
        "--work-ms",
        type=cli.float_at_least(0),
        help="with --local: simulated work per request on the servers",
    )


def check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flags that would be silently ignored together are a usage error instead."""
    if not args.local:
        for flag, given in (("--no-nginx", args.no_nginx), ("--work-ms", args.work_ms)):
            if given:
                parser.error(f"{flag} only applies with --local")
    if args.connect and (args.local or args.docker):
        which = "--local starts its own servers" if args.local else "--docker clients use nginx"
        parser.error(
            f"--connect cannot be combined with {'--local' if args.local else '--docker'} ({which})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args, plan = parse_args(argv)
    try:
        summary = asyncio.run(run(plan))
    except KeyboardInterrupt:
        print("Interrupted; everything started was stopped.", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary.to_json(), indent=2), flush=True)
    else:
        print(format_summary(summary), flush=True)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
