"""The docs' recipes with keys and containers, run as written, in page order, on a fresh checkout.

The only rewrites are the ones the pages name: another port than 5555 (in the
commands, and as ``NGINX_PORT``/``SERVER_CONNECT``/``PROMETHEUS_PORT``), and
``COMPOSE_PROJECT_NAME``, so each stack is this module's own. Every compose
project is removed afterwards (``down -v --rmi local``), also on failure.

- docs/security.md's two recipes, its shell blocks in the page's order, in one
  checkout: "Using CURVE" (keys, a server and a client on the host), then
  "CURVE with docker-compose" (one more key, the secret keys the containers
  read handed to their group, the stack up, a client on the host and two in
  containers, the stack down). Every command runs as an unprivileged user in
  the docker group, as the page's reader would, but ``sudo`` ones, which run
  as root: so a secret key the containers can read but its owner cannot fails
  here.
- README.md's ``docker-compose up --build`` stays in the foreground (in a
  terminal of its own here) and prints the demo client's lines; its scaling
  command reaches 5 replicas, and docs/docker.md's ways to restart a killed
  replica and to give nginx another connection limit keep all 5; Ctrl-C
  stops the stack.
- docs/metrics.md's monitoring recipe: after its waits, every replica is
  scraped before the traffic and the rate query sees the traffic.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reqrep.stack import free_port
from tests.support import (
    ANSWER_TIMEOUT_S,
    COMPOSE_REPLICAS,
    POLL_INTERVAL_S,
    PROJECT_DIR,
    SEED_REQUESTS,
    UP_TIMEOUT_S,
    DocShell,
    Finished,
    Project,
    assert_demo_client_printed_the_seed_lines,
    docker,
    engine_problem,
    fenced_blocks,
    fresh_checkout,
    lines_per_client,
    seed_lines,
    shell_commands,
    wait_for_replica,
    wait_healthy,
    with_compose,
)

SECURITY_PAGE = PROJECT_DIR / "docs" / "security.md"
# The page's reader: no root, but in the docker group (whoever may run docker-compose).
READER = (4711, 4711)
DOCUMENTED_PORT = "5555"
DOCKER_SOCKET = Path("/var/run/docker.sock")


def reader_problem() -> str | None:
    """Why the recipes cannot run as an unprivileged reader with sudo here, or None."""
    if os.geteuid() != 0:
        return "runs the page as an unprivileged user and its sudo lines as root: needs root"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux) to run the page as an unprivileged user"
    return None


needs_reader = pytest.mark.skipif(reader_problem() is not None, reason=str(reader_problem()))


@dataclass
class Page:
    """A page's shell blocks, run in order in one checkout; each block once."""

    shell: DocShell
    blocks: list[list[str]]
    done: list[list[Finished]] = field(default_factory=list)

    async def through(self, index: int) -> None:
        """Run every block up to ``index`` not run yet (what a later block builds on)."""
        while len(self.done) <= index:
            finished = await self.shell.run_all(self.blocks[len(self.done)])
            await self.shell.interrupt()
            self.done.append(finished)


@pytest.fixture(scope="module")
def project() -> Iterator[Project]:
    project = Project(f"zmqdocs{os.getpid()}", free_port())
    try:
        yield project
    finally:
        if engine_problem() is None:
            project.down()


