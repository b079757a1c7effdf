"""The docs' recipes with keys and containers, run as written, in page order, on a fresh checkout.

docs/security.md's two recipes, its shell blocks in the page's order, in one
checkout: "Using CURVE" (keys, a server and a client on the host), then "CURVE
with docker-compose" (one more key, the secret keys the containers read handed
to their group, the stack up, a client on the host and two in containers, the
stack down). Every command runs as an unprivileged user in the docker group, as
the page's reader would, but ``sudo`` ones, which run as root: so a secret key
the containers can read but its owner cannot fails here. The only rewrites are
the ones the page names: another port instead of 5555 (in the commands, and as
``NGINX_PORT``/``SERVER_CONNECT``), and ``COMPOSE_PROJECT_NAME``, so the stack
is this test's own. The compose project is removed afterwards, also on failure.
"""

from __future__ import annotations

import os
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
    PROJECT_DIR,
    SETUP_HINT,
    UP_TIMEOUT_S,
    DocShell,
    Finished,
    Project,
    assert_demo_client_printed_the_seed_lines,
    engine_problem,
    fenced_blocks,
    fresh_checkout,
    seed_lines,
    shell_commands,
)

SECURITY_PAGE = PROJECT_DIR / "docs" / "security.md"
# The page's reader: no root, but in the docker group (whoever may run docker-compose).
READER = (4711, 4711)
DOCUMENTED_PORT = "5555"
SEED_REQUESTS = 10


def reader_problem() -> str | None:
    """Why the recipes cannot run as an unprivileged reader with sudo here, or None."""
    if os.geteuid() != 0:
        return "runs the page as an unprivileged user and its sudo lines as root: needs root"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux) to run the page as an unprivileged user"
    return None


pytestmark = pytest.mark.skipif(reader_problem() is not None, reason=str(reader_problem()))


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
            await self.shell.stop_servers()
            self.done.append(finished)


@pytest.fixture(scope="module")
def project() -> Iterator[Project]:
    project = Project(f"zmqdocs{os.getpid()}", free_port())
    try:
        yield project
    finally:
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
    docker_group = os.stat("/var/run/docker.sock").st_gid
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
        groups=(docker_group,),
        rewrite={f":{DOCUMENTED_PORT}": f":{project.port}"},
    )
    blocks = [shell_commands(b) for b in fenced_blocks(SECURITY_PAGE) if b.language == "sh"]
    assert len(blocks) == 2, "expected the host recipe and the compose recipe"
    return Page(shell, blocks)


def printed_seed_lines(done: Finished) -> bool:
    return done.stdout.splitlines() == seed_lines(SEED_REQUESTS)


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
    assert await security_page.shell.stop_servers() == [0]
    security_page.done.append([])


@pytest.mark.docker
async def test_curve_with_docker_compose_after_the_host_recipe(
    security_page: Page, project: Project
) -> None:
    """The compose recipe on the keys of the host one; the reader's client still reads its key."""
    if (problem := engine_problem()) is not None:
        pytest.skip(f"{problem}; {SETUP_HINT}")
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
