"""The benchmark harness: rows measured in interleaved rounds, their medians, one table.

``bench.run`` (the server against its ceiling, with targets) and ``bench.peers``
(the server against other request/reply stacks) are two sets of rows of this
harness. A ``Row`` says how to start what it measures (``start``: servers, and
nginx) and which load process drives it (``load``: ``bench.loadgen`` or
``bench.peer_clients``); every load process takes the same window flags
(``--callers``, ``--duration-s``, ``--warmup-s``, ``--server-pid``) and prints
one ``bench.recorder.LoadResult``.

Each round starts every row's servers afresh and runs one load process per
caller count against them; rounds interleave the rows, each round starting one
row later than the one before. The median: every figure of a row at a caller
count (req/s, latencies, CPU per reply, ...) is the median of that figure over
the rounds (``statistics.median``: the mean of the middle two for an even
count); errors are summed. ``x ref`` is a row's median req/s over the reference
row's at the same caller count.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from bench.machine import machine
from bench.processes import BenchError, run_json
from bench.recorder import LoadResult
from reqrep import cli
from reqrep.errors import StackError

# How long a load process may take beyond its warm-up and window.
LOAD_SLACK_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Started:
    """What a row started: where its load process connects, and the processes to watch."""

    endpoints: list[str]
    pids: list[int]


@dataclass(frozen=True, slots=True)
class Row:
    """One row of a table: what runs, and which load process drives it."""

    key: str
    label: str
    start: Callable[[], contextlib.AbstractAsyncContextManager[Started]]
    # The load process's command for what ``start`` started, before the window flags.
    load: Callable[[Started], list[str]]
    compared: bool = True  # False: x ref does not apply (it does other work than the reference)


@dataclass(frozen=True, slots=True)
class Window:
    """How every row is measured."""

    callers: tuple[int, ...]
    duration_s: float
    warmup_s: float
    rounds: int


@dataclass
class Measured:
    """Every round's result per (row key, callers), and what could not be measured."""

    results: dict[tuple[str, int], list[LoadResult]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Figures:
    """One row at one caller count: the medians over the rounds (errors: their sum)."""

    system: str
    label: str
    callers: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    ratio: float | None  # req/s over the reference row's at the same callers; None: n/a
    server_cpu_us_per_reply: float
    load_cpu_us_per_reply: float
    server_cpu_percent: float
    load_cpu_percent: float
    load_main_thread_cpu_percent: float
    client_objects: int
    loop: str
    errors: int
    first_error: str
    rounds_requests_per_s: tuple[float, ...]


def window_command(started: Started, callers: int, window: Window) -> list[str]:
    """The flags every load process takes: callers, the window, the server pids."""
    argv = ["--callers", str(callers), "--duration-s", f"{window.duration_s:g}"]
    argv += ["--warmup-s", f"{window.warmup_s:g}"]
    for pid in started.pids:
        argv += ["--server-pid", str(pid)]
    return argv


async def run_load(
    load: Sequence[str], started: Started, callers: int, window: Window
) -> LoadResult:
    """One measurement: a fresh load process (``load``, before the window flags) against
    what was ``started``, at ``callers``."""
    command = [*load, *window_command(started, callers, window)]
    timeout_s = window.warmup_s + window.duration_s + LOAD_SLACK_S
    return LoadResult(**await run_json(command, timeout_s))


def _rotated(rows: Sequence[Row], round_index: int) -> list[Row]:
    shift = round_index % len(rows)
    return [*rows[shift:], *rows[:shift]]


async def measure(rows: Sequence[Row], window: Window, verbose: bool = False) -> Measured:
    """Every row at every caller count, ``window.rounds`` times, the rows interleaved.

    A row that fails (does not start, or its load process fails) is a failure
    of that round; the others go on.
    """
    measured = Measured()
    for round_index in range(window.rounds):
        for row in _rotated(rows, round_index):
            try:
                async with row.start() as started:
                    for callers in window.callers:
                        result = await run_load(row.load(started), started, callers, window)
                        measured.results.setdefault((row.key, callers), []).append(result)
                        if verbose:
                            print(
                                f"round {round_index + 1}: {row.key}, {callers} callers: "
                                f"{result.requests_per_s:.0f} req/s, server "
                                f"{result.server_cpu_us_per_reply:.0f} us/reply",
                                file=sys.stderr,
                            )
            except (BenchError, StackError) as error:
                measured.failures.append(f"round {round_index + 1}: {row.key}: {error}")
                if verbose:
                    print(f"round {round_index + 1}: {row.key}: {error}", file=sys.stderr)
    return measured


def _median(runs: Sequence[LoadResult], figure: str) -> float:
    return float(statistics.median(getattr(run, figure) for run in runs))


def summarize(
    rows: Sequence[Row], window: Window, measured: Measured, reference: str | None
) -> list[Figures]:
    """The figures of every measured (row, callers), in table order."""
    figures = []
    for row in rows:
        for callers in window.callers:
            runs = measured.results.get((row.key, callers))
            if not runs:
                continue
            rps = _median(runs, "requests_per_s")
            base_runs = measured.results.get((reference, callers)) if reference else None
            base = _median(base_runs, "requests_per_s") if base_runs else 0.0
            figures.append(
                Figures(
                    system=row.key,
                    label=row.label,
                    callers=callers,
                    requests_per_s=rps,
                    p50_ms=_median(runs, "p50_ms"),
                    p99_ms=_median(runs, "p99_ms"),
                    ratio=rps / base if row.compared and base > 0 else None,
                    server_cpu_us_per_reply=_median(runs, "server_cpu_us_per_reply"),
                    load_cpu_us_per_reply=_median(runs, "load_cpu_us_per_reply"),
                    server_cpu_percent=_median(runs, "server_cpu_percent"),
                    load_cpu_percent=_median(runs, "load_cpu_percent"),
                    load_main_thread_cpu_percent=_median(runs, "load_main_thread_cpu_percent"),
                    client_objects=runs[0].client_objects,
                    loop=runs[0].loop,
                    errors=sum(run.errors for run in runs),
                    first_error=next((run.first_error for run in runs if run.first_error), ""),
                    rounds_requests_per_s=tuple(run.requests_per_s for run in runs),
                )
            )
    return figures


def find(figures: Sequence[Figures], system: str, callers: int) -> Figures | None:
    """The figures of ``system`` at ``callers``, if measured."""
    return next((f for f in figures if f.system == system and f.callers == callers), None)


def silent(figures: Sequence[Figures]) -> list[str]:
    """Rows that got no correct reply at all: each is a failure of the run."""
    return [
        f"{f.system}, {f.callers} callers: no correct reply ({f.first_error or 'none in time'})"
        for f in figures
        if f.requests_per_s <= 0
    ]


# --- the table ---------------------------------------------------------------


def header(info: dict[str, str], window: Window, reference: str | None) -> list[str]:
    """What ran where and how it was measured: the lines above every table."""
    rounds = f"{window.rounds} interleaved round{'s' if window.rounds != 1 else ''}"
    return [
        f"machine: {info['cpus']} CPUs ({info['cpu_model']}), {info['os']}; "
        f"load average at start {info['load_average_at_start']}",
        f"python {info['python']}, pyzmq {info['pyzmq']} (libzmq {info['libzmq']})"
        + "".join(f", {name} {version}" for name, version in _others(info)),
        f"each figure: the median of that figure over {rounds} (errors: the sum); each "
        f"round {window.warmup_s:g} s warm-up, then {window.duration_s:g} s measured; closed "
        "loop, one request outstanding per caller, one load process, servers in their own",
        (
            f"x ref: req/s over {reference}'s at the same callers ('-': not comparable)"
            if reference
            else "x ref: no reference row in this run"
        )
        + "; us/reply: user+sys CPU per reply over the window, server (all its processes "
        "and threads) and load process; load CPU: % of one core",
    ]


def _others(info: dict[str, str]) -> list[tuple[str, str]]:
    shown = {"cpus", "cpu_model", "os", "python", "pyzmq", "libzmq", "load_average_at_start"}
    return [(name, version) for name, version in info.items() if name not in shown]


def table(figures: Sequence[Figures]) -> list[str]:
    """The one table renderer: a line per row and caller count."""
    width = max([len("system"), *(len(f.label) for f in figures)])
    head = (
        f"{'system':<{width}} {'callers':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'x ref':>6} {'server us/reply':>15} {'load us/reply':>13} {'load CPU':>8} "
        f"{'client':>10} {'loop':>7} {'errors':>6}"
    )
    lines = [head, "-" * len(head)]
    for f in figures:
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}"
        client = "shared" if f.client_objects == 1 < f.callers else f"{f.client_objects}"
        lines.append(
            f"{f.label:<{width}} {f.callers:>7} {f.requests_per_s:>8.0f} {f.p50_ms:>8.3f} "
            f"{f.p99_ms:>8.3f} {ratio:>6} {f.server_cpu_us_per_reply:>15.1f} "
            f"{f.load_cpu_us_per_reply:>13.1f} {f.load_cpu_percent:>7.0f}% "
            f"{client:>10} {f.loop:>7} {f.errors:>6}"
        )
    return lines


