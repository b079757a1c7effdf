"""Load: one server replica holds 500 concurrent client connections with no error.

.venv/bin/pytest -s tests/integration/test_load.py   # prints the server's fds and RSS
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Iterator

import pytest
import zmq
import zmq.asyncio

from bench.machine import open_fds, rss_kib
from reqrep import protocol
from reqrep.client import Client
from reqrep.config import ClientConfig
from reqrep.stack import LocalStack
from tests.support import needs_nginx

CONNECTIONS = int(os.environ.get("LOAD_CONNECTIONS", "500"))
TIMEOUT_S = 60.0
# Per connection: the client's TCP socket and its ZeroMQ socket's mailbox; nginx two more.
FDS_NEEDED = 4 * CONNECTIONS + 256


@pytest.fixture
def enough_fds() -> Iterator[None]:
    """Raise this process's open-file limit (the server processes inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FDS_NEEDED if hard == resource.RLIM_INFINITY else min(hard, FDS_NEEDED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if now != resource.RLIM_INFINITY and now < FDS_NEEDED:
        pytest.fail(f"cannot raise the open-file limit to {FDS_NEEDED} (hard limit {hard})")
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def settled_fds(pid: int, bound_s: float = 3.0) -> int:
    """The process's open fds once the count holds still for 0.3 s (readiness probes closed).

    The stack's and nginx's own readiness probes may still be open for a moment after start;
    polling is all there is (no event tells when the server's I/O thread closed them).
    """
    async with asyncio.timeout(bound_s):
        last, steady_since = open_fds(pid), time.monotonic()
        while time.monotonic() - steady_since < 0.3:
            await asyncio.sleep(0.05)
            now = open_fds(pid)
            if now != last:
                last, steady_since = now, time.monotonic()
        return last


@pytest.mark.parametrize(
    "nginx",
    [False, pytest.param(True, marks=[pytest.mark.nginx, needs_nginx])],
    ids=["direct", "nginx"],
)
@pytest.mark.usefixtures("enough_fds")
async def test_one_replica_holds_500_concurrent_connections(nginx: bool) -> None:
    context = zmq.asyncio.Context()
    # Each Client holds three sockets: its REQ socket and its monitor's pair (reqrep.events).
    context.max_sockets = 3 * CONNECTIONS + 64
    clients: list[Client] = []
    try:
        async with LocalStack(1, nginx=nginx) as stack:
            replica = stack.replicas[0]
            pid = replica.process.pid
            idle_fds = await settled_fds(pid)
            config = ClientConfig(endpoints=tuple(stack.endpoints), timeout_ms=30_000, tries=1)
            clients = [Client(config, context) for _ in range(CONNECTIONS)]
            rounds_s: list[float] = []
            held_fds = 0
            async with asyncio.timeout(TIMEOUT_S):
                for round_number in range(2):
                    started = time.monotonic()
                    replies = await asyncio.gather(
                        *(
                            c.request(protocol.encode_request(f"load-{i}", b"x"), f"{i}")
                            for i, c in enumerate(clients)
                        )
                    )
                    rounds_s.append(time.monotonic() - started)
                    assert [r.ok for r in replies] == [True] * CONNECTIONS, round_number
                    assert {c.last_tries for c in clients} == {1}  # no retry was needed
                    held_fds = open_fds(pid)
                    # Every client still holds its connection: one server fd each.
                    assert held_fds >= idle_fds + CONNECTIONS
            server_kib = rss_kib(pid)
            assert replica.process.returncode is None
    finally:
        for client in clients:
            client.close()
        context.term()
    problems = [line for line in replica.log if " ERROR " in line or " WARNING " in line]
    assert problems == []
    via = "through nginx" if nginx else "direct"
    print(
        f"\n{CONNECTIONS} concurrent connections {via}: server fds {idle_fds} -> {held_fds}, "
        f"RSS {server_kib} KiB; two rounds of {CONNECTIONS} requests in "
        f"{rounds_s[0]:.2f} s and {rounds_s[1]:.2f} s, no errors, no retries"
    )
