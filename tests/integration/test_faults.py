"""Faults: a replica killed, nginx restarted, everything down; nothing is lost.

Client processes (``client.py``) against replicas behind nginx on loopback. The
figures (recovery time after ``kill -9``, after an nginx restart) are printed:

    .venv/bin/pytest -s tests/integration/test_faults.py
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reqrep.stack import LocalStack
from tests.support import needs_nginx, run_script

RUN_TIMEOUT_S = 120.0
TIMEOUT_MS = 1000
TRIES = 5
# Each client sends REQUESTS; the fault strikes once every client has AFTER_REPLIES replies.
REQUESTS = 200
AFTER_REPLIES = 50
# Each request works this long on a replica: the clients run side by side for a few
# seconds, and nearly always have a request in flight when a fault strikes.
WORK_ARGS = ("--work-ms", "20")


@dataclass
class ClientProcess:
    """One ``client.py`` run: its process, when each reply came in, its report."""

    number: int
    report: Path
    process: asyncio.subprocess.Process | None = None
    replies_at: list[float] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def results(self) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = json.loads(self.report.read_text())["results"]
        return results


class Clients:
    """N client processes against one endpoint; lets a test act after K replies in all."""

    def __init__(self, endpoint: str, count: int, requests: int, workdir: Path) -> None:
        self.endpoint = endpoint
        self.requests = requests
        self.runs = [ClientProcess(i, workdir / f"client-{i}.json") for i in range(count)]
        self._progress = asyncio.Condition()
        self._tasks: list[asyncio.Task[int]] = []

    @property
    def fewest_replies(self) -> int:
        return min(len(run.replies_at) for run in self.runs)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(run)) for run in self.runs]

    async def _run(self, run: ClientProcess) -> int:
        run.process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "reqrep", "client"),
            "--connect",
            self.endpoint,
            "--requests",
            str(self.requests),
            "--malformed",
            "-1",
            "--timeout-ms",
            str(TIMEOUT_MS),
            "--tries",
            str(TRIES),
            "--address",
            f"fault-client-{run.number}",
            "--report",
            str(run.report),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = run.process.stdout, run.process.stderr
        if stdout is None or stderr is None:  # pragma: no cover - always piped
            raise RuntimeError("client output is not piped")

        async def read_stderr() -> None:
            run.stderr.extend([line.decode(errors="replace") async for line in stderr])

        reading = asyncio.create_task(read_stderr())
        async for line in stdout:
            if line.startswith(b"Received response: "):
                run.replies_at.append(time.monotonic())
                async with self._progress:
                    self._progress.notify_all()
        await reading
        return await run.process.wait()

    async def wait_for_replies(self, count: int) -> None:
        """Until every client has had ``count`` replies: all of them are mid-run."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.fewest_replies >= count)

    async def finish(self) -> list[int]:
        try:
            return list(await asyncio.gather(*self._tasks))
        finally:
            for run in self.runs:
                if run.process is not None and run.process.returncode is None:
                    run.process.kill()
                    await run.process.wait()

    def recovery_s(self, since: float) -> float:
        """Until every client had a reply after ``since``: the longest any was left waiting."""
        return max(
            min((t for t in run.replies_at if t > since), default=since) - since
            for run in self.runs
        )


@dataclass(frozen=True)
class FaultRun:
    """What the clients saw of a fault: every request's result, and how long they waited."""

    results: list[dict[str, Any]]
    # Until every client had a reply after the fault: the longest any was left waiting.
    recovery_s: float

    @property
    def retried(self) -> list[dict[str, Any]]:
        return [result for result in self.results if result["tries"] > 1]

    def by_replica(self) -> dict[str, int]:
        return dict(Counter(result["replica"] for result in self.results))


