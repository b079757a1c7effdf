"""bench.harness without running anything: the median it states, x ref, the table, the keys."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from bench import harness
from bench.harness import Measured, Row, Started, Window
from bench.recorder import LoadResult

RESULT = LoadResult(
    callers=4,
    client_objects=1,
    loop="asyncio",
    duration_s=1.0,
    replies=1000,
    errors=0,
    first_error="",
    requests_per_s=1000.0,
    p50_ms=1.0,
    p99_ms=2.0,
    server_cpu_us_per_reply=30.0,
    load_cpu_us_per_reply=60.0,
    server_cpu_percent=3.0,
    load_cpu_percent=6.0,
    load_main_thread_cpu_percent=5.0,
)
WINDOW = Window(callers=(4,), duration_s=1.0, warmup_s=0.1, rounds=3)


@contextlib.asynccontextmanager
async def nothing() -> AsyncIterator[Started]:
    yield Started([], [])


def row(key: str, compared: bool = True) -> Row:
    return Row(key, key.upper(), nothing, lambda started: [], compared=compared)


def test_each_figure_is_its_own_median_over_the_rounds_and_errors_are_summed() -> None:
    rounds = [
        replace(RESULT, requests_per_s=900.0, p99_ms=9.0, server_cpu_us_per_reply=20.0, errors=1),
        replace(RESULT, requests_per_s=1000.0, p99_ms=1.0, server_cpu_us_per_reply=40.0),
        replace(RESULT, requests_per_s=3000.0, p99_ms=5.0, server_cpu_us_per_reply=30.0, errors=2),
    ]
    measured = Measured({("a", 4): rounds})
    (figures,) = harness.summarize([row("a")], WINDOW, measured, None)
    # Not the figures of one round (the round with the median req/s had p99 1.0).
    assert (figures.requests_per_s, figures.p99_ms, figures.server_cpu_us_per_reply) == (
        1000.0,
        5.0,
        30.0,
    )
    assert figures.errors == 3
    assert figures.rounds_requests_per_s == (900.0, 1000.0, 3000.0)


def test_an_even_count_of_rounds_takes_the_mean_of_the_middle_two() -> None:
    rounds = [replace(RESULT, requests_per_s=rps) for rps in (100.0, 200.0, 400.0, 1000.0)]
    (figures,) = harness.summarize([row("a")], WINDOW, Measured({("a", 4): rounds}), None)
    assert figures.requests_per_s == 300.0


def test_x_ref_is_over_the_reference_at_the_same_callers_and_absent_where_not_comparable() -> None:
    measured = Measured(
        {
            ("ref", 4): [replace(RESULT, requests_per_s=2000.0)],
            ("a", 4): [replace(RESULT, requests_per_s=1000.0)],
            ("work", 4): [replace(RESULT, requests_per_s=10.0)],
        }
    )
    rows = [row("ref"), row("a"), row("work", compared=False)]
    figures = harness.summarize(rows, WINDOW, measured, "ref")
    assert [(f.system, f.ratio) for f in figures] == [("ref", 1.0), ("a", 0.5), ("work", None)]
    work_line = harness.table(figures)[-1]
    assert work_line.split()[5] == "-"
    assert harness.summarize(rows, WINDOW, measured, None)[0].ratio is None


def test_a_row_without_a_correct_reply_is_a_failure() -> None:
    measured = Measured(
        {("a", 4): [replace(RESULT, requests_per_s=0.0, replies=0, first_error="Boom: no")]}
    )
    figures = harness.summarize([row("a")], WINDOW, measured, None)
    assert harness.silent(figures) == ["a, 4 callers: no correct reply (Boom: no)"]


def test_the_table_says_whether_the_callers_shared_one_client() -> None:
    shared = replace(RESULT, client_objects=1)
    own = replace(RESULT, client_objects=4)
    measured = Measured({("a", 4): [shared], ("b", 4): [own]})
    lines = harness.table(harness.summarize([row("a"), row("b")], WINDOW, measured, None))
    assert [line.split()[-3] for line in lines[2:]] == ["shared", "4"]


def test_keys_accept_a_subset_or_all_and_refuse_unknown_ones() -> None:
    known = ("a", "b", "c")
    assert harness.keys("c, a,a", known, "rows") == ["c", "a"]
    assert harness.keys("all", known, "rows") == ["a", "b", "c"]
    for text in ("bogus", "a,bogus", ","):
        with pytest.raises(argparse.ArgumentTypeError, match="known: a, b, c"):
            harness.keys(text, known, "rows")
