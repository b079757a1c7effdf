"""What the tests share: helpers, never fixtures (those are in conftest.py) and never tests.

- the settings of the config dataclasses and their environment variables
  (``config_settings``, ``config_variables``, ``command_variables``);
- a command line's usage error: exit status 2 and its message (``usage_error``);
- servers in the test's own event loop (``RunningServer``, ``terminate``), and one
  that takes requests and never answers (``silent_router``);
- running the project's scripts (``run_script``) and reading their output
  (``seed_lines``, ``lines_per_client``);
- nginx configs: their statements (``nginx_statements``), ``nginx -t`` in the
  nginx image (``nginx_t_in_image``);
- clients that keep sending while a replica is killed (``Load``, ``loads_running``,
  ``kill_the_replica_of_the_first_load``, ``assert_no_request_lost``);
- a compose project for a whole test module (``compose_project``), and clients
  measured request by request under a fault (``MeasuredClients``: answered,
  retried, longest stall, p99);
- a real Docker engine (compose and swarm): every command runs from the project
  directory and is bounded in time, a failing command fails the test with its
  stderr; a ``Project`` is one compose project with a name and a published port
  of its own, so tests never touch another project on the same engine.

No test module imports another; what two of them need lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from reqrep import nginx, protocol
from reqrep.channel import ChannelConfig
from reqrep.client import Client
from reqrep.config import (
    LOG_LEVEL_ENV,
    ClientConfig,
    RequestPlan,
    ServerConfig,
    default,
    env_name,
)
from reqrep.errors import RequestTimeout, StackError
from reqrep.keys import KEYS_DIR_ENV
from reqrep.report import percentile
from reqrep.runner import RunPlan, compose_command
from reqrep.server import Server
from reqrep.stack import Replica, free_port, wait_listening

PROJECT_DIR = Path(__file__).resolve().parent.parent


# --- settings: the config dataclasses' fields and their environment variables ----

# Every dataclass with fields that are settings (``reqrep.config.setting``, metadata "env").
CONFIG_CLASSES: tuple[type[Any], ...] = (
    ServerConfig,
    ClientConfig,
    ChannelConfig,
    RequestPlan,
    RunPlan,
)
# What the commands read besides those fields: the log level, the deprecated name of
# CLIENT_TRIES, and ``reqrep keys``'s directory.
OTHER_VARIABLES = (LOG_LEVEL_ENV, "CLIENT_RETRIES", KEYS_DIR_ENV)


def config_settings(*classes: type[Any]) -> list[tuple[type[Any], str]]:
    """Every field of ``classes`` that is a setting (RunPlan holds other things too)."""
    return [(cls, item.name) for cls in classes for item in fields(cls) if "env" in item.metadata]


def config_variables(*classes: type[Any]) -> list[str]:
    """The environment variable of every setting of ``classes``, each once, in order."""
    return list(dict.fromkeys(env_name(cls, name) for cls, name in config_settings(*classes)))


def command_variables() -> list[str]:
    """Every environment variable the commands read: what a test clears to see the
    defaults of the config dataclasses, whatever the machine has set."""
    return [*config_variables(*CONFIG_CLASSES), *OTHER_VARIABLES]


def usage_error(
    capsys: pytest.CaptureFixture[str], parse: Callable[[Sequence[str]], object], *argv: str
) -> str:
    """What ``parse(argv)`` wrote to stderr, once it has exited with status 2 (argparse's
    usage error)."""
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


# --- servers in the test's own event loop ----------------------------------------

LOOPBACK = "tcp://127.0.0.1:*"
TERM_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 10.0


def terminate(context: zmq.Context[Any]) -> None:
    """Terminate a context; fail the test if a socket left open blocks it."""
    thread = threading.Thread(target=context.term, daemon=True)
    thread.start()
    thread.join(TERM_TIMEOUT_S)
    if thread.is_alive():
        pytest.fail("the ZeroMQ context could not terminate: a socket was left open")


class RunningServer:
    """A Server serving in the test's event loop."""

    def __init__(self, server: Server) -> None:
        self.server = server

    @property
    def endpoint(self) -> str:
        return self.server.endpoints[0]

    async def stop(self) -> None:
        self.server.stop()
        await asyncio.wait_for(self.server.wait_closed(), STOP_TIMEOUT_S)


@dataclass
class SilentRouter:
    """What a ``silent_router`` has taken: how many requests, and each (if it keeps them)."""

    endpoint: str
    count: int = 0
    received: list[list[bytes]] = field(default_factory=list)
    # Set whenever a request comes; ``received_at_least`` clears it to wait again.
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def received_at_least(self, count: int) -> None:
        """Return once ``count`` requests have come (the caller bounds the wait)."""
        while self.count < count:
            self.arrived.clear()
            await self.arrived.wait()


@contextlib.asynccontextmanager
async def silent_router(
    context: zmq.asyncio.Context, keep: bool = True
) -> AsyncIterator[SilentRouter]:
    """A ROUTER on a loopback port that takes every request and never answers; what it took
    is counted, and kept in ``received`` if ``keep``."""
    sock = context.socket(zmq.ROUTER)
    try:
        router = SilentRouter(f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}")

        async def take() -> None:
            while True:
                message = await sock.recv_multipart()
                router.count += 1
                if keep:
                    router.received.append(message)
                router.arrived.set()

        reader = asyncio.create_task(take())
        try:
            yield router
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    finally:
        sock.close(linger=0)


async def wait_for_log(replica: Replica, text: str, count: int = 1) -> None:
    """Return once ``count`` lines of a local stack replica's log contain ``text``."""
    while sum(text in line for line in replica.log) < count:
        if replica.reader is not None and replica.reader.done():
            raise AssertionError(f"{replica.name}'s log ended before {count} x {text!r}")
        replica.new_line.clear()
        await replica.new_line.wait()


