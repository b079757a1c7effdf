"""Server replicas, and nginx in front of them, on loopback, without Docker.

Used by ``run_clients.py --local``, by the tests and by the benchmarks. Every
process it starts is stopped when the ``async with`` block ends, also on error
or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent
SERVER_SCRIPT = PROJECT_DIR / "server.py"
NGINX_CONF = PROJECT_DIR / "nginx.conf"
DEBIAN_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
_SERVING = re.compile(r"serving on (tcp://[^\s,]+)")


class StackError(RuntimeError):
    """A process of the local stack did not start."""


@dataclass
class Replica:
    name: str
    process: asyncio.subprocess.Process
    endpoint: str = ""
    log: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    _new_line: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for_log(self, text: str, count: int = 1) -> None:
        """Return once ``count`` lines of this replica's log contain ``text``."""
        while sum(text in line for line in self.log) < count:
            if self.reader is not None and self.reader.done():
                raise StackError(f"{self.name}'s log ended before {count} x {text!r}")
            self._new_line.clear()
            await self._new_line.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (str(p) for p in (Path("/usr/sbin/nginx"),) if p.exists()), None
    )


def render_nginx_conf(
    template: str,
    listen_port: int,
    upstreams: Sequence[str],
    *,
    load_module: Path | None = None,
    overrides: dict[str, str] | None = None,
) -> str:
    """The project's nginx.conf, pointed at loopback replicas.

    The upstream's ``server`` lines are replaced by one per replica (keeping
    the first line's parameters, such as ``max_fails``), ``listen 5555`` by
    the given port; ``user`` and ``resolver`` lines are dropped. ``overrides``
    replaces the value of a directive, e.g. ``{"proxy_timeout": "1s"}``.
    """
    lines: list[str] = []
    if load_module is not None:
        lines.append(f"load_module {load_module};")
    in_upstream = False
    upstream_done = False
    for line in template.splitlines():
        stripped = line.strip()
        if re.match(r"(user|resolver|pid)\s", stripped):
            continue
        if re.match(r"upstream\s+\S+\s*\{", stripped):
            in_upstream = True
        elif in_upstream and stripped.startswith("}"):
            in_upstream = False
        elif in_upstream and re.match(r"server\s", stripped):
            if not upstream_done:
                params = stripped.rstrip(";").split()[2:]
                indent = line[: len(line) - len(line.lstrip())]
                lines.extend(f"{indent}server {' '.join([u, *params])};" for u in upstreams)
                upstream_done = True
            continue
        match = re.match(r"(\s*)listen\s+5555\b.*;", line)
        if match:
            line = f"{match.group(1)}listen 127.0.0.1:{listen_port};"
        for directive, value in (overrides or {}).items():
            match = re.match(rf"(\s*){re.escape(directive)}\s.*;", line)
            if match:
                line = f"{match.group(1)}{directive} {value};"
        lines.append(line)
    lines.insert(0, "pid nginx.pid;")
    if not upstream_done:
        raise StackError("nginx.conf has no upstream server line to point at the replicas")
    return "\n".join(lines) + "\n"


def _stream_module() -> Path | None:
    """Debian builds the stream module as a loadable module; official nginx has it built in."""
    binary = nginx_binary()
    if binary is None:
        return None
    version = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False).stderr
    if "--with-stream=dynamic" in version and DEBIAN_STREAM_MODULE.exists():
        return DEBIAN_STREAM_MODULE
    return None


