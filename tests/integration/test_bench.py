"""The benchmark harness's bench.run end to end: tiny windows, no timing assertions."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from reqrep import nginx
from tests.support import PROJECT_DIR, run

RUN_TIMEOUT_S = 180
TINY = ("--quick", "--duration-s", "0.1", "--warmup-s", "0.05")


def run_bench(*args: str) -> str:
    """``python -m bench.run`` with tiny windows; its stdout (a test failure if it fails)."""
    return run([sys.executable, "-m", "bench.run", *TINY, *args], RUN_TIMEOUT_S)


def test_quick_run_prints_every_row_at_every_caller_count_and_judges_the_targets() -> None:
    # REP answers one request at a time: 5 ms of work lets it answer 64 callers in a short run.
    argv = ("--callers", "1,16,64", "--work-ms", "5", "--duration-s", "0.2", "--warmup-s", "0.1")
    lines = run_bench(*argv, "--informational").splitlines()
    labels = ["ceiling: sync REP echo", "server ROUTER, direct"]
    labels += ["sync echo handler", "async echo handler"]
    work = ["ROUTER --work-ms 5", "REP --work-ms 5"]
    work += ["CPU-bound handler, 1 replica", "CPU-bound, --threads 4"]
    if nginx.binary() is not None:
        labels += ["server via nginx", "3 replicas via nginx"]
        work += ["CPU-bound, 2 replicas, nginx"]
    for label in [*labels, *work]:
        rows = [line.split()[len(label.split()) :] for line in lines if line.startswith(label)]
        assert [row[0] for row in rows] == ["1", "16", "64"], label
        # x ref: a ratio for the rows doing the ceiling's work, "-" for the work rows.
        ratios = {row[4] for row in rows}
        assert ratios == {"-"} if label in work else "-" not in ratios, (label, ratios)
    assert any(line.startswith("system") and "x ref" in line for line in lines)
    targets = [line for line in lines if line.startswith(("PASS", "FAIL"))]
    assert len(targets) == 7, targets
    for line in targets:
        assert (line[:4] == "PASS") == target_met(line), line
    assert any(line.startswith("INFO  load generator CPU") for line in lines)


def target_met(line: str) -> bool:
    """Whether a target line's own figures meet the target its name states."""
    name, _, value = line[6:].rpartition(": ")
    if "load generator drives" in name:
        return float(value.split()[1].removesuffix("x")) >= 1.0
    if "p99 <" in name:
        limit = re.search(r"\((\d+(?:\.\d+)?) ms\)", name)
        assert limit is not None, name
        return float(value.split()[0]) < float(limit.group(1))
    bound = re.search(r"(<=|>=) (\d+(?:\.\d+)?)x", name)
    assert bound is not None, name
    ratio = float(value.split()[0].removesuffix("x"))
    return (
        ratio >= float(bound.group(2)) if bound.group(1) == ">=" else ratio <= float(bound.group(2))
    )


def test_json_output_has_a_row_per_measurement_with_both_sides_cpu() -> None:
    # Windows long enough for /proc's 10 ms CPU ticks to see every server at work.
    argv = ["--rows", "ceiling,direct", "--callers", "1,2", "--duration-s", "0.5"]
    document = json.loads(run_bench(*argv, "--json", "--informational"))
    measured = [(row["system"], row["callers"]) for row in document["rows"]]
    assert measured == [("ceiling", 1), ("ceiling", 2), ("direct", 1), ("direct", 2)]
    for row in document["rows"]:
        assert row["requests_per_s"] > 0, row
        assert row["errors"] == 0, row
        assert row["server_cpu_us_per_reply"] > 0, row
        assert row["load_cpu_us_per_reply"] > 0, row
        assert row["client_objects"] == row["callers"], "a DEALER per caller"
    assert [row["ratio"] for row in document["rows"][:2]] == [1.0, 1.0]
    assert document["failures"] == []
    assert document["machine"]["cpus"]


def test_a_failed_target_exits_1_unless_the_targets_are_informational() -> None:
    # No work per request: ROUTER cannot be 25x REP, nor its p99 under 3x 0 ms.
    argv = [sys.executable, "-m", "bench.run", *TINY, "--rows", "router-work,rep-work"]
    argv += ["--callers", "64", "--work-ms", "0"]
    enforced = subprocess.run(
        argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=PROJECT_DIR, check=False
    )
    assert enforced.returncode == 1, enforced.stderr
    assert any(line.startswith("FAIL  ROUTER >= 25x REP") for line in enforced.stdout.splitlines())
    assert "target(s) FAIL" in enforced.stderr
    informational = run([*argv, "--informational"], RUN_TIMEOUT_S)
    assert "FAIL  ROUTER >= 25x REP" in informational


def test_an_unknown_row_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--rows", "bogus"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=PROJECT_DIR,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown rows bogus" in done.stderr
