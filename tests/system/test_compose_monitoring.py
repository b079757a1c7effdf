"""docker-compose's `monitoring` profile for real: Prometheus finds and scrapes every replica.

One compose project of its own (name, nginx port and Prometheus port of its
own, on 127.0.0.1), with the profile on (COMPOSE_PROFILES, which
docker-compose 1.28+ and `docker compose` v2 both read), started once for the
module and always removed afterwards. Everything is read through Prometheus'
HTTP API, as a user would:

1. /api/v1/targets lists the 3 replicas (found by DNS on the service name), all up;
2. run_clients.py sends a known number of requests through nginx; the sum over
   the replicas of reqrep_requests_total grew by exactly that, by status;
3. after ``--scale server=4`` Prometheus scrapes the 4th replica, no restart.

The health checks (``client.py --ping`` every 5 s in each replica) are requests
too. Each one is also one new connection, and each client of the run is one
connection through nginx, so the pings in a window are the growth of
reqrep_peer_connections_total less the clients: the check stays exact.
"""

from __future__ import annotations

import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from reqrep import protocol
from reqrep.stack import free_port
from tests.support import (
    PROJECT_DIR,
    UP_TIMEOUT_S,
    Project,
    compose_project,
    docker,
    needs_compose,
    run,
)

SERVER_RESPONSE = protocol.SERVER_RESPONSE_TEXT
INVALID_MESSAGE = protocol.INVALID_MESSAGE_TEXT
JOB = "reqrep"
METRICS_PORT = 9100
HEALTH_INTERVAL_S = 5.0  # Dockerfile_server's HEALTHCHECK --interval

# Bounds on every wait (building from cold: support.UP_TIMEOUT_S).
PROMETHEUS_TIMEOUT_S = 60.0
CLIENTS_TIMEOUT_S = 120.0
POLL_S = 0.5

# The run: each client sends REQUESTS, one of them (number 2) without its address.
CLIENTS = 4
REQUESTS = 50
TRIES = 3

pytestmark = needs_compose()


@dataclass(frozen=True)
class Monitored:
    project: Project
    prometheus_port: int

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a Prometheus HTTP API answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"http://127.0.0.1:{self.prometheus_port}{path}{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str, at: float) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("/api/v1/query", query=promql, time=f"{at:.3f}")[
            "result"
        ]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("/api/v1/targets", state="active")["activeTargets"]
        return [t for t in active if t["labels"].get("job") == JOB]


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = PROMETHEUS_TIMEOUT_S) -> Any:
    """Until ``check()`` returns something true (returned); bounded."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = check()
        except (urllib.error.URLError, ConnectionError):
            found = None  # Prometheus still starting
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(POLL_S)  # polling Prometheus' view, which changes on its own schedule


@pytest.fixture(scope="module")
def monitored() -> Iterator[Monitored]:
    prometheus_port = free_port()
    with compose_project(
        "zmqmon",
        # COMPOSE_PROFILES is in the project's environment: `down` removes Prometheus too.
        settings={"COMPOSE_PROFILES": "monitoring", "PROMETHEUS_PORT": str(prometheus_port)},
        # Not the demo `client` service: its requests would land in the counts.
        services=("server", "nginx", "prometheus"),
    ) as project:
        started = Monitored(project, prometheus_port)
        wait_for(lambda: started.api("/api/v1/status/buildinfo"), "Prometheus' API answering")
        yield started


def server_addresses(project: Project) -> set[str]:
    """The replicas' addresses on the project's network, as Docker's DNS gives them."""
    ids = project.containers("server")
    template = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    return {f"{ip}:{METRICS_PORT}" for ip in docker("inspect", "-f", template, *ids).split()}


def all_up(monitored: Monitored, count: int) -> Callable[[], list[dict[str, Any]] | None]:
    def check() -> list[dict[str, Any]] | None:
        targets = monitored.targets()
        healthy = [t for t in targets if t["health"] == "up"]
        return targets if len(targets) == count and len(healthy) == count else None

    return check


# --- the tests, in order ---------------------------------------------------------


def test_prometheus_finds_every_replica_by_dns_and_scrapes_it(monitored: Monitored) -> None:
    targets = wait_for(all_up(monitored, 3), "3 replicas up in /api/v1/targets")
    instances = {t["labels"]["instance"] for t in targets}
    assert instances == server_addresses(monitored.project)
    assert all(t["discoveredLabels"]["__meta_dns_name"] == "server" for t in targets), targets
    up = monitored.query(f'up{{job="{JOB}"}}', time.time())
    assert sorted(float(series["value"][1]) for series in up) == [1.0, 1.0, 1.0]
    info = monitored.query("reqrep_build_info", time.time())
    assert {series["metric"]["instance"] for series in info} == instances


