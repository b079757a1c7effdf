"""The processes a benchmark starts: a server until it listens, a measuring process's JSON.

Both run from the project directory; anything that goes wrong is a
``BenchError`` carrying the end of the process's output. How the project's
server is started is ``reqrep.stack.server_command`` (``project_server_command``
here, ``LocalStack`` for the stacks of several replicas and nginx).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any

from bench.machine import listening_sockets
from reqrep import stack
from reqrep.errors import StackError
from reqrep.stack import STOP_TIMEOUT_S, terminate, wait_listening

# bench/ is run as `python -m bench.X` from the project directory.
PROJECT_DIR = Path(__file__).resolve().parent.parent

START_TIMEOUT_S = 10.0
TAIL_CHARS = 800
LISTENERS_POLL_S = 0.05


def project_server_command(endpoint: str, name: str, extra: Sequence[str] = ()) -> list[str]:
    """The command that starts one replica of the project's server bound to ``endpoint`` (as
    ``reqrep.stack`` starts the local stack's replicas)."""
    return stack.server_command("--bind", endpoint, "--name", name, *extra)


class BenchError(RuntimeError):
    """A server did not start, or a measuring process failed or did not finish."""


@contextlib.asynccontextmanager
async def server_process(
    command: Sequence[str],
    port: int,
    start_timeout_s: float = START_TIMEOUT_S,
    stop_timeout_s: float = STOP_TIMEOUT_S,
    listeners: int = 1,
) -> AsyncIterator[int]:
    """``command``'s process, once it accepts on 127.0.0.1:``port``: its pid.

    ``listeners``: how many sockets must listen on the port first (a server
    whose worker processes each listen on it). The process leads a process
    group of its own; when the block ends it gets SIGTERM (SIGKILL after
    ``stop_timeout_s``), and then whatever is left of its group (worker
    processes it started) SIGKILL.
    """
    with tempfile.TemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=PROJECT_DIR,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            try:
                await asyncio.wait_for(_wait_serving(port, process, listeners), start_timeout_s)
            except (StackError, TimeoutError):
                raise BenchError(
                    f"{shlex.join(command)} exited or did not listen on port {port} "
                    f"({listeners} socket(s)) within {start_timeout_s:g} s: {_tail(log)}"
                ) from None
            yield process.pid
        finally:
            await terminate(process, signal.SIGTERM, stop_timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


async def _wait_serving(port: int, process: asyncio.subprocess.Process, listeners: int) -> None:
    await wait_listening(port, process)
    while listening_sockets(port) < listeners:
        if process.returncode is not None:
            raise StackError(f"process {process.pid} exited with status {process.returncode}")
        await asyncio.sleep(LISTENERS_POLL_S)  # polling /proc: there is no event to await


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-TAIL_CHARS:]


async def run_json(command: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """Run a measuring process to its end; the JSON object it printed on stdout."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=PROJECT_DIR,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        await terminate(process, signal.SIGKILL)
        raise BenchError(f"did not finish within {timeout_s:g} s: {shlex.join(command)}") from None
    except BaseException:  # cancelled (Ctrl-C): the measuring process does not outlive us
        await terminate(process, signal.SIGKILL)
        raise
    if process.returncode != 0:
        tail = err.decode(errors="replace")[-TAIL_CHARS:]
        raise BenchError(f"failed ({process.returncode}): {shlex.join(command)}: {tail}")
    fields: dict[str, Any] = json.loads(out)
    return fields
