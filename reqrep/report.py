"""The JSON report schema: what a client did, and the summary over many clients.

``client.py --report PATH`` writes a ``ClientReport``; ``run_clients.py``
reads those (never the clients' human output) and writes a ``Summary``
(``--json``); the benchmarks use the same percentiles. All plain data, no I/O
but ``ClientReport.write``/``read``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reqrep import protocol

PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Result:
    """One answered request."""

    request: int
    status: str
    replica: str
    latency_ms: float
    tries: int


@dataclass(frozen=True, slots=True)
class ClientReport:
    """One client's run: what it sent, what came back, and why it stopped early if it did."""

    client: str
    sent: int
    results: tuple[Result, ...]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["results"] = [
            {**asdict(r), "latency_ms": round(r.latency_ms, 3)} for r in self.results
        ]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClientReport:
        results = tuple(Result(**item) for item in data["results"])
        return cls(data["client"], int(data["sent"]), results, data.get("error"))

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()), encoding="utf-8")

    @classmethod
    def read(cls, path: str | Path) -> ClientReport:
        """Raises OSError, ValueError (bad JSON) or KeyError/TypeError (not this schema)."""
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts and latency percentiles over one or more clients."""

    sent: int
    server_response: int
    invalid_message: int
    server_error: int
    server_timeout: int
    failed: int
    retried: int
    latency_ms: dict[str, float]

    @classmethod
    def of(cls, reports: Iterable[ClientReport]) -> Stats:
        reports = list(reports)
        results = [r for report in reports for r in report.results]
        statuses = Counter(r.status for r in results)
        latencies = [r.latency_ms for r in results]
        sent = sum(report.sent for report in reports)
        return cls(
            sent=sent,
            server_response=statuses[protocol.SERVER_RESPONSE_TEXT],
            invalid_message=statuses[protocol.INVALID_MESSAGE_TEXT],
            server_error=statuses[protocol.SERVER_ERROR_TEXT],
            server_timeout=statuses[protocol.SERVER_TIMEOUT_TEXT],
            failed=sent - len(results),
            retried=sum(r.tries > 1 for r in results),
            latency_ms={name: round(percentile(latencies, f), 3) for name, f in PERCENTILES},
        )


@dataclass(frozen=True, slots=True)
class ClientOutcome:
    """A client process as run_clients saw it: its report and how it exited."""

    name: str
    exit_code: int | None
    report: ClientReport
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """run_clients' result: per client and in total, replies per replica, OK or not."""

    clients: list[dict[str, Any]]
    total: Stats
    elapsed_s: float
    requests_per_second: float
    replicas: dict[str, int] = field(default_factory=dict)
    ok: bool = True

    @classmethod
    def of(cls, outcomes: Sequence[ClientOutcome], elapsed_s: float) -> Summary:
        reports = [o.report for o in outcomes]
        total = Stats.of(reports)
        replicas = Counter(r.replica for report in reports for r in report.results)
        answered = total.sent - total.failed  # a reply of any status is an answer
        return cls(
            clients=[
                {
                    "name": o.name,
                    "exit_code": o.exit_code,
                    "error": o.error,
                    **asdict(Stats.of([o.report])),
                }
                for o in outcomes
            ],
            total=total,
            elapsed_s=round(elapsed_s, 3),
            requests_per_second=round(answered / elapsed_s, 1) if elapsed_s > 0 else 0.0,
            replicas=dict(sorted(replicas.items())),
            ok=all(o.exit_code == 0 for o in outcomes),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
