"""Scaling a running compose stack: the scale command is the only step.

nginx's upstream names the compose service with `resolve` (deploy/nginx and
nginx.conf), so it finds replicas added or removed while it runs. One compose
project of its own (name and published port of its own, on 127.0.0.1), up
with 3 replicas for the module and always removed afterwards. In order:

1. ``docker-compose up -d --no-recreate --scale server=5`` while nginx runs:
   new client connections reach a new replica within seconds, and within 15 s
   ``run_clients.py``'s summary has replies from all 5; nginx is the same
   container, never restarted or reloaded;
2. ``--scale server=2`` while 8 clients send 400 requests each: every request
   answered (Lazy Pirate retries allowed), every client exits 0.

Both print their figures (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support import (
    ClientsRun,
    Project,
    compose_project,
    docker,
    needs_compose,
    probe_until,
    run_clients,
    wait_healthy,
)

# From the scale command until every replica answers new connections.
DISCOVERY_LIMIT_S = 15.0
CLIENTS_TIMEOUT_S = 120.0
SCALE_TIMEOUT_S = 90.0
PROBES_PER_ROUND = 5

pytestmark = needs_compose()


@pytest.fixture(scope="module")
def project() -> Iterator[Project]:
    with compose_project("zmqscale") as started:
        yield started


def nginx_identity(project: Project) -> str:
    """nginx's container id, start time and restart count: unchanged if never restarted."""
    (nginx,) = project.containers("nginx")
    return docker("inspect", "-f", "{{.Id}} {{.State.StartedAt}} {{.RestartCount}}", nginx).strip()


async def scale(project: Project, replicas: int) -> None:
    """The documented command, as a user runs it, while everything keeps running."""
    command = ("up", "-d", "--no-recreate", "--scale", f"server={replicas}")
    await asyncio.wait_for(
        asyncio.to_thread(project.compose, *command, timeout_s=SCALE_TIMEOUT_S), SCALE_TIMEOUT_S
    )


def check_every_request_answered(result: ClientsRun, clients: int, requests: int) -> None:
    total = result.summary["total"]
    assert result.status == 0, result.lines[-3000:]
    assert result.summary["ok"], result.lines[-3000:]
    assert [c["exit_code"] for c in result.summary["clients"]] == [0] * clients
    assert total["sent"] == clients * requests
    assert total["failed"] == 0
    assert total["server_response"] + total["invalid_message"] == clients * requests


async def run_clients_here(
    project: Project, *args: str, on_line: Callable[[str], None] | None = None
) -> ClientsRun:
    """``run_clients.py ARGS --json`` through the published port, bounded."""
    return await run_clients(
        project,
        *args,
        *("--connect", project.endpoint),
        timeout_s=CLIENTS_TIMEOUT_S,
        on_line=on_line,
    )


class RepliesSeen:
    """Counts the replies in the clients' lines; sets ``event`` once there are ``count``."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.replies = 0
        self.event = asyncio.Event()

    def __call__(self, line: str) -> None:
        self.replies += "| Received response: " in line
        if self.replies >= self.count:
            self.event.set()


async def first_reply_from_a_new_replica(endpoint: str, known: set[str]) -> str:
    """New connections, a few at a time, until one is answered by a replica not in ``known``."""
    _, seen = await probe_until(
        endpoint,
        lambda seen: bool(seen.keys() - known),
        per_round=PROBES_PER_ROUND,
        timeout_s=DISCOVERY_LIMIT_S,
    )
    return min(seen.keys() - known)


async def test_scaled_up_3_to_5_all_answer_new_connections_within_15_s_without_reload(
    project: Project,
) -> None:
    before = project.replica_names()
    assert len(before) == 3
    nginx_before = nginx_identity(project)
    started = time.monotonic()
    scaling = asyncio.create_task(scale(project, 5))
    try:
        async with asyncio.timeout(DISCOVERY_LIMIT_S):
            first = await first_reply_from_a_new_replica(project.endpoint, before)
            first_s = time.monotonic() - started
            # Then rounds of 10 new clients until the summary has all 5 replicas.
            rounds = 0
            while True:
                rounds += 1
                result = await run_clients_here(project, "--clients", "10", "--requests", "5")
                check_every_request_answered(result, 10, 5)
                if len(result.summary["replicas"]) == 5:
                    break
        all_s = time.monotonic() - started
        await scaling
    finally:
        if not scaling.done():
            scaling.cancel()
    scaled_s = time.monotonic() - started
    replicas = result.summary["replicas"]
    print(
        f"\nscaled 3 -> 5 (`up -d --no-recreate --scale server=5`, {scaled_s:.1f} s): the first "
        f"reply from a new replica ({first}) {first_s:.1f} s after the command, all 5 in the "
        f"summary of round {rounds} of run_clients.py, {all_s:.1f} s after it; replies per "
        f"replica {replicas}"
    )
    assert set(replicas) == project.replica_names()
    assert nginx_identity(project) == nginx_before, "nginx was restarted or recreated"


async def test_scaled_down_5_to_2_under_load_loses_no_request(project: Project) -> None:
    await asyncio.to_thread(wait_healthy, project, 5)
    clients, requests = 8, 400
    # A quarter of the way in, the scale-down starts.
    seen = RepliesSeen(clients * requests // 4)
    load = asyncio.create_task(
        run_clients_here(
            project,
            *("--clients", str(clients), "--requests", str(requests), "--interval-ms", "20"),
            on_line=seen,
        )
    )
    waiter = asyncio.create_task(seen.event.wait())
    try:
        await asyncio.wait({load, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        assert seen.event.is_set(), "the clients finished (or stalled) before the scale-down"
        before = project.replica_names()
        started = time.monotonic()
        await scale(project, 2)
        scaled_s = time.monotonic() - started
        assert not load.done(), "the clients finished before the scale-down did"
        result = await load
    finally:
        waiter.cancel()
        if not load.done():
            load.cancel()
    total = result.summary["total"]
    removed = before - project.replica_names()
    print(
        f"\nscaled 5 -> 2 in {scaled_s:.1f} s under {clients} clients x {requests} requests: "
        f"sent {total['sent']}, answered {total['server_response'] + total['invalid_message']} "
        f"({total['invalid_message']} of them the malformed ones), {total['retried']} after a "
        f"retry, {total['failed']} failed; client exit codes "
        f"{sorted({c['exit_code'] for c in result.summary['clients']})}; replies per replica "
        f"{result.summary['replicas']} (removed: {sorted(removed)})"
    )
    check_every_request_answered(result, clients, requests)
    assert len(removed) == 3
    assert removed & set(result.summary["replicas"]), "no client was on a removed replica"
