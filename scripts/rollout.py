#!/usr/bin/env python3
"""Roll a new server image through a running compose stack, one replica at a time.

    .venv/bin/python scripts/rollout.py                  # build the server image, roll it
    .venv/bin/python scripts/rollout.py --no-build       # roll what `compose build` made

Run from the project directory, with the variables the stack was started with
(COMPOSE_PROJECT_NAME, COMPOSE_FILE, ...): compose finds the stack as
``docker-compose ps`` does. ``docker-compose`` if installed, else ``docker compose``.

1. builds the service's image (unless ``--no-build``);
2. starts as many new replicas as are running, next to them
   (``up -d --no-deps --no-recreate --scale server=2N server``), and waits until
   every new one passes its health check (a real request); if one does not
   within ``--healthy-timeout-s``, the new ones are stopped and removed, the old
   ones keep serving, and it exits 1;
3. waits ``--settle-s`` for nginx to list the new replicas (it asks Docker's DNS
   every few seconds);
4. retires the old replicas one at a time: ``docker stop`` sends SIGTERM, the
   replica stops taking requests (after its SERVER_SHUTDOWN_DELAY_S, if the
   service sets one), answers those in flight within SERVER_GRACE_S and exits
   0 (``--stop-timeout-s`` must cover both); then it is removed.

A client whose replica goes reconnects through nginx to a live replica, and
resends what went unanswered (Lazy Pirate): no request is lost. Exit status 0
when all replicas run the new image, 1 when the rollout stopped (the reason on
stderr), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import functools
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from reqrep import cli
from reqrep.config import setting
from reqrep.runner import compose_command

logger = logging.getLogger("rollout")

POLL_INTERVAL_S = 0.5
COMMAND_TIMEOUT_S = 120.0
BUILD_TIMEOUT_S = 900.0


class RolloutError(Exception):
    """The rollout stopped; the message says why and what is left running."""


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    """What to roll and how long each step may take; each with its environment variable."""

    service: str = setting("server", env="ROLLOUT_SERVICE")
    healthy_timeout_s: float = setting(90.0, env="ROLLOUT_HEALTHY_TIMEOUT_S")
    settle_s: float = setting(3.0, env="ROLLOUT_SETTLE_S")
    stop_timeout_s: int = setting(15, env="ROLLOUT_STOP_TIMEOUT_S")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = cli.parser(
        "rollout.py", "Roll a new image through a compose service's replicas with nothing lost."
    )
    setting_flag = functools.partial(cli.add_setting, parser, RolloutConfig)
    setting_flag("service", "--service", help="the compose service to roll")
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="roll the image the service has, without building it first",
    )
    setting_flag(
        "healthy_timeout_s",
        "--healthy-timeout-s",
        type=cli.float_at_least(1.0),
        help="how long the new replicas have to pass their health check",
    )
    setting_flag(
        "settle_s",
        "--settle-s",
        type=cli.float_at_least(0.0),
        help="then the wait for nginx to list them (its resolver's validity, and more)",
    )
    setting_flag(
        "stop_timeout_s",
        "--stop-timeout-s",
        type=cli.int_at_least(1),
        help="how long an old replica has after SIGTERM before it is killed: more than its "
        "shutdown delay and grace period together",
    )
    cli.add_log_level(parser, "INFO")
    return parser.parse_args(argv)


def run(command: Sequence[str], timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """A command's stdout; RolloutError with its stderr if it fails or takes too long."""
    try:
        return subprocess.run(
            list(command),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        ).stdout
    except subprocess.CalledProcessError as failed:
        raise RolloutError(
            f"`{' '.join(command)}` failed: {failed.stderr.strip()[-2000:]}"
        ) from None
    except subprocess.TimeoutExpired:
        raise RolloutError(f"`{' '.join(command)}` took over {timeout_s:.0f} s") from None
    except FileNotFoundError:
        raise RolloutError(f"`{command[0]}` is not installed") from None


def compose(*args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    return run([*compose_command(), *args], timeout_s)


def running_replicas(service: str) -> list[str]:
    """Full ids of the service's running containers, oldest first."""
    ids = compose("ps", "-q", service).split()
    if not ids:
        return []
    out = run(["docker", "inspect", "-f", "{{.State.Running}} {{.Created}} {{.Id}}", *ids])
    rows = sorted(line.split() for line in out.splitlines())
    return [container for running, _, container in rows if running == "true"]


def health(containers: Sequence[str]) -> list[str]:
    """Each container's health: starting, healthy, unhealthy, or none (no health check)."""
    template = "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}"
    return run(["docker", "inspect", "-f", template, *containers]).split()


def wait_healthy(containers: Sequence[str], timeout_s: float) -> float:
    """Seconds until every container is healthy; RolloutError if one cannot be, or on timeout."""
    started = time.monotonic()
    while True:
        states = health(containers)
        if "none" in states:
            raise RolloutError("the service has no health check: nothing says a replica is ready")
        if "unhealthy" in states:
            raise RolloutError(f"a new replica is unhealthy: {states}")
        if all(state == "healthy" for state in states):
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise RolloutError(f"new replicas not healthy after {timeout_s:.0f} s: {states}")
        time.sleep(POLL_INTERVAL_S)  # polling the engine's health state: no event to wait on


def retire(container: str, stop_timeout_s: int) -> float:
    """SIGTERM (the replica's shutdown delay, then its drain), then remove it; seconds taken."""
    started = time.monotonic()
    run(["docker", "stop", "-t", str(stop_timeout_s), container], stop_timeout_s + 30.0)
    run(["docker", "rm", container])
    return time.monotonic() - started


def start_new(service: str, old: Sequence[str], healthy_timeout_s: float) -> list[str]:
    """As many new replicas as ``old``, healthy; on failure they are removed again."""
    compose(
        *("up", "-d", "--no-deps", "--no-recreate"),
        *("--scale", f"{service}={2 * len(old)}", service),
    )
    new = [container for container in running_replicas(service) if container not in old]
    if len(new) != len(old):
        raise RolloutError(f"{len(new)} new replicas started, not {len(old)}")
    try:
        took_s = wait_healthy(new, healthy_timeout_s)
    except RolloutError:
        for container in new:
            retire(container, stop_timeout_s=10)
        logger.error("removed the %d new replica(s); the old ones go on serving", len(new))
        raise
    logger.info("%d new replica(s) healthy after %.1f s", len(new), took_s)
    return new


def rollout(config: RolloutConfig, build: bool = True) -> None:
    old = running_replicas(config.service)
    if not old:
        raise RolloutError(f"no running replica of service {config.service!r}: is the stack up?")
    logger.info("rolling %d replica(s) of %s", len(old), config.service)
    if build:
        compose("build", config.service, timeout_s=BUILD_TIMEOUT_S)
    new = start_new(config.service, old, config.healthy_timeout_s)
    time.sleep(config.settle_s)  # nginx re-resolves on its own timer: nothing to wait on
    for container in old:
        took_s = retire(container, config.stop_timeout_s)
        logger.info("retired %s in %.1f s", container[:12], took_s)
    print(
        f"rolled out {config.service}: {len(old)} replica(s) replaced by "
        f"{', '.join(container[:12] for container in new)}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level, "rollout")
    try:
        rollout(cli.config_from_args(RolloutConfig, args), build=not args.no_build)
    except RolloutError as failure:
        print(f"error: rollout stopped: {failure}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
