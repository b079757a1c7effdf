#!/usr/bin/env python3
"""Benchmarks: the server side by side with the ceiling, in one run, one table, its targets.

    .venv/bin/python -m bench.run              # about 75 s; --rounds 3 on a busy machine
    .venv/bin/python -m bench.run --quick      # smoke run, about 10 s

Rows of the harness (``bench.harness``), each driven by the same load generator
(``bench.loadgen``: one process, one DEALER socket per caller):

    ceiling       a synchronous pyzmq REP echo loop (``bench.ceiling``)
    direct        the project's server, ROUTER mode, callers connect to it
    nginx         the same behind nginx (the project's nginx.conf on loopback)
    nginx-3       3 replicas behind nginx
    router-work   ROUTER mode with --work-ms (default 20)
    rep-work      --socket rep with the same --work-ms
    echo          the server with a synchronous handler of the user's kind (the data back)
    echo-async    the same as an ``async def``: a task per request
    hash          a CPU-bound handler (examples/handlers/hashing.py), one replica
    hash-threads  the same with --threads 4: threads share one GIL
    hash-2        the same on 2 replicas behind nginx: processes do not

The table is the harness's (medians over ``--rounds``; ``x ref`` is req/s over
the ceiling's, "-" for the work rows, which do other work than the echo). Then
the targets, as PASS/FAIL lines with the ratios: a FAIL makes the exit status 1
unless ``--informational`` says the targets are information only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from bench import harness
from bench.ceiling import command as ceiling_command
from bench.harness import Figures, Row, Started, find
from bench.loadgen import EXPECT_ECHO, EXPECT_SERVER
from bench.loadgen import command as loadgen_command
from bench.processes import server_process
from reqrep import cli, nginx
from reqrep.stack import LocalStack, free_port

# The targets, and the caller counts they are judged at.
ONE_CALLER_P50_VS_CEILING: Final = 1.2
ECHO_VS_DEFAULT: Final = 0.9
SYNC_ECHO: Final = "reqrep.handlers:echo"
ASYNC_ECHO: Final = "examples.handlers.echo:echo_async"
CPU_BOUND: Final = "examples.handlers.hashing:stretch"
HASH_THREADS: Final = 4
DIRECT_VS_CEILING: Final = 0.8
NGINX_VS_DIRECT: Final = 0.7
ROUTER_VS_REP: Final = 25.0
WORK_P99_FACTOR: Final = 3.0
THROUGHPUT_CALLERS: Final = 16
WORK_CALLERS: Final = 64
REFERENCE: Final = "ceiling"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    value: str
    passed: bool | None  # None: information, or not measured in this run


@contextlib.asynccontextmanager
async def ceiling() -> AsyncIterator[Started]:
    """The echo ceiling in its own process, once it accepts."""
    port = free_port()
    async with server_process(ceiling_command(port), port) as pid:
        yield Started([f"tcp://127.0.0.1:{port}"], [pid])


@contextlib.asynccontextmanager
async def stack(
    replicas: int, with_nginx: bool, server_args: Sequence[str]
) -> AsyncIterator[Started]:
    """The project's server replicas (and nginx in front), once they accept."""
    async with LocalStack(replicas, server_args=server_args, nginx=with_nginx) as started:
        yield Started(started.endpoints, [r.process.pid for r in started.replicas])


def _loadgen(expect: str) -> Callable[[Started], list[str]]:
    """The load of every row here: ``bench.loadgen`` against what the row started."""
    return lambda started: loadgen_command(started.endpoints, expect)


@dataclass(frozen=True, slots=True)
class ServerRow:
    """A row of the project's server: its replicas, nginx in front or not, its own flags."""

    key: str
    label: str
    replicas: int
    nginx: bool
    args: tuple[str, ...] = ()
    compared: bool = True  # False: it does other work than the ceiling's echo


