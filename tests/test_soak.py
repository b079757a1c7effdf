"""The soak script runs end to end (briefly), and its verdict catches growth."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from bench.soak import Load, Sample, summarize

PROJECT_DIR = Path(__file__).resolve().parent.parent
SOAK = PROJECT_DIR / "bench" / "soak.py"
# CI-sized by default; SOAK_TEST_DURATION_S=30 gives the CI soak.
DURATION_S = float(os.environ.get("SOAK_TEST_DURATION_S", "8"))


def test_brief_soak_prints_samples_and_passes() -> None:
    warmup_s = DURATION_S / 4
    done = subprocess.run(
        [
            sys.executable,
            str(SOAK),
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
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=DURATION_S + 60,
        check=False,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    samples = [line.split() for line in lines if line.strip()[:1].isdigit()]
    assert len(samples) >= DURATION_S  # about two a second
    assert all(int(s[1]) > 0 and int(s[2]) > 0 for s in samples)  # rss_kib, fds
    assert int(samples[-1][3]) > 0  # answered
    assert all(s[4] == "0" for s in samples)  # failed
    assert any(line.startswith("rss_kib after warm-up:") for line in lines)
    assert any(line.startswith("fds after warm-up:") for line in lines)
    assert lines[-1] == "Result: OK"


def _args() -> argparse.Namespace:
    return argparse.Namespace(warmup_s=1.0, max_growth_percent=10.0)


def _samples(rss_kib: list[int], fds: list[int]) -> list[Sample]:
    return [
        Sample(t_s=2.0 + i, rss_kib=r, fds=f, answered=100 * i, failed=0)
        for i, (r, f) in enumerate(zip(rss_kib, fds, strict=True))
    ]


def test_verdict_fails_on_growth_or_unanswered_requests() -> None:
    flat = _samples([30_000] * 9, [21] * 9)
    assert summarize(_args(), flat, Load(answered=900))["ok"]
    leaking = _samples([30_000] * 3 + [32_000] * 3 + [34_000] * 3, [21] * 9)
    result = summarize(_args(), leaking, Load(answered=900))
    assert not result["ok"]
    assert result["rss_kib"]["growth_percent"] > 10
    fd_leak = summarize(
        _args(), _samples([30_000] * 9, [21, 21, 21, 22, 23, 24, 25, 26, 27]), Load()
    )
    assert fd_leak["failures"] == ["fds grew 23.8% (> 10%)"]
    lost = summarize(_args(), flat, Load(answered=899, failed=1))
    assert lost["failures"] == ["1 request(s) unanswered"]
    # A transient spike in the middle is not growth.
    spike = _samples(
        [30_000, 30_000, 30_000, 40_000, 30_000, 30_000, 30_000, 30_000, 30_000], [21] * 9
    )
    assert summarize(_args(), spike, Load())["ok"]
