"""Peers side by side: this project's server and other request/reply stacks, one table.

    .venv/bin/python -m bench.peers        # ~3.5 min on 2 cores, the table in docs/peers.md
    .venv/bin/python -m bench.peers --systems project-client,project-req --callers 16
    .venv/bin/python -m bench.peers --chart docs/peers.png --json

Needs ``requirements-bench.txt`` (scripts/bootstrap installs it). Systems:

    project-client  this project's server (server.py) driven by its own async Client
    project-req     the same server driven by bare pyzmq asyncio REQ sockets
    ceiling         a synchronous pyzmq REP echo (bench/ceiling.py), bare REQ callers
    grpc            grpc.aio, one unary bytes method (generic handler, no protoc)
    pynng           nng REQ/REP, asyncio, a context per caller (server: a context pool)
    zerorpc         zerorpc (gevent), its Server and a Client per caller in greenlets
    aiozmq          aiozmq.rpc, a client per caller
    aiohttp         HTTP/1.1 keep-alive POST, one ClientSession, a connection per caller

The same closed loop for each: C callers in ONE load process (``bench.peer_clients``,
a fresh one per measurement), each sending a request and waiting for its reply
before the next; the server in its own process, started fresh for each system in
each round. Rounds interleave the systems (each round starts one system later);
every figure in the table is the median over rounds. Servers validate the same
way (``reqrep.protocol.respond``: an address field or ``Invalid message``) and send
the same small three-field reply; see ``bench.peer_servers``.

Columns: req/s, latency p50/p99, req/s as a multiple of the reference row
(``project-req``: the project's server with bare REQ callers; ``project-client``
when that is not measured), and CPU microseconds per reply on each side: the
server process's user+sys time from /proc/PID/stat (every thread, ZeroMQ's I/O
thread included) and the load process's own (``time.process_time``), both over
the measured window. On a 2-core machine the load process is the limit for the
fastest rows, so req/s understates them; server CPU per reply compares servers
fairly whichever side is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from bench.ceiling import command as ceiling_command
from bench.machine import machine
from bench.peer_clients import LoadResult
from bench.peer_servers import HTTP_PATH
from bench.processes import BenchError, run_json, server_process
from reqrep import cli, stack
from reqrep.stack import free_port

START_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 5.0
REFERENCES: Final = ("project-req", "project-client")
DEFAULT_CALLERS: Final = (1, 16, 64)


@dataclass(frozen=True, slots=True)
class System:
    key: str
    label: str
    # How the target is written for the system's client: {port} is filled in.
    target: str


SYSTEMS: Final = (
    System("project-client", "project server, its Client", "tcp://127.0.0.1:{port}"),
    System("project-req", "project server, bare REQ", "tcp://127.0.0.1:{port}"),
    System("ceiling", "sync REP echo, bare REQ", "tcp://127.0.0.1:{port}"),
    System("grpc", "gRPC aio", "127.0.0.1:{port}"),
    System("pynng", "pynng REQ/REP", "tcp://127.0.0.1:{port}"),
    System("zerorpc", "zerorpc (gevent)", "tcp://127.0.0.1:{port}"),
    System("aiozmq", "aiozmq RPC", "tcp://127.0.0.1:{port}"),
    System("aiohttp", "aiohttp HTTP/1.1", "http://127.0.0.1:{port}" + HTTP_PATH),
)
SYSTEM_KEYS: Final = tuple(system.key for system in SYSTEMS)


@dataclass(frozen=True, slots=True)
class Row:
    """One system at one caller count: the medians over rounds."""

    system: str
    label: str
    callers: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    ratio: float | None  # req/s over the reference row's at the same caller count
    server_cpu_us_per_reply: float
    load_cpu_us_per_reply: float
    errors: int  # over all rounds
    rounds_requests_per_s: tuple[float, ...]


def server_command(system: str, port: int) -> list[str]:
    """The command that runs ``system``'s server on 127.0.0.1:``port``."""
    if system in ("project-client", "project-req"):
        bind = f"tcp://127.0.0.1:{port}"
        return stack.server_command("--bind", bind, "--name", "project")
    if system == "ceiling":
        return ceiling_command(port)
    return [sys.executable, "-m", "bench.peer_servers", system, "--port", str(port)]


