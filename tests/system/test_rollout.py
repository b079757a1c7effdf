"""scripts/rollout.py: a new server image rolled through a running compose stack.

Its arguments are checked without Docker. With an engine, one compose project
of its own (3 replicas behind nginx on a port of its own, on 127.0.0.1) is up
for the module and removed afterwards; under load (``DeployLoad``: clients on
long-lived connections and clients opening one per request, all through
nginx):

1. a rollout whose new replicas cannot be healthy in time (``--healthy-timeout-s
   1``: the health check first runs after 5 s) stops, exits 1 saying why,
   removes the new replicas and leaves the old ones serving;
2. a rollout replaces every replica with one of the rebuilt image, one at a
   time, and exits 0.

Nothing may be lost in either. Each prints the requests answered and retried,
the longest stall, p99 and nginx's log counts (``pytest -s``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support import (
    COMPOSE_REPLICAS,
    DeployLoad,
    Project,
    compose_project,
    docker_unchecked,
    nginx_trouble,
    probe_until,
    replica_name,
    run_script,
    with_compose,
)

SCRIPT = "scripts/rollout.py"
ROLLOUT_TIMEOUT_S = 300.0


@pytest.mark.parametrize(
    "args",
    [
        ["--healthy-timeout-s", "0"],
        ["--stop-timeout-s", "0"],
        ["--settle-s", "-1"],
        ["--no-such-flag"],
    ],
)
async def test_bad_arguments_get_a_usage_error(args: list[str]) -> None:
    done = await run_script(SCRIPT, *args, timeout_s=30)
    assert done.status == 2, done
    assert "usage:" in done.stderr


@pytest.fixture(scope="module")
def project() -> Iterator[Project]:
    with compose_project("zmqrollout") as started:
        yield started


def load_on(project: Project) -> DeployLoad:
    return DeployLoad.on([(project.endpoint,)])


def nginx_log_since(project: Project, since: float) -> str:
    """nginx's access and error log since ``since`` (a time.time())."""
    (nginx,) = project.containers("nginx")
    done = docker_unchecked("logs", "--since", f"{since:.3f}", nginx)
    return done.stdout + done.stderr


@with_compose
@pytest.mark.timeout(ROLLOUT_TIMEOUT_S)
async def test_rollout_whose_replicas_are_not_healthy_in_time_keeps_the_old_ones(
    project: Project,
) -> None:
    before = set(project.running("server"))
    load = load_on(project)
    since = time.time()
    async with load.running():
        done = await run_script(
            SCRIPT,
            *("--no-build", "--healthy-timeout-s", "1"),
            timeout_s=ROLLOUT_TIMEOUT_S,
            env=project.env,
        )
    trouble = nginx_trouble(nginx_log_since(project, since))
    print(load.report(f"rollout stopped (exit {done.status}): {done.stderr.strip()}", trouble))
    assert done.status == 1, done
    assert "not healthy after 1 s" in done.stderr
    assert set(project.running("server")) == before
    load.assert_nothing_lost()


@with_compose
@pytest.mark.timeout(ROLLOUT_TIMEOUT_S)
async def test_rollout_replaces_every_replica_and_loses_nothing(project: Project) -> None:
    before = set(project.running("server"))
    load = load_on(project)
    since = time.time()
    async with load.running():
        started = time.monotonic()
        done = await run_script(SCRIPT, timeout_s=ROLLOUT_TIMEOUT_S, env=project.env)
        took_s = time.monotonic() - started
    after = set(project.running("server"))
    trouble = nginx_trouble(nginx_log_since(project, since))
    print(load.report(f"rollout of 3 replicas (exit {done.status}) in {took_s:.1f} s", trouble))
    assert done.status == 0, done
    assert len(after) == COMPOSE_REPLICAS
    assert not after & before
    load.assert_nothing_lost()
    new = {replica_name(container) for container in after}
    _, seen = await probe_until(project.endpoint, lambda seen: sum(seen.values()) >= 12)
    assert seen.keys() <= new
