"""bench.peers and its processes' command lines (bench.peer_clients, bench.peer_servers),
without running anything: every system is wired to a server and a client; usage errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from bench import peer_clients, peer_servers, peers
from bench.harness import Started


def usage_error(
    capsys: pytest.CaptureFixture[str], parse: Callable[[Sequence[str]], object], *argv: str
) -> str:
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_every_system_has_a_server_and_a_driver_for_its_callers() -> None:
    servers = {peers.PROJECT, peers.CEILING, *peer_servers.SYSTEMS}
    for system in peers.SYSTEMS:
        assert system.server in servers, system.key
        assert system.client in peer_clients.DRIVERS, system.key
    assert len(set(peers.SYSTEM_KEYS)) == len(peers.SYSTEMS)


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
        (("--loop", "uvloop", "--systems", "zerorpc"), "runs on asyncio"),
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


def test_uvloop_reaches_only_the_asyncio_callers() -> None:
    started = Started(["tcp://127.0.0.1:1"], [1])
    asyncio_load = peers.load_command(peers.BY_KEY["aiozmq"], "uvloop", started)
    gevent_load = peers.load_command(peers.BY_KEY["zerorpc"], "uvloop", started)
    assert asyncio_load[-2:] == ["--loop", "uvloop"]
    assert "--loop" not in gevent_load
