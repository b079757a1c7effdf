"""Faults a real deployment has, on the compose stack, under load: nothing may be lost.

One compose project of its own (name and published port of its own, on
127.0.0.1), up with 3 replicas for the module and always removed afterwards.
The load is 8 clients in this process, each on its own connection through
the published port, sending 1500 requests one at a time (10 ms apart) with the
command line's Lazy Pirate settings (timeout 2500 ms, 3 tries). In order:

1. one replica cut off from zmq_network (``docker network disconnect``: its
   packets vanish, no RST) for 10 s, then connected again with its aliases:
   every request answered, and new connections reach it again afterwards;
2. nginx's master process SIGKILLed from the host (the PID from ``docker
   inspect``; the restart policy brings it back, where ``docker kill`` would
   count as a manual stop): every request answered;
3. a flood of raw TCP connections from one container on zmq_network (half
   held open sending nothing, half sending garbage, each reopened when closed)
   while clients on the host run: every request answered, their p99 within 5x
   of the same run without the flood; nginx refuses the flood's connections
   over its per-address limit (200) and logs them; the replicas' open file
   descriptors stay bounded by that limit.

Each prints answered and retried counts, the longest stall and p99 (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.machine import open_fds
from reqrep.runner import compose_command
from tests.support import (
    PROJECT_DIR,
    MeasuredClients,
    Project,
    compose_project,
    docker,
    docker_async,
    docker_unchecked,
    needs_compose,
    probe_until,
    replica_name,
)

CLIENTS = 8
REQUESTS = 1500
INTERVAL_S = 0.010
CUT_OFF_S = 10.0
# Faults start once the load is this far along (about 2 s in).
FAULT_AFTER_REPLIES = CLIENTS * 150
LOAD_TIMEOUT_S = 120.0
BACK_TIMEOUT_S = 30.0
PER_ADDRESS_LIMIT = 200
# The flood: connections from one container, half idle, half sending garbage.
FLOOD_IDLE = 300
FLOOD_GARBAGE = 300
# The normal clients' run, with and without the flood.
FLOOD_RUN_REQUESTS = 1000
FLOOD_RUN_INTERVAL_S = 0.002
P99_FACTOR = 5.0
# Replicas' open fds may grow by the flood's share (at most the limit) and the
# normal clients' connections, plus a margin for connections closing.
FD_MARGIN = 20

pytestmark = needs_compose()


@pytest.fixture(scope="module")
def project() -> Iterator[Project]:
    with compose_project("zmqfaults") as started:
        yield started


def load(project: Project) -> MeasuredClients:
    return MeasuredClients(project.endpoint, CLIENTS, REQUESTS, interval_s=INTERVAL_S)


@contextlib.asynccontextmanager
async def running(clients: MeasuredClients) -> AsyncIterator[asyncio.Task[None]]:
    """The clients run while the block runs; leaving it waits for them to finish (bounded)."""
    task = asyncio.create_task(clients.run())
    try:
        yield task
        await asyncio.wait_for(asyncio.shield(task), LOAD_TIMEOUT_S)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def wait_answered_by(endpoint: str, replica: str) -> float:
    """Seconds until a new connection is answered by ``replica``; bounded."""
    took_s, _ = await probe_until(
        endpoint, lambda seen: replica in seen, per_round=4, timeout_s=BACK_TIMEOUT_S
    )
    return took_s


async def test_replica_cut_off_from_the_network_for_10_s_loses_nothing(project: Project) -> None:
    clients = load(project)
    async with running(clients):
        await clients.answered_at_least(FAULT_AFTER_REPLIES)
        # The replica serving the most of the load so far holds client connections.
        victim = clients.replicas.most_common(1)[0][0]
        container = project.container_of(victim)
        networks = json.loads(
            await docker_async("inspect", "-f", "{{json .NetworkSettings.Networks}}", container)
        )
        ((network, settings),) = networks.items()
        aliases = [arg for alias in settings["Aliases"] or [] for arg in ("--alias", alias)]
        answered_before = clients.answered
        await docker_async("network", "disconnect", network, container)
        try:
            await asyncio.sleep(CUT_OFF_S)  # the fault lasts 10 s; the clients go on
        finally:
            # Back with its DNS aliases (the compose service name among them).
            await docker_async("network", "connect", *aliases, network, container)
        answered_while_cut = clients.answered - answered_before
        back_s = await wait_answered_by(project.endpoint, victim)
    print(
        f"\n{victim} cut off from {network} for {CUT_OFF_S:.0f} s: {clients}; "
        f"{answered_while_cut} answered while it was cut off; new connections reached it "
        f"again {back_s:.1f} s after it was reconnected"
    )
    assert clients.lost == []
    assert clients.answered == clients.sent == CLIENTS * REQUESTS


def nginx_state(nginx: str) -> tuple[int, int, bool]:
    """The nginx container's restart count, its main process and whether it runs."""
    out = docker("inspect", "-f", "{{.RestartCount}} {{.State.Pid}} {{.State.Running}}", nginx)
    restarts, pid, running_ = out.split()
    return int(restarts), int(pid), running_ == "true"


