"""Server replicas, and nginx in front of them, on loopback, without Docker.

Used by ``run_clients.py --local``, by the tests and by the benchmarks. Every
process it starts is stopped when the ``async with`` block ends, also on error
or Ctrl-C. A replica is ``python -m reqrep server`` (the installed package, so
this works from any directory); it is ready when its port accepts connections
(the stack picks the port); nothing here reads the servers' log text to decide
that. nginx's configuration text is ``reqrep.nginx``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from reqrep import nginx
from reqrep.errors import StackError

logger = logging.getLogger(__name__)

# On loopback every client has the same address, so nginx's per-address limit
# (200 in deploy/nginx/zmq-limits.conf) would cap all clients together; the
# local stack allows as many as its tests and benchmarks open.
LOCAL_CONN_LIMIT: Final = 2000
START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 10.0


def server_command(*args: str) -> list[str]:
    """The command line of a server replica from the installed package."""
    return [sys.executable, "-m", "reqrep", "server", *args]


@dataclass
class Replica:
    """A server process of the stack, its endpoint and its log (stderr), line by line."""

    name: str
    process: asyncio.subprocess.Process
    endpoint: str
    log: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    # Set whenever a line is added to ``log`` (and when the log ends); clear it to wait again.
    new_line: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def spawn(
        cls, name: str, endpoint: str, command: Sequence[str], env: dict[str, str]
    ) -> Replica:
        """Start a server process (bound to ``endpoint``) whose log is kept in ``log``."""
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        replica = cls(name, process, endpoint)
        replica.reader = asyncio.create_task(replica._read_log())
        return replica

    async def wait_serving(self, port: int) -> None:
        """Return once the replica accepts on ``port``; StackError, with its last log lines, if
        it exits first."""
        try:
            await wait_listening(port, self.process)
        except StackError:
            if self.reader is not None:
                await asyncio.wait_for(self.reader, STOP_TIMEOUT_S)
            tail = " | ".join(self.log[-5:])
            raise StackError(f"{self.name} exited before serving: {tail}") from None

    async def _read_log(self) -> None:
        stream = self.process.stderr
        if stream is None:  # pragma: no cover - always piped
            return
        async for raw in stream:
            self.log.append(raw.decode(errors="replace").rstrip())
            self.new_line.set()
        self.new_line.set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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
        conn_limit: int = LOCAL_CONN_LIMIT,
        env: dict[str, str] | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError("at least one replica is needed")
        self.count = replicas
        self.server_args = list(server_args)
        self.use_nginx = nginx_binary_found() if nginx is None else nginx
        self.nginx_overrides = nginx_overrides or {}
        self.conn_limit = conn_limit
        self.env = env
        self.replicas: list[Replica] = []
        self.nginx: LocalNginx | None = None

    @property
    def nginx_port(self) -> int:
        if self.nginx is None:
            raise StackError("nginx was never started")
        return self.nginx.port

    @property
    def endpoints(self) -> list[str]:
        if self.nginx is not None:
            return [f"tcp://127.0.0.1:{self.nginx.port}"]
        return [replica.endpoint for replica in self.replicas]

    async def __aenter__(self) -> LocalStack:
        try:
            await asyncio.wait_for(self.start(), START_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await asyncio.gather(
            *(self.start_replica(f"replica-{i}") for i in range(1, self.count + 1))
        )
        if self.use_nginx:
            await self.start_nginx()

    def server_command(self, name: str, endpoint: str) -> list[str]:
        """The command line of one server replica bound to ``endpoint``."""
        return server_command("--bind", endpoint, "--name", name, *self.server_args)

    async def start_replica(self, name: str, port: int | None = None) -> Replica:
        """Start one server process on ``port`` (a free one by default); wait until it accepts."""
        port = free_port() if port is None else port
        endpoint = f"tcp://127.0.0.1:{port}"
        env = {**(os.environ if self.env is None else self.env), "PYTHONUNBUFFERED": "1"}
        replica = await Replica.spawn(name, endpoint, self.server_command(name, endpoint), env)
        self.replicas.append(replica)
        await replica.wait_serving(port)
        return replica

    async def start_nginx(self) -> None:
        """Start nginx in front of the replicas, with the project's shared proxy settings."""
        upstreams = [r.endpoint.removeprefix("tcp://") for r in self.replicas]
        self.nginx = LocalNginx(upstreams, self.nginx_overrides, self.conn_limit)
        await self.nginx.start()

    async def restart_nginx(self) -> None:
        """Stop nginx and start it again on the same port."""
        if self.nginx is None:
            raise StackError("nginx was never started")
        await self.nginx.restart()

    async def stop_replica(self, replica: Replica, signum: int = signal.SIGTERM) -> int:
        """Signal one replica and wait for it to exit; return its exit status."""
        return await terminate(replica.process, signum)

    async def stop(self) -> None:
        """Stop everything this stack started (replicas first, nginx last)."""
        await asyncio.gather(
            *(terminate(r.process, signal.SIGTERM) for r in self.replicas),
            return_exceptions=True,
        )
        for replica in self.replicas:
            if replica.reader is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(replica.reader, STOP_TIMEOUT_S)
        if self.nginx is not None:
            await self.nginx.stop()
            self.nginx = None


def nginx_binary_found() -> bool:
    return nginx.binary() is not None


class LocalNginx:
    """nginx on a free loopback port in front of fixed upstreams, in a directory of its own."""

    def __init__(
        self, upstreams: Sequence[str], overrides: dict[str, str], conn_limit: int
    ) -> None:
        binary = nginx.binary()
        if binary is None:
            raise StackError("nginx is not installed")
        self._binary = binary
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="zmq-nginx-")
        workdir = Path(self._workdir.name)
        # zmq-limits.conf is included by the shared settings, from this directory.
        (workdir / "zmq-limits.conf").write_text(nginx.local_limits(conn_limit))
        conf = nginx.local_conf(
            self.port, upstreams, load_module=nginx.stream_module(binary), overrides=overrides
        )
        (workdir / "nginx.conf").write_text(conf)

    async def start(self) -> None:
        """Start nginx; return once it accepts connections."""
        prefix = Path(self._workdir.name)
        self.process = await asyncio.create_subprocess_exec(
            *(self._binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")),
            *("-e", "stderr", "-g", "daemon off;"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await wait_listening(self.port, self.process)

    async def restart(self) -> None:
        """Stop nginx (SIGTERM, at once) and start it again on the same port."""
        if self.process is not None:
            await terminate(self.process, signal.SIGTERM)
        await self.start()

    async def stop(self) -> None:
        """Stop nginx gracefully (SIGQUIT) and remove its directory."""
        if self.process is not None:
            await terminate(self.process, signal.SIGQUIT)
            self.process = None
        self._workdir.cleanup()


async def wait_listening(port: int, process: asyncio.subprocess.Process) -> None:
    """Return once something accepts on the port; StackError if the process exited first."""
    while True:
        if process.returncode is not None:
            raise StackError(f"process {process.pid} exited with status {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)  # polling a port: there is no event to await
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def terminate(
    process: asyncio.subprocess.Process, signum: int, timeout_s: float = STOP_TIMEOUT_S
) -> int:
    """Send ``signum``, wait up to ``timeout_s``, then kill; return the status."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            return await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            logger.warning("process %d did not stop in time; killing it", process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    return await process.wait()
