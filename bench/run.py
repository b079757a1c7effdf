#!/usr/bin/env python3
"""Benchmarks: the server side by side with the ceiling, in one run, one table.

    .venv/bin/python -m bench.run            # about 75 s; --repeat 3 on a busy machine
    .venv/bin/python -m bench.run --quick    # smoke run, about 10 s

Rows, each measured in this run with the same load generator
(``bench.loadgen``: one process, one DEALER socket per virtual client):

    ceiling       a synchronous pyzmq REP echo loop (``bench.ceiling``)
    direct        the project's server, ROUTER mode, clients connect to it
    nginx         the same behind nginx (the project's nginx.conf on loopback)
    nginx-3       3 replicas behind nginx
    router-work   ROUTER mode with --work-ms (default 20)
    rep-work      --socket rep with the same --work-ms

For each row and client count: requests per second, latency p50/p99, the
ratio to the ceiling at the same client count, the server processes' CPU time
per answered request (user + system, ZeroMQ's I/O thread included, over the
measured window: a figure that does not depend on how fast the load generator
is) and the load generator's own CPU use. Then the targets, as PASS/FAIL lines
with the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.ceiling import command as ceiling_command
from bench.loadgen import EXPECT_ECHO, EXPECT_SERVER, LoadResult
from bench.machine import machine as describe_machine
from bench.processes import BenchError, run_json, server_process
from reqrep import cli, nginx
from reqrep.errors import StackError
from reqrep.stack import LocalStack, free_port

# The targets; client counts they are judged at.
ONE_CLIENT_P50_VS_CEILING = 1.2
DIRECT_VS_CEILING = 0.8
NGINX_VS_DIRECT = 0.7
ROUTER_VS_REP = 25.0
WORK_P99_FACTOR = 3.0
THROUGHPUT_CLIENTS = 16
WORK_CLIENTS = 64


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    label: str
    replicas: int  # 0: the ceiling, not the project's server
    nginx: bool = False
    server_args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Measurement:
    row: str
    label: str
    result: LoadResult
    ratio_to_ceiling: float | None
    rounds_rps: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    value: str
    passed: bool | None  # None: not measured in this run


def all_rows(work_ms: float, server_args: Sequence[str]) -> list[Row]:
    extra = tuple(server_args)
    work = ("--work-ms", f"{work_ms:g}")
    return [
        Row("ceiling", "ceiling: sync REP echo", 0),
        Row("direct", "server ROUTER, direct", 1, server_args=extra),
        Row("nginx", "server via nginx", 1, nginx=True, server_args=extra),
        Row("nginx-3", "3 replicas via nginx", 3, nginx=True, server_args=extra),
        Row("router-work", f"ROUTER --work-ms {work_ms:g}", 1, server_args=(*extra, *work)),
        Row(
            "rep-work",
            f"REP --work-ms {work_ms:g}",
            1,
            server_args=(*extra, *work, "--socket", "rep"),
        ),
    ]


@contextlib.asynccontextmanager
async def ceiling() -> AsyncIterator[tuple[list[str], list[int]]]:
    """Run the echo ceiling in its own process; yield its endpoint (and pid) once it accepts."""
    port = free_port()
    async with server_process(ceiling_command(port), port) as pid:
        yield [f"tcp://127.0.0.1:{port}"], [pid]


@contextlib.asynccontextmanager
async def target(row: Row) -> AsyncIterator[tuple[list[str], list[int]]]:
    """Start what a row measures; yield the endpoints clients connect to and the server pids."""
    if row.replicas == 0:
        async with ceiling() as started:
            yield started
        return
    async with LocalStack(row.replicas, server_args=row.server_args, nginx=row.nginx) as stack:
        yield stack.endpoints, [replica.process.pid for replica in stack.replicas]


async def run_loadgen(
    endpoints: Sequence[str],
    clients: int,
    duration_s: float,
    warmup_s: float,
    expect: str,
    watch_pids: Sequence[int] = (),
) -> LoadResult:
    """One measurement: the load generator in its own process."""
    command = [sys.executable, "-m", "bench.loadgen", "--expect", expect]
    for endpoint in endpoints:
        command += ["--connect", endpoint]
    for pid in watch_pids:
        command += ["--watch-pid", str(pid)]
    command += ["--clients", str(clients), "--duration-s", str(duration_s)]
    command += ["--warmup-s", str(warmup_s)]
    return LoadResult(**await run_json(command, duration_s + warmup_s + 30))


async def measure(args: argparse.Namespace, rows: Sequence[Row]) -> list[Measurement]:
    """Every row at every client count, ``--repeat`` rounds; the median round of each."""
    if nginx.binary() is None:
        skipped = [row.key for row in rows if row.nginx]
        if skipped:
            print(f"skipped {', '.join(skipped)}: nginx is not installed", file=sys.stderr)
        rows = [row for row in rows if not row.nginx]
    runs: dict[tuple[str, int], list[LoadResult]] = {}
    for round_number in range(1, args.repeat + 1):
        for row in rows:
            expect = EXPECT_ECHO if row.replicas == 0 else EXPECT_SERVER
            async with target(row) as (endpoints, pids):
                for clients in args.clients:
                    result = await run_loadgen(
                        endpoints, clients, args.duration_s, args.warmup_s, expect, pids
                    )
                    runs.setdefault((row.key, clients), []).append(result)
                    if args.verbose:
                        print(
                            f"round {round_number}: {row.key}, {clients} clients: "
                            f"{result.requests_per_s:.0f} req/s",
                            file=sys.stderr,
                        )
    measurements: list[Measurement] = []
    for row in rows:
        for clients in args.clients:
            result = _median(runs[(row.key, clients)])
            ceiling = runs.get(("ceiling", clients))
            base = _median(ceiling).requests_per_s if ceiling else 0.0
            ratio = result.requests_per_s / base if base > 0 else None
            rounds = tuple(r.requests_per_s for r in runs[(row.key, clients)])
            measurements.append(Measurement(row.key, row.label, result, ratio, rounds))
    return measurements


def _median(results: Sequence[LoadResult]) -> LoadResult:
    """The run with the median requests per second (the lower one of an even count)."""
    ordered = sorted(results, key=lambda r: r.requests_per_s)
    return ordered[(len(ordered) - 1) // 2]


def _find(measurements: Sequence[Measurement], row: str, clients: int) -> LoadResult | None:
    for m in measurements:
        if m.row == row and m.result.clients == clients:
            return m.result
    return None


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("inf")


def _throughput_check(
    measurements: Sequence[Measurement], row: str, base: str, clients: int, target: float, name: str
) -> Check:
    """``row`` reaches at least ``target`` times ``base``'s requests per second."""
    measured, reference = _find(measurements, row, clients), _find(measurements, base, clients)
    if measured is None or reference is None:
        return Check(name, "not measured", None)
    ratio = _ratio(measured.requests_per_s, reference.requests_per_s)
    return Check(name, f"{ratio:.2f}x", ratio >= target)


