"""bench.run's command line, without running anything: rows, usage errors (status 2), defaults."""

from __future__ import annotations

import pytest

from bench import run
from tests.support import usage_error


def test_an_unknown_row_is_a_usage_error_naming_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    error = usage_error(capsys, run.parse_args, "--rows", "bogus")
    assert "unknown rows bogus" in error
    assert "ceiling, direct, nginx, nginx-3, router-work, rep-work" in error


@pytest.mark.parametrize(
    "argv", [("--callers", "0"), ("--rounds", "0"), ("--duration-s", "0"), ("--clients", "4")]
)
def test_bad_values_and_old_flags_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    usage_error(capsys, run.parse_args, *argv)


def test_rows_keep_their_order_and_quick_shortens_the_window() -> None:
    args = run.parse_args(["--rows", "direct,ceiling", "--quick"])
    assert args.rows == ["direct", "ceiling"]
    assert (args.duration_s, args.warmup_s, args.rounds, args.informational) == (0.3, 0.1, 1, False)
    assert run.parse_args([]).rows == list(run.ROW_KEYS)


def test_only_the_rows_doing_the_ceilings_work_are_compared_with_it() -> None:
    rows = run.all_rows(20.0, ())
    # The work rows and the CPU-bound handler's do other work than the echo.
    uncompared = [row.key for row in rows if not row.compared]
    assert uncompared == ["router-work", "rep-work", "hash", "hash-threads", "hash-2"]


def test_the_rows_behind_nginx_are_the_ones_skipped_without_it() -> None:
    behind_nginx = [spec.key for spec in run.server_rows(20.0) if spec.nginx]
    assert behind_nginx == ["nginx", "nginx-3", "hash-2"]
