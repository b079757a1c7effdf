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
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import zmq.asyncio

from reqrep import protocol
from tests.support import (
    PROJECT_DIR,
    Project,
    compose_project,
    docker,
    needs_compose,
    probe,
    wait_healthy,
)

RUN_CLIENTS = PROJECT_DIR / "run_clients.py"
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


@dataclass
class ClientsRun:
    summary: dict[str, Any]
    exit_code: int
    stderr: str

    def check_every_request_answered(self, clients: int, requests: int) -> None:
        total = self.summary["total"]
        assert self.exit_code == 0, self.stderr[-3000:]
        assert self.summary["ok"], self.stderr[-3000:]
        assert [c["exit_code"] for c in self.summary["clients"]] == [0] * clients
        assert total["sent"] == clients * requests
        assert total["failed"] == 0
        assert total["server_response"] + total["invalid_message"] == clients * requests


async def run_clients(
    project: Project, *args: str, replies_seen: tuple[int, asyncio.Event] | None = None
) -> ClientsRun:
    """``run_clients.py ARGS --json`` through the published port, bounded.

    The summary is its stdout (JSON only); the clients' lines go to stderr,
    where ``replies_seen`` (a count and an event) watches the replies arrive.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(RUN_CLIENTS),
        *args,
        *("--connect", project.endpoint, "--json"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=project.env,
        cwd=PROJECT_DIR,
    )
    lines: list[str] = []

    async def watch() -> None:
        if process.stderr is None:  # pragma: no cover - always piped
            return
        replies = 0
        async for raw in process.stderr:
            lines.append(raw.decode(errors="replace").rstrip("\n"))
            replies += "| Received response: " in lines[-1]
            if replies_seen is not None and replies >= replies_seen[0]:
                replies_seen[1].set()

    try:
        async with asyncio.timeout(CLIENTS_TIMEOUT_S):
            stdout, _ = await asyncio.gather(read_all(process.stdout), watch())
            exit_code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return ClientsRun(json.loads(stdout), exit_code, "\n".join(lines))


async def read_all(stream: asyncio.StreamReader | None) -> bytes:
    return b"" if stream is None else await stream.read()


async def first_reply_from_a_new_replica(endpoint: str, known: set[str]) -> str:
    """New connections, a few at a time, until one is answered by a replica not in ``known``."""
    context = zmq.asyncio.Context()
    try:
        while True:
            answered = await asyncio.gather(
                *(probe(context, endpoint) for _ in range(PROBES_PER_ROUND)),
                return_exceptions=True,
            )
            for reply in answered:
                if isinstance(reply, BaseException) and not isinstance(
                    reply, protocol.RequestTimeout
                ):
                    raise reply
                if isinstance(reply, str) and reply not in known:
                    return reply
    finally:
        context.destroy(linger=0)


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
                result = await run_clients(project, "--clients", "10", "--requests", "5")
                result.check_every_request_answered(10, 5)
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
    seen = asyncio.Event()
    load = asyncio.create_task(
        run_clients(
            project,
            *("--clients", str(clients), "--requests", str(requests), "--interval-ms", "20"),
            # A quarter of the way in, the scale-down starts.
            replies_seen=(clients * requests // 4, seen),
        )
    )
    waiter = asyncio.create_task(seen.wait())
    try:
        await asyncio.wait({load, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        assert seen.is_set(), "the clients finished (or stalled) before the scale-down"
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
    result.check_every_request_answered(clients, requests)
    assert len(removed) == 3
    assert removed & set(result.summary["replicas"]), "no client was on a removed replica"
