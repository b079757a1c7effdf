"""Running the project's own scripts (client.py, run_clients.py, ...) from tests."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Finished:
    """A finished run of one of the project's scripts."""

    status: int
    stdout: str
    stderr: str


async def run_script(script: str, *args: str, timeout_s: float) -> Finished:
    """Run ``python3 <project>/<script> ARGS`` to completion, bounded by ``timeout_s``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROJECT_DIR / script),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode is None:  # pragma: no cover - waited for above
        raise RuntimeError(f"{script} did not exit")
    return Finished(process.returncode, stdout.decode(), stderr.decode())