def _one_client_latency(measurements: Sequence[Measurement]) -> Check:
    """With one client, the server's p50 stays within a factor of the sync REP loop's."""
    name = f"1-client p50 <= {ONE_CLIENT_P50_VS_CEILING}x ceiling's"
    direct, ceiling = _find(measurements, "direct", 1), _find(measurements, "ceiling", 1)
    if direct is None or ceiling is None:
        return Check(name, "not measured", None)
    ratio = _ratio(direct.p50_ms, ceiling.p50_ms)
    value = f"{ratio:.2f}x ({direct.p50_ms:.3f} vs {ceiling.p50_ms:.3f} ms)"
    return Check(name, value, ratio <= ONE_CLIENT_P50_VS_CEILING)


def _cpu_per_request(measurements: Sequence[Measurement], clients: int) -> Check:
    """Server CPU per answered request, server vs the sync REP loop (information)."""
    name = f"server CPU per request, {clients} clients"
    direct, ceiling = (
        _find(measurements, "direct", clients),
        _find(measurements, "ceiling", clients),
    )
    if direct is None or ceiling is None:
        return Check(name, "not measured", None)
    us, base = direct.server_cpu_us_per_reply, ceiling.server_cpu_us_per_reply
    return Check(name, f"{us:.1f} us vs ceiling {base:.1f} us ({_ratio(us, base):.2f}x)", None)


