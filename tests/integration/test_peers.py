"""bench/peers.py end to end: every system starts, answers through its own client at 1
and 2 callers, and validates requests the same way (tiny windows, no timing assertions).

Skipped, with the reason, when requirements-bench.txt is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.support import run

BENCH_MODULES = ("grpc", "pynng", "zerorpc", "aiozmq", "aiohttp", "matplotlib")
MISSING = [name for name in BENCH_MODULES if importlib.util.find_spec(name) is None]

pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason="bench requirements not installed (pip install -r requirements-bench.txt): "
    f"no {', '.join(MISSING)}",
)

RUN_TIMEOUT_S = 120
PROBE_TIMEOUT_S = 60


def test_every_system_answers_at_1_and_2_callers_and_the_chart_is_drawn(
    tmp_path: Path,
) -> None:
    from bench.peers import SYSTEM_KEYS

    chart = tmp_path / "peers.png"
    tiny = ["--callers", "1,2", "--rounds", "1", "--duration-s", "0.2", "--warmup-s", "0.1"]
    output = run(
        [sys.executable, "-m", "bench.peers", *tiny, "--json", "--chart", str(chart)],
        RUN_TIMEOUT_S,
    )
    document = json.loads(output)
    assert document["failures"] == []
    measured = [(row["system"], row["callers"]) for row in document["rows"]]
    assert measured == [(system, callers) for system in SYSTEM_KEYS for callers in (1, 2)]
    for row in document["rows"]:
        assert row["requests_per_s"] > 0, row
        assert row["errors"] == 0, row
        assert row["server_cpu_us_per_reply"] >= 0, row
        assert row["load_cpu_us_per_reply"] > 0, row
    assert document["settings"]["reference"] == "project-req"
    assert [o["callers"] for o in document["client_overhead"]] == [1, 2]
    assert chart.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "system", ["project-client", "project-req", "grpc", "pynng", "zerorpc", "aiozmq", "aiohttp"]
)
async def test_each_system_answers_a_request_without_address_invalid_message(
    system: str,
) -> None:
    from bench.peers import running_server

    async with running_server(system) as (target, _pid):
        command = [sys.executable, "-m", "bench.peer_clients", system, "--target", target]
        output = await asyncio.to_thread(run, [*command, "--probe"], PROBE_TIMEOUT_S)
    # A well-formed request, one without address, one with an empty address.
    assert json.loads(output) == ["Server response", "Invalid message", "Invalid message"]
