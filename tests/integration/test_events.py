"""reqrep.events with real sockets: a client that got no reply says why, from what ZeroMQ's
monitor saw (the CURVE and ZAP cases are in test_security.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import zmq
import zmq.asyncio

from reqrep import protocol
from reqrep.client import Client
from reqrep.errors import ConnectFailed, HandshakeFailed, RequestTimeout
from reqrep.stack import LocalStack, free_port
from tests.support import needs_nginx, silent_router

TIMEOUT_S = 15.0


async def no_reply(client: Client, frames: list[bytes] | None = None) -> RequestTimeout:
    request = frames or protocol.encode_request("c", b"x")
    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(RequestTimeout) as raised:
            await client.request(request, "1")
    return raised.value


async def test_a_host_that_does_not_resolve_is_named(make_client: Callable[..., Client]) -> None:
    client = make_client(["tcp://no-such-host.invalid:5555"], timeout_ms=300, tries=1)
    error = await no_reply(client)
    assert isinstance(error, ConnectFailed)
    assert error.reason == "host 'no-such-host.invalid' does not resolve"


async def test_a_port_nothing_listens_on_is_a_refused_connection(
    make_client: Callable[..., Client],
) -> None:
    client = make_client([f"tcp://127.0.0.1:{free_port()}"], timeout_ms=300, tries=2)
    error = await no_reply(client)
    assert isinstance(error, ConnectFailed)
    assert error.reason.startswith("nothing accepted the connection")


async def test_a_silent_server_is_a_plain_timeout(
    make_client: Callable[..., Client], context: zmq.asyncio.Context
) -> None:
    async with silent_router(context) as router:
        error = await no_reply(make_client([router.endpoint], timeout_ms=300, tries=2))
    assert type(error) is RequestTimeout
    assert error.reason == "connected, but no reply came in time (the server may be busy or gone)"


async def test_a_frame_over_the_servers_limit_is_named(
    start_server: Callable[..., Any], make_client: Callable[..., Client]
) -> None:
    """libzmq drops the connection of a peer that sends a frame over MAXMSGSIZE, unanswered."""
    server = await start_server(max_message_bytes=1000)
    client = make_client([server.endpoint], timeout_ms=300, tries=2)
    error = await no_reply(client, protocol.encode_request("c", b"x" * 5000))
    assert type(error) is RequestTimeout
    assert "frame over its size limit (--max-message-bytes)" in error.reason
    assert (await client.request(protocol.encode_request("c", b"small"))).ok  # and it goes on


@pytest.mark.nginx
@needs_nginx
async def test_nginx_with_no_replica_behind_it_is_named(
    make_client: Callable[..., Client],
) -> None:
    async with LocalStack(1, nginx=True) as stack:
        await stack.stop_replica(stack.replicas[0])
        error = await no_reply(make_client(stack.endpoints, timeout_ms=300, tries=2))
    assert isinstance(error, HandshakeFailed)  # nginx closes it during the handshake
    assert "a proxy (nginx) that reaches no server" in error.reason
