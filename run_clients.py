"""Run many clients at once, show their interleaved output and a summary.

    python3 run_clients.py --local 3              # no Docker: 3 replicas (+ nginx) on loopback
    python3 run_clients.py --clients 6            # against tcp://localhost:5555 (docker-compose up)
    python3 run_clients.py --docker --clients 4   # as `docker-compose run --rm client` containers

Each client is a separate ``client.py`` process; its lines are prefixed like
docker-compose's logs (``client_1  | Sending request: 0``). The summary says,
per client and in total, what was sent and answered, the latency percentiles,
the request rate and how many replies each server replica gave. Exits 1 if any
client failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cli
from local_stack import LocalStack

PROJECT_DIR = Path(__file__).resolve().parent
CLIENT_SCRIPT = PROJECT_DIR / "client.py"
SERVER_RESPONSE = "Server response"
INVALID_MESSAGE = "Invalid message"


@dataclass
class ClientRun:
    name: str
    report_path: Path
    exit_code: int | None = None
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    replicas: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    retried: int = 0
    error: str | None = None

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return self.sent - self.answered

    def load_report(self) -> None:
        """Fill in replicas and latencies from the client's --report file."""
        try:
            report = json.loads(self.report_path.read_text())
        except (OSError, ValueError):
            return
        self.statuses.clear()
        for result in report.get("results", []):
            self.statuses[result["status"]] += 1
            self.replicas[result["replica"]] += 1
            self.latencies_ms.append(float(result["latency_ms"]))
            self.retried += result["tries"] > 1
        self.error = report.get("error") or self.error


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def client_arguments(args: argparse.Namespace) -> list[str]:
    """The client.py arguments shared by every client of this run."""
    arguments = [
        "--requests",
        str(args.requests),
        "--malformed",
        str(args.malformed),
        "--timeout-ms",
        str(args.timeout_ms),
        "--retries",
        str(args.retries),
    ]
    if args.interval_ms:
        arguments += ["--interval-ms", str(args.interval_ms)]
    for endpoint in args.connect or []:
        arguments += ["--connect", endpoint]
    return arguments


