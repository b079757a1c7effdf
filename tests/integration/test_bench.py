"""The benchmark harness (bench/run.py) runs end to end: tiny counts, no timing assertions."""

from __future__ import annotations

import json
import sys

from reqrep import nginx
from tests.support import run

RUN_TIMEOUT_S = 180
TINY = ("--quick", "--duration-s", "0.1", "--warmup-s", "0.05")


def run_bench(*args: str) -> str:
    """``python -m bench.run`` with tiny windows; its stdout (a test failure if it fails)."""
    return run([sys.executable, "-m", "bench.run", *TINY, *args], RUN_TIMEOUT_S)


def test_quick_run_prints_the_table_with_every_row_and_the_targets() -> None:
    lines = run_bench("--clients", "1,16,64").splitlines()
    labels = ["ceiling: sync REP echo", "server ROUTER, direct", "ROUTER --work-ms 20"]
    labels.append("REP --work-ms 20")
    if nginx.binary() is not None:
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
    document = json.loads(run_bench("--rows", "ceiling,direct", "--clients", "1,2", "--json"))
    measured = [(row["row"], row["clients"]) for row in document["rows"]]
    assert measured == [("ceiling", 1), ("ceiling", 2), ("direct", 1), ("direct", 2)]
    assert all(row["replies"] > 0 and row["errors"] == 0 for row in document["rows"])
    assert document["machine"]["cpus"]
