"""reqrep.commands.client (client.py): flags from ClientConfig and RequestPlan, the deprecated
--retries, and a usage error (never a hang) for a malformed endpoint."""

from __future__ import annotations

import time

import pytest

from reqrep import cli
from reqrep.commands import client
from reqrep.config import ClientConfig, RequestPlan
from tests.support import run_entry_point, usage_error


def test_defaults_are_the_config_dataclasses() -> None:
    args = client.parse_args(["--address", "me"])
    assert cli.config_from_args(ClientConfig, args) == ClientConfig(address="me")
    assert cli.config_from_args(RequestPlan, args) == RequestPlan()


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVER_CONNECT", "tcp://a:1,tcp://b:2")
    monkeypatch.setenv("CLIENT_TRIES", "7")
    args = client.parse_args(["--timeout-ms", "100"])
    assert args.endpoints == ["tcp://a:1", "tcp://b:2"]
    assert (args.tries, args.timeout_ms) == (7, 100)
    # A flag given on the command line wins over the environment.
    assert client.parse_args(["--tries", "2"]).tries == 2
    assert client.parse_args(["--connect", "tcp://c:3"]).endpoints == ["tcp://c:3"]


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
        (["--requests", "many"], "not an integer"),
        (["--tries", "0"], "must be at least 1"),
        (["--malformed", "-2"], "must be at least -1"),
        (["--timeout-ms", "0"], "must be at least 1"),
        (["--ping", "--report", "r.json"], "not with --ping"),
        (["--curve-secret-key", "c.key_secret"], "needs --curve-server-key"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert complaint in usage_error(capsys, client.parse_args, *argv)


@pytest.mark.parametrize(
    ("endpoint", "complaint"),
    [
        ("notanendpoint", "'notanendpoint' is not an endpoint: expected tcp://HOST:PORT"),
        ("tcp://localhost", "'tcp://localhost' has no port"),
        ("tcp://localhost:99999", "port '99999' is not a number from 1 to 65535"),
    ],
)
def test_a_malformed_endpoint_is_a_usage_error_at_once_never_a_hang(
    endpoint: str, complaint: str
) -> None:
    for how in (["--connect", endpoint], []):
        started = time.monotonic()
        # Bounded above the 10 s below, so that a slow exit fails that assertion, not this.
        result = run_entry_point("client.py", *how, env={"SERVER_CONNECT": endpoint}, timeout_s=15)
        assert result.returncode == 2, result.stderr
        assert complaint in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout == ""  # not even "Sending request: 0"
        assert time.monotonic() - started < 10
