"""reqrep.commands.run_clients (run_clients.py): flags that would be ignored together, and
malformed endpoints, are usage errors; the client flags reach every client, the server flags
(--handler, --threads, --work-ms) every local replica."""

from __future__ import annotations

from pathlib import Path

import pytest

from reqrep.commands import run_clients
from tests.support import PROJECT_DIR, run_entry_point, usage_error


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--no-nginx"], "--no-nginx only applies with --local"),
        (["--work-ms", "5"], "--work-ms only applies with --local"),
        (["--work-ms", "0"], "--work-ms only applies with --local"),
        (["--handler", "mod:echo"], "--handler only applies with --local"),
        (["--threads", "4"], "--threads only applies with --local"),
        (["--docker", "--handler", "mod:echo"], "--handler only applies with --local"),
        (["--local", "2", "--work-ms", "5", "--handler", "mod:echo"], "give it or --handler"),
        (["--local", "2", "--work-ms", "5", "--threads", "2"], "--work-ms's handler is async"),
        (["--local", "2", "--threads", "-1"], "must be at least 0"),
        (["--docker", "--connect", "tcp://a:1"], "--connect cannot be combined with --docker"),
        (["--local", "2", "--connect", "tcp://a:1"], "--connect cannot be combined with --local"),
        (["--local", "2", "--docker"], "not allowed with argument"),
        (["--connect", "notanendpoint"], "'notanendpoint' is not an endpoint"),
        (["--clients", "0"], "must be at least 1"),
    ],
)
def test_refuses_what_would_be_ignored_or_cannot_work(
    argv: list[str],
    complaint: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(PROJECT_DIR)
    assert complaint in usage_error(capsys, run_clients.parse_args, *argv)


def test_docker_mode_needs_the_compose_file_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        run_clients.parse_args(["--docker"])
    assert "no docker-compose.yml in the current directory" in capsys.readouterr().err


def test_client_flags_are_passed_on_and_endpoints_only_when_given() -> None:
    _, plan = run_clients.parse_args(["--requests", "3", "--tries", "2"])
    assert "--connect" not in plan.client_args
    assert plan.client_args[:2] == ["--requests", "3"]
    assert plan.client_args[-2:] == ["--tries", "2"]
    _, plan = run_clients.parse_args(["--connect", "tcp://a:1", "--connect", "tcp://b:2"])
    assert plan.client_args[:4] == ["--connect", "tcp://a:1", "--connect", "tcp://b:2"]


def test_a_bad_value_from_the_environment_is_a_usage_error() -> None:
    result = run_entry_point("run_clients.py", env={"RUN_CLIENTS": "none"})
    assert result.returncode == 2
    assert "'none'" in result.stderr


def test_server_flags_reach_every_replica_and_only_when_given() -> None:
    _, plan = run_clients.parse_args(["--local", "3", "--handler", "mod:echo", "--threads", "4"])
    assert list(plan.local_server_args) == ["--handler", "mod:echo", "--threads", "4"]
    _, plan = run_clients.parse_args(["--local", "2", "--work-ms", "5"])
    assert list(plan.local_server_args) == ["--work-ms", "5.0"]
    # Not given: each replica takes its own default (SERVER_HANDLER, ...) from the environment.
    _, plan = run_clients.parse_args(["--local", "2"])
    assert list(plan.local_server_args) == []
