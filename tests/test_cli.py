"""Command-line plumbing: env-var defaults, and the same usage error for bad values."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cli
import client
import server

PROJECT_DIR = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("parse", "text", "value"),
    [
        (cli.int_at_least(1), "5", 5),
        (cli.int_at_least(-1), "-1", -1),
        (cli.float_at_least(0), "0.5", 0.5),
    ],
)
def test_types_accept_values_in_range(parse: object, text: str, value: float) -> None:
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
    ],
)
def test_types_refuse_values_out_of_range(parse: object, text: str, complaint: str) -> None:
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
    monkeypatch.setenv("CLIENT_RETRIES", "7")
    args = client.parse_args(["--timeout-ms", "100"])
    assert args.connect == ["tcp://a:1", "tcp://b:2"]
    assert (args.retries, args.timeout_ms) == (7, 100)
    # A flag given on the command line wins over the environment.
    assert client.parse_args(["--retries", "2"]).retries == 2


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
    result = subprocess.run(
        [sys.executable, str(PROJECT_DIR / script)],
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert repr(value) in result.stderr


@pytest.mark.parametrize("script", ["server.py", "client.py", "run_clients.py", "keys.py"])
def test_help_documents_every_default(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(PROJECT_DIR / script), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    assert "usage:" in result.stdout
