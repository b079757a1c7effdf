"""run_clients.py: interleaved output, the summary, --local (with a handler of the user's) and
clean shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from reqrep.server import HANDLER_THREAD_PREFIX
from reqrep.stack import free_port
from tests.support import PROJECT_DIR, needs_nginx, run_script

TIMEOUT_S = 60.0
PREFIXED = re.compile(r"^client_\d+ +\| (Sending request: \d+|Received response: .+)$")


async def run_clients(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = await run_script("run_clients.py", *args, timeout_s=TIMEOUT_S, env=env)
    return done.status, done.stdout, done.stderr


@pytest.mark.parametrize(
    "nginx",
    [
        pytest.param(True, marks=[pytest.mark.nginx, needs_nginx]),
        False,
    ],
    ids=["nginx", "zeromq-balancing"],
)
async def test_local_three_replicas_answer_all_and_json_summary_counts_them(nginx: bool) -> None:
    args = ["--local", "3", "--clients", "6", "--requests", "10", "--interval-ms", "20"]
    status, stdout, stderr = await run_clients(*args, *([] if nginx else ["--no-nginx"]), "--json")
    assert status == 0, stderr
    summary = json.loads(stdout)  # --json: stdout is the JSON summary alone
    lines = stderr.splitlines()
    assert ("(nginx)" in lines[0]) is nginx
    output = [line for line in lines[1:] if line.startswith("client_")]
    assert all(PREFIXED.match(line) for line in output), output[:5]
    assert len(output) == 6 * 10 * 2
    total = summary["total"]
    assert (total["sent"], total["server_response"], total["invalid_message"]) == (60, 54, 6)
    assert total["failed"] == 0
    assert summary["ok"] is True
    assert sorted(summary["replicas"]) == ["replica-1", "replica-2", "replica-3"]
    assert sum(summary["replicas"].values()) == 60
    for client in summary["clients"]:
        assert client["exit_code"] == 0
        assert client["invalid_message"] == 1
        assert client["latency_ms"]["p50"] > 0


async def test_human_summary_shows_totals_replicas_and_result() -> None:
    status, stdout, _ = await run_clients("--local", "2", "--no-nginx", "--requests", "4")
    assert status == 0
    assert "Summary: 2 clients, 8 requests" in stdout
    assert re.search(r"^total\s+8\s+6\s+2\s+0\s", stdout, re.MULTILINE)
    assert "Replies per replica: replica-1" in stdout
    assert "Result: OK, all 8 requests answered" in stdout


async def test_unreachable_server_fails_clearly_with_nonzero_exit() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    status, stdout, _ = await run_clients(
        "--connect", endpoint, "--timeout-ms", "100", "--tries", "2", "--clients", "2"
    )
    assert status == 1
    assert "Result: FAILED" in stdout
    assert "did not answer request 0 after 2 tries" in stdout
    assert re.search(r"^total\s+2\s+0\s+0\s+2\s", stdout, re.MULTILINE)


# A handler module outside the project: it notes, per replica, the thread each request ran in.
RECORDER = """
import os
import threading
from pathlib import Path


def record(request):
    with open(Path(os.environ["RECORD_DIR"], request.replica), "a") as seen:
        seen.write(threading.current_thread().name + "\\n")
    return request.data
"""


async def test_local_replicas_run_the_handler_given_in_their_threads(tmp_path: Path) -> None:
    (tmp_path / "recorder.py").write_text(RECORDER)
    seen = tmp_path / "seen"
    seen.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "RECORD_DIR": str(seen)}
    args = ["--local", "2", "--no-nginx", "--clients", "2", "--requests", "5"]
    status, stdout, stderr = await run_clients(
        *args, "--handler", "recorder:record", "--threads", "2", "--json", env=env
    )
    assert status == 0, stderr
    total = json.loads(stdout)["total"]
    assert (total["sent"], total["server_response"], total["invalid_message"]) == (10, 8, 2)
    threads = {replica.name: replica.read_text().split() for replica in seen.iterdir()}
    assert sorted(threads) == ["replica-1", "replica-2"]
    # Every well-formed request went to the handler (at least once: a client may resend one),
    # in the replica's pool of threads.
    ran_in = [thread for names in threads.values() for thread in names]
    assert len(ran_in) >= 8
    assert all(thread.startswith(HANDLER_THREAD_PREFIX) for thread in ran_in), threads


async def test_a_handler_the_replicas_cannot_load_ends_the_run_with_their_reason() -> None:
    status, stdout, stderr = await run_clients("--local", "2", "--handler", "nosuch:handle")
    assert status == 1
    assert stdout == ""
    (line,) = stderr.splitlines()  # one line, no traceback
    assert line.startswith("error: replica-")
    assert line.endswith("handler module 'nosuch' not found")


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _running(pids: set[int]) -> set[int]:
    """The processes of ``pids`` that still run (a zombie has exited)."""
    status = {pid: Path(f"/proc/{pid}/status") for pid in pids}
    return {
        pid for pid, path in status.items() if path.exists() and "zombie" not in path.read_text()
    }


async def test_ctrl_c_stops_everything_it_started() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROJECT_DIR / "run_clients.py"),
        "--local",
        "2",
        "--no-nginx",
        "--requests",
        "1000",
        "--interval-ms",
        "50",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # A job started with `&` by a non-interactive shell (as CI may be)
        # inherits SIGINT ignored; give the child the terminal's default back.
        preexec_fn=_default_sigint,
    )
    assert process.stdout is not None
    async with asyncio.timeout(TIMEOUT_S):
        while b"Received response" not in await process.stdout.readline():
            pass
        started = _children(process.pid)
        assert len(started) == 2 + 2  # two replicas, two clients
        os.kill(process.pid, signal.SIGINT)
        await process.communicate()
    assert process.returncode == 130
    assert _running(started) == set()
