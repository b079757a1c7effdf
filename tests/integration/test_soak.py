"""bench/soak.py runs end to end, briefly, and passes (its verdict: tests/unit/test_soak.py)."""

from __future__ import annotations

import os
import sys

from tests.support import run

# CI-sized by default; SOAK_TEST_DURATION_S=30 gives the CI soak.
DURATION_S = float(os.environ.get("SOAK_TEST_DURATION_S", "8"))


def test_brief_soak_prints_samples_and_passes() -> None:
    warmup_s = DURATION_S / 4
    output = run(
        [
            *(sys.executable, "-m", "bench.soak"),
            "--duration-s",
            str(DURATION_S),
            "--warmup-s",
            str(warmup_s),
            "--sample-s",
            "0.5",
            "--rate",
            "200",
            "--reconnect-every",
            "20",
        ],
        DURATION_S + 60,
    )
    print(output)
    lines = output.splitlines()
    samples = [line.split() for line in lines if line.strip()[:1].isdigit()]
    assert len(samples) >= DURATION_S  # about two a second
    assert all(int(s[1]) > 0 and int(s[2]) > 0 for s in samples)  # rss_kib, fds
    assert int(samples[-1][3]) > 0  # answered
    assert all(s[4] == "0" for s in samples)  # failed
    assert any(line.startswith("rss_kib after warm-up:") for line in lines)
    assert any(line.startswith("fds after warm-up:") for line in lines)
    assert lines[-1] == "Result: OK"