async def wait_restarted(nginx: str, restarts_before: int) -> float:
    """Seconds until the nginx container runs again after a restart; bounded."""
    started = time.monotonic()
    async with asyncio.timeout(BACK_TIMEOUT_S):
        while True:
            restarts, _, is_running = await asyncio.to_thread(nginx_state, nginx)
            if restarts > restarts_before and is_running:
                return time.monotonic() - started
            await asyncio.sleep(0.1)  # polling the engine's container state: no event


async def test_nginx_master_killed_restarts_and_loses_nothing(project: Project) -> None:
    (nginx,) = project.containers("nginx")
    restarts, pid, _ = nginx_state(nginx)
    # The container's main process is nginx's master (the image's CMD).
    command = await asyncio.to_thread(Path(f"/proc/{pid}/cmdline").read_bytes)
    assert command.startswith(b"nginx: master process"), command
    clients = load(project)
    async with running(clients):
        await clients.answered_at_least(FAULT_AFTER_REPLIES)
        os.kill(pid, signal.SIGKILL)
        back_s = await wait_restarted(nginx, restarts)
    print(
        f"\nnginx's master (pid {pid}) SIGKILLed: the container ran again {back_s:.1f} s later "
        f"(restart policy); {clients}"
    )
    assert project.containers("nginx") == [nginx], "the same container, restarted"
    assert clients.lost == []
    assert clients.answered == clients.sent == CLIENTS * REQUESTS


FLOOD_SCRIPT = Path(__file__).with_name("flood.py")


@dataclass
class Flood:
    """The flood container (tests/system/flood.py), started by ``docker-compose run``."""

    project: Project
    name: str
    process: asyncio.subprocess.Process | None = None
    lines: list[str] = field(default_factory=list)

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *compose_command(),
            *("run", "--rm", "-T", "--name", self.name, "--entrypoint", "python"),
            *("-v", f"{FLOOD_SCRIPT}:/flood/flood.py:ro", "client", "/flood/flood.py"),
            *("nginx", "5555", str(FLOOD_IDLE), str(FLOOD_GARBAGE), "120"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=self.project.env,
            cwd=PROJECT_DIR,
        )
        async with asyncio.timeout(60):
            while await self._line() != "ready":
                pass

    async def _line(self) -> str:
        if self.process is None or self.process.stdout is None:
            raise RuntimeError("the flood was never started")
        raw = await self.process.stdout.readline()
        if not raw:
            pytest.fail(f"the flood container ended early: {self.lines}")
        self.lines.append(raw.decode().strip())
        return self.lines[-1]

    async def stop(self) -> dict[str, int | str]:
        """Tell it to stop (SIGTERM); its counts."""
        await docker_async("kill", "-s", "TERM", self.name)
        async with asyncio.timeout(30):
            counts: dict[str, int | str] = json.loads(await self._line())
            if self.process is not None:
                await self.process.wait()
        return counts

    def remove(self) -> None:
        """Remove the container, whatever happened to it (clean-up)."""
        docker_unchecked("rm", "-f", self.name)


def main_pids(project: Project) -> dict[str, int]:
    """Each replica's main process (server.py), by replica name."""
    return {
        replica_name(container): int(docker("inspect", "-f", "{{.State.Pid}}", container))
        for container in project.containers("server")
    }


async def fds_while(pids: dict[str, int], task: asyncio.Task[None]) -> dict[str, int]:
    """The most open fds each replica had while ``task`` ran (sampled every 0.1 s)."""
    most = dict.fromkeys(pids, 0)
    while not task.done():
        for name, pid in pids.items():
            most[name] = max(most[name], open_fds(pid))
        await asyncio.sleep(0.1)  # sampling /proc: no event to await
    return most


