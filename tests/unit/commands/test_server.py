"""reqrep.commands.server (server.py): flags from ServerConfig and its variables, usage errors
for bad values and combinations, and one line (exit 1) for a handler that cannot be loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from reqrep import cli
from reqrep.commands import server
from reqrep.config import ServerConfig
from tests.support import run_entry_point, usage_error


def test_defaults_are_the_config_dataclass() -> None:
    config = cli.config_from_args(ServerConfig, server.parse_args(["--name", "x"]))
    assert config == ServerConfig(name="x")


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVER_BIND", "tcp://127.0.0.1:6000, tcp://127.0.0.1:6001")
    monkeypatch.setenv("SERVER_HANDLER", "reqrep.handlers:echo")
    monkeypatch.setenv("SERVER_NAME", "from-env")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    args = server.parse_args([])
    assert args.bind == ["tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001"]
    assert (args.handler, args.name, args.log_level) == (
        "reqrep.handlers:echo",
        "from-env",
        "DEBUG",
    )
    assert cli.config_from_args(ServerConfig, args).bind == (
        "tcp://127.0.0.1:6000",
        "tcp://127.0.0.1:6001",
    )


def test_the_metrics_port_is_off_by_default_and_taken_from_flag_or_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cli.config_from_args(ServerConfig, server.parse_args([])).metrics_port is None
    assert server.parse_args(["--metrics-port", "9100"]).metrics_port == 9100
    monkeypatch.setenv("SERVER_METRICS_PORT", "9101")
    assert server.parse_args([]).metrics_port == 9101
    monkeypatch.setenv("SERVER_METRICS_PORT", "")
    assert server.parse_args([]).metrics_port is None


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--metrics-port", "65536"], "not a TCP port"),
        (["--metrics-port", "http"], "not an integer"),
        (["--bind", "notanendpoint"], "'notanendpoint' is not an endpoint"),
        (["--bind", "tcp://*"], "'tcp://*' has no port"),
        (["--work-ms", "5", "--handler", "reqrep.handlers:echo"], "give it or --handler"),
        (["--curve-authorized-keys", "keys"], "needs --curve-secret-key"),
        (["--threads", "-1"], "must be at least 0"),
        (["--log-level", "loud"], "not a log level"),
    ],
)
def test_bad_values_and_combinations_are_usage_errors(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert complaint in usage_error(capsys, server.parse_args, *argv)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SERVER_WORK_MS", "-5"), ("SERVER_MAX_INFLIGHT", "lots"), ("LOG_LEVEL", "loud")],
)
def test_a_bad_value_from_the_environment_is_a_usage_error(variable: str, value: str) -> None:
    result = run_entry_point("server.py", env={variable: value})
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert repr(value) in result.stderr


def test_help_shows_each_default_once_and_never_none() -> None:
    result = run_entry_point("server.py", "--help", env={"SERVER_GRACE_S": "7"})
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "None" not in text
    assert "(from env SERVER_GRACE_S; default 7)" in text
    assert "(env SERVER_METRICS_PORT; default off)" in text
    assert text.count("env SERVER_HANDLER;") == 1


@pytest.fixture
def handler_module(tmp_path: Path) -> Path:
    """A handler module outside the repository, on PYTHONPATH by the test that uses it."""
    (tmp_path / "outside.py").write_text(
        "value = 42\n\ndef echo(request):\n    return request.data\n"
    )
    (tmp_path / "broken_import.py").write_text("import missing_dependency_xyz\n")
    return tmp_path


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        ("outside", "handler 'outside' is not of the form module:attr"),
        ("outside:", "handler 'outside:' is not of the form module:attr"),
        (
            "nowhere.at_all:echo",
            "handler module 'nowhere.at_all' not found (no module named 'nowhere')",
        ),
        ("outside:missing", "handler module 'outside' has no attribute 'missing'"),
        ("outside:value", "handler 'outside:value' is not callable (its type is int)"),
    ],
)
def test_a_bad_handler_ends_the_server_at_once_with_one_line(
    handler_module: Path, spec: str, line: str
) -> None:
    result = run_entry_point(
        "server.py",
        *("--bind", "tcp://127.0.0.1:*", "--handler", spec),
        env={"PYTHONPATH": str(handler_module)},
        timeout_s=15,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(f"ERROR server: {line}")
    assert "Traceback" not in result.stderr


def test_a_module_that_fails_to_import_shows_its_own_traceback(handler_module: Path) -> None:
    result = run_entry_point(
        "server.py",
        *("--bind", "tcp://127.0.0.1:*", "--handler", "broken_import:echo"),
        env={"PYTHONPATH": str(handler_module)},
        timeout_s=15,
    )
    assert result.returncode == 1
    assert "No module named 'missing_dependency_xyz'" in result.stderr
    assert "Traceback" in result.stderr  # the module's own bug, not a bad spec: all of it


def test_threads_with_an_async_handler_ends_the_server_with_one_line() -> None:
    result = run_entry_point(
        "server.py",
        *("--bind", "tcp://127.0.0.1:*", "--work-ms", "5", "--threads", "2"),
        timeout_s=15,
    )
    assert result.returncode == 1
    assert "--threads is for synchronous handlers" in result.stderr
    assert "Traceback" not in result.stderr