async def fault_mid_run(
    stack: LocalStack, clients: int, fault: Callable[[], Awaitable[object]], workdir: Path
) -> FaultRun:
    """``clients`` x REQUESTS through nginx; ``fault`` strikes once every client is
    AFTER_REPLIES in. Every client must exit 0 with every request answered."""
    running = Clients(stack.endpoints[0], clients, REQUESTS, workdir)
    async with asyncio.timeout(RUN_TIMEOUT_S):
        await running.start()
        await running.wait_for_replies(AFTER_REPLIES)  # every client a quarter of the way
        struck_at = time.monotonic()
        await fault()
        statuses = await running.finish()
    for run, status in zip(running.runs, statuses, strict=True):
        assert status == 0, "".join(run.stderr[-5:])
    results = [result for run in running.runs for result in run.results()]
    assert len(results) == clients * REQUESTS
    assert all(result["status"] == "Server response" for result in results)
    return FaultRun(results, running.recovery_s(struck_at))


@pytest.mark.nginx
@needs_nginx
async def test_kill_9_one_of_three_replicas_mid_run_loses_nothing(tmp_path: Path) -> None:
    """3 replicas behind nginx, 10 clients x 200 requests, one replica SIGKILLed mid-run."""
    async with LocalStack(3, nginx=True, server_args=WORK_ARGS) as stack:
        victim = stack.replicas[0]

        async def kill_9() -> None:
            assert await stack.stop_replica(victim, signal.SIGKILL) == -signal.SIGKILL

        run = await fault_mid_run(stack, 10, kill_9, tmp_path)
    by_replica = run.by_replica()
    worst_ms = max((result["latency_ms"] for result in run.retried), default=0.0)
    print(
        f"\nkill -9 {victim.name} with every client {AFTER_REPLIES}+ of {REQUESTS} requests in: "
        f"all {len(run.results)} answered, {len(run.retried)} after a retry; every client "
        f"answered again within {run.recovery_s:.2f} s of the kill; slowest retried request "
        f"{worst_ms:.0f} ms (client timeout {TIMEOUT_MS} ms); replies per replica {by_replica}"
    )
    # The victim served its share before it died, and Lazy Pirate retries landed elsewhere.
    assert by_replica.get(victim.name, 0) > 0
    assert run.retried, "no request was in flight on the killed replica"
    assert len(by_replica) == 3


@pytest.mark.nginx
@needs_nginx
async def test_nginx_restart_mid_run_clients_recover(tmp_path: Path) -> None:
    """2 replicas behind nginx, 6 clients x 200 requests, nginx restarted mid-run."""
    async with LocalStack(2, nginx=True, server_args=WORK_ARGS) as stack:
        run = await fault_mid_run(stack, 6, stack.restart_nginx, tmp_path)
    print(
        f"\nnginx restarted with every client {AFTER_REPLIES}+ of {REQUESTS} requests in: "
        f"all {len(run.results)} answered, {len(run.retried)} after a retry; "
        f"every client answered again within {run.recovery_s:.2f} s of the restart"
    )


@pytest.mark.nginx
@needs_nginx
async def test_whole_service_down_clients_fail_fast_and_clearly() -> None:
    """Every replica dead behind a live nginx: each client gives up after its tries, clearly."""
    timeout_ms, tries = 300, 3
    async with LocalStack(2, nginx=True) as stack:
        for replica in stack.replicas:
            await stack.stop_replica(replica, signal.SIGKILL)
        (endpoint,) = stack.endpoints
        started = time.monotonic()
        runs = await asyncio.gather(
            *(
                run_script(
                    "client.py",
                    *("--connect", endpoint, "--requests", "5"),
                    *("--timeout-ms", str(timeout_ms), "--tries", str(tries)),
                    timeout_s=RUN_TIMEOUT_S,
                )
                for _ in range(3)
            )
        )
        elapsed_s = time.monotonic() - started
    print(f"\nservice down: 3 clients gave up after {elapsed_s:.2f} s ({tries} x {timeout_ms} ms)")
    for run in runs:
        assert run.status == 1
        assert run.stdout.splitlines() == ["Sending request: 0"]
        assert f"error: server at {endpoint} did not answer request 0 after {tries} tries" in (
            run.stderr
        )
    # Generous: tries x timeout, plus interpreter start-up on a loaded machine.
    assert elapsed_s < tries * timeout_ms / 1000 + 15
