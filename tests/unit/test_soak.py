"""bench/soak.py's verdict, on made-up samples: growth or an unanswered request fails it."""

from __future__ import annotations

import argparse

from bench.soak import Load, Sample, summarize


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