needs_nginx = pytest.mark.skipif(nginx.binary() is None, reason="nginx is not installed")


# --- the project's scripts and what they print ------------------------------------


@dataclass(frozen=True)
class Finished:
    """A finished run of one of the project's scripts."""

    status: int
    stdout: str
    stderr: str


async def run_script(
    script: str,
    *args: str,
    timeout_s: float,
    env: dict[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> Finished:
    """Run ``python3 <project>/<script> ARGS`` to completion, bounded by ``timeout_s``.

    ``env`` replaces the environment; ``on_line`` sees each line of stderr as it comes.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROJECT_DIR / script),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=PROJECT_DIR,
    )
    try:
        async with asyncio.timeout(timeout_s):
            stdout, stderr = await asyncio.gather(
                _read_all(process.stdout), _read_lines(process.stderr, on_line)
            )
            status = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return Finished(status, stdout, stderr)


def run_entry_point(
    script: str, *args: str, env: dict[str, str] | None = None, timeout_s: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """``python3 <project>/<script> ARGS`` with ``env`` added to this process's; bounded.

    For commands that end by themselves (usage errors, --help, a bad handler):
    ``run_script`` is the asynchronous runner for the others.
    """
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / script), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd=PROJECT_DIR,
    )


async def _read_all(stream: asyncio.StreamReader | None) -> str:
    return "" if stream is None else (await stream.read()).decode(errors="replace")


async def _read_lines(
    stream: asyncio.StreamReader | None, on_line: Callable[[str], None] | None
) -> str:
    lines: list[str] = []
    if stream is not None:
        async for raw in stream:
            lines.append(raw.decode(errors="replace"))
            if on_line is not None:
                on_line(lines[-1].rstrip("\n"))
    return "".join(lines)


@dataclass(frozen=True)
class ClientsRun:
    """``run_clients.py --json``: the summary (its stdout), its exit status, and its stderr
    (the clients' interleaved lines)."""

    summary: dict[str, Any]
    status: int
    lines: str


async def run_clients(
    project: Project,
    *args: str,
    timeout_s: float,
    on_line: Callable[[str], None] | None = None,
) -> ClientsRun:
    """``run_clients.py ARGS --json`` in the project's environment, bounded."""
    done = await run_script(
        "run_clients.py", *args, "--json", timeout_s=timeout_s, env=project.env, on_line=on_line
    )
    try:
        summary: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"run_clients.py printed no summary ({done.status}):\n{done.stderr[-3000:]}")
    return ClientsRun(summary, done.status, done.stderr)


# The demo client's defaults (client.py, the compose `client` service): 10
# requests, the third one (number 2) sent without its address.
SEED_REQUESTS = 10
MALFORMED = 2

_CLIENT_LINE = re.compile(r"(client[_-]\d+)\s+\| (Sending request: \d+|Received response: .*)$")


def seed_lines(requests: int) -> list[str]:
    """What one client prints: each request, then its reply; request 2 is malformed."""
    lines = []
    for number in range(requests):
        status = protocol.INVALID_MESSAGE if number == MALFORMED else protocol.SERVER_RESPONSE
        lines += [f"Sending request: {number}", f"Received response: {status.decode()}"]
    return lines


def lines_per_client(output: str) -> dict[str, list[str]]:
    """The request and reply lines of each ``client_N  | ...`` prefix, in order."""
    found: dict[str, list[str]] = defaultdict(list)
    for line in output.splitlines():
        match = _CLIENT_LINE.match(line)
        if match:
            # docker-compose 1.29 names it client_1, `docker compose` v2 client-1.
            found[match.group(1).replace("-", "_")].append(match.group(2))
    return dict(found)


# --- the docs: their fenced blocks ------------------------------------------------

# The pages whose blocks the tests run: the README and docs/.
DOC_PAGES = ("README.md", "docs/*.md")
# ``<!-- test: key=value ... -->`` on the line right before a fence says how a test runs the block.
_MARKS = re.compile(r"^<!--\s*test:(.*?)-->\s*$")
_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass(frozen=True)
class FencedBlock:
    """One fenced block of a page: where it starts, its language, its text and its marks."""

    page: str  # relative to the project, e.g. "docs/reliability.md"
    line: int  # the opening fence's, from 1
    language: str
    text: str
    marks: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


class DocMarksError(ValueError):
    """A ``<!-- test: ... -->`` comment that is not right before a fence, or unreadable."""


def doc_pages() -> list[Path]:
    return sorted({path for pattern in DOC_PAGES for path in PROJECT_DIR.glob(pattern)})


def parse_marks(text: str) -> dict[str, str]:
    """``key=value`` (shell quoting) or a bare ``key`` (value ""), e.g. ``role=server``."""
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise DocMarksError(f"unreadable marks {text!r}: {error}") from None
    marks: dict[str, str] = {}
    for word in words:
        key, _, value = word.partition("=")
        marks[key] = value
    return marks


def fenced_blocks(page: Path) -> list[FencedBlock]:
    """Every fenced block of a Markdown page, in order, with its marks.

    A marks comment anywhere but on the line right before an opening fence
    raises DocMarksError: it would silently apply to nothing.
    """
    name = str(page.relative_to(PROJECT_DIR))
    lines = page.read_text().splitlines()
    blocks: list[FencedBlock] = []
    marks: tuple[int, dict[str, str]] | None = None
    number = 0
    while number < len(lines):
        line = lines[number]
        number += 1
        fence = _FENCE.match(line)
        if marks is not None and (fence is None or marks[0] != number - 1):
            raise DocMarksError(
                f"{name}:{marks[0]}: a test marks comment must be right before a fence"
            )
        if (found := _MARKS.match(line)) is not None:
            marks = (number, parse_marks(found.group(1)))
            continue
        if fence is None:
            continue
        opening, language = fence.groups()
        start, body = number, []
        while number < len(lines) and not lines[number].startswith(opening[0] * len(opening)):
            body.append(lines[number])
            number += 1
        number += 1  # the closing fence
        blocks.append(
            FencedBlock(name, start, language, "\n".join(body) + "\n", marks[1] if marks else {})
        )
        marks = None
    if marks is not None:
        raise DocMarksError(f"{name}:{marks[0]}: a test marks comment must be right before a fence")
    return blocks


def doc_blocks(*languages: str) -> list[FencedBlock]:
    """The fenced blocks in ``languages`` of every page the tests run, page by page, in order."""
    return [
        block
        for page in doc_pages()
        for block in fenced_blocks(page)
        if block.language in languages
    ]


def shell_commands(block: FencedBlock) -> list[str]:
    """The commands of a shell block, one per logical line, as a user pastes them: lines
    ending in a backslash joined to the next, blank and comment-only lines left out (a
    trailing ``# ...`` is the shell's to ignore)."""
    commands: list[str] = []
    pending = ""
    for line in block.text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        commands.append(pending + line)
        pending = ""
    if pending:
        commands.append(pending)
    return commands


def tracked_files() -> list[str]:
    """The project's files as git has them (a fresh clone's), relative to the project."""
    return run(["git", "ls-files"], COMMAND_TIMEOUT_S).splitlines()


def fresh_checkout(directory: Path) -> Path:
    """The working tree's version of every tracked file, copied into ``directory``: what a
    fresh clone of this change holds."""
    for name in tracked_files():
        source = PROJECT_DIR / name
        if source.is_file():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, directory / name)
    return directory


# A documented command's time limit, unless a test gives it another.
COMMAND_TIMEOUT_S = 60.0
# A server the docs leave running in the foreground of its terminal (a ``DocShell`` runs it).
_FOREGROUND_SERVER = re.compile(r"^python3 server\.py .*--bind tcp://[\w.]+:(\d+)")
SERVICE_TIMEOUT_S = 30.0


@dataclass
class DocShell:
    """Documented commands run as written, one after the other, as a user at a terminal would.

    Each command runs with ``bash -c`` in ``directory`` with ``env`` (the
    environment is replaced), bounded in time. ``sudo COMMAND`` runs COMMAND
    as this process (root, where the tests need it); any other command as
    ``user`` (uid, gid) with the supplementary ``groups``, when a user is
    given. ``rewrite`` (old: new) is applied to each command first: a port the
    docs say may be changed. A command the docs leave in the foreground (a
    server, ``docker-compose up`` without ``-d``) is started in the
    background, as in a terminal of its own (``start``; ``start_server`` also
    waits until a server's port accepts), and ``interrupt`` is the Ctrl-C that
    ends each.
    """

    directory: Path
    env: dict[str, str]
    user: tuple[int, int] | None = None
    groups: tuple[int, ...] = ()
    rewrite: dict[str, str] = field(default_factory=dict)
    foreground: list[asyncio.subprocess.Process] = field(default_factory=list)

    def argv(self, command: str) -> list[str]:
        if command.startswith("sudo "):
            return ["bash", "-c", command.removeprefix("sudo ")]
        if self.user is None:
            return ["bash", "-c", command]
        uid, gid = self.user
        groups = ",".join(map(str, self.groups))
        switch = [
            f"--reuid={uid}",
            f"--regid={gid}",
            f"--groups={groups}" if groups else "--clear-groups",
        ]
        return ["setpriv", *switch, "--", "bash", "-c", command]

    def written(self, command: str) -> str:
        for old, new in self.rewrite.items():
            command = command.replace(old, new)
        return command

    async def _spawn(self, command: str, output: Any) -> asyncio.subprocess.Process:
        """Start a (rewritten) command; ``output``: where its stdout and stderr go."""
        return await asyncio.create_subprocess_exec(
            *self.argv(command),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT if output != asyncio.subprocess.PIPE else output,
            env=self.env,
            cwd=self.directory,
            start_new_session=True,  # a process group of its own, as a terminal's job
        )

    async def run(self, command: str, timeout_s: float = COMMAND_TIMEOUT_S) -> Finished:
        """Run one command to its end; a test failure, with its output, if it fails."""
        command = self.written(command)
        process = await self._spawn(command, asyncio.subprocess.PIPE)
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
        except TimeoutError:
            pytest.fail(f"`{command}` took over {timeout_s:g} s")
        finally:
            if process.returncode is None:
                await signal_job(process, signal.SIGKILL, 0)
        done = Finished(process.returncode or 0, stdout.decode(), stderr.decode())
        if done.status != 0:
            pytest.fail(f"`{command}` failed ({done.status}):\n{done.stdout}\n{done.stderr}")
        return done

    async def start(self, command: str, log: Path | None = None) -> asyncio.subprocess.Process:
        """Start a foreground command in the background; what it prints goes to ``log``."""
        command = self.written(command)
        with contextlib.ExitStack() as files:
            output = (
                asyncio.subprocess.DEVNULL if log is None else files.enter_context(log.open("wb"))
            )
            process = await self._spawn(command, output)
        self.foreground.append(process)
        return process

    async def start_server(self, command: str) -> None:
        """Start a foreground server (``--bind tcp://HOST:PORT``); return once its port accepts."""
        match = _FOREGROUND_SERVER.match(self.written(command))
        assert match, command
        process = await self.start(command)
        try:
            await asyncio.wait_for(wait_listening(int(match.group(1)), process), SERVICE_TIMEOUT_S)
        except (TimeoutError, StackError) as error:
            pytest.fail(f"`{self.written(command)}` did not start serving: {error}")

    async def run_all(self, commands: Sequence[str]) -> list[Finished]:
        """Each command in turn (a foreground server started, not waited for); what each of the
        others printed."""
        finished = []
        for command in commands:
            if _FOREGROUND_SERVER.match(self.written(command)):
                await self.start_server(command)
            else:
                finished.append(await self.run(command))
        return finished

    async def interrupt(self, timeout_s: float = STOP_TIMEOUT_S) -> list[int]:
        """Ctrl-C to each foreground command started (SIGINT to its process group, as a
        terminal sends it); their exit statuses. Killed if one outlasts ``timeout_s``."""
        statuses = [
            await signal_job(process, signal.SIGINT, timeout_s) for process in self.foreground
        ]
        self.foreground.clear()
        return statuses


async def signal_job(process: asyncio.subprocess.Process, signum: int, timeout_s: float) -> int:
    """Send ``signum`` to the process group a ``DocShell`` started; its leader's exit status
    within ``timeout_s``, else the group is killed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)
    try:
        return await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return await process.wait()


# --- nginx configs -----------------------------------------------------------------


def nginx_statements(text: str) -> list[str]:
    """An nginx config's statements in order, comments dropped, whitespace normalised.

    ``upstream x {`` opens a block and ``}`` closes it. For the project's own
    per-target files, which quote nothing.
    """
    code = re.sub(r"#[^\n]*", "", text)
    return [" ".join(s.split()) for s in re.findall(r"[^;{}]*[;{}]", code) if s.strip()]


def nginx_image() -> str:
    """The nginx image every target runs: the one Dockerfile_nginx is built FROM."""
    for line in (PROJECT_DIR / "Dockerfile_nginx").read_text().splitlines():
        if line.startswith("FROM "):
            return line.split()[1]
    raise AssertionError("Dockerfile_nginx has no FROM line")


def nginx_t_in_image(
    files: dict[str, str], conf_dir: str, *options: str, args: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` in the nginx image, on ``files`` (name: text) mounted in ``conf_dir``.

    The config is ``conf_dir/nginx.conf`` unless ``args`` (nginx's own) say
    otherwise; ``options`` are more ``docker run`` options (a user, a host
    name for a resolver). No network: a `resolve` name need not resolve here.
    """
    with tempfile.TemporaryDirectory(prefix="nginx-t-") as workdir:
        mounts: list[str] = []
        for name, text in files.items():
            path = Path(workdir) / name
            path.write_text(text)
            path.chmod(0o644)
            mounts += ["-v", f"{path}:{conf_dir}/{name}:ro"]
        run = ["docker", "run", "--rm", "--network", "none", *options, *mounts, nginx_image()]
        return subprocess.run(
            [*run, "nginx", "-t", *(args or ["-c", f"{conf_dir}/nginx.conf"])],
            capture_output=True,
            text=True,
            timeout=DOCKER_TIMEOUT_S,
            check=False,
        )


# --- a real Docker engine: compose and swarm ---------------------------------------

SETUP_HINT = "as root, `bash ../shared/docker-offline/setup.sh .` installs and starts one"

DOCKER_TIMEOUT_S = 60.0
HEALTHY_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.5


@functools.cache
def engine_problem(compose: bool = True) -> str | None:
    """Why there is no Docker engine (and, if asked, compose) to test with, or None.

    Asked once per test run, however many modules need to know.
    """
    checks = [(["docker", "info", "--format", "{{.ServerVersion}}"], "no Docker engine answers")]
    if compose:
        checks.append(([*compose_command(), "version"], "no docker-compose (nor `docker compose`)"))
    for command, problem in checks:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        except FileNotFoundError:
            return f"{problem}: `{command[0]}` is not installed"
        except subprocess.TimeoutExpired:
            return f"{problem}: `{' '.join(command)}` took over 30 s"
        if done.returncode != 0:
            return f"{problem}: {done.stderr.strip()[:200]}"
    return None


def needs_engine() -> pytest.MarkDecorator:
    """Skipped, with how to get one, without a Docker engine (compose not needed)."""
    problem = engine_problem(compose=False)
    return pytest.mark.skipif(problem is not None, reason=f"{problem}; {SETUP_HINT}")


def needs_compose() -> list[pytest.MarkDecorator]:
    """A compose test module's marks: ``docker``, and skipped (with how to get one) without
    an engine and compose."""
    problem = engine_problem()
    return [
        pytest.mark.docker,
        pytest.mark.skipif(problem is not None, reason=f"{problem}; {SETUP_HINT}"),
    ]


def with_compose(test: Callable[..., Any]) -> Callable[..., Any]:
    """A test on the compose stack: marked ``docker``, skipped without an engine and compose."""
    for mark in needs_compose():
        test = mark(test)
    return test


def run(
    command: Sequence[str],
    timeout_s: float,
    env: dict[str, str] | None = None,
    cwd: Path = PROJECT_DIR,
) -> str:
    """Run a command (from the project directory by default); its stdout, or a test failure
    with its output."""
    try:
        done = subprocess.run(
            list(command),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=env,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(command)}` in {cwd} took over {timeout_s} s")
    if done.returncode != 0:
        output = f"{done.stdout.strip()}\n{done.stderr.strip()}".strip()
        pytest.fail(f"`{' '.join(command)}` in {cwd} failed ({done.returncode}): {output}")
    return done.stdout


def docker(
    *args: str, timeout_s: float = DOCKER_TIMEOUT_S, env: dict[str, str] | None = None
) -> str:
    """A docker command (``env``: variables added to this process's); its stdout."""
    return run(["docker", *args], timeout_s, None if env is None else {**os.environ, **env})


def docker_unchecked(*args: str) -> subprocess.CompletedProcess[str]:
    """A docker command whose failure the caller looks at (or ignores, when cleaning up)."""
    return subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=DOCKER_TIMEOUT_S,
        check=False,
        cwd=PROJECT_DIR,
    )


BUILD_TIMEOUT_S = 480.0


def build_image(tag: str, dockerfile: Path, context: Path = PROJECT_DIR) -> None:
    """``docker build`` with the classic builder (no BuildKit), as every target's CI can."""
    docker(
        *("build", "-q", "-f", str(dockerfile), "-t", tag, str(context)),
        timeout_s=BUILD_TIMEOUT_S,
        env={"DOCKER_BUILDKIT": "0"},
    )


@contextlib.contextmanager
def built_images(
    dockerfiles: dict[str, str], derived: dict[str, str] | None = None
) -> Iterator[None]:
    """The project's images under tags of the caller's (``{tag: Dockerfile name}``), then
    ``derived`` ones (``{tag: Dockerfile text}``, built in an empty context). Only the
    tags are removed afterwards, also when a build failed: the layers are shared with
    the other tests' images."""
    try:
        for tag, dockerfile in dockerfiles.items():
            build_image(tag, PROJECT_DIR / dockerfile)
        with tempfile.TemporaryDirectory(prefix="zmq-image-") as workdir:
            for tag, text in (derived or {}).items():
                path = Path(workdir) / "Dockerfile"
                path.write_text(text)
                build_image(tag, path, Path(workdir))
        yield
    finally:
        docker_unchecked("rmi", *dockerfiles, *(derived or {}))


@dataclass(frozen=True)
class SwarmTask:
    """A task of a swarm service: its name (``service.slot.id``: also its container's and,
    in the stacks here, its replica's name), node, image and current state."""

    name: str
    node: str
    image: str
    state: str

    @property
    def running(self) -> bool:
        return self.state.startswith("Running")


def swarm_tasks(docker_cli: Callable[..., str], service: str) -> list[SwarmTask]:
    """The tasks of ``service`` that Swarm wants running, through a manager's ``docker_cli``
    (``docker``, or a node's)."""
    out = docker_cli(
        *("service", "ps", service, "--filter", "desired-state=running", "--no-trunc"),
        *("--format", "{{.Name}} {{.ID}} {{.Node}} {{.Image}} {{.CurrentState}}"),
    )
    tasks = []
    for line in out.splitlines():
        name, task_id, node, image, state = line.split(" ", 4)
        tasks.append(SwarmTask(f"{name}.{task_id}", node, image, state))
    return tasks


def labelled_leftovers(label: str) -> dict[str, list[str]]:
    """The containers and networks with ``label`` (``key=value``) on this engine, by kind."""
    found = {
        "containers": docker("ps", "-aq", "--filter", f"label={label}").split(),
        "networks": docker("network", "ls", "-q", "--filter", f"label={label}").split(),
    }
    return {kind: ids for kind, ids in found.items() if ids}


def assert_demo_client_printed_the_seed_lines(project: Project) -> None:
    """The compose ``client`` service ran to exit 0, printing the seed's lines."""
    (client,) = project.containers("client")
    exit_code = docker("wait", client, timeout_s=ANSWER_TIMEOUT_S).strip()
    logs = project.compose("logs", "--no-color", "client")
    assert exit_code == "0", logs
    assert lines_per_client(logs) == {"client_1": seed_lines(SEED_REQUESTS)}, logs


def replica_name(container: str) -> str:
    """The name a server container puts in its replies: its hostname, the id's first 12 digits."""
    return container[:12]


@dataclass(frozen=True)
class Project:
    """A test's compose project: its own name and published port.

    ``files`` are the compose files (``COMPOSE_FILE``; default docker-compose.yml),
    ``settings`` more variables for compose to substitute.
    """

    name: str
    port: int
    files: tuple[str, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
        if self.files:
            env["COMPOSE_FILE"] = os.pathsep.join(self.files)
        return {
            **env,
            **self.settings,
            "COMPOSE_PROJECT_NAME": self.name,
            "NGINX_PORT": str(self.port),
            "NGINX_HOST_IP": "127.0.0.1",
        }

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def compose(self, *args: str, timeout_s: float = DOCKER_TIMEOUT_S) -> str:
        return run([*compose_command(), *args], timeout_s, self.env)

    def compose_unchecked(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A compose command whose failure is not the test's (diagnostics, clean-up)."""
        return subprocess.run(
            [*compose_command(), *args],
            capture_output=True,
            text=True,
            timeout=DOCKER_TIMEOUT_S,
            check=False,
            env=self.env,
            cwd=PROJECT_DIR,
        )

    def down(self) -> None:
        """Remove everything of the project, also the images it built (tagged with its name)."""
        self.compose_unchecked("down", "-v", "--rmi", "local", "--remove-orphans", "-t", "10")

    def containers(self, service: str) -> list[str]:
        """Full ids of the service's containers, running or not, not `run` ones.

        By label, which docker-compose 1.29 and `docker compose` v2 both set
        (their `ps` commands differ in what they list).
        """
        labels = {"project": self.name, "service": service, "oneoff": "False"}
        filters = [f"--filter=label=com.docker.compose.{k}={v}" for k, v in labels.items()]
        return docker("ps", "-aq", "--no-trunc", *filters).split()

    def running(self, service: str) -> list[str]:
        """Full ids of the service's containers that are running."""
        ids = self.containers(service)
        states = docker("inspect", "-f", "{{.State.Running}}", *ids).split() if ids else []
        return [i for i, state in zip(ids, states, strict=True) if state == "true"]

    def replica_names(self) -> set[str]:
        """What the servers put in their replies."""
        return {replica_name(container) for container in self.containers("server")}

    def container_of(self, replica: str) -> str:
        """The server container whose replies name ``replica``."""
        (container,) = [c for c in self.containers("server") if replica_name(c) == replica]
        return container

    def diagnostics(self) -> str:
        """The containers' states and the last lines of their logs, for a failure message."""
        parts = []
        for args in (("ps",), ("logs", "--no-color", "--tail", "15", "server", "nginx")):
            done = self.compose_unchecked(*args)
            parts.append(done.stdout + done.stderr)
        return "\n".join(parts)

    def leftovers(self) -> dict[str, list[str]]:
        return labelled_leftovers(f"com.docker.compose.project={self.name}")


def wait_until(
    what: str, check: Callable[[], bool], timeout_s: float, diagnostics: Callable[[], str]
) -> float:
    """Seconds until ``check()`` holds, asked every POLL_INTERVAL_S; after ``timeout_s`` the
    test fails, saying ``what`` did not happen, with ``diagnostics()`` (the state last seen,
    logs)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what}: not after {timeout_s:.0f} s\n{diagnostics()}")
        time.sleep(POLL_INTERVAL_S)  # polling the engine's state: there is no event to await
    return time.monotonic() - started


def wait_healthy(project: Project, count: int) -> None:
    """Until ``count`` server containers report healthy; bounded."""
    states: list[str] = []

    def healthy() -> bool:
        nonlocal states
        ids = project.containers("server")
        states = docker("inspect", "-f", "{{.State.Health.Status}}", *ids).split() if ids else []
        return states.count("healthy") >= count

    wait_until(
        f"{count} servers healthy",
        healthy,
        HEALTHY_TIMEOUT_S,
        lambda: f"{states}\n{project.diagnostics()}",
    )


async def probe(context: zmq.asyncio.Context, endpoint: str, **settings: Any) -> str:
    """One request on a new connection; the replica that answered.

    ``settings`` override the ClientConfig (a longer timeout, CURVE keys).
    """
    config = ClientConfig(endpoints=(endpoint,), timeout_ms=1000, tries=1, heartbeat_ms=0)
    async with Client(replace(config, **settings), context) as client:
        reply = await client.request(protocol.encode_request("probe", b"which replica?"), "probe")
    assert reply.ok, reply
    return reply.replica


async def probe_until(
    endpoint: str,
    enough: Callable[[Counter[str]], bool],
    *,
    per_round: int = 1,
    timeout_s: float = ANSWER_TIMEOUT_S,
    **settings: Any,
) -> tuple[float, Counter[str]]:
    """New connections, ``per_round`` at once, until the replies per replica are ``enough``.

    Returns the seconds it took and the replies per replica. A probe that gets
    no reply (``RequestTimeout``) counts for nothing; any other failure fails.
    Bounded by ``timeout_s``; ``settings`` as for ``probe``.
    """
    started = time.monotonic()
    seen: Counter[str] = Counter()
    context = zmq.asyncio.Context()
    try:
        async with asyncio.timeout(timeout_s):
            while not enough(seen):
                replies = await asyncio.gather(
                    *(probe(context, endpoint, **settings) for _ in range(per_round)),
                    return_exceptions=True,
                )
                for reply in replies:
                    if isinstance(reply, BaseException):
                        if not isinstance(reply, RequestTimeout):
                            raise reply
                    else:
                        seen[reply] += 1
    finally:
        context.destroy(linger=0)
    return time.monotonic() - started, seen


async def wait_for_replica(endpoint: str, replica: str | None = None, **settings: Any) -> None:
    """Until a new connection is answered (by ``replica``, if given); bounded."""
    await probe_until(
        endpoint, lambda seen: bool(seen) if replica is None else replica in seen, **settings
    )


async def docker_async(*args: str, timeout_s: float = DOCKER_TIMEOUT_S) -> str:
    """``docker(...)`` without blocking the event loop (clients keep running)."""
    return await asyncio.wait_for(asyncio.to_thread(docker, *args, timeout_s=timeout_s), timeout_s)


# --- clients that keep sending while a replica is killed ----------------------------


@dataclass
class Load:
    """One client sending requests on its own connection until told to stop.

    Lazy Pirate: an unanswered request is resent on a new connection, which
    nginx gives to a live replica; a request still unanswered after ``tries``
    fails the load. ``replies`` holds the replica of each reply, in order.
    """

    name: str
    timeout_ms: int
    tries: int
    replies: list[str] = field(default_factory=list)
    sent: int = 0
    retried: int = 0
    finished: bool = False
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    sending: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(
        self, context: zmq.asyncio.Context, endpoint: str, stop: asyncio.Event, max_requests: int
    ) -> None:
        config = ClientConfig(endpoints=(endpoint,), timeout_ms=self.timeout_ms, tries=self.tries)
        try:
            async with Client(config, context) as client:
                while not stop.is_set() and self.sent < max_requests:
                    frames = protocol.encode_request(self.name, f"request {self.sent}".encode())
                    self.sent += 1
                    self.sending.set()
                    reply = await client.request(frames, str(self.sent))
                    assert reply.status == protocol.SERVER_RESPONSE_TEXT, reply
                    self.replies.append(reply.replica)
                    self.retried += client.last_tries > 1
                    self.progress.set()
                    await asyncio.sleep(0.005)
        finally:
            self.finished = True
            self.progress.set()

    async def answered_at_least(self, count: int) -> None:
        """Return once ``count`` requests are answered; fail if the client stopped first."""
        while len(self.replies) < count:
            if self.finished:
                pytest.fail(f"{self.name} stopped after {len(self.replies)} of {count} replies")
            self.progress.clear()
            await self.progress.wait()


@contextlib.asynccontextmanager
async def loads_running(
    context: zmq.asyncio.Context, endpoint: str, loads: Sequence[Load], max_requests: int = 20_000
) -> AsyncIterator[None]:
    """The loads send for as long as the block runs; leaving it stops them, and raises what
    any of them failed with (a request that was never answered)."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(load.run(context, endpoint, stop, max_requests)) for load in loads]
    try:
        yield
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class Killed:
    """A replica killed under load: its name as the replies give it, and the timings."""

    victim: str
    # When the kill was sent (time.monotonic()), and how many replies each load had then.
    at: float
    answered_at_kill: list[int]
    # How long ``docker kill`` (or the like) took, and the replies each load had after it.
    kill_s: float
    answered_after_kill: list[int]
    # Until every load, the first one included, was answered again (3 more replies).
    recovered_s: float


async def kill_the_replica_of_the_first_load(
    loads: Sequence[Load], kill: Callable[[str], Awaitable[object]]
) -> Killed:
    """Kill the replica on ``loads[0]``'s connection just as ``loads[0]`` sends it a request.

    Waits until every load has 2 replies first, and afterwards until every load
    has 3 more than when the kill returned: the first one's from other replicas,
    after Lazy Pirate resent what the dead one never answered (if it held a
    request when it died; a replica without work may still answer a few while
    the kill is on its way).
    """
    await asyncio.gather(*(load.answered_at_least(2) for load in loads))
    loads[0].sending.clear()
    await loads[0].sending.wait()
    victim = loads[0].replies[-1]
    answered_at_kill = [len(load.replies) for load in loads]
    killed = time.monotonic()
    await kill(victim)
    kill_s = time.monotonic() - killed
    answered_after_kill = [len(load.replies) for load in loads]
    await asyncio.gather(
        *(load.answered_at_least(n + 3) for load, n in zip(loads, answered_after_kill, strict=True))
    )
    return Killed(
        victim, killed, answered_at_kill, kill_s, answered_after_kill, time.monotonic() - killed
    )


def assert_no_request_lost(loads: Sequence[Load], killed: Killed) -> None:
    """Every request sent was answered; once the kill was done, none by the victim.

    (Apart from the first reply after it: the victim may have sent it just before it died.)
    """
    for load in loads:
        assert len(load.replies) == load.sent, load.name
    after_kill = loads[0].replies[killed.answered_after_kill[0] + 1 :]
    assert after_kill
    assert killed.victim not in after_kill, loads[0].replies


# --- a compose project per module, and clients measured under a fault -------------

UP_TIMEOUT_S = 240.0
COMPOSE_REPLICAS = 3  # docker-compose.yml's deploy.replicas


@contextlib.contextmanager
def compose_project(
    prefix: str,
    *,
    files: tuple[str, ...] = (),
    settings: dict[str, str] | None = None,
    services: Sequence[str] = (),
    scale: int | None = None,
    up_timeout_s: float = UP_TIMEOUT_S,
    **client_settings: Any,
) -> Iterator[Project]:
    """A compose project of its own, built and up, answering through nginx.

    ``files`` and ``settings`` as in ``Project``; ``services`` starts only those
    (default all); ``scale`` runs that many servers instead of the compose
    file's. Ready once they are healthy and a new connection through nginx is
    answered by a client with ``client_settings`` (ClientConfig fields, e.g.
    CURVE keys). Always removed afterwards (``down -v --rmi local``), also when
    starting failed.
    """
    project = Project(f"{prefix}{os.getpid()}", free_port(), files, settings or {})
    scaled = () if scale is None else ("--scale", f"server={scale}")
    try:
        # `up` waits for the servers' health checks before it starts nginx.
        project.compose("up", "-d", "--build", *scaled, *services, timeout_s=up_timeout_s)
        wait_healthy(project, COMPOSE_REPLICAS if scale is None else scale)
        try:
            asyncio.run(wait_for_replica(project.endpoint, **client_settings))
        except TimeoutError:
            pytest.fail(f"nothing answers through nginx:\n{project.diagnostics()}")
        yield project
    finally:
        project.down()


@dataclass
class MeasuredClients:
    """REQ clients in this event loop, each on its own connection, measured request by request.

    Each sends ``requests`` requests one at a time, ``interval_s`` apart, with
    Lazy Pirate retries (``timeout_ms``, ``tries``: the command line's defaults
    unless given), or fewer if ``finish()`` is called first (each client ends
    after its current request). A request's latency runs from its first send to
    its reply, retries included, so the longest one is the longest stall a
    client saw. A request unanswered after the last try is recorded in ``lost``
    and ends that client.

    Client N connects to ``endpoint``, or, when ``client_endpoints`` is given,
    to all of ``client_endpoints[N % len(client_endpoints)]``. With
    ``reconnect_every`` N > 0 a client opens a new connection every N requests
    (1: one per request), so nginx picks a replica for it again.
    """

    endpoint: str
    clients: int
    requests: int
    interval_s: float = 0.0
    timeout_ms: int = default(ClientConfig, "timeout_ms")
    tries: int = default(ClientConfig, "tries")
    client_endpoints: Sequence[tuple[str, ...]] = ()
    reconnect_every: int = 0
    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    retried: int = 0
    replicas: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    finished: bool = False
    _progress: asyncio.Event = field(default_factory=asyncio.Event)
    _finishing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def answered(self) -> int:
        return len(self.latencies_ms)

    @property
    def longest_stall_ms(self) -> float:
        return max(self.latencies_ms, default=0.0)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 0.99)

    def __str__(self) -> str:
        return (
            f"{self.answered} of {self.sent} requests answered ({self.clients} clients), "
            f"{self.retried} after a retry, {len(self.lost)} lost; longest stall "
            f"{self.longest_stall_ms:.0f} ms, p99 {self.p99_ms:.1f} ms"
        )

    def finish(self) -> None:
        """Each client ends after its current request."""
        self._finishing.set()

    async def run(self) -> None:
        context = zmq.asyncio.Context()
        try:
            await asyncio.gather(*(self._client(context, i) for i in range(self.clients)))
        finally:
            self.finished = True
            self._progress.set()
            context.destroy(linger=0)

    def _config(self, number: int) -> ClientConfig:
        endpoints: tuple[str, ...] = (self.endpoint,)
        if self.client_endpoints:
            endpoints = self.client_endpoints[number % len(self.client_endpoints)]
        return ClientConfig(endpoints=endpoints, timeout_ms=self.timeout_ms, tries=self.tries)

    async def _client(self, context: zmq.asyncio.Context, number: int) -> None:
        config = self._config(number)
        per_connection = self.reconnect_every or self.requests
        for first in range(0, self.requests, per_connection):
            async with Client(config, context) as client:
                for request in range(first, min(first + per_connection, self.requests)):
                    if self._finishing.is_set() or not await self._request(client, number, request):
                        return

    async def _request(self, client: Client, number: int, request: int) -> bool:
        """Send one request and record its reply; False if it was lost (the client ends)."""
        frames = protocol.encode_request(f"load-{number}", f"request {request}".encode())
        self.sent += 1
        started = time.perf_counter()
        try:
            reply = await client.request(frames, f"{number}/{request}")
        except RequestTimeout as lost:
            self.lost.append(str(lost))
            return False
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.retried += client.last_tries > 1
        self.replicas[reply.replica] += 1
        self._progress.set()
        if self.interval_s > 0:
            await asyncio.sleep(self.interval_s)  # the clients' pace
        return True

    async def answered_at_least(self, count: int) -> None:
        """Return once ``count`` requests are answered; fail if the clients stopped first."""
        while self.answered < count:
            if self.finished:
                pytest.fail(f"the clients stopped after {self.answered} of {count} replies")
            self._progress.clear()
            await self._progress.wait()


# --- a deploy under load: long-lived and new connections, and nginx's view -----------

# nginx's log lines that mean a client connection was not served at once: a
# 502 (no replica could be reached), a connect to a replica that had gone
# (timed out, or refused), no replica left to try.
NGINX_TROUBLE = {
    "502": r"status=502",
    "upstream timed out": r"upstream timed out",
    "no live upstreams": r"no live upstreams",
    "connect() failed": r"connect\(\) failed",
}


def nginx_trouble(log: str) -> Counter[str]:
    """How many of each kind of NGINX_TROUBLE line ``log`` (access and error log) holds."""
    return Counter({kind: len(re.findall(pattern, log)) for kind, pattern in NGINX_TROUBLE.items()})


def assert_nginx_served_every_connection(trouble: Counter[str]) -> None:
    """No client connection failed in nginx (502) nor waited on a replica that had gone."""
    assert trouble["502"] == 0, trouble
    assert trouble["upstream timed out"] == 0, trouble
    assert trouble["no live upstreams"] == 0, trouble


DEPLOY_LOAD_MAX_REQUESTS = 100_000


@dataclass
class DeployLoad:
    """The load a deploy runs under: clients on long-lived connections (``steady``), and
    clients opening a new connection per request (``churn``), so that nginx picks a
    replica many times a second. Each client uses the endpoints given for it (one or
    more; ``MeasuredClients.client_endpoints``); every client sends 100 requests/s at most.
    """

    steady: MeasuredClients
    churn: MeasuredClients

    @classmethod
    def on(
        cls, endpoints: Sequence[tuple[str, ...]], steady: int = 6, churn: int = 2
    ) -> DeployLoad:
        def clients(count: int, reconnect_every: int) -> MeasuredClients:
            return MeasuredClients(
                endpoints[0][0],
                count,
                DEPLOY_LOAD_MAX_REQUESTS,
                interval_s=0.01,
                client_endpoints=endpoints,
                reconnect_every=reconnect_every,
            )

        return cls(clients(steady, 0), clients(churn, 1))

    @contextlib.asynccontextmanager
    async def running(self, before_s: float = 2.0, after_s: float = 3.0) -> AsyncIterator[None]:
        """The clients run from ``before_s`` before the block (once each has answered) to
        ``after_s`` after it; then they finish their requests (bounded) and stop."""
        loads = (self.steady, self.churn)
        tasks = [asyncio.create_task(load.run()) for load in loads]
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                await asyncio.gather(*(load.answered_at_least(load.clients) for load in loads))
            await asyncio.sleep(before_s)  # the load's pace before the event
            yield
            await asyncio.sleep(after_s)  # and after it
            for load in loads:
                load.finish()
            await asyncio.wait_for(asyncio.gather(*tasks), ANSWER_TIMEOUT_S)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def report(self, event: str, trouble: Counter[str]) -> str:
        """The event, what each kind of client saw, and nginx's trouble counts."""
        counts = ", ".join(f"{kind} {trouble[kind]}" for kind in NGINX_TROUBLE)
        return (
            f"\n{event}\n  long-lived connections: {self.steady}\n"
            f"  a connection per request: {self.churn}\n  nginx logs: {counts}"
        )

    def assert_nothing_lost(self) -> None:
        for load in (self.steady, self.churn):
            assert load.lost == [], load
            assert load.answered == load.sent > 0, load
