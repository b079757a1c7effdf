"""``python -m reqrep``: one command per subcommand, each with its own usage."""

from __future__ import annotations

import subprocess
import sys

import pytest


def reqrep(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reqrep", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd="/",  # from any directory: the installed package, not the checkout's files
    )


@pytest.mark.parametrize("command", ["server", "client", "run-clients", "keys"])
def test_each_command_has_its_own_help(command: str) -> None:
    result = reqrep(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: reqrep {command}")


def test_no_command_or_an_unknown_one_is_a_usage_error() -> None:
    assert reqrep().returncode == 2
    unknown = reqrep("serve")
    assert unknown.returncode == 2
    assert "invalid choice: 'serve'" in unknown.stderr


def test_a_commands_usage_error_names_the_command() -> None:
    result = reqrep("client", "--connect", "tcp://localhost")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: reqrep client")