def checks(measurements: Sequence[Measurement], work_ms: float) -> list[Check]:
    """The issue's targets, judged on this run's figures."""
    n, w = THROUGHPUT_CLIENTS, WORK_CLIENTS
    found = [
        _throughput_check(
            measurements,
            "direct",
            "ceiling",
            n,
            DIRECT_VS_CEILING,
            f"server direct >= {DIRECT_VS_CEILING}x ceiling req/s, {n} clients",
        ),
        _throughput_check(
            measurements,
            "nginx",
            "direct",
            n,
            NGINX_VS_DIRECT,
            f"via nginx >= {NGINX_VS_DIRECT}x direct req/s, {n} clients",
        ),
    ]
    found += [_one_client_latency(measurements), _cpu_per_request(measurements, n)]
    added = []
    for m in measurements:
        base = _find(measurements, "direct", m.result.clients)
        if m.row == "nginx" and base is not None:
            delta = m.result.p50_ms - base.p50_ms
            added.append(f"{delta:+.3f} ms at {m.result.clients}")
    if added:
        found.append(Check("p50 latency added by nginx", ", ".join(added), None))

    found.append(
        _throughput_check(
            measurements,
            "router-work",
            "rep-work",
            w,
            ROUTER_VS_REP,
            f"ROUTER >= {ROUTER_VS_REP:g}x REP req/s with --work-ms {work_ms:g}, {w} clients",
        )
    )
    router = _find(measurements, "router-work", w)
    limit_ms = WORK_P99_FACTOR * work_ms
    p99_name = f"ROUTER p99 < {WORK_P99_FACTOR:g}x work ({limit_ms:g} ms), {w} clients"
    if router:
        found.append(Check(p99_name, f"{router.p99_ms:.1f} ms", router.p99_ms < limit_ms))
    else:
        found.append(Check(p99_name, "not measured", None))

    # The generator is not the limit if it pushes the ceiling at least as
    # hard as it pushes the server, at every client count.
    pairs = [
        (c.result.clients, c.result.requests_per_s, d.requests_per_s)
        for c in measurements
        if c.row == "ceiling" and (d := _find(measurements, "direct", c.result.clients))
    ]
    name = "load generator drives the ceiling at least as hard as the server"
    if pairs:
        worst = min(pairs, key=lambda p: _ratio(p[1], p[2]))
        value = f"ceiling/server {_ratio(worst[1], worst[2]):.2f}x at {worst[0]} clients (lowest)"
        found.append(Check(name, value, all(c >= s for _, c, s in pairs)))
    else:
        found.append(Check(name, "not measured", None))
    if measurements:
        busiest = max(measurements, key=lambda m: m.result.loop_cpu_percent)
        value = (
            f"max {busiest.result.loop_cpu_percent:.0f}% of a core in its loop, "
            f"{busiest.result.cpu_percent:.0f}% with its I/O thread "
            f"({busiest.row}, {busiest.result.clients} clients)"
        )
        found.append(Check("load generator CPU", value, None))
    return found


def machine() -> dict[str, str]:
    """bench.machine's description, with the version of the nginx the nginx rows use."""
    binary = nginx.binary()
    version = "not installed"
    if binary:
        done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
        version = done.stderr.strip().removeprefix("nginx version: ")
    return {**describe_machine(), "nginx": version}