def server_rows(work_ms: float) -> list[ServerRow]:
    """The server's rows: the default handler, simulated work, and the user's kinds of
    handler (an echo, sync and async; CPU-bound work on threads and on replicas)."""
    work = ("--work-ms", f"{work_ms:g}")
    rep = (*work, "--socket", "rep")
    cpu = ("--handler", CPU_BOUND)
    cpu_threads = (*cpu, "--threads", str(HASH_THREADS))
    return [
        ServerRow("direct", "server ROUTER, direct", 1, False),
        ServerRow("nginx", "server via nginx", 1, True),
        ServerRow("nginx-3", "3 replicas via nginx", 3, True),
        ServerRow("router-work", f"ROUTER --work-ms {work_ms:g}", 1, False, work, False),
        ServerRow("rep-work", f"REP --work-ms {work_ms:g}", 1, False, rep, False),
        ServerRow("echo", "sync echo handler", 1, False, ("--handler", SYNC_ECHO)),
        ServerRow("echo-async", "async echo handler", 1, False, ("--handler", ASYNC_ECHO)),
        ServerRow("hash", "CPU-bound handler, 1 replica", 1, False, cpu, False),
        ServerRow(
            "hash-threads", f"CPU-bound, --threads {HASH_THREADS}", 1, False, cpu_threads, False
        ),
        ServerRow("hash-2", "CPU-bound, 2 replicas, nginx", 2, True, cpu, False),
    ]


def all_rows(work_ms: float, server_args: Sequence[str]) -> list[Row]:
    extra = tuple(server_args)
    server = _loadgen(EXPECT_SERVER)
    return [
        Row("ceiling", "ceiling: sync REP echo", ceiling, _loadgen(EXPECT_ECHO)),
        *(
            Row(
                spec.key,
                spec.label,
                functools.partial(stack, spec.replicas, spec.nginx, (*extra, *spec.args)),
                server,
                compared=spec.compared,
            )
            for spec in server_rows(work_ms)
        ),
    ]


ROW_KEYS: Final = tuple(row.key for row in all_rows(0, ()))


# --- the targets ---------------------------------------------------------------


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("inf")


def _throughput_check(
    figures: Sequence[Figures], row: str, base: str, callers: int, target: float, name: str
) -> Check:
    """``row`` reaches at least ``target`` times ``base``'s requests per second."""
    measured, reference = find(figures, row, callers), find(figures, base, callers)
    if measured is None or reference is None:
        return Check(name, "not measured", None)
    ratio = _ratio(measured.requests_per_s, reference.requests_per_s)
    return Check(name, f"{ratio:.2f}x", ratio >= target)


def _one_caller_latency(figures: Sequence[Figures]) -> Check:
    """With one caller, the server's p50 stays within a factor of the sync REP loop's."""
    name = f"1-caller p50 <= {ONE_CALLER_P50_VS_CEILING}x ceiling's"
    direct, ceiling_row = find(figures, "direct", 1), find(figures, "ceiling", 1)
    if direct is None or ceiling_row is None:
        return Check(name, "not measured", None)
    ratio = _ratio(direct.p50_ms, ceiling_row.p50_ms)
    value = f"{ratio:.2f}x ({direct.p50_ms:.3f} vs {ceiling_row.p50_ms:.3f} ms)"
    return Check(name, value, ratio <= ONE_CALLER_P50_VS_CEILING)


def _cpu_per_reply(figures: Sequence[Figures], callers: int) -> Check:
    """Server CPU per reply, server vs the sync REP loop (information)."""
    name = f"server CPU per reply, {callers} callers"
    direct, ceiling_row = find(figures, "direct", callers), find(figures, "ceiling", callers)
    if direct is None or ceiling_row is None:
        return Check(name, "not measured", None)
    us, base = direct.server_cpu_us_per_reply, ceiling_row.server_cpu_us_per_reply
    return Check(name, f"{us:.1f} us vs ceiling {base:.1f} us ({_ratio(us, base):.2f}x)", None)


