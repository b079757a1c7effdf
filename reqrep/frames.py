"""Whole-message frame I/O for the server's hot path: the one place on pyzmq internals.

pyzmq's public ``send_multipart``/``recv_multipart`` combine enum flags and look
up ``RCVMORE`` per frame, and ``zmq.Socket.send`` wraps the backend's send in
checks for options this service never uses (routing_id, group). Measured with
py-spy at 32k requests/s, calling ``zmq.backend.Socket.send/recv`` with plain
int flags halves the cost of frame I/O. Those backend methods are not public
API, so this module:

- uses them only if they exist with the signature relied on (``FAST_PATH``),
- falls back to the public ``Socket.send``/``Socket.recv`` otherwise, and
- is checked by ``tests/unit/test_frames.py``: both paths give the same frames.

Re-run that test and ``bench/run.py`` when upgrading pyzmq (it is pinned).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import zmq

_NOBLOCK: Final = int(zmq.NOBLOCK)
_SNDMORE: Final = int(zmq.SNDMORE)

Receive = Callable[["zmq.Socket[Any]"], list[bytes]]
Wait = Callable[["zmq.Socket[Any]"], list[bytes]]
Send = Callable[["zmq.Socket[Any]", list[bytes]], None]
SendFrame = Callable[["zmq.Socket[Any]", bytes, int], Any]


def recv_public(sock: zmq.Socket[Any], flags: int = _NOBLOCK) -> list[bytes]:
    """One whole message via pyzmq's public API; raises ``zmq.Again`` if none (``flags`` 0:
    waits up to the socket's RCVTIMEO for the first frame)."""
    frames = [sock.recv(flags)]
    while sock.getsockopt(zmq.RCVMORE):
        frames.append(sock.recv(zmq.NOBLOCK))
    return frames


def recv_wait_public(sock: zmq.Socket[Any]) -> list[bytes]:
    """One whole message, waiting up to the socket's RCVTIMEO; raises ``zmq.Again`` if none."""
    return recv_public(sock, 0)


def send_public(sock: zmq.Socket[Any], frames: list[bytes]) -> None:
    """Send a multipart message via pyzmq's public API."""
    sock.send_multipart(frames)


def sending_or_again(send_frame: SendFrame) -> Send:
    """Queue a multipart message now, or raise ``zmq.Again`` having queued none of it: the
    first frame without blocking, the rest after it, each through ``send_frame``."""

    def send_or_again(sock: zmq.Socket[Any], frames: list[bytes]) -> None:
        last = len(frames) - 1
        send_frame(sock, frames[0], _NOBLOCK | (_SNDMORE if last else 0))
        for index in range(1, last + 1):  # once the first frame is in, the rest always is
            send_frame(sock, frames[index], _SNDMORE if index < last else 0)

    return send_or_again


def _send_frame_public(sock: zmq.Socket[Any], frame: bytes, flags: int) -> None:
    sock.send(frame, flags)


send_or_again_public: Final = sending_or_again(_send_frame_public)


def _fast_path() -> tuple[Receive, Wait, Send, Send] | None:
    backend = getattr(zmq, "backend", None)
    backend_socket = getattr(backend, "Socket", None)
    send_frame = getattr(backend_socket, "send", None)
    recv_frame = getattr(backend_socket, "recv", None)
    if send_frame is None or recv_frame is None:
        return None

    def recv_fast(sock: zmq.Socket[Any], flags: int = _NOBLOCK) -> list[bytes]:
        # (flags, copy): a Frame, whose .more needs no RCVMORE lookup. With flags 0 the first
        # frame is awaited in C, without the GIL, up to RCVTIMEO.
        frame = recv_frame(sock, flags, False)
        frames = [frame.bytes]
        while frame.more:
            frame = recv_frame(sock, _NOBLOCK, False)
            frames.append(frame.bytes)
        return frames

    def recv_wait_fast(sock: zmq.Socket[Any]) -> list[bytes]:
        return recv_fast(sock, 0)

    def send_fast(sock: zmq.Socket[Any], frames: list[bytes]) -> None:
        for frame in frames[:-1]:
            send_frame(sock, frame, _SNDMORE)
        send_frame(sock, frames[-1])

    return recv_fast, recv_wait_fast, send_fast, sending_or_again(send_frame)


_fast = _fast_path()
FAST_PATH: Final = _fast is not None

recv_now: Receive = _fast[0] if _fast is not None else recv_public
"""One whole message if one is queued; raises ``zmq.Again`` if none is."""

recv_wait: Wait = _fast[1] if _fast is not None else recv_wait_public
"""One whole message, waiting for it up to the socket's RCVTIMEO; raises ``zmq.Again`` if none."""

send_now: Send = _fast[2] if _fast is not None else send_public
"""Send a multipart message of bytes (on a ROUTER socket this never blocks)."""

send_or_again: Send = _fast[3] if _fast is not None else send_or_again_public
"""Queue a multipart message now, or raise ``zmq.Again`` having queued none of it (a DEALER
with no connection up, under ``ZMQ_IMMEDIATE``, or at its high-water mark)."""