def document(
    info: dict[str, str],
    settings: dict[str, Any],
    figures: Sequence[Figures],
    failures: Sequence[str],
    **extra: Any,
) -> dict[str, Any]:
    """The run as JSON: machine, settings, one object per table line, and the failures."""
    return {
        "machine": info,
        "settings": settings,
        "rows": [asdict(f) for f in figures],
        **extra,
        "failures": list(failures),
    }


def describe_machine(**more: str) -> dict[str, str]:
    """``bench.machine.machine()``, with the versions of what else the rows run."""
    return {**machine(), **more}


# --- the command line every harness CLI shares --------------------------------


def argument_parser(description: str) -> argparse.ArgumentParser:
    """The parser of a harness command: its defaults shown in --help."""
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


def add_window_arguments(
    parser: argparse.ArgumentParser, duration_s: float | None, rounds: int
) -> None:
    """--callers, --duration-s, --warmup-s, --rounds, --server-args, --json, --verbose."""
    valued: list[tuple[str, Callable[[str], object], object, str]] = [
        (
            "--callers",
            cli.int_list_at_least(1),
            [1, 16, 64],
            "concurrent callers (each with one request outstanding), comma-separated",
        ),
        ("--duration-s", cli.float_at_least(0.01), duration_s, "measured seconds per measurement"),
        ("--warmup-s", cli.float_at_least(0), None, "unmeasured seconds first (default 0.5)"),
        (
            "--rounds",
            cli.int_at_least(1),
            rounds,
            "interleaved rounds over all rows; each figure is its median over them",
        ),
        ("--server-args", str, "", "extra server.py arguments for the project's server"),
    ]
    for flag, kind, default, text in valued:
        parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--verbose", action="store_true", help="progress on stderr")


def window(args: argparse.Namespace) -> Window:
    return Window(tuple(args.callers), args.duration_s, args.warmup_s, args.rounds)


def keys(text: str, known: Sequence[str], what: str) -> list[str]:
    """An argparse type's body: comma-separated keys out of ``known``, or ``all``."""
    wanted = [key.strip() for key in text.split(",") if key.strip()]
    if wanted == ["all"]:
        return list(known)
    unknown = [key for key in wanted if key not in known]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none)'}; known: {', '.join(known)} (or all)"
        )
    return list(dict.fromkeys(wanted))
