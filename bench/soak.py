#!/usr/bin/env python3
"""Soak: steady load on one server replica for a long time; does its memory or fd count grow?

    .venv/bin/python -m bench.soak                   # 10 minutes
    .venv/bin/python -m bench.soak --duration-s 30   # the CI run

Starts one replica on loopback (``local_stack``; ``--nginx`` puts nginx in
front), then runs ``--clients`` Lazy Pirate clients at a steady total
``--rate``. Each client opens a new connection every ``--reconnect-every``
requests and sends every ``--malformed-every``-th request without its address,
so connection set-up and teardown and the error path are soaked too.

Every ``--sample-s`` it samples the replica's resident memory (VmRSS) and open
file descriptors from /proc and prints a line. After the warm-up it compares
the median of the first third of the samples with the median of the last
third: growth of either over ``--max-growth-percent`` (default 10), or any
request left unanswered, fails the run (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import zmq.asyncio

from bench.machine import open_fds, rss_kib
from reqrep import cli, protocol
from reqrep.client import Client
from reqrep.config import ClientConfig
from reqrep.errors import RequestTimeout
from reqrep.stack import LocalStack


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float
    rss_kib: int
    fds: int
    answered: int
    failed: int


@dataclass
class Load:
    answered: int = 0
    failed: int = 0


async def _client(
    number: int,
    endpoints: Sequence[str],
    context: zmq.asyncio.Context,
    args: argparse.Namespace,
    load: Load,
    stop: asyncio.Event,
) -> None:
    """One client at rate / clients requests per second, on a fixed schedule."""
    interval_s = args.clients / args.rate
    config = ClientConfig(endpoints=tuple(endpoints), timeout_ms=args.timeout_ms, tries=3)
    loop = asyncio.get_running_loop()
    # Spread the clients over one interval so the load is steady, not in bursts.
    next_at = loop.time() + interval_s * number / args.clients
    sent = 0
    stagger = args.reconnect_every // args.clients
    async with Client(config, context) as client:
        while not stop.is_set():
            delay_s = next_at - loop.time()
            if delay_s > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay_s)
                except TimeoutError:
                    pass
                else:
                    return
            next_at = max(next_at + interval_s, loop.time() - interval_s)
            sent += 1
            data = f"soak {number}.{sent}".encode()
            if args.malformed_every and sent % args.malformed_every == 0:
                frames = protocol.encode_request_without_address(data)
            else:
                frames = protocol.encode_request(f"soak-{number}", data)
            try:
                await client.request(frames, f"{number}.{sent}")
            except RequestTimeout:
                load.failed += 1
            else:
                load.answered += 1
            # The next request opens a new connection; the clients take turns.
            if args.reconnect_every and (sent + number * stagger) % args.reconnect_every == 0:
                client.close()


def growth_percent(samples: Sequence[Sample], field: str) -> tuple[float, float, float]:
    """(baseline, end, growth %): medians of the first and last third of ``samples``."""
    third = max(1, len(samples) // 3)
    baseline = statistics.median(getattr(s, field) for s in samples[:third])
    end = statistics.median(getattr(s, field) for s in samples[-third:])
    return baseline, end, 100 * (end - baseline) / baseline if baseline else 0.0


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    async with LocalStack(1, nginx=args.nginx) as stack:
        pid = stack.replicas[0].process.pid
        print(
            f"Soak: {args.clients} clients, {args.rate:g} requests/s in all, against "
            f"{', '.join(stack.endpoints)} (replica pid {pid}) for {args.duration_s:g} s; "
            f"warm-up {args.warmup_s:g} s, a sample every {args.sample_s:g} s",
            flush=True,
        )
        print(f"{'t_s':>8}{'rss_kib':>10}{'fds':>6}{'answered':>10}{'failed':>8}", flush=True)
        context = zmq.asyncio.Context()
        load, stop = Load(), asyncio.Event()
        tasks = [
            asyncio.create_task(_client(i, stack.endpoints, context, args, load, stop))
            for i in range(args.clients)
        ]
        samples: list[Sample] = []
        started = time.monotonic()
        try:
            while (elapsed_s := time.monotonic() - started) < args.duration_s:
                await asyncio.sleep(min(args.sample_s, args.duration_s - elapsed_s))
                if any(task.done() for task in tasks):
                    break  # a client crashed: gather below raises its error
                sample = Sample(
                    round(time.monotonic() - started, 1),
                    rss_kib(pid),
                    open_fds(pid),
                    load.answered,
                    load.failed,
                )
                samples.append(sample)
                marker = "  (warm-up)" if sample.t_s <= args.warmup_s else ""
                print(
                    f"{sample.t_s:>8.1f}{sample.rss_kib:>10}{sample.fds:>6}"
                    f"{sample.answered:>10}{sample.failed:>8}{marker}",
                    flush=True,
                )
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), args.timeout_ms * 3 / 1000 + 10)
            context.term()
    return summarize(args, samples, load)


def summarize(args: argparse.Namespace, samples: Sequence[Sample], load: Load) -> dict[str, Any]:
    measured = [s for s in samples if s.t_s > args.warmup_s]
    result: dict[str, Any] = {
        "samples": [asdict(s) for s in samples],
        "answered": load.answered,
        "failed": load.failed,
    }
    failures = [f"{load.failed} request(s) unanswered"] if load.failed else []
    if len(measured) < 3:
        failures.append("fewer than 3 samples after the warm-up")
    else:
        for field in ("rss_kib", "fds"):
            baseline, end, growth = growth_percent(measured, field)
            result[field] = {"baseline": baseline, "end": end, "growth_percent": round(growth, 2)}
            if growth > args.max_growth_percent:
                failures.append(f"{field} grew {growth:.1f}% (> {args.max_growth_percent:g}%)")
    result["ok"] = not failures
    result["failures"] = failures
    return result


def format_result(result: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"Requests answered: {result['answered']}, unanswered: {result['failed']}"]
    for field, unit in (("rss_kib", "KiB"), ("fds", "fds")):
        if field in result:
            f = result[field]
            lines.append(
                f"{field} after warm-up: {f['baseline']:g} -> {f['end']:g} {unit} "
                f"({f['growth_percent']:+.1f}%, limit {args.max_growth_percent:g}%)"
            )
    lines.append(
        "Result: OK" if result["ok"] else f"Result: FAILED: {'; '.join(result['failures'])}"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Steady load on one replica; sample its RSS and open fds; fail on growth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--duration-s",
        type=cli.float_at_least(0.001),
        default=os.environ.get("SOAK_DURATION_S", "600"),
        help="how long to run (env SOAK_DURATION_S; CI: 30)",
    )
    parser.add_argument(
        "--warmup-s",
        type=cli.float_at_least(0),
        help="samples before this are not compared (default a fifth of the duration, at most 60)",
    )
    parser.add_argument(
        "--sample-s",
        type=cli.float_at_least(0.001),
        help="time between samples (default: 30 samples over the run, 1 to 20 s apart)",
    )
    parser.add_argument("--clients", type=cli.int_at_least(1), default=8, help="concurrent clients")
    parser.add_argument(
        "--rate",
        type=cli.float_at_least(0.001),
        default=400.0,
        help="requests per second, all clients",
    )
    parser.add_argument(
        "--reconnect-every",
        type=cli.int_at_least(0),
        default=50,
        help="each client opens a new connection after this many requests; 0: never",
    )
    parser.add_argument(
        "--malformed-every",
        type=cli.int_at_least(0),
        default=10,
        help="every Nth request of a client has no address; 0: none",
    )
    parser.add_argument(
        "--timeout-ms", type=cli.int_at_least(1), default=2500, help="client reply timeout"
    )
    parser.add_argument(
        "--max-growth-percent",
        type=cli.float_at_least(0),
        default=10.0,
        help="allowed growth of RSS and fds, after warm-up",
    )
    parser.add_argument("--nginx", action="store_true", help="put nginx in front of the replica")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = parser.parse_args(argv)
    if args.warmup_s is None:
        args.warmup_s = min(60.0, args.duration_s / 5)
    if args.sample_s is None:
        args.sample_s = min(20.0, max(1.0, args.duration_s / 30))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = asyncio.run(soak(args))
    except KeyboardInterrupt:
        return 130
    print(format_result(result, args), flush=True)
    if args.json:
        print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
