"""Every Python snippet in README.md and docs/*.md runs, as a complete program, against servers.

Each fenced ``python`` block is saved to a file of its own and run with this
Python (the project's environment), without the caller's ``SERVER_*`` and
``CLIENT_*`` settings. New snippets are picked up by themselves. Where the
default below does not fit, an HTML comment on the line right before the fence
says how to run one, e.g. ``<!-- test: replicas=2 server-args="--work-ms 20" -->``:

- a client (the default): ``replicas`` (1) ``server.py`` replicas on loopback
  (``LocalStack``, no nginx), started with ``server-args``; the snippet finds
  their endpoints, comma-separated, in ``SERVER_CONNECT`` (as ``client.py``
  does; its docs say so) and must exit 0;
- ``role=server``: the snippet is a server; it finds a free loopback endpoint
  in ``SERVER_BIND`` (as ``server.py`` does), must answer a request there, and
  exit 0 on SIGTERM;
- ``expect=TEXT``: what it prints on stdout must contain TEXT;
- ``timeout-s=N``: how long it may take (30 s), for each step.

Any other mark fails the snippet's test; a marks comment anywhere but right
before a fence fails collection (``DocMarksError``).

Shell commands that need no Docker engine run here too, as written
(``DocShell``), but for the ports, which are free ones instead of the page's:
docs/metrics.md's first block, a server with its metrics and ``curl``, must not
need the port the compose stack holds. (The Docker recipes are in
tests/system/test_docs_recipes.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from reqrep.stack import LocalStack, free_port, terminate
from tests.support import (
    PROJECT_DIR,
    DocShell,
    FencedBlock,
    Finished,
    doc_blocks,
    fenced_blocks,
    parse_marks,
    run_script,
    shell_commands,
    wait_for_replica,
)

SNIPPETS = doc_blocks("python", "py")
MARKS = {"role", "replicas", "server-args", "expect", "timeout-s"}
ROLES = ("client", "server")
TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Plan:
    """How a snippet runs, from its marks."""

    role: str = "client"
    replicas: int = 1
    server_args: tuple[str, ...] = ()
    expect: str = ""
    timeout_s: float = TIMEOUT_S


def plan_of(block: FencedBlock) -> Plan:
    """The snippet's plan; a test failure naming the block for a mark it does not know."""
    unknown = set(block.marks) - MARKS
    if unknown:
        pytest.fail(f"{block.where}: unknown test marks {sorted(unknown)}; known: {sorted(MARKS)}")
    marks = block.marks
    plan = Plan(
        role=marks.get("role", "client"),
        replicas=int(marks.get("replicas", "1")),
        server_args=tuple(marks.get("server-args", "").split()),
        expect=marks.get("expect", ""),
        timeout_s=float(marks.get("timeout-s", TIMEOUT_S)),
    )
    if plan.role not in ROLES or plan.replicas < 1 or plan.timeout_s <= 0:
        pytest.fail(f"{block.where}: bad test marks {marks}")
    return plan