@dataclass(frozen=True)
class Counts:
    """The replicas' counters from one scrape of each, as Prometheus stored them."""

    requests: dict[str, float]  # by status, summed over the replicas
    connections: float
    scraped: dict[str, float]  # instance -> time of the scrape these come from

    @property
    def oldest(self) -> float:
        return min(self.scraped.values())


def counts_scraped_after(monitored: Monitored, after: float, replicas: int) -> Counts:
    """The counters once every replica has been scraped after ``after`` (a Unix time)."""

    def read() -> Counts | None:
        at = time.time()
        stamps = monitored.query("timestamp(reqrep_peer_connections_total)", at)
        scraped = {s["metric"]["instance"]: float(s["value"][1]) for s in stamps}
        if len(scraped) != replicas or min(scraped.values()) <= after:
            return None
        requests: dict[str, float] = {}
        for series in monitored.query("sum by (status) (reqrep_requests_total)", at):
            requests[series["metric"]["status"]] = float(series["value"][1])
        connections = monitored.query("sum(reqrep_peer_connections_total)", at)
        return Counts(requests, float(connections[0]["value"][1]), scraped)

    found: Counts = wait_for(read, f"a scrape of all {replicas} replicas after {after:.1f}")
    return found


def run_clients(project: Project) -> dict[str, Any]:
    """run_clients.py through nginx; its JSON summary (reqrep.report.Summary)."""
    output = run(
        [
            sys.executable,
            str(PROJECT_DIR / "run_clients.py"),
            *("--clients", str(CLIENTS), "--requests", str(REQUESTS), "--malformed", "2"),
            *("--tries", str(TRIES)),
            *("--connect", project.endpoint, "--json"),
        ],
        CLIENTS_TIMEOUT_S,
        project.env,
    )
    summary: dict[str, Any] = json.loads(output)
    return summary


def test_the_request_counter_summed_over_replicas_grows_by_what_was_sent(
    monitored: Monitored,
) -> None:
    wait_for(all_up(monitored, 3), "3 replicas up")
    before = counts_scraped_after(monitored, time.time(), 3)
    summary = run_clients(monitored.project)
    finished = time.time()
    after = counts_scraped_after(monitored, finished, 3)

    total = summary["total"]
    assert summary["ok"], summary
    assert total["sent"] == CLIENTS * REQUESTS
    assert total["failed"] == 0, summary
    assert total["invalid_message"] == CLIENTS
    assert len(summary["replicas"]) >= 2, summary["replicas"]  # nginx spread the clients

    answered = {
        status: after.requests.get(status, 0.0) - before.requests.get(status, 0.0)
        for status in (SERVER_RESPONSE, INVALID_MESSAGE)
    }
    # Health-check pings: one connection and one valid request each.
    pings = after.connections - before.connections - CLIENTS
    window_s = max(after.scraped.values()) - before.oldest
    most_pings = 3 * (math.ceil(window_s / HEALTH_INTERVAL_S) + 1)
    detail = f"answered {answered}, pings {pings} in {window_s:.1f} s, summary {total}"
    if total["retried"] == 0:
        assert answered[INVALID_MESSAGE] == total["invalid_message"], detail
        assert answered[SERVER_RESPONSE] - pings == total["server_response"], detail
        assert 0 <= pings <= most_pings, detail
    else:  # a resent request may have been answered twice, on a connection of its own
        extra = total["retried"] * (TRIES - 1)
        assert 0 <= answered[INVALID_MESSAGE] - total["invalid_message"] <= extra, detail
        assert total["server_response"] <= answered[SERVER_RESPONSE], detail
        assert answered[SERVER_RESPONSE] <= total["server_response"] + extra + most_pings, detail


def test_prometheus_follows_scaling_without_a_restart(monitored: Monitored) -> None:
    (prometheus,) = monitored.project.containers("prometheus")
    started = docker("inspect", "-f", "{{.State.StartedAt}}", prometheus).strip()
    monitored.project.compose(
        "up", "-d", "--no-recreate", "--scale", "server=4", "server", timeout_s=UP_TIMEOUT_S
    )
    targets = wait_for(all_up(monitored, 4), "4 replicas up after --scale server=4")
    assert {t["labels"]["instance"] for t in targets} == server_addresses(monitored.project)
    assert docker("inspect", "-f", "{{.State.StartedAt}}", prometheus).strip() == started
