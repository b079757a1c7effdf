"""Many clients at once: separate client processes, interleaved output, a summary.

Each client's lines are shown prefixed like docker-compose's logs
(``client_1  | Sending request: 0``); what the summary counts comes from each
client's JSON report (``reqrep.report.ClientReport``), never from its output.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from reqrep import protocol
from reqrep.config import setting
from reqrep.report import ClientOutcome, ClientReport, Summary
from reqrep.stack import LocalStack


@dataclass(frozen=True, slots=True)
class RunPlan:
    """How many clients, what each is told, and where they run."""

    clients: int = setting(2, env="RUN_CLIENTS")
    client_args: Sequence[str] = ()  # client.py flags shared by every client
    requests: int = 10  # what each client was told to send, for a client that left no report
    docker: bool = False  # each client as `docker-compose run --rm client`
    local_replicas: int = 0  # > 0: start that many replicas (and nginx) on loopback first
    local_nginx: bool | None = None  # None: nginx if installed
    local_server_args: Sequence[str] = ()
    out: TextIO = field(default=sys.stdout)  # where the clients' lines go


def compose_command() -> list[str]:
    """`docker-compose` (v1) if installed, else the `docker compose` plugin (v2)."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


def client_command(plan: RunPlan, name: str, report: Path, endpoints: Sequence[str]) -> list[str]:
    """The command line of one client process."""
    connect = [arg for endpoint in endpoints for arg in ("--connect", endpoint)]
    if plan.docker:
        mount = f"{report.parent}:/reports"
        return [
            *compose_command(),
            *("run", "--rm", "-T", "-v", mount, "client"),
            *plan.client_args,
            *("--address", name, "--report", f"/reports/{report.name}"),
        ]
    return [
        *(sys.executable, "-m", "reqrep", "client"),
        *plan.client_args,
        *connect,
        *("--address", f"{name}-{os.getpid()}", "--report", str(report)),
    ]


async def _show(stream: asyncio.StreamReader, prefix: str, out: TextIO) -> None:
    async for raw in stream:
        print(f"{prefix}{raw.decode(errors='replace').rstrip()}", file=out, flush=True)


async def run_client(plan: RunPlan, command: list[str], name: str, report: Path) -> ClientOutcome:
    """Run one client process to its end, showing its lines; read its report."""
    prefix = f"{name.ljust(len(f'client_{plan.clients}'))}  | "
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        if process.stdout is None or process.stderr is None:  # pragma: no cover
            raise RuntimeError("client output is not piped")
        await asyncio.gather(
            _show(process.stdout, prefix, plan.out), _show(process.stderr, prefix, plan.out)
        )
        exit_code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return _outcome(plan, name, exit_code, report)


def _outcome(plan: RunPlan, name: str, exit_code: int, path: Path) -> ClientOutcome:
    try:
        report = ClientReport.read(path)
    except (OSError, ValueError, KeyError, TypeError):
        # No report (the process died, or never started): all it was told to send is lost.
        lost = ClientReport(name, plan.requests, (), f"exited with status {exit_code}, no report")
        return ClientOutcome(name, exit_code, lost, lost.error)
    error = report.error
    if exit_code != 0 and error is None:
        error = f"exited with status {exit_code}"
    return ClientOutcome(name, exit_code, report, error)


@asynccontextmanager
async def _endpoints(plan: RunPlan) -> AsyncIterator[list[str]]:
    """The endpoints the clients connect to: a local stack's, or none (their own default)."""
    if plan.local_replicas < 1:
        yield []
        return
    stack = LocalStack(
        plan.local_replicas, server_args=plan.local_server_args, nginx=plan.local_nginx
    )
    async with stack:
        via = "nginx" if stack.nginx is not None else "ZeroMQ's own balancing"
        print(
            f"Started {plan.local_replicas} server replicas on loopback; "
            f"clients connect to {', '.join(stack.endpoints)} ({via})",
            file=plan.out,
            flush=True,
        )
        yield stack.endpoints


async def run(plan: RunPlan) -> Summary:
    """Run every client at once (after starting a local stack, if asked); summarize."""
    names = [f"client_{i}" for i in range(1, plan.clients + 1)]
    with tempfile.TemporaryDirectory(prefix="run-clients-") as workdir:
        os.chmod(workdir, 0o777)  # container users write their reports here
        reports = [Path(workdir) / f"{name}.json" for name in names]
        async with _endpoints(plan) as endpoints:
            started = time.perf_counter()
            outcomes = await asyncio.gather(
                *(
                    run_client(plan, client_command(plan, name, report, endpoints), name, report)
                    for name, report in zip(names, reports, strict=True)
                )
            )
            elapsed_s = time.perf_counter() - started
    return Summary.of(outcomes, elapsed_s)


# The summary's count columns: the seed's two statuses always; the server's failures only
# when some reply had one, so a run with the default handler looks as it always did.
STATUS_COLUMNS = (
    (protocol.SERVER_RESPONSE_TEXT, "server_response"),
    (protocol.INVALID_MESSAGE_TEXT, "invalid_message"),
    (protocol.SERVER_ERROR_TEXT, "server_error"),
    (protocol.SERVER_TIMEOUT_TEXT, "server_timeout"),
)


def format_summary(summary: Summary) -> str:
    """The summary as the table run_clients.py prints."""
    columns = [
        (title, key)
        for title, key in STATUS_COLUMNS
        if key in ("server_response", "invalid_message") or getattr(summary.total, key)
    ]
    header = (
        f"{'client':<12}{'sent':>6}"
        + "".join(f"{title:>17}" for title, _ in columns)
        + f"{'failed':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
    )

    def row(name: str, stats: dict[str, Any]) -> str:
        lat = stats["latency_ms"]
        return (
            f"{name:<12}{stats['sent']:>6}"
            + "".join(f"{stats[key]:>17}" for _, key in columns)
            + f"{stats['failed']:>8}"
            f"{lat['p50']:>9.2f}{lat['p95']:>9.2f}{lat['p99']:>9.2f}"
        )

    total = summary.total
    lines = [
        "",
        f"Summary: {len(summary.clients)} clients, {total.sent} requests "
        f"in {summary.elapsed_s:.2f} s ({summary.requests_per_second:.1f} requests/s)",
        header,
        *(row(c["name"], c) for c in summary.clients),
        row("total", asdict(total)),
    ]
    answered = sum(summary.replicas.values())
    if summary.replicas:
        shares = ", ".join(
            f"{name} {count} ({100 * count / answered:.0f}%)"
            for name, count in summary.replicas.items()
        )
        lines.append(f"Replies per replica: {shares}")
    if total.retried:
        lines.append(f"Requests answered after a retry: {total.retried}")
    if summary.ok:
        lines.append(f"Result: OK, all {total.sent} requests answered")
    else:
        lines.append("Result: FAILED")
        lines += [f"  {c['name']}: {c['error']}" for c in summary.clients if c["exit_code"] != 0]
    return "\n".join(lines)
