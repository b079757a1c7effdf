"""Peers side by side: this project's server and other request/reply stacks, one table.

    .venv/bin/python -m bench.peers        # ~8 min on 2 cores: the table in docs/peers.md
    .venv/bin/python -m bench.peers --systems project-client,project-req --callers 16
    .venv/bin/python -m bench.peers --systems all --callers 16 --rounds 3 --json
    .venv/bin/python -m bench.peers --loop uvloop      # the asyncio callers on uvloop

Needs ``requirements-bench.txt`` (scripts/bootstrap installs it). Each system is
a row of the harness (``bench.harness``: interleaved rounds, the median of each
figure over them, one table): its server in its own process (started afresh for
each system in each round), its callers in one load process (``bench.peer_clients``,
a fresh one per measurement), using the system's own client as its users would:
one client object shared by all callers where the client allows it (``client``
column: "shared"). Systems (``SYSTEMS``):

    project-channel  this project's server driven by its multiplexing Channel (one, shared)
    project-client   this project's server (server.py) driven by its own async Client
    project-req      the same server driven by bare pyzmq asyncio REQ sockets
    ceiling          a synchronous pyzmq REP echo (bench/ceiling.py), bare REQ callers
    grpc             grpc.aio, one unary bytes method (generic handler, no protoc)
    pynng            nng REQ/REP, asyncio, a context per caller (server: a context pool)
    zerorpc          zerorpc (gevent), its Server, one Client shared by greenlets
    aiozmq           aiozmq.rpc, one client
    aiohttp          HTTP/1.1 keep-alive POST, one ClientSession
    zeroapi          zeroapi in ZeroMQ mode, one AsyncZeroClient; its default workers
    zeroapi-sync     the same server, one sync ZeroClient shared by a thread per caller
    zeroapi-tcp      zeroapi in TCP mode, one AsyncZeroClient (TCP protocol)
    *-w1             the same three with the server's workers=1

Servers validate the same way (``reqrep.protocol.respond``: an address field or
``Invalid message``) and send the same small three-field reply; see
``bench.peer_servers``. ``x ref`` is req/s over the reference row's
(``project-req``; ``project-client`` when that is not measured); CPU per reply
is each side's user+sys time over the window: the server's processes (workers
included) and the load process. On a 2-core machine the load process is the
limit for the fastest rows, so req/s understates them; server CPU per reply
compares servers fairly whichever side is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shlex
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from bench import harness
from bench.ceiling import command as ceiling_command
from bench.harness import Figures, Row, Started
from bench.machine import versions
from bench.peer_clients import ASYNCIO, DRIVERS, LOOPS, check_loop
from bench.peer_servers import HTTP_PATH
from bench.processes import project_server_command, server_process
from reqrep.stack import free_port

START_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 5.0
REFERENCES: Final = ("project-req", "project-client")
PROJECT: Final = "project"  # System.server: the project's server
CEILING: Final = "ceiling"  # System.server: bench/ceiling.py
TCP_TARGET: Final = "tcp://127.0.0.1:{port}"
CPUS: Final = os.cpu_count() or 1
ONE_WORKER: Final = ("--workers", "1")
# What the header names, with their versions.
PACKAGES: Final = (
    "grpcio",
    "pynng",
    "zerorpc",
    "gevent",
    "aiozmq",
    "aiohttp",
    "zeroapi",
    "msgspec",
    "uvloop",
)


@dataclass(frozen=True, slots=True)
class System:
    """One peer row: its server, and the bench.peer_clients driver of its callers."""

    key: str
    label: str
    server: str  # PROJECT, CEILING, or a bench.peer_servers system
    client: str  # a key of bench.peer_clients.DRIVERS
    server_args: tuple[str, ...] = ()  # bench.peer_servers flags
    target: str = TCP_TARGET  # how its client is told the address: {port} is filled in
    listeners: int = 1  # sockets listening on the port once it serves (one per worker)


SYSTEMS: Final = (
    System("project-channel", "project server, its Channel", PROJECT, "project-channel"),
    System("project-client", "project server, its Client", PROJECT, "project-client"),
    System("project-req", "project server, bare REQ", PROJECT, "project-req"),
    System("ceiling", "sync REP echo, bare REQ", CEILING, "ceiling"),
    System("grpc", "gRPC aio", "grpc", "grpc", target="127.0.0.1:{port}"),
    System("pynng", "pynng REQ/REP", "pynng", "pynng"),
    System("zerorpc", "zerorpc (gevent)", "zerorpc", "zerorpc"),
    System("aiozmq", "aiozmq RPC", "aiozmq", "aiozmq"),
    System(
        "aiohttp",
        "aiohttp HTTP/1.1",
        "aiohttp",
        "aiohttp",
        target="http://127.0.0.1:{port}" + HTTP_PATH,
    ),
    System("zeroapi", f"zeroapi async, {CPUS} workers (default)", "zeroapi", "zeroapi"),
    System("zeroapi-w1", "zeroapi async, 1 worker", "zeroapi", "zeroapi", ONE_WORKER),
    System("zeroapi-sync", f"zeroapi sync, {CPUS} workers (default)", "zeroapi", "zeroapi-sync"),
    System("zeroapi-sync-w1", "zeroapi sync, 1 worker", "zeroapi", "zeroapi-sync", ONE_WORKER),
    System(
        "zeroapi-tcp",
        f"zeroapi TCP, {CPUS} workers (default)",
        "zeroapi-tcp",
        "zeroapi-tcp",
        listeners=CPUS,
    ),
    System("zeroapi-tcp-w1", "zeroapi TCP, 1 worker", "zeroapi-tcp", "zeroapi-tcp", ONE_WORKER),
)
SYSTEM_KEYS: Final = tuple(system.key for system in SYSTEMS)
BY_KEY: Final = {system.key: system for system in SYSTEMS}


def server_command(system: System, port: int, project_args: Sequence[str] = ()) -> list[str]:
    """The command that runs ``system``'s server on 127.0.0.1:``port``."""
    if system.server == PROJECT:
        return project_server_command(f"tcp://127.0.0.1:{port}", "project", project_args)
    if system.server == CEILING:
        return ceiling_command(port)
    command = [sys.executable, "-m", "bench.peer_servers", system.server, "--port", str(port)]
    return [*command, *system.server_args]


