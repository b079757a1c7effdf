"""examples/handlers/ served for real: replicas started by LocalStack (``python -m reqrep server
--handler ...``, as ``run_clients.py --local`` starts them) from the project directory, called
with the library's ``Client`` and ``Channel``.

- echo: found as ``examples.handlers.echo:echo`` (and ``:echo_async``) from the project
  directory, the replicas' working directory, and as ``echo:echo`` with
  ``PYTHONPATH=examples/handlers``; any data comes back byte for byte;
- kv, with ``--threads 4``: callers at once on one channel (their requests in flight together
  on its connection) each set, read and delete keys of their own, and every request is
  answered with what was stored; a missing key and a bad command are ``Server error`` naming
  the exception; what was stored is still there after the replica is stopped and started
  again (the SQLite file stays);
- hashing: the digest after ``HASH_ROUNDS`` rounds, computed here on its own; a bad
  ``HASH_ROUNDS`` ends the server at once with one line, exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path

import pytest

from reqrep import Channel, ChannelConfig, Client, ClientConfig, ServerError
from reqrep.stack import LocalStack, Replica, free_port
from tests.support import PROJECT_DIR, run_entry_point, wait_for_log

# A try per request, each this long: a handler test wants no retry to hide a lost reply.
TIMEOUT_MS = 5000
LOG_TIMEOUT_S = 10.0
ECHOED = [b"", b"hello", bytes(range(256)), b"x" * 100_000]
KV = "examples.handlers.kv:handle"
KV_CALLERS = 8
KV_ROUNDS = 5
HASHING = "examples.handlers.hashing:stretch"
HASH_ROUNDS = 2000  # the example's default


@pytest.fixture(autouse=True)
def in_project_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replicas start here, as they do from ``python3 run_clients.py --local``."""
    monkeypatch.chdir(PROJECT_DIR)


@contextlib.asynccontextmanager
async def serving(
    spec: str, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[LocalStack]:
    """One replica running the handler ``spec``; ``env`` added to this process's."""
    server_args = ["--handler", spec, *args]
    async with LocalStack(
        1, nginx=False, server_args=server_args, env={**os.environ, **(env or {})}
    ) as stack:
        yield stack


def client_config(endpoints: Sequence[str]) -> ClientConfig:
    return ClientConfig(endpoints=tuple(endpoints), timeout_ms=TIMEOUT_MS, tries=1)


def channel_config(endpoints: Sequence[str]) -> ChannelConfig:
    return ChannelConfig(endpoints=tuple(endpoints), timeout_ms=TIMEOUT_MS, tries=1)


# --- echo ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "env"),
    [
        ("examples.handlers.echo:echo", {}),
        ("examples.handlers.echo:echo_async", {}),
        ("echo:echo", {"PYTHONPATH": "examples/handlers"}),
    ],
)
async def test_echo_gives_any_data_back(spec: str, env: dict[str, str]) -> None:
    async with serving(spec, env=env) as stack, Client(client_config(stack.endpoints)) as client:
        for data in ECHOED:
            assert await client.call(data) == data


# --- kv -----------------------------------------------------------------------------


async def kv_caller(channel: Channel, number: int) -> int:
    """Set and read a key of its own, a few rounds, then delete it; returns how many of its
    requests were answered."""
    key = f"key-{number}".encode()
    answered = 0

    async def call(data: bytes) -> bytes:
        nonlocal answered
        reply = await channel.call(data)
        answered += 1
        return reply

    for round_ in range(KV_ROUNDS):
        value = f"value {number}/{round_}".encode()
        assert await call(b"SET %s %s" % (key, value)) == b"OK"
        assert await call(b"GET %s" % key) == value
    assert await call(b"DEL %s" % key) == b"1"
    return answered


def kv_in_threads_logged(replica: Replica) -> Awaitable[None]:
    """Until the replica logs that it serves the kv handler in 4 threads."""
    return asyncio.wait_for(wait_for_log(replica, f"(handler={KV}, threads=4,"), LOG_TIMEOUT_S)


async def test_kv_in_threads_answers_every_caller_at_once(tmp_path: Path) -> None:
    env = {"KV_PATH": str(tmp_path / "kv.sqlite3")}
    async with serving(KV, "--threads", "4", env=env) as stack:
        await kv_in_threads_logged(stack.replicas[0])
        async with Channel(channel_config(stack.endpoints)) as channel:
            answered = await asyncio.gather(*(kv_caller(channel, i) for i in range(KV_CALLERS)))
    assert sum(answered) == KV_CALLERS * (2 * KV_ROUNDS + 1)


async def test_kv_keeps_values_across_requests_and_a_restart_and_names_its_errors(
    tmp_path: Path,
) -> None:
    env = {"KV_PATH": str(tmp_path / "kv.sqlite3")}
    async with serving(KV, "--threads", "4", env=env) as stack:
        async with Client(client_config(stack.endpoints)) as client:
            assert await client.call(b"SET greeting hello, world") == b"OK"
            assert await client.call(b"SET gone soon") == b"OK"
            assert await client.call(b"DEL gone") == b"1"
            assert await client.call(b"DEL gone") == b"0"
            errors = {
                b"GET gone": "NoSuchKey: no such key: gone",
                b"PUT key value": "BadCommand: unknown command b'PUT': expected SET, GET or DEL",
                b"GET": "BadCommand: expected SET key value, GET key or DEL key, not b'GET'",
            }
            for data, detail in errors.items():
                with pytest.raises(ServerError) as failure:
                    await client.call(data)
                assert failure.value.reply.detail == detail
        assert await stack.stop_replica(stack.replicas[0]) == 0
        restarted = await stack.start_replica("replica-1")
        async with Client(client_config([restarted.endpoint])) as client:
            assert await client.call(b"GET greeting") == b"hello, world"
            with pytest.raises(ServerError, match="no such key: gone"):
                await client.call(b"GET gone")


# --- hashing ------------------------------------------------------------------------


def stretched(data: bytes, rounds: int) -> bytes:
    """What the example should answer: SHA-256 ``rounds`` times, the hex of the last."""
    digest = data
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex().encode()


async def test_hashing_answers_the_digest_after_its_rounds() -> None:
    data = [b"", b"abc", os.urandom(5000), *(b"%d" % i for i in range(20))]
    async with serving(HASHING) as stack, Channel(channel_config(stack.endpoints)) as channel:
        digests = await asyncio.gather(*(channel.call(item) for item in data))
    assert digests == [stretched(item, HASH_ROUNDS) for item in data]


def test_hashing_with_a_bad_round_count_ends_the_server_with_one_line() -> None:
    bind = f"tcp://127.0.0.1:{free_port()}"
    done = run_entry_point(
        "server.py", "--handler", HASHING, "--bind", bind, env={"HASH_ROUNDS": "many"}
    )
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.endswith("HASH_ROUNDS must be a whole number of rounds, at least 1: 'many'")