def nginx_log_lines(project: Project, since: float) -> list[str]:
    """nginx's access log (stdout) and error log (stderr) since a time (``time.time()``)."""
    (nginx,) = project.containers("nginx")
    done = docker_unchecked("logs", "--since", f"{since:.3f}", nginx)
    assert done.returncode == 0, done.stderr
    return (done.stdout + done.stderr).splitlines()


async def nginx_logged(project: Project, since: float, address: str, closed: int) -> list[str]:
    """nginx's log lines once they show ``closed`` silent closes for ``address`` (or after 10 s).

    Lines reach `docker logs` a moment after nginx writes them: polled, no event.
    """
    deadline = time.monotonic() + 10
    while True:
        lines = await asyncio.to_thread(nginx_log_lines, project, since)
        if len(silent_from(lines, address)) >= closed or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.2)


def silent_from(lines: list[str], address: str) -> list[str]:
    """Access-log lines of connections from ``address`` closed before a byte went back.

    Mostly the limit's refusals (status 503); a garbage-sending connection let
    through can also be closed by its replica before the replica's greeting
    went out (status 200, bytes_out=0). The flood counts both as "refused".
    """
    return [line for line in lines if line.startswith(f"{address} ") and " bytes_out=0" in line]


def refused_from(lines: list[str], address: str) -> list[str]:
    """Access-log lines of connections from ``address`` refused by the limit (503)."""
    return [line for line in lines if line.startswith(f"{address} ") and " status=503 " in line]


async def normal_run(
    project: Project, pids: dict[str, int]
) -> tuple[MeasuredClients, dict[str, int]]:
    """The normal clients' run through the published port; the replicas' most open fds."""
    clients = MeasuredClients(
        project.endpoint, CLIENTS, FLOOD_RUN_REQUESTS, interval_s=FLOOD_RUN_INTERVAL_S
    )
    async with running(clients) as task:
        fds = await asyncio.wait_for(fds_while(pids, task), LOAD_TIMEOUT_S)
    return clients, fds


async def test_connection_flood_from_one_address_is_limited_and_others_are_served(
    project: Project,
) -> None:
    pids = main_pids(project)
    idle_fds = {name: open_fds(pid) for name, pid in pids.items()}
    quiet, quiet_fds = await normal_run(project, pids)
    since = time.time()
    flood = Flood(project, f"{project.name}_flood")
    try:
        await flood.start()
        flooded, flooded_fds = await normal_run(project, pids)
        counts = await flood.stop()
    finally:
        flood.remove()
    address = str(counts["address"])
    logs = await nginx_logged(project, since, address, int(counts["refused"]))
    refused_logged = refused_from(logs, address)
    silent_logged = silent_from(logs, address)
    limited = [line for line in logs if "limiting connections by zone" in line]
    host_addresses = {
        line.split()[0]
        for line in logs
        if re.search(r" status=200 ", line) and not line.startswith(f"{address} ")
    }
    grown = {name: flooded_fds.get(name, 0) - idle_fds[name] for name in idle_fds}
    print(
        f"\nwithout the flood: {quiet}\nwith the flood:    {flooded}\n"
        f"the flood from {address}: {counts}; nginx logged {len(refused_logged)} of its "
        f"connections with status=503 ({len(silent_logged)} closed before a byte went back) "
        f"and {len(limited)} 'limiting connections' errors; the others closed before a byte: "
        f"{[line for line in silent_logged if ' status=503 ' not in line][:3]}; the "
        f"host's clients came from {sorted(host_addresses)}\n"
        f"replicas' open fds idle {idle_fds}, most without the flood {quiet_fds}, most with "
        f"it {flooded_fds}"
    )
    for run in (quiet, flooded):
        assert run.lost == []
        assert run.answered == run.sent == CLIENTS * FLOOD_RUN_REQUESTS
    assert flooded.p99_ms <= P99_FACTOR * quiet.p99_ms
    assert address not in host_addresses, "the flood and the clients shared an address"
    assert int(counts["refused"]) > 0
    assert int(counts["most_open_through"]) <= PER_ADDRESS_LIMIT
    # Every connection the flood saw closed before a byte is in nginx's log as
    # such, nearly all of them as the limit's refusals, each with its error line.
    assert len(silent_logged) >= int(counts["refused"])
    assert len(refused_logged) >= 0.9 * int(counts["refused"])
    assert len(limited) >= len(refused_logged)
    assert sum(grown.values()) <= PER_ADDRESS_LIMIT + CLIENTS + FD_MARGIN, grown
