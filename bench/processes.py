"""The processes a benchmark starts: a server until it listens, a measuring process's JSON.

Both run from the project directory; anything that goes wrong is a
``BenchError`` carrying the end of the process's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import signal
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any

from reqrep.errors import StackError
from reqrep.stack import STOP_TIMEOUT_S, terminate, wait_listening

# bench/ is run as `python -m bench.X` from the project directory.
PROJECT_DIR = Path(__file__).resolve().parent.parent

START_TIMEOUT_S = 10.0
TAIL_CHARS = 800


class BenchError(RuntimeError):
    """A server did not start, or a measuring process failed or did not finish."""


@contextlib.asynccontextmanager
async def server_process(
    command: Sequence[str],
    port: int,
    start_timeout_s: float = START_TIMEOUT_S,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> AsyncIterator[int]:
    """``command``'s process, once it accepts on 127.0.0.1:``port``: its pid.

    Stopped when the block ends (SIGTERM; SIGKILL after ``stop_timeout_s``).
    """
    with tempfile.TemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=PROJECT_DIR,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        try:
            try:
                await asyncio.wait_for(wait_listening(port, process), start_timeout_s)
            except (StackError, TimeoutError):
                raise BenchError(
                    f"{shlex.join(command)} exited or did not listen on port {port} within "
                    f"{start_timeout_s:g} s: {_tail(log)}"
                ) from None
            yield process.pid
        finally:
            await terminate(process, signal.SIGTERM, stop_timeout_s)


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
        process.kill()
        await process.wait()
        raise BenchError(f"did not finish within {timeout_s:g} s: {shlex.join(command)}") from None
    if process.returncode != 0:
        tail = err.decode(errors="replace")[-TAIL_CHARS:]
        raise BenchError(f"failed ({process.returncode}): {shlex.join(command)}: {tail}")
    fields: dict[str, Any] = json.loads(out)
    return fields