def compose_command() -> list[str]:
    """`docker-compose` (v1) if installed, else the `docker compose` plugin (v2)."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


def client_command(args: argparse.Namespace, run: ClientRun, index: int) -> list[str]:
    if args.docker:
        return [
            *compose_command(),
            "run",
            "--rm",
            "-T",
            "-v",
            f"{run.report_path.parent}:/reports",
            "client",
            *client_arguments(args),
            "--address",
            run.name,
            "--report",
            f"/reports/{run.report_path.name}",
        ]
    return [
        sys.executable,
        str(CLIENT_SCRIPT),
        *client_arguments(args),
        "--address",
        f"{run.name}-{os.getpid()}",
        "--report",
        str(run.report_path),
    ]


async def _pump(stream: asyncio.StreamReader, prefix: str, run: ClientRun) -> None:
    async for raw in stream:
        line = raw.decode(errors="replace").rstrip("\n")
        if line.startswith("Sending request: "):
            run.sent += 1
        elif line.startswith("Received response: "):
            run.statuses[line.removeprefix("Received response: ")] += 1
        elif line.startswith("error: "):
            run.error = line.removeprefix("error: ")
        print(f"{prefix}{line}", flush=True)


async def run_client(args: argparse.Namespace, run: ClientRun, index: int, width: int) -> None:
    prefix = f"{run.name.ljust(width)}  | "
    process = await asyncio.create_subprocess_exec(
        *client_command(args, run, index),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=PROJECT_DIR,  # where docker-compose finds docker-compose.yml (and .env)
    )
    try:
        if process.stdout is None or process.stderr is None:  # pragma: no cover
            raise RuntimeError("client output is not piped")
        await asyncio.gather(_pump(process.stdout, prefix, run), _pump(process.stderr, prefix, run))
        run.exit_code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    run.load_report()
    if run.exit_code != 0 and run.error is None:
        run.error = f"exited with status {run.exit_code}"


def summarize(runs: Sequence[ClientRun], elapsed_s: float) -> dict[str, Any]:
    def stats(items: Sequence[ClientRun]) -> dict[str, Any]:
        latencies = [latency for run in items for latency in run.latencies_ms]
        sent = sum(run.sent for run in items)
        answered = sum(run.answered for run in items)
        return {
            "sent": sent,
            "server_response": sum(run.statuses[SERVER_RESPONSE] for run in items),
            "invalid_message": sum(run.statuses[INVALID_MESSAGE] for run in items),
            "failed": sent - answered,
            "retried": sum(run.retried for run in items),
            "latency_ms": {
                name: round(percentile(latencies, fraction), 3)
                for name, fraction in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
            },
        }

    replicas: Counter[str] = Counter()
    for run in runs:
        replicas.update(run.replicas)
    total = stats(runs)
    answered = total["server_response"] + total["invalid_message"]
    return {
        "clients": [
            {"name": run.name, "exit_code": run.exit_code, "error": run.error, **stats([run])}
            for run in runs
        ],
        "total": total,
        "elapsed_s": round(elapsed_s, 3),
        "requests_per_second": round(answered / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        "replicas": dict(sorted(replicas.items())),
        "ok": all(run.exit_code == 0 for run in runs),
    }


def format_summary(summary: dict[str, Any]) -> str:
    header = (
        f"{'client':<12}{'sent':>6}{'Server response':>17}{'Invalid message':>17}"
        f"{'failed':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
    )

    def row(name: str, s: dict[str, Any]) -> str:
        lat = s["latency_ms"]
        return (
            f"{name:<12}{s['sent']:>6}{s['server_response']:>17}{s['invalid_message']:>17}"
            f"{s['failed']:>8}{lat['p50']:>9.2f}{lat['p95']:>9.2f}{lat['p99']:>9.2f}"
        )

    total = summary["total"]
    clients = summary["clients"]
    lines = [
        "",
        f"Summary: {len(clients)} clients, {total['sent']} requests "
        f"in {summary['elapsed_s']:.2f} s ({summary['requests_per_second']:.1f} requests/s)",
        header,
        *(row(c["name"], c) for c in clients),
        row("total", total),
    ]
    replicas = summary["replicas"]
    answered = sum(replicas.values())
    if replicas:
        shares = ", ".join(
            f"{name} {count} ({100 * count / answered:.0f}%)" for name, count in replicas.items()
        )
        lines.append(f"Replies per replica: {shares}")
    if total["retried"]:
        lines.append(f"Requests answered after a retry: {total['retried']}")
    if summary["ok"]:
        lines.append(f"Result: OK, all {total['sent']} requests answered")
    else:
        lines.append("Result: FAILED")
        lines += [f"  {c['name']}: {c['error']}" for c in clients if c["exit_code"] != 0]
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def local_stack(args: argparse.Namespace) -> AsyncIterator[None]:
    """With --local R: R replicas (and nginx) on loopback for the duration."""
    if not args.local:
        yield
        return
    server_args = ["--work-ms", str(args.work_ms)] if args.work_ms else []
    nginx = False if args.no_nginx else None
    async with LocalStack(args.local, server_args=server_args, nginx=nginx) as stack:
        via = "nginx" if stack.nginx is not None else "ZeroMQ's own balancing"
        print(
            f"Started {args.local} server replicas on loopback; "
            f"clients connect to {', '.join(stack.endpoints)} ({via})",
            flush=True,
        )
        args.connect = stack.endpoints
        yield


async def run(args: argparse.Namespace) -> dict[str, Any]:
    width = len(f"client_{args.clients}")
    with tempfile.TemporaryDirectory(prefix="run-clients-") as workdir:
        os.chmod(workdir, 0o777)  # container users write their reports here
        runs = [
            ClientRun(f"client_{i}", Path(workdir) / f"client_{i}.json")
            for i in range(1, args.clients + 1)
        ]
        async with local_stack(args):
            started = time.perf_counter()
            await asyncio.gather(
                *(run_client(args, run, i, width) for i, run in enumerate(runs, 1))
            )
            elapsed_s = time.perf_counter() - started
    return summarize(runs, elapsed_s)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run many client.py processes at once and summarize the results.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--clients",
        type=cli.int_at_least(1),
        default=cli.env("RUN_CLIENTS", "2"),
        help="clients to run at once (env RUN_CLIENTS)",
    )
    parser.add_argument(
        "--requests",
        type=cli.int_at_least(0),
        default=cli.env("CLIENT_REQUESTS", "10"),
        help="requests per client (env CLIENT_REQUESTS)",
    )
    parser.add_argument(
        "--malformed",
        type=cli.int_at_least(-1),
        default=cli.env("CLIENT_MALFORMED", "2"),
        help="index of each client's request sent without address, -1 for none "
        "(env CLIENT_MALFORMED)",
    )
    parser.add_argument(
        "--connect",
        action="append",
        help="server endpoint, repeatable (default: client.py's, env SERVER_CONNECT or "
        "tcp://localhost:5555; with --local, the local stack)",
    )
    parser.add_argument(
        "--timeout-ms",
        type=cli.int_at_least(1),
        default=cli.env("CLIENT_TIMEOUT_MS", "2500"),
        help="client reply timeout (env CLIENT_TIMEOUT_MS)",
    )
    parser.add_argument(
        "--retries",
        type=cli.int_at_least(1),
        default=cli.env("CLIENT_RETRIES", "3"),
        help="client tries per request (env CLIENT_RETRIES)",
    )
    parser.add_argument(
        "--interval-ms",
        type=cli.float_at_least(0),
        default=cli.env("CLIENT_INTERVAL_MS", "0"),
        help="pause between a client's requests (env CLIENT_INTERVAL_MS)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--local",
        type=cli.int_at_least(1),
        metavar="R",
        help="start R server replicas on loopback (with nginx in front if installed), "
        "run the clients against them, stop them afterwards",
    )
    mode.add_argument(
        "--docker",
        action="store_true",
        help="run each client as a `docker-compose run --rm client` container",
    )
    parser.add_argument(
        "--no-nginx",
        action="store_true",
        help="with --local: connect clients to every replica directly, even if nginx is installed",
    )
    parser.add_argument(
        "--work-ms",
        type=cli.float_at_least(0),
        default=0.0,
        help="with --local: simulated work per request on the servers",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = asyncio.run(run(args))
    except KeyboardInterrupt:
        print("Interrupted; everything started was stopped.", file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