@pytest.fixture(scope="module")
def readers_directory() -> Iterator[Path]:
    """A directory of the reader's own (pytest's are private to root), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="zmqdocs-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


def succeeds(*argv: str) -> bool:
    return subprocess.run(argv, capture_output=True, timeout=60, check=False).returncode == 0


def readers_python(directory: Path) -> Path:
    """The directory of the ``python3`` the reader runs: this environment's, as activated.

    Where the reader cannot run this environment's interpreter (a virtualenv of
    a Python under /root, say), a virtualenv of the system's python3 of the
    same version that uses this environment's packages (a ``.pth``) instead.
    """
    mine = Path(sys.executable).parent
    reader = ("setpriv", f"--reuid={READER[0]}", f"--regid={READER[1]}", "--clear-groups")
    # As the reader's shell finds it on PATH (which may refuse what a plain exec allows).
    if succeeds(*reader, "env", f"PATH={mine}", "bash", "-c", "python3 -c 'import zmq'"):
        return mine
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(f"python{version}", path="/usr/local/bin:/usr/bin")
    if system is None:
        pytest.skip(f"the reader can run neither {sys.executable} nor a system Python {version}")
    venv = directory / "venv"
    if not succeeds(system, "-m", "venv", "--without-pip", str(venv)):
        pytest.skip(f"`{system} -m venv` failed: the reader has no Python {version}")
    packages = venv / "lib" / f"python{version}" / "site-packages"
    (packages / "project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


@pytest.fixture(scope="module")
def security_page(readers_directory: Path, project: Project) -> Page:
    checkout = fresh_checkout(readers_directory / "checkout")
    home = readers_directory / "home"
    home.mkdir()
    for path in (checkout, home, *checkout.rglob("*")):
        os.chown(path, *READER)
    # In the docker group, where there is an engine to talk to.
    groups = (DOCKER_SOCKET.stat().st_gid,) if DOCKER_SOCKET.exists() else ()
    env = {
        "PATH": f"{readers_python(readers_directory)}:{os.environ['PATH']}",  # . .venv/bin/activate
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "COMPOSE_PROJECT_NAME": project.name,
        "NGINX_PORT": str(project.port),
        "NGINX_HOST_IP": "127.0.0.1",
        "SERVER_CONNECT": project.endpoint,
    }
    shell = DocShell(
        checkout,
        env,
        user=READER,
        groups=groups,
        rewrite={f":{DOCUMENTED_PORT}": f":{project.port}"},
    )
    blocks = [shell_commands(b) for b in fenced_blocks(SECURITY_PAGE) if b.language == "sh"]
    assert len(blocks) == 2, "expected the host recipe and the compose recipe"
    return Page(shell, blocks)


def printed_seed_lines(done: Finished) -> bool:
    return done.stdout.splitlines() == seed_lines(SEED_REQUESTS)


@needs_reader
async def test_curve_on_the_host(security_page: Page) -> None:
    """Keys, then a server and an authorized client with them, as the reader; Ctrl-C stops it."""
    commands = security_page.blocks[0]
    for command in commands:
        if command.startswith("python3 server.py"):
            await security_page.shell.start_server(command)
        else:
            done = await security_page.shell.run(command)
            if command.startswith("python3 client.py"):
                assert printed_seed_lines(done), done
    assert await security_page.shell.interrupt() == [0]
    security_page.done.append([])


@needs_reader
@with_compose
async def test_curve_with_docker_compose_after_the_host_recipe(
    security_page: Page, project: Project
) -> None:
    """The compose recipe on the keys of the host one; the reader's client still reads its key."""
    await security_page.through(0)
    for command in security_page.blocks[1]:
        up = " up " in command
        done = await security_page.shell.run(command, UP_TIMEOUT_S if up else 120.0)
        if up:
            assert_demo_client_printed_the_seed_lines(project)
        if command.startswith("python3 client.py"):
            assert printed_seed_lines(done), done
        if "run_clients.py" in command:
            assert "Result: OK" in done.stdout + done.stderr, done
    assert project.containers("server") == [], "`down` left the replicas"


# --- the compose stack: README.md and docs/docker.md --------------------------------

README = PROJECT_DIR / "README.md"
DOCKER_PAGE = PROJECT_DIR / "docs" / "docker.md"
METRICS_PAGE = PROJECT_DIR / "docs" / "metrics.md"
SCALED = 5
STACK_STOP_TIMEOUT_S = 60.0


def documented(page: Path, prefix: str) -> str:
    """The command in the page's shell blocks that starts with ``prefix``, as written."""
    for block in fenced_blocks(page):
        for command in shell_commands(block) if block.language == "sh" else []:
            if command.startswith(prefix):
                return command
    pytest.fail(f"{page.name} has no command starting with {prefix!r}")


def documented_block(page: Path, containing: str) -> list[str]:
    """The commands of the page's shell block that has ``containing`` in it."""
    for block in fenced_blocks(page):
        if block.language == "sh" and containing in block.text:
            return shell_commands(block)
    pytest.fail(f"{page.name} has no shell block with {containing!r}")


def mentioned(page: Path, command: str) -> str:
    """A command the page gives in running text (inline code), as written."""
    assert f"`{command}`" in page.read_text(), f"{page.name} no longer says `{command}`"
    return command


def compose_shell(project: Project, directory: Path) -> DocShell:
    """This process (in the docker group or root), the project's environment, its port."""
    env = {
        **project.env,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # . .venv/bin/activate
        "SERVER_CONNECT": project.endpoint,
    }
    return DocShell(directory, env)


