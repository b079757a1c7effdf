"""reqrep.frames: the fast path on pyzmq's backend and the public-API fallback agree.

Every message goes through a real ROUTER/DEALER pair over ``inproc://`` (no
network), sent by one path and received by the other, both ways round; each
must give exactly the frames that were sent, as ``bytes``. Re-run this when
upgrading pyzmq: the fast path relies on methods that are not public API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import count
from typing import Any

import pytest
import zmq

from reqrep import frames, protocol
from reqrep.stack import free_port

Sock = zmq.Socket[bytes]
RECEIVE_TIMEOUT_MS = 2000

SENDERS = {
    "send_now": frames.send_now,
    "send_public": frames.send_public,
    "send_or_again": frames.send_or_again,
    "send_or_again_public": frames.send_or_again_public,
}
RECEIVERS = {
    "recv_now": frames.recv_now,
    "recv_public": frames.recv_public,
    "recv_wait": frames.recv_wait,
    "recv_wait_public": frames.recv_wait_public,
}
MESSAGES = {
    "request": protocol.encode_request("client-1", b"hello"),
    "without-address": protocol.encode_request_without_address(b"data"),
    "one-frame": [b"x"],
    "empty-frames": [b"", b"", b""],
    "reply": protocol.ok_reply(b"replica-1"),
    "binary": [bytes(range(256)), b"\x00" * 3, b"\xff"],
    "many-frames": [str(n).encode() for n in range(40)],
    "large-frame": [b"addr", b"y" * 300_000],
}
_endpoints = count()


@pytest.fixture
def pair(sync_context: zmq.Context[Sock]) -> Iterator[tuple[Sock, Sock]]:
    """A ROUTER and a DEALER connected to it over inproc; the DEALER's routing id is b"dealer"."""
    endpoint = f"inproc://frames-{next(_endpoints)}"
    router = sync_context.socket(zmq.ROUTER)
    dealer = sync_context.socket(zmq.DEALER)
    try:
        for sock in (router, dealer):
            sock.linger = 0
            sock.rcvtimeo = RECEIVE_TIMEOUT_MS
        dealer.setsockopt(zmq.ROUTING_ID, b"dealer")
        router.bind(endpoint)
        dealer.connect(endpoint)
        yield router, dealer
    finally:
        dealer.close(linger=0)
        router.close(linger=0)


def receive(receiver: Callable[[Sock], list[bytes]], sock: Sock) -> list[bytes]:
    """What ``receiver`` reads; the non-blocking ones only once a message is queued."""
    assert sock.poll(RECEIVE_TIMEOUT_MS), "nothing arrived"
    return receiver(sock)


def test_the_pinned_pyzmq_has_the_fast_path() -> None:
    """Without it the server still works, on the public API, but at about half the speed."""
    assert frames.FAST_PATH
    assert frames.recv_now is not frames.recv_public
    assert frames.send_now is not frames.send_public
    assert frames.send_or_again is not frames.send_or_again_public


@pytest.mark.parametrize("message", MESSAGES.values(), ids=MESSAGES.keys())
@pytest.mark.parametrize("receiver", RECEIVERS.values(), ids=RECEIVERS.keys())
@pytest.mark.parametrize("sender", SENDERS.values(), ids=SENDERS.keys())
def test_every_sender_and_receiver_pair_delivers_the_same_frames(
    pair: tuple[Sock, Sock],
    sender: Callable[[Sock, list[bytes]], None],
    receiver: Callable[[Sock], list[bytes]],
    message: list[bytes],
) -> None:
    router, dealer = pair
    sender(dealer, list(message))
    received = receive(receiver, router)
    assert received == [b"dealer", *message]
    assert all(type(frame) is bytes for frame in received)
    # And back: the ROUTER routes by the first frame, the DEALER gets the rest.
    sender(router, received)
    echoed = receive(receiver, dealer)
    assert echoed == message
    assert all(type(frame) is bytes for frame in echoed)


@pytest.mark.parametrize("receiver", RECEIVERS.values(), ids=RECEIVERS.keys())
def test_receivers_raise_again_when_nothing_is_queued(
    pair: tuple[Sock, Sock], receiver: Callable[[Sock], list[bytes]]
) -> None:
    router, _ = pair
    router.rcvtimeo = 10  # the waiting receivers give up after this
    with pytest.raises(zmq.Again):
        receiver(router)


def test_fast_and_public_paths_keep_message_boundaries_in_a_burst(
    pair: tuple[Sock, Sock],
) -> None:
    """Many messages queued at once, sent alternately by both paths: read back one by one."""
    router, dealer = pair
    burst = list(MESSAGES.values()) * 5
    for number, message in enumerate(burst):
        (frames.send_now if number % 2 else frames.send_public)(dealer, list(message))
    readers: list[Callable[[Any], list[bytes]]] = list(RECEIVERS.values())
    received = [receive(readers[n % len(readers)], router) for n in range(len(burst))]
    assert received == [[b"dealer", *message] for message in burst]


@pytest.mark.parametrize(
    "sender", [frames.send_or_again, frames.send_or_again_public], ids=["fast", "public"]
)
def test_send_or_again_queues_nothing_when_it_cannot_queue_all(
    sync_context: zmq.Context[Sock], sender: Callable[[Sock, list[bytes]], None]
) -> None:
    """A DEALER with ZMQ_IMMEDIATE and no connection up: zmq.Again, and no frame left
    half-sent (the next message goes out whole once a peer is there). Over loopback TCP:
    inproc queues for a peer that is not there yet."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    dealer = sync_context.socket(zmq.DEALER)
    router = sync_context.socket(zmq.ROUTER)
    try:
        for sock in (router, dealer):
            sock.linger = 0
            sock.rcvtimeo = RECEIVE_TIMEOUT_MS
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        dealer.setsockopt(zmq.ROUTING_ID, b"dealer")
        dealer.connect(endpoint)
        with pytest.raises(zmq.Again):
            sender(dealer, [b"first", b"", b"lost"])
        router.bind(endpoint)
        assert dealer.poll(RECEIVE_TIMEOUT_MS, zmq.POLLOUT)
        sender(dealer, [b"second", b"", b"kept"])
        assert receive(frames.recv_public, router) == [b"dealer", b"second", b"", b"kept"]
    finally:
        dealer.close(linger=0)
        router.close(linger=0)
