"""reqrep.report, the JSON report schema: a client's report round-trips, the summary counts
it, and run_clients' human table (reqrep.runner.format_summary) shows what the summary says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reqrep.report import ClientOutcome, ClientReport, Result, Stats, Summary, percentile
from reqrep.runner import format_summary

OK = "Server response"
INVALID = "Invalid message"


def report(client: str, *results: Result, sent: int | None = None) -> ClientReport:
    return ClientReport(client, len(results) if sent is None else sent, tuple(results))


ALICE = report(
    "client_1",
    Result(0, OK, "replica-1", 1.23456, 1),
    Result(1, INVALID, "replica-2", 2.0, 1),
    Result(2, OK, "replica-1", 40.0, 3),
)


def test_percentile_is_nearest_rank_and_0_for_no_values() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile(list(map(float, range(1, 101))), 0.99) == 99.0


def test_client_report_round_trips_through_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    ALICE.write(path)
    data = json.loads(path.read_text())
    assert data["client"] == "client_1"
    assert data["results"][0]["latency_ms"] == 1.235  # rounded to microseconds on the way out
    read = ClientReport.read(path)
    assert read.results[1:] == ALICE.results[1:]
    assert read.results[0].latency_ms == 1.235
    failed = ClientReport("client_2", 5, (), "server did not answer")
    assert ClientReport.from_json(failed.to_json()) == failed


@pytest.mark.parametrize(
    ("text", "error"),
    [("not json", ValueError), ('{"client": "c"}', KeyError), ('{"results": []}', KeyError)],
)
def test_reading_something_else_than_a_report_raises(
    tmp_path: Path, text: str, error: type[Exception]
) -> None:
    path = tmp_path / "report.json"
    path.write_text(text)
    with pytest.raises(error):
        ClientReport.read(path)


def test_stats_count_statuses_failures_retries_and_latency_percentiles() -> None:
    lost = report("client_2", Result(0, OK, "replica-2", 5.0, 2), sent=3)
    stats = Stats.of([ALICE, lost])
    assert (stats.sent, stats.server_response, stats.invalid_message) == (6, 3, 1)
    assert (stats.failed, stats.retried) == (2, 2)
    assert stats.latency_ms == {"p50": 2.0, "p95": 40.0, "p99": 40.0}


def test_summary_is_per_client_and_in_total_and_ok_only_if_every_client_exited_0() -> None:
    outcomes = [
        ClientOutcome("client_1", 0, ALICE),
        ClientOutcome("client_2", 0, report("client_2", Result(0, OK, "replica-2", 3.0, 1))),
    ]
    summary = Summary.of(outcomes, elapsed_s=2.0)
    assert summary.ok
    assert [c["name"] for c in summary.clients] == ["client_1", "client_2"]
    assert summary.clients[0]["sent"] == 3
    assert summary.total.sent == 4
    assert summary.replicas == {"replica-1": 2, "replica-2": 2}
    assert summary.requests_per_second == 2.0
    assert json.loads(json.dumps(summary.to_json()))["total"]["server_response"] == 3
    crashed = Summary.of([*outcomes, ClientOutcome("client_3", None, report("client_3"))], 1.0)
    assert not crashed.ok


def test_format_summary_shows_totals_replica_shares_and_ok() -> None:
    summary = Summary.of([ClientOutcome("client_1", 0, ALICE)], elapsed_s=1.5)
    text = format_summary(summary)
    assert "Summary: 1 clients, 3 requests in 1.50 s (2.0 requests/s)" in text
    assert "Replies per replica: replica-1 2 (67%), replica-2 1 (33%)" in text
    assert "Requests answered after a retry: 1" in text
    assert text.endswith("Result: OK, all 3 requests answered")


def test_format_summary_names_failed_clients() -> None:
    lost = ClientReport("client_1", 1, (), "boom")
    summary = Summary.of([ClientOutcome("client_1", 1, lost, lost.error)], elapsed_s=1.0)
    text = format_summary(summary)
    assert "Result: FAILED" in text
    assert "client_1: boom" in text


def test_replies_that_report_the_servers_failures_are_counted_and_shown_when_there() -> None:
    mixed = report(
        "client_1",
        Result(0, OK, "replica-1", 1.0, 1),
        Result(1, "Server error", "replica-1", 2.0, 1),
        Result(2, "Server timeout", "replica-1", 3.0, 1),
        sent=3,
    )
    summary = Summary.of([ClientOutcome("client_1", 0, mixed)], elapsed_s=1.0)
    stats = summary.total
    counts = (stats.server_response, stats.server_error, stats.server_timeout, stats.failed)
    assert counts == (1, 1, 1, 0)
    assert summary.requests_per_second == 3.0  # every reply is an answer
    header = format_summary(summary).splitlines()[2]
    assert header.split()[2:] == [
        *("Server", "response", "Invalid", "message", "Server", "error", "Server", "timeout"),
        *("failed", "p50", "ms", "p95", "ms", "p99", "ms"),
    ]
    plain = format_summary(Summary.of([ClientOutcome("client_1", 0, ALICE)], elapsed_s=1.0))
    assert "Server error" not in plain  # the seed's table, unless a reply had one
