"""Shared fixtures: real ZeroMQ sockets on 127.0.0.1, owned and closed by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest
import zmq
import zmq.asyncio

from client import Client, ClientConfig
from server import Server, ServerConfig

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


class RunningServer:
    """A Server serving in a task of the test's event loop."""

    def __init__(self, server: Server, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.server = server
        self.task = task
        self.stop_event = stop

    @property
    def endpoint(self) -> str:
        return self.server.endpoints[0]

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(asyncio.shield(self.task), STOP_TIMEOUT_S)


@pytest.fixture
async def start_server(context: zmq.asyncio.Context) -> AsyncIterator[Callable[..., Any]]:
    """``await start_server(work_ms=100, ...)``: a server on a random loopback port."""
    running: list[RunningServer] = []

    async def start(**overrides: Any) -> RunningServer:
        config = replace(ServerConfig(bind=(LOOPBACK,), name="test-replica"), **overrides)
        server = Server(config, context)
        server.bind()
        stop = asyncio.Event()
        task = asyncio.create_task(server.serve(stop))
        handle = RunningServer(server, task, stop)
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
