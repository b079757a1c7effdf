"""The Node.js and C example clients, and docs/protocol.md's envelope claims, against real servers.

The examples are installed into their own directories (``npm ci``, ``make``)
once per run, bounded in time, and skipped with the reason where node/npm or
a C compiler with libzmq's headers are missing; ``npm ci`` must print no
warning. Each client answers ``--help`` and refuses an unknown option, then
runs as a subprocess against a real replica (``server.py`` started here, ready
once it answers a ping) and through nginx (``LocalStack``), and against
nothing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from reqrep import protocol
from reqrep.stack import LocalStack, free_port
from tests.support import PROJECT_DIR, needs_nginx, run, seed_lines

NODE_DIR = PROJECT_DIR / "examples" / "node"
C_DIR = PROJECT_DIR / "examples" / "c"
INSTALL_TIMEOUT_S = 180.0
READY_TIMEOUT_S = 10.0
REPLICA = b"replica-1"  # what LocalStack names its one replica
REPLY_TIMEOUT_S = 5.0
RUN_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
# The clients' Lazy Pirate defaults: 3 tries of 2500 ms each.
DEFAULT_TRIES = 3
DEFAULT_TIMEOUT_S = 2.5
# Start-up and exit of a client, on top of its waiting for replies.
SLACK_S = 5.0
# Settings of the caller's that would change what the clients do.
CLIENT_ENV = ("SERVER_CONNECT", "CLIENT_REQUESTS", "CLIENT_TIMEOUT_MS", "CLIENT_TRIES")
MISSING_ADDRESS = b"missing address: 1 frame, expected address and data"


# --- the example clients, installed once per run -----------------------------------


@dataclass(frozen=True)
class NodeInstall:
    """The Node.js client's command line, and what ``npm ci`` printed installing it."""

    command: list[str]
    output: str


@pytest.fixture(scope="module")
def node_install() -> NodeInstall:
    """``npm ci`` in examples/node, as its README says."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node.js example (apt-get install nodejs npm)")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    major = version.strip().lstrip("v").split(".")[0]
    if not major.isdigit() or int(major) < 18:
        pytest.skip(f"the Node.js example needs Node 18+, this is {version.strip()!r}")
    done = subprocess.run(
        [npm, "ci"],
        cwd=NODE_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"npm ci failed ({done.returncode}):\n{output}"
    return NodeInstall([node, str(NODE_DIR / "client.mjs")], output)


@pytest.fixture(scope="module")
def node_client(node_install: NodeInstall) -> list[str]:
    """The Node.js client's command line, after ``npm ci`` in examples/node."""
    return node_install.command


@pytest.fixture(scope="module")
def c_client() -> list[str]:
    """The C client's command line, after ``make`` in examples/c."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    make = shutil.which("make")
    if compiler is None or make is None:
        pytest.skip("a C compiler and make are needed for the C example (apt-get install gcc make)")
    probe = subprocess.run(
        [compiler, "-fsyntax-only", "-x", "c", "-"],
        input="#include <zmq.h>\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("libzmq's headers (zmq.h) are missing (apt-get install libzmq3-dev)")
    run([make, "-B"], INSTALL_TIMEOUT_S, cwd=C_DIR)
    return [str(C_DIR / "client")]


@pytest.fixture(params=["node", "c"])
def example(request: pytest.FixtureRequest) -> list[str]:
    """Each example client's command line in turn."""
    command: list[str] = request.getfixturevalue(f"{request.param}_client")
    return command


@dataclass(frozen=True)
class Run:
    status: int
    stdout: list[str]
    stderr: str
    seconds: float

    def __str__(self) -> str:
        return f"exit {self.status}; stdout {self.stdout}; stderr {self.stderr!r}"


async def run_example(command: Sequence[str], *args: str) -> Run:
    """Run an example client to completion, bounded by RUN_TIMEOUT_S."""
    env = {name: value for name, value in os.environ.items() if name not in CLIENT_ENV}
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *command,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    if process.returncode is None:  # pragma: no cover - waited for above
        raise RuntimeError(f"{command} did not exit")
    seconds = time.monotonic() - started
    return Run(process.returncode, stdout.decode().splitlines(), stderr.decode(), seconds)


# --- a real replica: server.py in a subprocess ------------------------------------


async def _ping(context: zmq.asyncio.Context, endpoint: str) -> list[bytes]:
    """One valid request on a REQ socket; the reply's frames (waits until the server is up)."""
    with context.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        await sock.send_multipart(protocol.encode_request("test-examples", b"ping"))
        return await sock.recv_multipart()


@contextlib.asynccontextmanager
async def replica(context: zmq.asyncio.Context) -> AsyncIterator[str]:
    """``server.py`` on a free loopback port (``LocalStack``), answering; yields its endpoint."""
    async with LocalStack(1, nginx=False) as stack:
        (endpoint,) = stack.endpoints
        ping = await asyncio.wait_for(_ping(context, endpoint), READY_TIMEOUT_S)
        assert ping == protocol.ok_reply(REPLICA)
        yield endpoint


