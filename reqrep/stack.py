"""Server replicas, and nginx in front of them, on loopback, without Docker.

Used by ``run_clients.py --local``, by the tests and by the benchmarks. Every
process it starts is stopped when the ``async with`` block ends, also on error
or Ctrl-C. A replica is ready when its port accepts connections (the stack
picks the port); nothing here reads the servers' log text to decide that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
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

PROJECT_DIR = Path(__file__).resolve().parent.parent
SERVER_SCRIPT = PROJECT_DIR / "server.py"
# The proxy settings every nginx of the project shares (compose, Swarm,
# Kubernetes and this stack); this stack writes only its upstream and listen.
SHARED_NGINX_CONF = PROJECT_DIR / "deploy" / "nginx" / "zmq-proxy.conf"
UPSTREAM_SERVER_PARAMETERS = "max_fails=2 fail_timeout=3s"
# On loopback every client has the same address, so nginx's per-address limit
# (200 in deploy/nginx/zmq-limits.conf) would cap all clients together; the
# local stack allows as many as its tests and benchmarks open.
LOCAL_CONN_LIMIT = 2000
DEBIAN_NGINX = Path("/usr/sbin/nginx")  # not on a non-root user's PATH
DEBIAN_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB, from /proc/<pid>/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    """How many file descriptors a process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class StackError(RuntimeError):
    """A process of the local stack did not start."""


@dataclass
class Replica:
    name: str
    process: asyncio.subprocess.Process
    endpoint: str
    log: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    _new_line: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def spawn(
        cls, name: str, endpoint: str, command: Sequence[str], env: dict[str, str]
    ) -> Replica:
        """Start a server process (bound to ``endpoint``) whose log (stderr) is kept, line by
        line, in ``log``."""
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
            self._new_line.set()
        self._new_line.set()

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
    """nginx on PATH, else Debian's; None if neither is installed."""
    return shutil.which("nginx") or (str(DEBIAN_NGINX) if DEBIAN_NGINX.exists() else None)


def local_nginx_conf(
    listen_port: int,
    upstreams: Sequence[str],
    *,
    load_module: Path | None = None,
    overrides: dict[str, str] | None = None,
) -> str:
    """The local stack's own nginx config: what is particular to it, and an include.

    The proxy settings every target shares come from ``include`` of
    deploy/nginx/zmq-proxy.conf (which includes ``zmq-limits.conf`` from the
    directory of this config). Written here: one upstream ``server`` per
    loopback replica, with the same balancing and passive health checks as the
    other targets, the listen address, and ``overrides``: directives set again
    in the ``server`` block, which replace the shared values there, e.g.
    ``{"proxy_timeout": "1s"}``. The replicas' addresses are static: the local
    nginx may be older than 1.27.3, which has no ``resolve``.
    """
    if not upstreams:
        raise StackError("no replica to point nginx at")
    servers = "".join(
        f"        server {address} {UPSTREAM_SERVER_PARAMETERS};\n" for address in upstreams
    )
    settings = "".join(
        f"        {directive} {value};\n" for directive, value in (overrides or {}).items()
    )
    module = "" if load_module is None else f"load_module {load_module};\n"
    return (
        f"{module}pid nginx.pid;\n"
        "worker_processes auto;\n"
        "worker_shutdown_timeout 2s;\n"
        "events {\n    worker_connections 4096;\n}\n"
        "stream {\n"
        f'    include "{SHARED_NGINX_CONF}";\n'
        "    upstream zmq_servers {\n"
        "        least_conn;\n"
        "        zone zmq_servers 64k;\n"
        f"{servers}"
        "    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{listen_port};\n"
        "        proxy_pass zmq_servers;\n"
        f"{settings}"
        "    }\n"
        "}\n"
    )


def local_nginx_limits(conn_limit: int) -> str:
    """The local stack's ``zmq-limits.conf``: every local client has the address 127.0.0.1."""
    return f"limit_conn zmq_per_address {conn_limit};\n"


def _stream_module(binary: str) -> Path | None:
    """Debian builds the stream module as a loadable module; official nginx has it built in."""
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
        conn_limit: int = LOCAL_CONN_LIMIT,
        env: dict[str, str] | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError("at least one replica is needed")
        self.count = replicas
        self.server_args = list(server_args)
        self.use_nginx = nginx_binary() is not None if nginx is None else nginx
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

    def server_command(self, name: str, endpoint: str) -> list[str]:
        """The command line of one server replica bound to ``endpoint``."""
        return [
            sys.executable,
            str(SERVER_SCRIPT),
            "--bind",
            endpoint,
            "--name",
            name,
            *self.server_args,
        ]

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


class LocalNginx:
    """nginx on a free loopback port in front of fixed upstreams, in a directory of its own."""

    def __init__(
        self, upstreams: Sequence[str], overrides: dict[str, str], conn_limit: int
    ) -> None:
        binary = nginx_binary()
        if binary is None:
            raise StackError("nginx is not installed")
        self._binary = binary
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="zmq-nginx-")
        workdir = Path(self._workdir.name)
        # zmq-limits.conf is included by the shared settings, from this directory.
        (workdir / "zmq-limits.conf").write_text(local_nginx_limits(conn_limit))
        conf = local_nginx_conf(
            self.port, upstreams, load_module=_stream_module(binary), overrides=overrides
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
