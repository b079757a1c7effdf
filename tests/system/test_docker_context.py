"""The Docker build context, as a real engine receives it: exactly what the Dockerfiles COPY.

A copy of the project's tracked files, with what a developer's checkout also
holds planted beside them (the Node example's node_modules, the built C
client, keys, a virtualenv, git's history, Python caches), is sent as a build
context, by ``docker build`` and by compose, to a build that copies the whole
context into an image; the image's files are the context. They must be the
sources of the Dockerfiles' COPY lines and nothing else (``.dockerignore`` is
an allowlist). Images and containers are removed afterwards.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reqrep.runner import compose_command
from tests.support import (
    PROJECT_DIR,
    docker,
    docker_unchecked,
    fresh_checkout,
    needs_compose,
    run,
    tracked_files,
)

pytestmark = needs_compose()

BUILD_TIMEOUT_S = 120.0
DOCKERFILES = ("Dockerfile_server", "Dockerfile_client", "Dockerfile_nginx")
# What a working checkout holds besides its tracked files; none of it belongs in an image.
PLANTED = (
    "examples/node/node_modules/zeromq/package.json",
    "examples/c/client",
    "keys/server.key_secret",
    "keys/authorized/client1.key",
    ".venv/bin/python",
    ".git/HEAD",
    "reqrep/__pycache__/server.cpython-311.pyc",
    "tests/__pycache__/support.cpython-311.pyc",
    "server-profile.txt",
)
# The probe build: the whole context into /context of an otherwise empty image.
PROBE_DOCKERFILE = "Dockerfile.context-probe"
PROBE = "FROM scratch\nCOPY . /context/\n"
# Sent whatever .dockerignore says (the engine needs them), not copied by the project's builds.
BUILD_FILES = {".dockerignore", PROBE_DOCKERFILE}


def copy_sources(dockerfile: str) -> set[str]:
    """The sources of a Dockerfile's COPY lines (flags and the destination left out)."""
    sources: set[str] = set()
    for line in (PROJECT_DIR / dockerfile).read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            sources.update(word for word in words[1:-1] if not word.startswith("--"))
    return sources


def expected_context() -> set[str]:
    """Every tracked file that is a COPY source or inside one."""
    sources = set().union(*(copy_sources(name) for name in DOCKERFILES))
    return {
        path
        for path in tracked_files()
        if any(path == source or path.startswith(f"{source}/") for source in sources)
    }


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files, the working tree's versions, and the planted ones."""
    root = fresh_checkout(tmp_path_factory.mktemp("context"))
    for path in PLANTED:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("planted\n")
    (root / PROBE_DOCKERFILE).write_text(PROBE)
    return root


def image_files(image: str) -> set[str]:
    """The regular files under /context in an image, by exporting a container of it."""
    container = docker("create", image, "/none").strip()
    try:
        exported = subprocess.run(
            ["docker", "export", container],
            capture_output=True,
            timeout=BUILD_TIMEOUT_S,
            check=True,
        ).stdout
    finally:
        docker_unchecked("rm", "-f", container)
    with tarfile.open(fileobj=io.BytesIO(exported)) as archive:
        return {
            member.name.removeprefix("context/")
            for member in archive.getmembers()
            if member.isfile() and member.name.startswith("context/")
        }


@pytest.fixture
def image_name(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"reqrep-context-probe-{os.getpid()}-{request.node.callspec.id}"
    yield name
    docker_unchecked("rmi", "-f", name)


def build_with_docker(checkout: Path, image: str) -> None:
    build = ["docker", "build", "-q", "-f", PROBE_DOCKERFILE, "-t", image, "."]
    run(build, BUILD_TIMEOUT_S, cwd=checkout)


def build_with_compose(checkout: Path, image: str) -> None:
    compose_file = checkout / "docker-compose.context-probe.yml"
    compose_file.write_text(
        f"services:\n  probe:\n    image: {image}\n"
        f"    build:\n      context: .\n      dockerfile: {PROBE_DOCKERFILE}\n"
    )
    env = {**os.environ, "COMPOSE_PROJECT_NAME": image, "COMPOSE_FILE": str(compose_file)}
    run([*compose_command(), "build", "probe"], BUILD_TIMEOUT_S, env=env, cwd=checkout)


@pytest.mark.parametrize(
    "build", [build_with_docker, build_with_compose], ids=["docker", "compose"]
)
def test_the_context_is_exactly_what_the_dockerfiles_copy(
    build: Callable[[Path, str], None], checkout: Path, image_name: str
) -> None:
    build(checkout, image_name)
    sent = image_files(image_name) - BUILD_FILES
    assert sent == expected_context()