async def exit_code_of(project: Project, service: str, timeout_s: float) -> str:
    """Once the service's (one) container exists and has exited: its exit code."""
    async with asyncio.timeout(timeout_s):
        while not project.containers(service):
            await asyncio.sleep(POLL_INTERVAL_S)  # polling the engine: no event to await
    (container,) = project.containers(service)
    return docker("wait", container, timeout_s=timeout_s).strip()


# How docker-compose 1.x (`main_client_1 exited`) and v2 (`client-1 exited`) end the demo.
CLIENT_EXITED = re.compile(r"client[_-]1 exited with code")
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


async def log_until(log: Path, line: re.Pattern[str], timeout_s: float) -> str:
    """What a foreground command has printed to ``log`` (colours removed), once ``line`` is in
    it: the containers' log lines reach it a moment after the fact."""
    async with asyncio.timeout(timeout_s):
        while not line.search(text := _COLOURS.sub("", await asyncio.to_thread(log.read_text))):
            await asyncio.sleep(POLL_INTERVAL_S)  # polling a file: no event to await
    return text


@with_compose
async def test_readme_stack_scaled_stays_scaled(tmp_path: Path) -> None:
    project = Project(f"zmqreadme{os.getpid()}", free_port())
    shell = compose_shell(project, fresh_checkout(tmp_path / "checkout"))
    log = tmp_path / "up.log"
    try:
        # The README's first command, left in the foreground of its own terminal.
        await shell.start(documented(README, "docker-compose up --build"), log)
        assert await exit_code_of(project, "client", UP_TIMEOUT_S) == "0", log.read_text()
        printed = await log_until(log, CLIENT_EXITED, ANSWER_TIMEOUT_S)
        assert lines_per_client(printed) == {"client_1": seed_lines(SEED_REQUESTS)}, printed
        # From another terminal: scale, kill a replica and start it again, change nginx's limit.
        await shell.run(documented(README, "docker-compose up -d --no-recreate --scale"))
        wait_healthy(project, SCALED)
        docker("kill", project.containers("server")[0])
        await shell.run(mentioned(DOCKER_PAGE, "docker-compose start server"))
        wait_healthy(project, SCALED)
        for command in documented_block(DOCKER_PAGE, "NGINX_LIMITS"):
            await shell.run(command)
        assert len(project.running("server")) == SCALED, "a command scaled the servers back"
        (nginx,) = project.running("nginx")
        assert "1000" in docker("exec", nginx, "cat", "/etc/nginx/zmq-limits.conf")
        await wait_for_replica(project.endpoint)
    finally:
        await shell.interrupt(STACK_STOP_TIMEOUT_S)  # Ctrl-C in the first terminal
        still_running = [s for s in ("server", "nginx") if project.running(s)]
        project.down()
    assert still_running == [], f"Ctrl-C left {still_running} running"


# --- docs/metrics.md: Prometheus ----------------------------------------------------


def query_values(output: str) -> list[float]:
    """The values of a Prometheus instant query's answer, as curl printed it."""
    answer = json.loads(output)
    assert answer["status"] == "success", answer
    return [float(result["value"][1]) for result in answer["data"]["result"]]


@with_compose
async def test_metrics_monitoring_recipe_sees_the_traffic(tmp_path: Path) -> None:
    prometheus = free_port()
    settings = {"PROMETHEUS_PORT": str(prometheus), "COMPOSE_PROFILES": "monitoring"}
    project = Project(f"zmqmetrics{os.getpid()}", free_port(), settings=settings)
    shell = compose_shell(project, fresh_checkout(tmp_path / "checkout"))
    shell.rewrite = {"127.0.0.1:9090": f"127.0.0.1:{prometheus}"}
    recipe = documented_block(METRICS_PAGE, "--profile monitoring up")
    queries = documented_block(METRICS_PAGE, "api/v1/query")
    try:
        done = [await shell.run(command, UP_TIMEOUT_S) for command in recipe]
        targets = next(d.stdout for c, d in zip(recipe, done, strict=True) if "targets" in c)
        assert targets.count('"health": "up"') == COMPOSE_REPLICAS, targets
        rate, counts = [await shell.run(command) for command in queries]
        # 600 requests within the minute: about 10/s; a replica scraped only after them gives ~0.
        assert sum(query_values(rate.stdout)) > 5, rate.stdout
        assert sum(query_values(counts.stdout)) >= 600, counts.stdout
        await shell.run(documented(METRICS_PAGE, "docker-compose --profile monitoring down"))
        assert project.leftovers() == {}
    finally:
        project.down()
