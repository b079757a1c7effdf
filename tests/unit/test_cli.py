"""reqrep.cli and the entry points' argument parsing: bounded number types, defaults from the
environment and from reqrep.config, and a usage error (status 2) for every bad value."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

import client
import run_clients
import server
from reqrep import cli
from reqrep.config import ClientConfig, ServerConfig
from tests.support import PROJECT_DIR


@pytest.mark.parametrize(
    ("parse", "text", "value"),
    [
        (cli.int_at_least(1), "5", 5),
        (cli.int_at_least(-1), "-1", -1),
        (cli.float_at_least(0), "0.5", 0.5),
        (cli.int_list_at_least(1), "1,16, 64", [1, 16, 64]),
    ],
)
def test_bounded_number_types_accept_values_in_range(
    parse: object, text: str, value: float
) -> None:
    assert callable(parse)
    assert parse(text) == value


@pytest.mark.parametrize(
    ("parse", "text", "complaint"),
    [
        (cli.int_at_least(1), "0", "must be at least 1"),
        (cli.int_at_least(0), "1.5", "not an integer"),
        (cli.float_at_least(0), "-0.1", "must be at least 0"),
        (cli.float_at_least(0), "nan", "must be at least 0"),
        (cli.float_at_least(0), "soon", "not a number"),
        (cli.int_list_at_least(1), "1,0", "must be at least 1"),
        (cli.int_list_at_least(1), "1,x", "not an integer"),
        (cli.int_list_at_least(1), ",", "no number"),
    ],
)
def test_bounded_number_types_refuse_out_of_range_and_non_numbers(
    parse: object, text: str, complaint: str
) -> None:
    assert callable(parse)
    with pytest.raises(argparse.ArgumentTypeError, match=complaint):
        parse(text)


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVER_BIND", "tcp://127.0.0.1:6000, tcp://127.0.0.1:6001")
    monkeypatch.setenv("SERVER_WORK_MS", "25")
    monkeypatch.setenv("SERVER_NAME", "from-env")
    args = server.parse_args([])
    assert args.bind == ["tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001"]
    assert (args.work_ms, args.name) == (25.0, "from-env")
    monkeypatch.setenv("SERVER_CONNECT", "tcp://a:1,tcp://b:2")
    monkeypatch.setenv("CLIENT_TRIES", "7")
    args = client.parse_args(["--timeout-ms", "100"])
    assert args.connect == ["tcp://a:1", "tcp://b:2"]
    assert (args.tries, args.timeout_ms) == (7, 100)
    # A flag given on the command line wins over the environment.
    assert client.parse_args(["--tries", "2"]).tries == 2


def test_defaults_are_the_config_dataclasses(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SERVER_BIND", "SERVER_WORK_MS", "SERVER_GRACE_S", "CLIENT_TRIES"):
        monkeypatch.delenv(name, raising=False)
    server_args = server.config_from_args(server.parse_args(["--name", "x"]))
    assert server_args == ServerConfig(name="x")
    client_config = client.config_from_args(client.parse_args([]))
    assert client_config == ClientConfig()


def test_deprecated_retries_still_counts_tries_and_warns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert client.parse_args(["--retries", "2"]).tries == 2
    monkeypatch.setenv("CLIENT_RETRIES", "4")
    assert client.parse_args([]).tries == 4
    assert "CLIENT_RETRIES is deprecated" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        client.parse_args(["--retries", "2", "--tries", "3"])
    assert "give only --tries" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--no-nginx"], "--no-nginx only applies with --local"),
        (["--work-ms", "5"], "--work-ms only applies with --local"),
        (["--docker", "--connect", "tcp://a:1"], "--connect cannot be combined with --docker"),
        (["--local", "2", "--connect", "tcp://a:1"], "--connect cannot be combined with --local"),
        (["--local", "2", "--docker"], "not allowed with argument"),
    ],
)
def test_run_clients_refuses_flags_that_would_be_ignored(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_clients.parse_args(argv)
    assert exit_info.value.code == 2
    assert complaint in capsys.readouterr().err


def run_entry_point(
    script: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python3 <project>/<script> ARGS`` with ``env`` added to this process's; bounded."""
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / script), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("script", "args", "complaint"),
    [
        ("client.py", ["--requests", "many"], "not an integer"),
        ("client.py", ["--tries", "0"], "must be at least 1"),
        ("client.py", ["--malformed", "-2"], "must be at least -1"),
        ("client.py", ["--timeout-ms", "0"], "must be at least 1"),
        ("client.py", ["--bogus"], "unrecognized arguments"),
        ("run_clients.py", ["--clients", "0"], "must be at least 1"),
    ],
)
def test_bad_arguments_get_a_usage_error(script: str, args: list[str], complaint: str) -> None:
    result = run_entry_point(script, *args)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert complaint in result.stderr


@pytest.mark.parametrize(
    ("script", "variable", "value"),
    [
        ("server.py", "SERVER_WORK_MS", "-5"),
        ("server.py", "SERVER_MAX_INFLIGHT", "lots"),
        ("client.py", "CLIENT_TIMEOUT_MS", "0"),
        ("run_clients.py", "RUN_CLIENTS", "none"),
    ],
)
def test_bad_value_from_the_environment_gets_a_usage_error(
    script: str, variable: str, value: str
) -> None:
    result = run_entry_point(script, env={variable: value})
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert repr(value) in result.stderr


@pytest.mark.parametrize("script", ["server.py", "client.py", "run_clients.py", "keys.py"])
def test_help_prints_the_usage_and_exits_0(script: str) -> None:
    result = run_entry_point(script, "--help")
    assert result.returncode == 0
    assert "usage:" in result.stdout
