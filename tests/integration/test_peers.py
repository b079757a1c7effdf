"""bench/peers.py end to end: every system starts, answers through its own client at 1
and 2 callers, shares one client where it says so, and validates requests the same way
(tiny windows, no timing assertions).

Skipped, with the reason, when requirements-bench.txt is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import run

BENCH_MODULES = ("grpc", "pynng", "zerorpc", "aiozmq", "aiohttp", "zero", "uvloop", "matplotlib")
MISSING = [name for name in BENCH_MODULES if importlib.util.find_spec(name) is None]

pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason="bench requirements not installed (pip install -r requirements-bench.txt): "
    f"no {', '.join(MISSING)}",
)

RUN_TIMEOUT_S = 300
PROBE_TIMEOUT_S = 60
# Short, but long enough that a stall of a few tenths of a second (seen once in zeroapi's async
# client on a busy machine) does not leave a row without a reply.
TINY = ("--rounds", "1", "--duration-s", "0.5", "--warmup-s", "0.3")
# A caller per client object: a REQ socket has one request in flight at a time.
OWN_CLIENT = ("project-client", "project-req", "ceiling")
LOOPS = {"zerorpc": "gevent", "zeroapi-sync": "threads", "zeroapi-sync-w1": "threads"}


def peers(*args: str) -> dict[str, Any]:
    """``python -m bench.peers`` with tiny windows, as JSON (a test failure if it fails)."""
    output = run([sys.executable, "-m", "bench.peers", *TINY, *args, "--json"], RUN_TIMEOUT_S)
    document: dict[str, Any] = json.loads(output)
    return document


def test_every_system_answers_at_1_and_2_callers_and_the_chart_is_drawn(
    tmp_path: Path,
) -> None:
    from bench.peers import SYSTEM_KEYS

    chart = tmp_path / "peers.png"
    document = peers("--callers", "1,2", "--chart", str(chart))
    assert document["failures"] == []
    rows = document["rows"]
    measured = [(row["system"], row["callers"]) for row in rows]
    assert measured == [(system, callers) for system in SYSTEM_KEYS for callers in (1, 2)]
    for row in rows:
        assert row["requests_per_s"] > 0, row
        assert row["errors"] == 0, row
        # Both sides' CPU is read: the server's includes its worker processes (zeroapi's
        # TCP mode does all its work in them).
        assert row["server_cpu_us_per_reply"] > 0, row
        assert row["load_cpu_us_per_reply"] > 0, row
        assert row["loop"] == LOOPS.get(row["system"], "asyncio"), row
        shared = row["system"] not in OWN_CLIENT
        assert row["client_objects"] == (1 if shared else row["callers"]), row
    assert document["settings"]["reference"] == "project-req"
    assert [o["callers"] for o in document["client_overhead"]] == [1, 2]
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_asyncio_callers_run_on_uvloop_when_asked() -> None:
    document = peers("--systems", "project-req,zeroapi-sync", "--callers", "2", "--loop", "uvloop")
    assert document["failures"] == []
    loops = {row["system"]: row["loop"] for row in document["rows"]}
    assert loops == {"project-req": "uvloop", "zeroapi-sync": "threads"}


def distinct_systems() -> list[str]:
    """One system per server and client pair (the -w1 rows differ only in worker count)."""
    from bench.peers import SYSTEMS

    pairs = {(s.server, s.client): s.key for s in reversed(SYSTEMS) if s.server != "ceiling"}
    return sorted(pairs.values())


@pytest.mark.parametrize("system", distinct_systems())
async def test_each_system_answers_a_request_without_address_invalid_message(
    system: str,
) -> None:
    from bench.peers import BY_KEY, running_server

    async with running_server(BY_KEY[system]) as started:
        command = [sys.executable, "-m", "bench.peer_clients", BY_KEY[system].client]
        command += ["--target", started.endpoints[0], "--probe"]
        output = await asyncio.to_thread(run, command, PROBE_TIMEOUT_S)
    # A well-formed request, one without address, one with an empty address.
    assert json.loads(output) == ["Server response", "Invalid message", "Invalid message"]