@contextlib.asynccontextmanager
async def running_server(
    system: System, project_args: Sequence[str] = ()
) -> AsyncIterator[Started]:
    """Start ``system``'s server in its own process; yield its target and pid."""
    port = free_port()
    command = server_command(system, port, project_args)
    async with server_process(
        command, port, START_TIMEOUT_S, STOP_TIMEOUT_S, system.listeners
    ) as pid:
        yield Started([system.target.format(port=port)], [pid])


def load_command(system: System, loop: str, started: Started) -> list[str]:
    """The load process of ``system``'s callers against what ``running_server`` started."""
    command = [sys.executable, "-m", "bench.peer_clients", system.client]
    command += ["--target", started.endpoints[0]]
    if DRIVERS[system.client].runs_on == ASYNCIO:
        command += ["--loop", loop]
    return command


def rows(systems: Sequence[str], loop: str, project_args: Sequence[str]) -> list[Row]:
    picked = [BY_KEY[key] for key in systems]
    return [
        Row(
            system.key,
            system.label,
            functools.partial(running_server, system, tuple(project_args)),
            functools.partial(load_command, system, loop),
        )
        for system in picked
    ]


def reference_system(systems: Sequence[str]) -> str | None:
    return next((key for key in REFERENCES if key in systems), None)


@dataclass(frozen=True, slots=True)
class ClientOverhead:
    """The project's Client against a bare REQ socket: load-side CPU per reply."""

    callers: int
    client_us: float
    bare_req_us: float
    ratio: float


def client_overhead(figures: Sequence[Figures]) -> list[ClientOverhead]:
    overheads = []
    for row in figures:
        if row.system != "project-client":
            continue
        bare = harness.find(figures, "project-req", row.callers)
        if bare is None or bare.load_cpu_us_per_reply <= 0:
            continue
        client, bare_us = row.load_cpu_us_per_reply, bare.load_cpu_us_per_reply
        overheads.append(ClientOverhead(row.callers, client, bare_us, client / bare_us))
    return overheads


