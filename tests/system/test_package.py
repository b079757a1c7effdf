"""The package stands alone: ``pip install .`` (not editable) into a fresh virtualenv, then,
from a directory that is not the checkout, ``python -m reqrep`` and the ``reqrep`` script run
a server with a handler of the user's, the demo client, run-clients with its local stack and
nginx, and keys.

Slow-ish (a virtualenv and an install from PyPI's cache, about half a minute); needs pip to
reach PyPI, as every install here does.
"""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

from reqrep.stack import free_port
from tests.support import PROJECT_DIR, fresh_checkout, needs_nginx, seed_lines

INSTALL_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the package installed from the checkout; its bin/."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=True)
    # What a fresh clone has (pip builds in the tree it is given).
    source = fresh_checkout(tmp_path_factory.mktemp("source"))
    pip = [str(home / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    done = subprocess.run(
        [*pip, "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return home / "bin"


def run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        args,
        cwd=cwd,
        env={**environment, "PATH": f"{bin_dir}{os.pathsep}{environment['PATH']}"},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def test_the_installed_package_runs_from_any_directory(installed: Path, tmp_path: Path) -> None:
    python = str(installed / "python")
    found = run(installed, tmp_path, python, "-c", "import reqrep; print(reqrep.__file__)")
    assert str(PROJECT_DIR) not in found.stdout  # the installed copy, not the checkout
    assert "site-packages" in found.stdout

    keys = run(installed, tmp_path, "reqrep", "keys", "generate", "--dir", "k", "server")
    assert keys.returncode == 0, keys.stderr
    assert (tmp_path / "k" / "server.key_secret").exists()

    (tmp_path / "mine.py").write_text("def shout(request):\n    return request.data.upper()\n")
    port = free_port()
    # The reqrep script, from the directory holding the handler (--app-dir, by default ".").
    server = subprocess.Popen(
        [
            *(str(installed / "reqrep"), "server", "--bind", f"tcp://127.0.0.1:{port}"),
            *("--handler", "mine:shout", "--name", "installed"),
        ],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = run(
            installed, tmp_path, python, "-m", "reqrep", "client",
            "--connect", f"tcp://127.0.0.1:{port}", "--requests", "3",
        )  # fmt: skip
        assert client.returncode == 0, client.stderr
        assert client.stdout.splitlines() == seed_lines(3)
    finally:
        server.terminate()
        _, log = server.communicate(timeout=RUN_TIMEOUT_S)
    assert server.returncode == 0, log
    assert "handler=mine:shout" in log


@needs_nginx
def test_run_clients_local_finds_nginxs_settings_in_the_installed_package(
    installed: Path, tmp_path: Path
) -> None:
    done = run(installed, tmp_path, "reqrep", "run-clients", "--local", "2", "--requests", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(nginx)" in done.stdout.splitlines()[0]
    assert "Result: OK, all 6 requests answered" in done.stdout