def _nginx_latency(figures: Sequence[Figures]) -> list[Check]:
    added = []
    for f in figures:
        base = find(figures, "direct", f.callers)
        if f.system == "nginx" and base is not None:
            added.append(f"{f.p50_ms - base.p50_ms:+.3f} ms at {f.callers}")
    return [Check("p50 latency added by nginx", ", ".join(added), None)] if added else []


def _work_checks(figures: Sequence[Figures], work_ms: float) -> list[Check]:
    w = WORK_CALLERS
    found = [
        _throughput_check(
            figures,
            "router-work",
            "rep-work",
            w,
            ROUTER_VS_REP,
            f"ROUTER >= {ROUTER_VS_REP:g}x REP req/s with --work-ms {work_ms:g}, {w} callers",
        )
    ]
    router = find(figures, "router-work", w)
    limit_ms = WORK_P99_FACTOR * work_ms
    name = f"ROUTER p99 < {WORK_P99_FACTOR:g}x work ({limit_ms:g} ms), {w} callers"
    if router:
        found.append(Check(name, f"{router.p99_ms:.1f} ms", router.p99_ms < limit_ms))
    else:
        found.append(Check(name, "not measured", None))
    return found


def _handler_checks(figures: Sequence[Figures]) -> list[Check]:
    """The user's handlers: an echo keeps the default's pace; CPU-bound work scales with
    replicas, not threads (information)."""
    n = THROUGHPUT_CALLERS
    found = [
        _throughput_check(
            figures,
            "echo",
            "direct",
            n,
            ECHO_VS_DEFAULT,
            f"sync echo handler >= {ECHO_VS_DEFAULT}x the default handler's req/s, {n} callers",
        )
    ]
    for row, base, name in (
        ("echo-async", "direct", f"async echo handler vs the default, {n} callers"),
        ("hash-threads", "hash", f"CPU-bound: --threads {HASH_THREADS} vs inline, {n} callers"),
        ("hash-2", "hash", f"CPU-bound: 2 replicas vs 1, {n} callers"),
    ):
        measured = _throughput_check(figures, row, base, n, 0.0, name)
        found.append(Check(measured.name, measured.value, None))
    return found


def _load_generator_checks(figures: Sequence[Figures]) -> list[Check]:
    # The generator is not the limit if it pushes the ceiling at least as hard as it pushes
    # the server, at every caller count where it could be: with one caller both wait on the
    # round trip, and which is ahead is chance.
    pairs = [
        (c.callers, c.requests_per_s, d.requests_per_s)
        for c in figures
        if c.system == "ceiling" and c.callers > 1 and (d := find(figures, "direct", c.callers))
    ]
    name = "load generator drives the ceiling at least as hard as the server"
    found = []
    if pairs:
        worst = min(pairs, key=lambda p: _ratio(p[1], p[2]))
        value = f"ceiling/server {_ratio(worst[1], worst[2]):.2f}x at {worst[0]} callers (lowest)"
        found.append(Check(name, value, all(c >= s for _, c, s in pairs)))
    else:
        found.append(Check(name, "not measured", None))
    if figures:
        busiest = max(figures, key=lambda f: f.load_main_thread_cpu_percent)
        value = (
            f"max {busiest.load_main_thread_cpu_percent:.0f}% of a core in its loop, "
            f"{busiest.load_cpu_percent:.0f}% with its I/O thread "
            f"({busiest.system}, {busiest.callers} callers)"
        )
        found.append(Check("load generator CPU", value, None))
    return found


def checks(figures: Sequence[Figures], work_ms: float) -> list[Check]:
    """The targets, judged on this run's figures."""
    n = THROUGHPUT_CALLERS
    return [
        _throughput_check(
            figures,
            "direct",
            "ceiling",
            n,
            DIRECT_VS_CEILING,
            f"server direct >= {DIRECT_VS_CEILING}x ceiling req/s, {n} callers",
        ),
        _throughput_check(
            figures,
            "nginx",
            "direct",
            n,
            NGINX_VS_DIRECT,
            f"via nginx >= {NGINX_VS_DIRECT}x direct req/s, {n} callers",
        ),
        _one_caller_latency(figures),
        _cpu_per_reply(figures, n),
        *_nginx_latency(figures),
        *_work_checks(figures, work_ms),
        *_handler_checks(figures),
        *_load_generator_checks(figures),
    ]