# --- installing and asking for help -------------------------------------------------


def test_npm_ci_installs_without_a_warning(node_install: NodeInstall) -> None:
    """zeromq's install script is approved in package.json (``allowScripts``), so npm 11
    does not warn that it ran unreviewed (and npm 12 does not skip it)."""
    warnings = [
        line for line in node_install.output.splitlines() if line.lower().startswith("npm warn")
    ]
    assert warnings == [], node_install.output


FLAGS = ("--connect", "--requests", "--timeout-ms", "--tries")


async def test_example_help(example: list[str]) -> None:
    """``--help``: usage, every flag with its environment variable, on stdout; exit 0."""
    run = await run_example(example, "--help")
    assert run.status == 0, str(run)
    assert run.stderr == "", str(run)
    assert run.stdout[0].startswith("usage: "), str(run)
    text = "\n".join(run.stdout)
    for name in (*FLAGS, *CLIENT_ENV):
        assert name in text, str(run)


async def test_example_rejects_an_unknown_option(example: list[str]) -> None:
    run = await run_example(example, "--no-such-option")
    assert run.status == 2, str(run)
    assert run.stdout == [], str(run)
    assert run.stderr.splitlines()[-1].startswith("usage: "), str(run)


# --- the examples against a replica, through nginx, and against nothing ----------


def assert_seed_output(run: Run) -> None:
    """The seed's 10 request/response pairs, request 2 refused, and exit 0."""
    assert run.stdout == seed_lines(10), str(run)
    assert run.status == 0, str(run)


async def test_example_against_a_replica(example: list[str], context: zmq.asyncio.Context) -> None:
    async with replica(context) as endpoint:
        run = await run_example(example, "--connect", endpoint)
    assert_seed_output(run)
    assert run.stderr == ""


@pytest.mark.nginx
@needs_nginx
async def test_example_through_nginx(example: list[str]) -> None:
    async with LocalStack(2, nginx=True) as stack:
        (endpoint,) = stack.endpoints
        run = await run_example(example, "--connect", endpoint)
    assert_seed_output(run)
    assert run.stderr == ""


MOODY_HANDLER = """
import time

def moody(request):
    if request.data.endswith(b"0"):
        raise ValueError("no such key: 0")
    if request.data.endswith(b"1"):
        time.sleep(0.2)  # past --handler-timeout-ms
    return request.data
"""


async def test_example_reads_all_four_statuses(example: list[str], tmp_path: Path) -> None:
    """Against a handler that raises and runs out of time, the example prints each status of
    docs/protocol.md as it prints the seed's two, and counts the requests answered."""
    (tmp_path / "moody.py").write_text(MOODY_HANDLER)
    server_args = ["--handler", "moody:moody", "--app-dir", str(tmp_path)]
    server_args += ["--handler-timeout-ms", "50"]
    async with LocalStack(1, nginx=False, server_args=server_args) as stack:
        run = await run_example(example, "--connect", stack.endpoints[0], "--requests", "4")
    assert run.status == 0, str(run)
    assert [line for line in run.stdout if line.startswith("Received")] == [
        "Received response: Server error",
        "Received response: Server timeout",
        "Received response: Invalid message",
        "Received response: Server response",
    ]


async def test_example_without_a_server_fails_clearly(example: list[str]) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    run = await run_example(example, "--connect", endpoint)
    message = f"error: server at {endpoint} did not answer request 0 after 3 tries"
    assert run.status == 1, str(run)
    assert run.stdout == ["Sending request: 0"], str(run)
    assert run.stderr.splitlines() == [message], str(run)
    waited_s = DEFAULT_TRIES * DEFAULT_TIMEOUT_S
    assert waited_s <= run.seconds < waited_s + SLACK_S, str(run)


async def answer(router: zmq.asyncio.Socket, frames: list[bytes]) -> None:
    """Answer a routed request as a replica would."""
    envelope, request = protocol.split_envelope(frames)
    reply, _ = protocol.respond(request, b"fake-replica")
    await asyncio.wait_for(router.send_multipart(envelope + reply), REPLY_TIMEOUT_S)


