"""bench/profile.py end to end: py-spy records a replica under load; its raw stacks go where
``--out`` says, or to a temporary file it removes, never into the work tree."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.support import PROJECT_DIR, run

PYSPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
pytestmark = pytest.mark.skipif(
    not Path(PYSPY).exists() or os.geteuid() != 0,
    reason="needs py-spy (requirements-dev.txt) and permission to ptrace (root)",
)
RUN_TIMEOUT_S = 120
PROFILE = (sys.executable, "-m", "bench.profile", "--duration-s", "1", "--callers", "2")


def test_without_out_it_prints_the_summary_and_leaves_no_file() -> None:
    before = sorted(PROJECT_DIR.iterdir())
    output = run(PROFILE, RUN_TIMEOUT_S)
    assert sorted(PROJECT_DIR.iterdir()) == before
    assert "raw stacks: not kept" in output
    assert "\nself:\n" in output
    assert "\ninclusive:\n" in output


def test_out_keeps_the_raw_stacks(tmp_path: Path) -> None:
    out = tmp_path / "server.folded"
    output = run([*PROFILE, "--out", str(out)], RUN_TIMEOUT_S)
    assert f"raw stacks: {out}" in output
    stacks = out.read_text().splitlines()
    assert stacks
    assert all(line.rpartition(" ")[2].isdigit() for line in stacks)