class LocalStack:
    """``replicas`` servers on loopback, with nginx in front when asked and available.

    ``nginx=None`` means: use nginx if a binary is on PATH. ``endpoints`` is
    what clients connect to: nginx's port, or every replica (ZeroMQ then
    balances across them itself).
    """

    def __init__(
        self,
        replicas: int,
        *,
        server_args: Sequence[str] = (),
        nginx: bool | None = None,
        nginx_overrides: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError("at least one replica is needed")
        self.count = replicas
        self.server_args = list(server_args)
        self.use_nginx = nginx_binary() is not None if nginx is None else nginx
        self.nginx_overrides = nginx_overrides or {}
        self.env = env
        self.replicas: list[Replica] = []
        self.nginx: asyncio.subprocess.Process | None = None
        self.nginx_port = 0
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def endpoints(self) -> list[str]:
        if self.nginx is not None:
            return [f"tcp://127.0.0.1:{self.nginx_port}"]
        return [replica.endpoint for replica in self.replicas]

    async def __aenter__(self) -> LocalStack:
        try:
            await asyncio.wait_for(self.start(), START_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        await asyncio.gather(
            *(self.start_replica(f"replica-{i}") for i in range(1, self.count + 1))
        )
        if self.use_nginx:
            await self.start_nginx()

    def server_command(self, name: str, bind: str) -> list[str]:
        """The command line of one server replica."""
        return [
            sys.executable,
            str(SERVER_SCRIPT),
            "--bind",
            bind,
            "--name",
            name,
            *self.server_args,
        ]

    async def start_replica(self, name: str, bind: str = "tcp://127.0.0.1:*") -> Replica:
        """Start one server process and wait until it says where it serves."""
        process = await asyncio.create_subprocess_exec(
            *self.server_command(name, bind),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self._environment(),
        )
        replica = Replica(name, process)
        self.replicas.append(replica)
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        replica.reader = asyncio.create_task(self._read_log(replica, ready))
        replica.endpoint = await ready
        return replica

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def _read_log(self, replica: Replica, ready: asyncio.Future[str]) -> None:
        stream = replica.process.stderr
        if stream is None:  # pragma: no cover - always piped
            return
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            replica.log.append(line)
            replica._new_line.set()
            match = _SERVING.search(line)
            if match and not ready.done():
                ready.set_result(match.group(1))
        replica._new_line.set()
        if not ready.done():
            ready.set_exception(
                StackError(f"{replica.name} exited before serving: {' | '.join(replica.log[-5:])}")
            )

    async def start_nginx(self) -> None:
        """Start nginx from the project's nginx.conf, in front of the replicas."""
        if nginx_binary() is None:
            raise StackError("nginx is not installed")
        self._workdir = tempfile.TemporaryDirectory(prefix="zmq-nginx-")
        self.nginx_port = free_port()
        self._write_nginx_conf()
        await self._spawn_nginx()

    def _write_nginx_conf(self) -> Path:
        if self._workdir is None:
            raise StackError("nginx was never started")
        conf = Path(self._workdir.name) / "nginx.conf"
        upstreams = [r.endpoint.removeprefix("tcp://") for r in self.replicas if r.endpoint]
        conf.write_text(
            render_nginx_conf(
                NGINX_CONF.read_text(),
                self.nginx_port,
                upstreams,
                load_module=_stream_module(),
                overrides=self.nginx_overrides,
            )
        )
        return conf

    async def _spawn_nginx(self) -> None:
        binary = nginx_binary()
        if binary is None or self._workdir is None:
            raise StackError("nginx was never started")
        prefix = Path(self._workdir.name)
        self.nginx = await asyncio.create_subprocess_exec(
            binary,
            "-p",
            str(prefix),
            "-c",
            str(prefix / "nginx.conf"),
            "-e",
            "stderr",
            "-g",
            "daemon off;",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await self._wait_listening(self.nginx_port, self.nginx)

    @staticmethod
    async def _wait_listening(port: int, process: asyncio.subprocess.Process) -> None:
        """Return once something accepts on the port; fail if the process died."""
        while True:
            if process.returncode is not None:
                raise StackError(f"nginx exited with status {process.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)  # polling a port: there is no event to await
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    def reload_nginx(self) -> None:
        """Point nginx at the current replicas: rewrite its config and reload it."""
        if self.nginx is None:
            raise StackError("nginx is not running")
        self._write_nginx_conf()
        self.nginx.send_signal(signal.SIGHUP)

    async def restart_nginx(self) -> None:
        """Stop nginx and start it again on the same port."""
        if self.nginx is not None:
            await _terminate(self.nginx, signal.SIGTERM)
        self.nginx = None
        await self._spawn_nginx()

    async def stop_replica(self, replica: Replica, signum: int = signal.SIGTERM) -> int:
        """Signal one replica and wait for it to exit; return its exit status."""
        return await _terminate(replica.process, signum)

    async def stop(self) -> None:
        """Stop everything this stack started (replicas first, nginx last)."""
        await asyncio.gather(
            *(_terminate(r.process, signal.SIGTERM) for r in self.replicas),
            return_exceptions=True,
        )
        for replica in self.replicas:
            if replica.reader is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(replica.reader, STOP_TIMEOUT_S)
        if self.nginx is not None:
            await _terminate(self.nginx, signal.SIGQUIT)
            self.nginx = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


async def _terminate(process: asyncio.subprocess.Process, signum: int) -> int:
    """Send ``signum``, wait up to STOP_TIMEOUT_S, then kill; return the status."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            return await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            logger.warning("process %d did not stop in time; killing it", process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    return await process.wait()