def verdict(check: Check) -> str:
    if check.value == "not measured":
        return "SKIP"
    return {True: "PASS", False: "FAIL", None: "INFO"}[check.passed]


# --- one run -------------------------------------------------------------------


def nginx_version() -> str:
    binary = nginx.binary()
    if binary is None:
        return "not installed"
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return done.stderr.strip().removeprefix("nginx version: ").removeprefix("nginx/")


@dataclass(frozen=True, slots=True)
class Report:
    """One run: its table (text), the same as JSON, what failed to run, and failed targets."""

    text: str
    document: dict[str, Any]
    failures: list[str]
    failed_targets: list[str]


def collect(args: argparse.Namespace) -> Report:
    """Measure the selected rows and judge the targets."""
    rows = all_rows(args.work_ms, shlex.split(args.server_args))
    rows = [row for row in rows if row.key in args.rows]
    if nginx.binary() is None:
        behind_nginx = {spec.key for spec in server_rows(args.work_ms) if spec.nginx}
        skipped = [row.key for row in rows if row.key in behind_nginx]
        if skipped:
            print(f"skipped {', '.join(skipped)}: nginx is not installed", file=sys.stderr)
        rows = [row for row in rows if row.key not in skipped]
    window = harness.window(args)
    info = harness.describe_machine(nginx=nginx_version())
    measured = asyncio.run(harness.measure(rows, window, args.verbose))
    figures = harness.summarize(rows, window, measured, REFERENCE)
    found = checks(figures, args.work_ms)
    failures = [*measured.failures, *harness.silent(figures)]
    settings = {**asdict(window), "work_ms": args.work_ms, "server_args": args.server_args}
    lines = [*harness.header(info, window, REFERENCE), "", *harness.table(figures), ""]
    lines += [f"{verdict(check):<4}  {check.name}: {check.value}" for check in found]
    document = harness.document(
        info, settings, figures, failures, checks=[asdict(check) for check in found]
    )
    failed = [check.name for check in found if check.passed is False]
    return Report("\n".join(lines), document, failures, failed)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = harness.argument_parser(
        "Benchmark the server against a sync REP echo ceiling, in one table, "
        "with its targets (exit status 1 if one FAILs, unless --informational)."
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 0.3 s per measurement, 0.1 s warm-up"
    )
    harness.add_window_arguments(parser, duration_s=None, rounds=1)
    parser.add_argument(
        "--rows",
        type=lambda text: harness.keys(text, ROW_KEYS, "rows"),
        default=list(ROW_KEYS),
        help=f"comma-separated subset of: {', '.join(ROW_KEYS)} (or all)",
    )
    parser.add_argument(
        "--work-ms",
        type=cli.float_at_least(0),
        default=20.0,
        help="work per request for the *-work rows",
    )
    parser.add_argument(
        "--informational",
        action="store_true",
        help="the targets are information: exit 0 even if one FAILs",
    )
    args = parser.parse_args(argv)
    if args.duration_s is None:
        args.duration_s = 0.3 if args.quick else 3.0
    if args.warmup_s is None:
        args.warmup_s = 0.1 if args.quick else 0.5
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = collect(args)
    except KeyboardInterrupt:
        return 130
    print(json.dumps(report.document, indent=2) if args.json else report.text)
    for failure in report.failures:
        print(f"bench.run: {failure}", file=sys.stderr)
    if report.failed_targets and not args.informational:
        print(
            f"bench.run: {len(report.failed_targets)} target(s) FAIL: "
            f"{'; '.join(report.failed_targets)}; exit status 1 (--informational: the targets "
            "are information only)",
            file=sys.stderr,
        )
    return 1 if report.failures or (report.failed_targets and not args.informational) else 0


if __name__ == "__main__":
    sys.exit(main())