def render(
    info: dict[str, str],
    settings: dict[str, Any],
    measurements: Sequence[Measurement],
    found: Sequence[Check],
) -> str:
    lines = [
        f"machine: {info['cpus']} CPUs ({info['cpu_model']}), {info['os']}",
        f"python {info['python']}, pyzmq {info['pyzmq']}, libzmq {info['libzmq']}, "
        f"nginx {info['nginx']}; load average at start {info['load_average_at_start']}",
        f"each measurement: {settings['warmup_s']:g} s warm-up, then {settings['duration_s']:g} s "
        f"measured, median of {settings['repeat']} round(s); closed loop, "
        "one request outstanding per client",
        "",
    ]
    header = (
        f"{'row':<24} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'x ceiling':>9} {'errors':>6} {'srv us/req':>10} {'loadgen CPU':>11}"
    )
    lines += [header, "-" * len(header)]
    for m in measurements:
        r = m.result
        ratio = "-" if m.ratio_to_ceiling is None else f"{m.ratio_to_ceiling:.2f}"
        lines.append(
            f"{m.label:<24} {r.clients:>7} {r.requests_per_s:>9.0f} {r.p50_ms:>8.3f} "
            f"{r.p99_ms:>8.3f} {ratio:>9} {r.errors:>6} {r.server_cpu_us_per_reply:>10.1f} "
            f"{r.cpu_percent:>10.0f}%"
        )
    lines.append("")
    for check in found:
        verdict = {True: "PASS", False: "FAIL", None: "INFO" if check.value else ""}[check.passed]
        if check.value == "not measured":
            verdict = "SKIP"
        lines.append(f"{verdict:<4}  {check.name}: {check.value}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the server against a sync REP echo ceiling, in one table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 0.3 s per measurement, 0.1 s warm-up"
    )
    parser.add_argument(
        "--duration-s",
        type=cli.float_at_least(0.01),
        help="measured seconds (default 3, quick 0.3)",
    )
    parser.add_argument(
        "--warmup-s", type=cli.float_at_least(0), help="warm-up seconds (default 0.5, quick 0.1)"
    )
    parser.add_argument(
        "--clients",
        type=cli.int_list_at_least(1),
        default=[1, 16, 64],
        help="client counts, e.g. 1,16,64",
    )
    parser.add_argument(
        "--work-ms", type=cli.float_at_least(0), default=20.0, help="work for the *-work rows"
    )
    parser.add_argument(
        "--rows",
        default="all",
        help="comma-separated subset of: ceiling, direct, nginx, nginx-3, router-work, rep-work",
    )
    parser.add_argument(
        "--server-args", default="", help="extra server.py arguments for every server row"
    )
    parser.add_argument(
        "--repeat",
        type=cli.int_at_least(1),
        default=1,
        help="rounds over all rows (interleaved); each figure is the median round's",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--verbose", action="store_true", help="progress on stderr")
    args = parser.parse_args(argv)
    if args.duration_s is None:
        args.duration_s = 0.3 if args.quick else 3.0
    if args.warmup_s is None:
        args.warmup_s = 0.1 if args.quick else 0.5
    if args.duration_s <= 0 or args.warmup_s < 0 or args.repeat < 1:
        parser.error("--duration-s and --repeat must be positive, --warmup-s not negative")
    return args


def select_rows(args: argparse.Namespace) -> list[Row]:
    rows = all_rows(args.work_ms, shlex.split(args.server_args))
    if args.rows == "all":
        return rows
    wanted = [key.strip() for key in args.rows.split(",") if key.strip()]
    known = {row.key: row for row in rows}
    unknown = [key for key in wanted if key not in known]
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[key] for key in wanted]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows = select_rows(args)
    info = machine()
    try:
        measurements = asyncio.run(measure(args, rows))
    except (BenchError, StackError) as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    found = checks(measurements, args.work_ms)
    settings = {
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "clients": args.clients,
        "work_ms": args.work_ms,
        "server_args": args.server_args,
        "repeat": args.repeat,
    }
    if args.json:
        document = {
            "machine": info,
            "settings": settings,
            "rows": [
                {
                    "row": m.row,
                    "label": m.label,
                    **asdict(m.result),
                    "ratio": m.ratio_to_ceiling,
                    "rounds_requests_per_s": m.rounds_rps,
                }
                for m in measurements
            ],
            "checks": [asdict(check) for check in found],
        }
        print(json.dumps(document, indent=2))
    else:
        print(render(info, settings, measurements, found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
