"""A real replica's /metrics endpoint, scraped over HTTP while real clients use the replica.

The replica serves on loopback with its metrics on a free port (a Server in
the test's event loop, or server.py as a process); requests come from the
project's Client; the scrape is a plain HTTP GET (urllib, in a thread, so the
event loop keeps serving) parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reqrep import protocol
from reqrep.client import Client
from reqrep.stack import LocalStack, free_port
from tests.support import RunningServer, run_script

SERVER_RESPONSE = protocol.SERVER_RESPONSE_TEXT
INVALID_MESSAGE = protocol.INVALID_MESSAGE_TEXT
SCRAPE_TIMEOUT_S = 5.0
WAIT_S = 10.0  # bound on every wait for a figure to change
POLL_S = 0.05

StartServer = Callable[..., Any]
MakeClient = Callable[..., Client]


class Scrape:
    """One scrape's samples, by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no {name}{labels} in:\n{self.text}"
        return self.samples[key]

    def requests(self, status: str) -> float:
        return self.get("reqrep_requests_total", status=status)

    @property
    def handled(self) -> float:
        return self.get("reqrep_request_handling_seconds_count")


def _get(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        body: bytes = response.read()
    return body.decode()


async def scrape(port: int) -> Scrape:
    return Scrape(await asyncio.to_thread(_get, port))


async def scrape_until(port: int, check: Callable[[Scrape], bool], what: str) -> Scrape:
    """Scrape until ``check`` holds; fail after WAIT_S."""
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                found = await scrape(port)
                if check(found):
                    return found
                await asyncio.sleep(POLL_S)  # polling what a scraper sees: no event to await
    except TimeoutError:
        pytest.fail(f"not within {WAIT_S} s: {what}")


async def wait_endpoint(port: int) -> None:
    """Until a process's metrics endpoint accepts connections; bounded."""
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                try:
                    await scrape(port)
                    return
                except urllib.error.URLError:
                    await asyncio.sleep(POLL_S)  # a process starting up: no event to await
    except TimeoutError:
        pytest.fail(f"the metrics endpoint on port {port} did not answer within {WAIT_S} s")


async def metered(start_server: StartServer, **overrides: Any) -> tuple[RunningServer, int]:
    running: RunningServer = await start_server(metrics_port=0, **overrides)
    port = running.server.metrics_port
    assert port is not None  # the endpoint serves once the server has started
    return running, port


async def test_a_scrape_counts_what_a_client_sent(
    start_server: StartServer, make_client: MakeClient
) -> None:
    running, port = await metered(start_server)
    client = make_client([running.endpoint])
    for number in range(7):
        reply = await client.request(protocol.encode_request("alice", b"%d" % number))
        assert reply.ok
    assert not (await client.request(protocol.encode_request_without_address(b"x"))).ok
    assert not (await client.request([b"", b"no address"])).ok

    found = await scrape(port)
    assert found.requests(SERVER_RESPONSE) == 7
    assert found.requests(INVALID_MESSAGE) == 2
    assert found.get("reqrep_invalid_requests_total", reason="missing_address") == 1
    assert found.get("reqrep_invalid_requests_total", reason="empty_address") == 1
    assert found.get("reqrep_invalid_requests_total", reason="too_large") == 0
    assert found.handled == 9
    assert found.get("reqrep_request_handling_seconds_bucket", le="+Inf") == 9
    assert 0 < found.get("reqrep_request_handling_seconds_sum") < 1
    assert found.get("reqrep_requests_in_flight") == 0
    assert found.get("reqrep_connected_peers") == 1
    assert found.get("reqrep_peer_connections_total") == 1
    assert any(name == "reqrep_build_info" for name, _ in found.samples)
    assert any(name == "process_cpu_seconds_total" for name, _ in found.samples)


async def test_connected_peers_go_up_then_down_as_clients_come_and_go(
    start_server: StartServer, make_client: MakeClient
) -> None:
    running, port = await metered(start_server)
    clients = [make_client([running.endpoint]) for _ in range(3)]
    for client in clients:  # a client connects with its first request
        assert (await client.request(protocol.encode_request("peer", b"hello"))).ok

    def peers(count: int) -> Callable[[Scrape], bool]:
        return lambda found: found.get("reqrep_connected_peers") == count

    await scrape_until(port, peers(3), "3 connected peers")
    clients[0].close()
    clients[1].close()
    await scrape_until(port, peers(1), "1 connected peer after 2 clients closed")
    clients[2].close()
    found = await scrape_until(port, peers(0), "no connected peer after every client closed")
    assert found.get("reqrep_peer_connections_total") == 3


async def test_scrapes_under_load_are_consistent_snapshots(
    start_server: StartServer, make_client: MakeClient
) -> None:
    """Counters never step back, and every answered request is in the histogram."""
    running, port = await metered(start_server)
    clients = [make_client([running.endpoint]) for _ in range(4)]
    stop = asyncio.Event()

    async def hammer(client: Client) -> None:
        while not stop.is_set():
            await client.request(protocol.encode_request("load", b"x"))

    load = [asyncio.create_task(hammer(client)) for client in clients]
    try:
        previous = await scrape(port)
        for _ in range(15):
            found = await scrape(port)
            answered = found.requests(SERVER_RESPONSE) + found.requests(INVALID_MESSAGE)
            assert found.handled == answered  # read on the event loop, between two requests
            assert found.requests(SERVER_RESPONSE) >= previous.requests(SERVER_RESPONSE)
            assert found.handled >= previous.handled
            assert found.get("reqrep_requests_in_flight") == 0
            previous = found
        assert previous.handled > 0
    finally:
        stop.set()
        await asyncio.gather(*load)


async def test_requests_doing_work_are_in_flight_then_timed(
    start_server: StartServer, make_client: MakeClient
) -> None:
    running, port = await metered(start_server, work_ms=400)
    clients = [make_client([running.endpoint]) for _ in range(3)]
    replies = [
        asyncio.create_task(client.request(protocol.encode_request("slow", b"x")))
        for client in clients
    ]
    await scrape_until(
        port, lambda f: f.get("reqrep_requests_in_flight") == 3, "3 requests in flight"
    )
    assert all(reply.ok for reply in await asyncio.gather(*replies))
    found = await scrape(port)
    assert found.get("reqrep_requests_in_flight") == 0
    assert found.handled == 3
    assert found.get("reqrep_request_handling_seconds_bucket", le="0.25") == 0
    assert found.get("reqrep_request_handling_seconds_bucket", le="0.5") == 3
    assert found.get("reqrep_request_handling_seconds_sum") >= 1.2


async def test_the_rep_socket_is_counted_and_timed_too(
    start_server: StartServer, make_client: MakeClient
) -> None:
    running, port = await metered(start_server, socket_type="rep")
    client = make_client([running.endpoint])
    assert (await client.request(protocol.encode_request("rep", b"x"))).ok
    assert not (await client.request(protocol.encode_request_without_address(b"x"))).ok
    found = await scrape(port)
    assert found.requests(SERVER_RESPONSE) == 1
    assert found.requests(INVALID_MESSAGE) == 1
    assert found.handled == 2


# --- server.py with SERVER_METRICS_PORT, as docker-compose runs it ---------------------


async def test_server_script_serves_metrics_from_its_environment() -> None:
    metrics_port = free_port()
    env = {**os.environ, "SERVER_METRICS_PORT": str(metrics_port)}
    async with LocalStack(1, nginx=False, env=env) as stack:
        (replica,) = stack.replicas
        await wait_endpoint(metrics_port)
        pinged = await run_script(
            "client.py",
            *("--ping", "--connect", replica.endpoint, "--tries", "1"),
            timeout_s=WAIT_S,
        )
        assert pinged.status == 0, pinged.stderr
        found = await scrape(metrics_port)
        assert found.requests(SERVER_RESPONSE) == 1
        info = [labels for name, labels in found.samples if name == "reqrep_build_info"]
        assert ("replica", replica.name) in info[0]
        status = await stack.stop_replica(replica)
    assert status == 0, "\n".join(replica.log)
    with pytest.raises(urllib.error.URLError):  # the endpoint stopped with the replica
        _get(metrics_port)


async def test_a_taken_metrics_port_is_a_clean_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = await run_script(
            "server.py",
            *("--bind", "tcp://127.0.0.1:*", "--metrics-port", str(port)),
            timeout_s=WAIT_S,
        )
    assert done.status == 1
    # One line, and nothing said of serving first: what can fail is checked before.
    (line,) = done.stderr.splitlines()
    assert line.endswith(
        f"ERROR server: Cannot serve metrics on port {port}: Address already in use"
    )