def snippet_env(**settings: str) -> dict[str, str]:
    """This environment without the settings of the project's own (which would change what
    a snippet does), plus ``settings``."""
    own = ("SERVER_", "CLIENT_", "LOG_LEVEL", "COMPOSE_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(own)}, **settings}


def saved(block: FencedBlock, directory: Path) -> Path:
    """The snippet as a user saves it: a file of its own, outside the project."""
    script = directory / "snippet.py"
    script.write_text(block.text)
    return script


def assert_finished(block: FencedBlock, plan: Plan, done: Finished) -> None:
    report = f"{block.where} exited {done.status}\n{done.stdout}\n{done.stderr}"
    assert done.status == 0, report
    assert plan.expect in done.stdout, report


async def run_client(block: FencedBlock, plan: Plan, script: Path) -> None:
    async with LocalStack(plan.replicas, nginx=False, server_args=plan.server_args) as stack:
        env = snippet_env(SERVER_CONNECT=",".join(stack.endpoints))
        try:
            done = await run_script(str(script), timeout_s=plan.timeout_s, env=env)
        except TimeoutError:
            pytest.fail(f"{block.where} did not finish within {plan.timeout_s:g} s")
    assert_finished(block, plan, done)


async def run_server(block: FencedBlock, plan: Plan, script: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=snippet_env(SERVER_BIND=endpoint),
        cwd=PROJECT_DIR,
    )
    output = asyncio.ensure_future(process.communicate())
    try:
        answered = asyncio.ensure_future(wait_for_replica(endpoint, timeout_s=plan.timeout_s))
        await asyncio.wait({answered, output}, return_when=asyncio.FIRST_COMPLETED)
        if not answered.done():
            answered.cancel()
            stdout, stderr = await output
            pytest.fail(f"{block.where} exited {process.returncode} before answering:\n{stderr!r}")
        try:
            answered.result()
        except TimeoutError:
            pytest.fail(f"{block.where} did not answer on SERVER_BIND within {plan.timeout_s:g} s")
        status = await terminate(process, signal.SIGTERM, plan.timeout_s)
        stdout, stderr = await asyncio.wait_for(output, STOP_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(output, STOP_TIMEOUT_S)
    assert_finished(block, plan, Finished(status, stdout.decode(), stderr.decode()))


async def run_snippet(block: FencedBlock, directory: Path) -> None:
    plan = plan_of(block)
    script = saved(block, directory)
    await (run_server if plan.role == "server" else run_client)(block, plan, script)


def test_the_docs_have_python_snippets() -> None:
    """The pages are found and read: docs/reliability.md has one."""
    assert any(block.page == "docs/reliability.md" for block in SNIPPETS), SNIPPETS


@pytest.mark.parametrize("block", SNIPPETS, ids=[block.where for block in SNIPPETS])
async def test_snippet_runs_as_a_complete_program(block: FencedBlock, tmp_path: Path) -> None:
    await run_snippet(block, tmp_path)


# --- the runner itself, on blocks made here ------------------------------------------


def made_block(text: str, marks: str) -> FencedBlock:
    return FencedBlock("test_docs.py", 1, "python", text, parse_marks(marks))


SERVER_PY = (
    f"import runpy\nrunpy.run_path({str(PROJECT_DIR / 'server.py')!r}, run_name='__main__')\n"
)


async def test_a_server_snippet_is_asked_and_stopped(tmp_path: Path) -> None:
    """``role=server``: server.py as a snippet answers on SERVER_BIND and exits 0 on SIGTERM."""
    await run_snippet(made_block(SERVER_PY, "role=server"), tmp_path)


@pytest.mark.parametrize(
    ("text", "marks"),
    [
        ("import sys\nsys.exit(3)\n", ""),
        ("print('Server response')\n", "expect='Invalid message'"),
        ("import time\ntime.sleep(30)\n", "timeout-s=1"),
        ("import sys\nsys.exit(0)\n", "role=server timeout-s=3"),
        ("print('fine')\n", "no-such-mark=1"),
    ],
    ids=["exit 3", "expected text missing", "too slow", "server that never answers", "bad mark"],
)
async def test_a_failing_snippet_fails(text: str, marks: str, tmp_path: Path) -> None:
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        await run_snippet(made_block(text, marks), tmp_path)


# --- shell commands without Docker ---------------------------------------------------

METRICS_PAGE = PROJECT_DIR / "docs" / "metrics.md"
COMPOSE_PORT = ":5555"  # what the compose stack's nginx holds on the host


def activated_env() -> dict[str, str]:
    """This environment as ``. .venv/bin/activate`` leaves it: its python3 first on PATH."""
    return snippet_env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is needed (apt-get install curl)")
async def test_metrics_first_block_serves_metrics_beside_the_compose_stack() -> None:
    block = next(b for b in fenced_blocks(METRICS_PAGE) if b.language == "sh")
    server, scrape = shell_commands(block)
    assert "--bind" in server, "without --bind the server takes 5555, which compose holds"
    assert COMPOSE_PORT not in server
    shell = DocShell(
        PROJECT_DIR,
        activated_env(),
        rewrite={":5556": f":{free_port()}", "9100": str(free_port())},
    )
    try:
        await shell.start_server(server)
        metrics = (await shell.run(scrape)).stdout
    finally:
        statuses = await shell.interrupt()
    assert "reqrep_build_info{" in metrics, metrics
    assert "reqrep_requests_total" in metrics, metrics
    assert statuses == [0], "Ctrl-C did not stop the server cleanly"