@contextlib.asynccontextmanager
async def running_server(system: str) -> AsyncIterator[tuple[str, int]]:
    """Start ``system``'s server in its own process; yield its target and pid."""
    port = free_port()
    command = server_command(system, port)
    async with server_process(command, port, START_TIMEOUT_S, STOP_TIMEOUT_S) as pid:
        yield next(s.target for s in SYSTEMS if s.key == system).format(port=port), pid


async def run_load(
    system: str, target: str, pid: int, callers: int, duration_s: float, warmup_s: float
) -> LoadResult:
    """One measurement: a fresh load process of ``callers`` callers against ``target``."""
    command = [sys.executable, "-m", "bench.peer_clients", system, "--target", target]
    command += ["--callers", str(callers), "--server-pid", str(pid)]
    command += ["--duration-s", str(duration_s), "--warmup-s", str(warmup_s)]
    return LoadResult(**await run_json(command, duration_s + warmup_s + 60))


async def measure(
    systems: Sequence[str],
    callers: Sequence[int],
    rounds: int,
    duration_s: float,
    warmup_s: float,
    verbose: bool = False,
) -> tuple[dict[tuple[str, int], list[LoadResult]], list[str]]:
    """Every system at every caller count, ``rounds`` times, interleaved.

    Returns each (system, callers)'s results, one per round, and the failures.
    """
    results: dict[tuple[str, int], list[LoadResult]] = {}
    failures: list[str] = []
    for round_index in range(rounds):
        shift = round_index % len(systems)
        for system in [*systems[shift:], *systems[:shift]]:
            try:
                async with running_server(system) as (target, pid):
                    for count in callers:
                        result = await run_load(system, target, pid, count, duration_s, warmup_s)
                        results.setdefault((system, count), []).append(result)
                        if verbose:
                            print(
                                f"round {round_index + 1}: {system}, {count} callers: "
                                f"{result.requests_per_s:.0f} req/s, server "
                                f"{result.server_cpu_us_per_reply:.0f} us/reply",
                                file=sys.stderr,
                            )
            except BenchError as error:
                failures.append(f"round {round_index + 1}: {system}: {error}")
                if verbose:
                    print(f"round {round_index + 1}: {error}", file=sys.stderr)
    return results, failures


def reference_system(systems: Sequence[str]) -> str | None:
    return next((key for key in REFERENCES if key in systems), None)


def summarize(
    systems: Sequence[str],
    callers: Sequence[int],
    results: dict[tuple[str, int], list[LoadResult]],
) -> list[Row]:
    """The medians over rounds of every measured (system, callers), in table order."""
    labels = {system.key: system.label for system in SYSTEMS}
    reference = reference_system(systems)
    medians: dict[tuple[str, int], float] = {
        key: statistics.median(r.requests_per_s for r in runs) for key, runs in results.items()
    }
    rows = []
    for system in systems:
        for count in callers:
            runs = results.get((system, count))
            if not runs:
                continue
            base = medians.get((reference, count), 0.0) if reference else 0.0
            rps = medians[(system, count)]
            rows.append(
                Row(
                    system=system,
                    label=labels[system],
                    callers=count,
                    requests_per_s=rps,
                    p50_ms=statistics.median(r.p50_ms for r in runs),
                    p99_ms=statistics.median(r.p99_ms for r in runs),
                    ratio=rps / base if base > 0 else None,
                    server_cpu_us_per_reply=statistics.median(
                        r.server_cpu_us_per_reply for r in runs
                    ),
                    load_cpu_us_per_reply=statistics.median(r.load_cpu_us_per_reply for r in runs),
                    errors=sum(r.errors for r in runs),
                    rounds_requests_per_s=tuple(r.requests_per_s for r in runs),
                )
            )
    return rows


@dataclass(frozen=True, slots=True)
class ClientOverhead:
    """The project's Client against a bare REQ socket: load-side CPU per reply."""

    callers: int
    client_us: float
    bare_req_us: float
    ratio: float


def client_overhead(rows: Sequence[Row]) -> list[ClientOverhead]:
    found = {(row.system, row.callers): row for row in rows}
    overheads = []
    for row in rows:
        if row.system != "project-client":
            continue
        bare = found.get(("project-req", row.callers))
        if bare is None or bare.load_cpu_us_per_reply <= 0:
            continue
        client, bare_us = row.load_cpu_us_per_reply, bare.load_cpu_us_per_reply
        overheads.append(ClientOverhead(row.callers, client, bare_us, client / bare_us))
    return overheads


