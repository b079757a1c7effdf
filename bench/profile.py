#!/usr/bin/env python3
"""Where the server's time goes: py-spy samples one replica under load.

    .venv/bin/python -m bench.profile                  # ROUTER, 16 callers, 5 s
    .venv/bin/python -m bench.profile --server-args "--work-ms 20" --callers 64
    .venv/bin/python -m bench.profile --out /tmp/server.folded   # keep the raw stacks

Starts one server replica (``reqrep.stack.LocalStack``), drives it with the
load generator (``bench.loadgen``) and records it with ``py-spy record`` (pinned
in requirements-dev.txt; needs permission to ptrace, e.g. root) at the same
time. Prints the functions with the most samples, on their own (self) and with
what they call (inclusive). py-spy's raw folded stacks (for a flame graph) go
to ``--out`` if given, else to a temporary file removed at the end: nothing is
written in the working directory.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench import harness
from bench.harness import Started, Window
from bench.loadgen import command as loadgen_command
from bench.recorder import LoadResult
from reqrep import cli
from reqrep.stack import LocalStack

PYSPY_SETTLE_S = 0.5


def summarize(folded: str, top: int) -> str:
    """The ``top`` functions by self and by inclusive samples, in percent."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return "no samples"
    lines = [f"{total} samples", "", "self:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


async def profile(args: argparse.Namespace, pyspy: str, out: Path) -> str:
    async with LocalStack(1, server_args=shlex.split(args.server_args), nginx=False) as stack:
        replica = stack.replicas[0]
        command = [pyspy, "record", "--pid", str(replica.process.pid), "--format", "raw"]
        command += ["--output", str(out), "--duration", str(int(args.duration_s))]
        command += ["--rate", str(args.rate)]
        if args.native:
            command.append("--native")
        recorder = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        load = await _load(replica.endpoint, replica.process.pid, args)
        _, err = await recorder.communicate()
        if recorder.returncode != 0:
            raise SystemExit(f"py-spy failed: {err.decode(errors='replace').strip()}")
    header = (
        f"server {args.server_args or '(defaults)'}, {args.callers} callers: "
        f"{load.requests_per_s:.0f} req/s, p50 {load.p50_ms:.3f} ms, p99 {load.p99_ms:.3f} ms, "
        f"server {load.server_cpu_us_per_reply:.1f} us/reply"
    )
    kept = f"raw stacks: {out}" if args.out else "raw stacks: not kept (--out PATH keeps them)"
    folded = await asyncio.to_thread(out.read_text)
    return f"{header}\n{kept}\n\n{summarize(folded, args.top)}"


async def _load(endpoint: str, pid: int, args: argparse.Namespace) -> LoadResult:
    """The load generator against the replica while py-spy records it."""
    window = Window((args.callers,), args.duration_s, PYSPY_SETTLE_S, 1)
    load = loadgen_command([endpoint])
    return await harness.run_load(load, Started([endpoint], [pid]), args.callers, window)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Profile one server replica under load with py-spy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--callers", type=cli.int_at_least(1), default=16, help="concurrent callers"
    )
    parser.add_argument(
        "--duration-s", type=cli.float_at_least(1), default=5.0, help="seconds under load"
    )
    parser.add_argument("--server-args", default="", help="extra server.py arguments")
    parser.add_argument(
        "--rate", type=cli.int_at_least(1), default=250, help="py-spy samples per second"
    )
    parser.add_argument("--native", action="store_true", help="include C frames (py-spy)")
    parser.add_argument("--top", type=cli.int_at_least(1), default=25, help="functions to list")
    parser.add_argument(
        "--out",
        type=Path,
        help="keep py-spy's raw folded stacks in this file (default: a temporary file, removed)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        print("py-spy not found: pip install -r requirements-dev.txt", file=sys.stderr)
        return 1
    if args.out is not None:
        print(asyncio.run(profile(args, pyspy, args.out)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as workdir:
        print(asyncio.run(profile(args, pyspy, Path(workdir) / "server-profile.txt")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