def overhead_lines(overheads: Sequence[ClientOverhead]) -> list[str]:
    if not overheads:
        return []
    lines = ["", "The project's Client vs a bare REQ socket, load-side CPU per reply:"]
    for o in overheads:
        callers = f"{o.callers} caller{'s' if o.callers != 1 else ''}"
        lines.append(
            f"  {callers:>11}: Client {o.client_us:.0f} us, bare REQ {o.bare_req_us:.0f} us, "
            f"{o.ratio:.2f}x"
        )
    return lines


@dataclass(frozen=True, slots=True)
class Report:
    """One run: its table (text), the same as JSON, its figures and what failed to run."""

    text: str
    document: dict[str, Any]
    figures: list[Figures]
    info: dict[str, str]
    failures: list[str]


def collect(args: argparse.Namespace) -> Report:
    """Measure the selected systems."""
    picked = rows(args.systems, args.loop, shlex.split(args.server_args))
    window = harness.window(args)
    reference = reference_system(args.systems)
    info = harness.describe_machine(**versions(PACKAGES))
    measured = asyncio.run(harness.measure(picked, window, args.verbose))
    figures = harness.summarize(picked, window, measured, reference)
    overheads = client_overhead(figures)
    failures = [*measured.failures, *harness.silent(figures)]
    settings = {
        **asdict(window),
        "systems": args.systems,
        "loop": args.loop,
        "server_args": args.server_args,
        "reference": reference,
    }
    lines = [*harness.header(info, window, reference), "", *harness.table(figures)]
    lines += overhead_lines(overheads)
    document = harness.document(
        info, settings, figures, failures, client_overhead=[asdict(o) for o in overheads]
    )
    return Report("\n".join(lines), document, figures, info, failures)


def chart(rows: Sequence[Figures], info: dict[str, str], path: Path) -> None:
    """Two bar charts side by side: req/s and server CPU us per reply, per system and callers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(dict.fromkeys(row.label for row in rows))
    counts = sorted({row.callers for row in rows})
    found = {(row.label, row.callers): row for row in rows}
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), constrained_layout=True)
    width = 0.8 / len(counts)
    positions = range(len(systems))
    for index, count in enumerate(counts):
        offsets = [p - 0.4 + width * (index + 0.5) for p in positions]
        picked = [found.get((label, count)) for label in systems]
        left.bar(
            offsets,
            [row.requests_per_s if row else 0 for row in picked],
            width,
            label=f"{count} caller{'s' if count != 1 else ''}",
        )
        right.bar(
            offsets,
            [row.server_cpu_us_per_reply if row else 0 for row in picked],
            width,
            label=f"{count} caller{'s' if count != 1 else ''}",
        )
    for axes, title in (
        (left, "requests per second (higher is better)"),
        (right, "server CPU µs per reply (lower is better)"),
    ):
        axes.set_title(title)
        axes.set_xticks(list(positions))
        axes.set_xticklabels(systems, rotation=30, ha="right")
        axes.grid(axis="y", alpha=0.3)
        axes.legend()
    figure.suptitle(
        f"Closed-loop request/reply on loopback, one load process; "
        f"{info['cpus']} CPUs, Python {info['python']}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = harness.argument_parser(
        "This project's server side by side with other request/reply stacks."
    )
    parser.add_argument(
        "--systems",
        type=lambda text: harness.keys(text, SYSTEM_KEYS, "systems"),
        default=list(SYSTEM_KEYS),
        help=f"comma-separated subset of: {', '.join(SYSTEM_KEYS)} (or all)",
    )
    harness.add_window_arguments(parser, duration_s=2.0, rounds=3)
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default=ASYNCIO,
        help="the event loop of the asyncio systems' callers (uvloop: requirements-bench.txt)",
    )
    parser.add_argument("--chart", type=Path, metavar="PATH", help="write a PNG chart there")
    args = parser.parse_args(argv)
    if args.warmup_s is None:
        args.warmup_s = 0.5
    check_loop(parser, args.loop, [BY_KEY[key].client for key in args.systems])
    if args.server_args and not any(BY_KEY[key].server == PROJECT for key in args.systems):
        parser.error("--server-args: none of the systems runs the project's server")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = collect(args)
    except KeyboardInterrupt:
        return 130
    print(json.dumps(report.document, indent=2) if args.json else report.text)
    if args.chart is not None and report.figures:
        chart(report.figures, report.info, args.chart)
    for line in report.failures:
        print(f"peers: {line}", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
