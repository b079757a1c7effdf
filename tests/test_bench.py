"""The benchmark harness runs end to end (tiny counts, no timing assertions),
and the server's batched hot path that the benchmarks drove stays correct."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

import protocol
from local_stack import nginx_binary

PROJECT_DIR = Path(__file__).resolve().parent.parent
RUN = PROJECT_DIR / "bench" / "run.py"
RUN_TIMEOUT_S = 180
TINY = ("--quick", "--duration-s", "0.1", "--warmup-s", "0.05")


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN), *TINY, *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def test_quick_run_prints_the_table_with_every_row_and_the_targets() -> None:
    done = run_bench("--clients", "1,16,64")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    labels = ["ceiling: sync REP echo", "server ROUTER, direct", "ROUTER --work-ms 20"]
    labels.append("REP --work-ms 20")
    if nginx_binary() is not None:
        labels += ["server via nginx", "3 replicas via nginx"]
    for label in labels:
        rows = [line for line in lines if line.startswith(label)]
        assert [row.split()[len(label.split())] for row in rows] == ["1", "16", "64"], label
    assert any(line.startswith("row") and "req/s" in line and "p99 ms" in line for line in lines)
    for target in ("0.8x ceiling", "0.7x direct", "25x REP", "p99 < 3x work"):
        verdicts = [line.split()[0] for line in lines if target in line]
        assert verdicts, target
        assert verdicts[0] in ("PASS", "FAIL")
    assert any("load generator CPU" in line for line in lines)


def test_json_output_has_a_row_per_measurement() -> None:
    done = run_bench("--rows", "ceiling,direct", "--clients", "1,2", "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    measured = [(row["row"], row["clients"]) for row in document["rows"]]
    assert measured == [("ceiling", 1), ("ceiling", 2), ("direct", 1), ("direct", 2)]
    assert all(row["replies"] > 0 and row["errors"] == 0 for row in document["rows"])
    assert document["machine"]["cpus"]


async def test_pipelined_bursts_are_all_answered_in_order_with_one_error_line_each(
    start_server: Callable[..., Any],
    context: zmq.asyncio.Context,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Requests queued faster than answered (the synchronous busy path): all answered, in order."""
    running = await start_server(name="burst")
    caplog.set_level(logging.ERROR, logger="server")
    count = 600
    dealers = [context.socket(zmq.DEALER) for _ in range(2)]
    try:
        for dealer in dealers:
            dealer.connect(running.endpoint)
        requests = [
            [b"", b"", b"no address"] if i % 10 == 3 else [b"", f"c{i}".encode(), b"x"]
            for i in range(count)
        ]
        async with asyncio.timeout(30):
            for dealer in dealers:
                for request in requests:
                    await dealer.send_multipart(request)
            replies = [[await d.recv_multipart() for _ in requests] for d in dealers]
    finally:
        for dealer in dealers:
            dealer.close(linger=0)
    expected = [
        protocol.INVALID_MESSAGE if i % 10 == 3 else protocol.SERVER_RESPONSE for i in range(count)
    ]
    for answered in replies:
        assert [reply[1] for reply in answered] == expected
        assert all(reply[0] == b"" and reply[2] == b"burst" for reply in answered)
    malformed = 2 * expected.count(protocol.INVALID_MESSAGE)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == malformed
    assert all("Invalid message from peer" in e and "empty address" in e for e in errors)
    assert running.server.requests_served == 2 * count
