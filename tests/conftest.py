"""Fixtures for every test: real ZeroMQ sockets on 127.0.0.1, owned and closed by the tests.

Helpers that are not fixtures live in tests/support.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest
import zmq
import zmq.asyncio

from reqrep.client import Client
from reqrep.config import ClientConfig, ServerConfig
from reqrep.handlers import Handler
from reqrep.server import Server
from tests.support import LOOPBACK, RunningServer, terminate


@pytest.fixture
def context() -> Iterator[zmq.asyncio.Context]:
    ctx = zmq.asyncio.Context()
    yield ctx
    terminate(ctx)


@pytest.fixture
def sync_context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    terminate(ctx)


@pytest.fixture
async def start_server(context: zmq.asyncio.Context) -> AsyncIterator[Callable[..., Any]]:
    """``await start_server(handler, work_ms=100, ...)``: a server on a random loopback port."""
    running: list[RunningServer] = []

    async def start(handler: Handler | None = None, **overrides: Any) -> RunningServer:
        config = replace(ServerConfig(bind=(LOOPBACK,), name="test-replica"), **overrides)
        server = Server(handler, config, context=context)
        await server.start()
        handle = RunningServer(server)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        with contextlib.suppress(Exception):
            await handle.stop()


@pytest.fixture
def make_client(context: zmq.asyncio.Context) -> Iterator[Callable[..., Client]]:
    """``make_client(endpoints, timeout_ms=..., tries=...)``: closed after the test."""
    clients: list[Client] = []

    def make(endpoints: Sequence[str], **overrides: Any) -> Client:
        config = replace(ClientConfig(endpoints=tuple(endpoints)), **overrides)
        client = Client(config, context)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