async def test_example_retries_on_a_fresh_socket(
    example: list[str], context: zmq.asyncio.Context
) -> None:
    """Lazy Pirate: an unanswered request is sent again from a new connection."""
    with context.socket(zmq.ROUTER) as router:
        router.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        client = asyncio.ensure_future(
            run_example(
                example,
                "--connect",
                f"tcp://127.0.0.1:{port}",
                "--timeout-ms",
                "500",
                "--requests",
                "3",
            )
        )
        try:
            ignored = await asyncio.wait_for(router.recv_multipart(), REPLY_TIMEOUT_S)
            retried = await asyncio.wait_for(router.recv_multipart(), REPLY_TIMEOUT_S)
            await answer(router, retried)
            for _ in range(2):  # requests 1 and 2
                await answer(
                    router, await asyncio.wait_for(router.recv_multipart(), REPLY_TIMEOUT_S)
                )
            run = await asyncio.wait_for(client, RUN_TIMEOUT_S)
        finally:
            if not client.done():
                client.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(client, STOP_TIMEOUT_S)
    assert retried[1:] == ignored[1:], "the retry is not the same request"
    assert retried[0] != ignored[0], "the retry came on the same connection, not a fresh socket"
    assert run.stdout == seed_lines(3), str(run)
    assert run.status == 0, str(run)


# --- the spec's envelope claims, with pyzmq sockets, against a real replica -------


async def exchange(sock: zmq.asyncio.Socket, frames: Sequence[bytes]) -> list[bytes]:
    await asyncio.wait_for(sock.send_multipart(frames), REPLY_TIMEOUT_S)
    return await asyncio.wait_for(sock.recv_multipart(), REPLY_TIMEOUT_S)


@contextlib.contextmanager
def connected(
    context: zmq.asyncio.Context, kind: int, endpoint: str, **options: int
) -> Iterator[zmq.asyncio.Socket]:
    with context.socket(kind) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        sock.connect(endpoint)
        yield sock


async def receive_correlated(sock: zmq.asyncio.Socket) -> list[bytes]:
    """The reply to the last request on a REQ_CORRELATE socket.

    A stale reply makes the socket readable, then libzmq drops it and the
    receive fails with EAGAIN; pyzmq's asyncio receive does not wait again by
    itself, so this does, until REPLY_TIMEOUT_S.
    """
    deadline = asyncio.get_running_loop().time() + REPLY_TIMEOUT_S
    while (left_s := deadline - asyncio.get_running_loop().time()) > 0:
        if await sock.poll(int(left_s * 1000)):
            with contextlib.suppress(zmq.Again):
                return await sock.recv_multipart(zmq.NOBLOCK)
    pytest.fail(f"no reply within {REPLY_TIMEOUT_S:g} s")


async def test_req_correlate_gets_its_own_replies(
    context: zmq.asyncio.Context,
) -> None:
    """The request-id frame of ZMQ_REQ_CORRELATE is echoed, so replies are matched to requests."""
    valid = protocol.encode_request("correlated", b"data")
    async with replica(context) as endpoint:
        with connected(context, zmq.REQ, endpoint, REQ_CORRELATE=1, REQ_RELAXED=1) as sock:
            assert await exchange(sock, valid) == [b"Server response", REPLICA, b""]
            assert await exchange(sock, [b"no address"]) == [
                b"Invalid message",
                REPLICA,
                MISSING_ADDRESS,
            ]
            # Relaxed: send again without waiting; the first request's reply
            # (Server response) carries the old request id and is dropped.
            await asyncio.wait_for(sock.send_multipart(valid), REPLY_TIMEOUT_S)
            await asyncio.wait_for(sock.send_multipart([b"no address"]), REPLY_TIMEOUT_S)
            assert await receive_correlated(sock) == [
                b"Invalid message",
                REPLICA,
                MISSING_ADDRESS,
            ]


ENVELOPES = {
    "delimiter": (
        [b"", b"dealer", b"data"],
        [b"", b"Server response", REPLICA, b""],
    ),
    "delimiter, no address": (
        [b"", b"data"],
        [b"", b"Invalid message", REPLICA, MISSING_ADDRESS],
    ),
    "delimiter only": (
        [b""],
        [b"", b"Invalid message", REPLICA, b"empty message"],
    ),
    "7 hops": (
        [b"hop"] * 7 + [b"", b"dealer", b"data"],
        [b"hop"] * 7 + [b"", b"Server response", REPLICA, b""],
    ),
    "8 hops: too deep, behind the routing id alone": (
        [b"hop"] * 8 + [b"", b"dealer", b"data"],
        [
            b"Invalid message",
            REPLICA,
            b"wrong number of frames: 11, expected 2 (address, data)",
        ],
    ),
    "bare, no delimiter": (
        [b"dealer", b"data"],
        [b"Server response", REPLICA, b""],
    ),
    "bare, empty data taken as the delimiter": (
        [b"dealer", b""],
        [b"dealer", b"", b"Invalid message", REPLICA, b"empty message"],
    ),
}


async def test_dealer_envelopes(context: zmq.asyncio.Context) -> None:
    """Every DEALER row of the spec's envelope table, byte for byte."""
    async with replica(context) as endpoint:
        with connected(context, zmq.DEALER, endpoint) as sock:
            for case, (sent, expected) in ENVELOPES.items():
                assert await exchange(sock, sent) == expected, case
