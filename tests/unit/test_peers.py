"""bench.peers and its processes' command lines (bench.peer_clients, bench.peer_servers),
without running anything: every system is wired to a server and a client; usage errors."""

from __future__ import annotations

import pytest

from bench import peer_clients, peer_servers, peers
from bench.harness import Started
from tests.support import usage_error


def test_every_system_has_a_server_and_a_driver_for_its_callers() -> None:
    servers = {peers.PROJECT, peers.CEILING, *peer_servers.SYSTEMS}
    for system in peers.SYSTEMS:
        assert system.server in servers, system.key
        assert system.client in peer_clients.DRIVERS, system.key
    assert len(set(peers.SYSTEM_KEYS)) == len(peers.SYSTEMS)


def test_zeroapi_rows_say_how_many_workers_their_server_has() -> None:
    zeroapi = [s for s in peers.SYSTEMS if s.key.startswith("zeroapi")]
    assert [s.key for s in zeroapi] == [
        "zeroapi",
        "zeroapi-w1",
        "zeroapi-sync",
        "zeroapi-sync-w1",
        "zeroapi-tcp",
        "zeroapi-tcp-w1",
    ]
    for system in zeroapi:
        one = system.key.endswith("-w1")
        assert system.server_args == (("--workers", "1") if one else ())
        assert ("1 worker" if one else f"{peers.CPUS} workers (default)") in system.label
    # The TCP mode's workers each listen on the port: the server is up once they all do.
    assert peers.BY_KEY["zeroapi-tcp"].listeners == peers.CPUS


def test_the_documented_check_command_parses() -> None:
    args = peers.parse_args(["--systems", "all", "--callers", "16", "--rounds", "3", "--json"])
    assert (args.systems, args.callers, args.rounds, args.json) == (
        list(peers.SYSTEM_KEYS),
        [16],
        3,
        True,
    )


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (("--systems", "bogus"), "unknown systems bogus"),
        (("--loop", "uvloop", "--systems", "zerorpc,zeroapi-sync"), "runs on asyncio"),
        (("--server-args", "--metrics-port 0", "--systems", "grpc"), "project's server"),
        (("--callers", "0"), "must be at least 1"),
    ],
)
def test_peers_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], complaint: str
) -> None:
    assert complaint in usage_error(capsys, peers.parse_args, *argv)


def test_the_load_process_refuses_a_loop_its_system_does_not_run_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ("zerorpc", "--target", "tcp://127.0.0.1:1", "--loop", "uvloop")
    assert "runs on asyncio" in usage_error(capsys, peer_clients.parse_args, *argv)


def test_a_peer_server_refuses_workers_it_would_ignore(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ("grpc", "--port", "1", "--workers", "2")
    assert "--workers is for" in usage_error(capsys, peer_servers.main, *argv)


def test_uvloop_reaches_only_the_asyncio_callers() -> None:
    started = Started(["tcp://127.0.0.1:1"], [1])
    asyncio_load = peers.load_command(peers.BY_KEY["zeroapi"], "uvloop", started)
    thread_load = peers.load_command(peers.BY_KEY["zeroapi-sync"], "uvloop", started)
    assert asyncio_load[-2:] == ["--loop", "uvloop"]
    assert "--loop" not in thread_load