def render(
    info: dict[str, str],
    settings: dict[str, Any],
    rows: Sequence[Row],
    overheads: Sequence[ClientOverhead],
) -> str:
    reference = settings["reference"]
    lines = [
        f"machine: {info['cpus']} CPUs ({info['cpu_model']}), python {info['python']}, "
        f"pyzmq {info['pyzmq']} (libzmq {info['libzmq']}); "
        f"load average at start {info['load_average_at_start']}",
        f"each measurement: {settings['warmup_s']:g} s warm-up, {settings['duration_s']:g} s "
        f"measured; medians of {settings['rounds']} interleaved round(s); closed loop, "
        "one load process, the server in its own process",
        f"x ref: req/s over {reference or 'nothing'}'s at the same caller count; "
        "CPU us/reply: user+sys time of each process over the window, per reply",
        "",
    ]
    header = (
        f"{'system':<27} {'callers':>7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'x ref':>6} {'server us/reply':>15} {'load us/reply':>13} {'errors':>6}"
    )
    lines += [header, "-" * len(header)]
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        lines.append(
            f"{row.label:<27} {row.callers:>7} {row.requests_per_s:>8.0f} {row.p50_ms:>7.2f} "
            f"{row.p99_ms:>7.2f} {ratio:>6} {row.server_cpu_us_per_reply:>15.0f} "
            f"{row.load_cpu_us_per_reply:>13.0f} {row.errors:>6}"
        )
    if overheads:
        lines += ["", "The project's Client vs a bare REQ socket, load-side CPU per reply:"]
        for o in overheads:
            callers = f"{o.callers} caller{'s' if o.callers != 1 else ''}"
            lines.append(
                f"  {callers:>11}: Client {o.client_us:.0f} us, bare REQ {o.bare_req_us:.0f} us, "
                f"{o.ratio:.2f}x"
            )
    return "\n".join(lines)


def chart(rows: Sequence[Row], info: dict[str, str], path: Path) -> None:
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


def _systems(text: str) -> list[str]:
    wanted = [key.strip() for key in text.split(",") if key.strip()]
    if wanted == ["all"]:
        return list(SYSTEM_KEYS)
    unknown = [key for key in wanted if key not in SYSTEM_KEYS]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"unknown systems {', '.join(unknown) or '(none)'}; known: {', '.join(SYSTEM_KEYS)}"
        )
    return list(dict.fromkeys(wanted))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="This project's server side by side with other request/reply stacks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--systems",
        type=_systems,
        default=list(SYSTEM_KEYS),
        help=f"comma-separated subset of: {', '.join(SYSTEM_KEYS)} (or all)",
    )
    parser.add_argument(
        "--callers",
        type=cli.int_list_at_least(1),
        default=list(DEFAULT_CALLERS),
        help="concurrent callers, comma-separated",
    )
    parser.add_argument(
        "--duration-s", type=cli.float_at_least(0.01), default=2.0, help="measured seconds"
    )
    parser.add_argument(
        "--warmup-s", type=cli.float_at_least(0), default=0.5, help="unmeasured seconds first"
    )
    parser.add_argument(
        "--rounds", type=cli.int_at_least(1), default=3, help="interleaved rounds (medians)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--chart", type=Path, metavar="PATH", help="write a PNG chart there")
    parser.add_argument("--verbose", action="store_true", help="progress on stderr")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    results, failures = asyncio.run(
        measure(
            args.systems, args.callers, args.rounds, args.duration_s, args.warmup_s, args.verbose
        )
    )
    rows = summarize(args.systems, args.callers, results)
    overheads = client_overhead(rows)
    settings = {
        "systems": args.systems,
        "callers": args.callers,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "rounds": args.rounds,
        "reference": reference_system(args.systems),
    }
    if args.json:
        document = {
            "machine": info,
            "settings": settings,
            "rows": [asdict(row) for row in rows],
            "client_overhead": [asdict(o) for o in overheads],
            "failures": failures,
        }
        print(json.dumps(document, indent=2))
    else:
        print(render(info, settings, rows, overheads))
    if args.chart is not None and rows:
        chart(rows, info, args.chart)
    silent = [
        f"{row.label}, {row.callers} callers: no correct reply"
        for row in rows
        if row.requests_per_s <= 0
    ]
    for line in [*failures, *silent]:
        print(f"peers: {line}", file=sys.stderr)
    return 1 if failures or silent else 0


if __name__ == "__main__":
    sys.exit(main())
