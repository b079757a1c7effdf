"""The request/reply protocol: pure functions over ``list[bytes]``, no I/O.

A *request* is a multipart message of exactly two frames, as the client's REQ
socket sends it (REQ adds the empty delimiter frame, ROUTER adds the peer's
routing id in front of that; both are stripped before parsing):

    frame 0  address   who the request is from: 1..256 bytes of UTF-8
    frame 1  data      the payload: any bytes (may be empty)

A request is *malformed* when it has no address (a single frame), an empty
address, any other frame count, an address that is not UTF-8 or longer than
256 bytes, or when it is larger than the server's message size limit.

A *reply* has exactly three frames:

    frame 0  status    one of STATUSES (below)
    frame 1  replica   the name of the server replica that answered
    frame 2  body      ``Server response``: what the server's handler returned (empty with
                       the default handler); any other status: why, as UTF-8 text

    Server response    the request was handled; the body is the handler's answer
    Invalid message    the request broke the rules above (the caller's fault)
    Server error       the handler raised (the server's fault); "Type: message"
    Server timeout     the handler did not finish within the server's time for it

Server, clients, run_clients and the benchmarks share this module; the socket
loops around it stay thin. The exceptions are in ``reqrep.errors``. docs/protocol.md
is the specification, with the bytes on the wire.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from reqrep.errors import (
    InvalidRequest,
    MalformedReply,
    MalformedRequest,
    ReplyError,
    ServerError,
    ServerTimeout,
)

SERVER_RESPONSE: Final = b"Server response"
INVALID_MESSAGE: Final = b"Invalid message"
SERVER_ERROR: Final = b"Server error"
SERVER_TIMEOUT: Final = b"Server timeout"
STATUSES: Final = (SERVER_RESPONSE, INVALID_MESSAGE, SERVER_ERROR, SERVER_TIMEOUT)
# The same statuses as text, as ``Reply.status`` and the reports carry them.
SERVER_RESPONSE_TEXT: Final = SERVER_RESPONSE.decode()
INVALID_MESSAGE_TEXT: Final = INVALID_MESSAGE.decode()
SERVER_ERROR_TEXT: Final = SERVER_ERROR.decode()
SERVER_TIMEOUT_TEXT: Final = SERVER_TIMEOUT.decode()

REQUEST_FRAMES: Final = 2
REPLY_FRAMES: Final = 3
MAX_ADDRESS_BYTES: Final = 256
DEFAULT_MAX_MESSAGE_BYTES: Final = 1024 * 1024
# A failure's detail is cut to this many bytes: a reply says what went wrong, not all of it.
MAX_DETAIL_BYTES: Final = 1024
# A ROUTER socket sees [routing id(s)..., b"", request frames...]. Behind
# proxies there may be a few routing ids; more than this is not an envelope.
MAX_ROUTING_FRAMES: Final = 8


# Why a request got ``Invalid message``, as a fixed set of kinds (metrics label
# by kind; the reply carries the reason's text, which has sizes and counts in it).
TOO_LARGE: Final = "too_large"
EMPTY_MESSAGE: Final = "empty_message"
MISSING_ADDRESS: Final = "missing_address"
FRAME_COUNT: Final = "frame_count"
EMPTY_ADDRESS: Final = "empty_address"
ADDRESS_TOO_LONG: Final = "address_too_long"
ADDRESS_NOT_UTF8: Final = "address_not_utf8"
FAULT_KINDS: Final = (
    TOO_LARGE,
    EMPTY_MESSAGE,
    MISSING_ADDRESS,
    FRAME_COUNT,
    EMPTY_ADDRESS,
    ADDRESS_TOO_LONG,
    ADDRESS_NOT_UTF8,
)


@dataclass(frozen=True, slots=True)
class Fault:
    """Why a request is malformed: ``kind`` one of FAULT_KINDS, ``reason`` the reply's text."""

    kind: str
    reason: str


class Request(NamedTuple):
    """A well-formed request, as a server's handler is given it (immutable).

    ``address`` and ``data`` are the two frames. The server adds where it came from
    and how long the handler has: ``replica`` (this replica's name), ``peer`` (the id
    of the connection it came on, hex; empty in REP mode) and ``deadline`` (a
    ``time.monotonic()`` value, after which the request is answered ``Server timeout``).
    A named tuple rather than a frozen dataclass: one is made per request, and a tuple
    is made in half the time.
    """

    address: str
    data: bytes
    replica: str = ""
    peer: str = ""
    deadline: float = math.inf

    @property
    def time_left_s(self) -> float:
        """Seconds until the server's deadline for this request (negative once past it)."""
        return self.deadline - time.monotonic()


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply: its status, the replica that sent it, and its body (the handler's bytes,
    or for a failure the reason as UTF-8 text)."""

    status: str
    replica: str
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status == SERVER_RESPONSE_TEXT

    @property
    def detail(self) -> str:
        """The body as text: why a request failed (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")


def message_size(frames: Sequence[bytes]) -> int:
    return sum(map(len, frames))


def encode_request(address: str, data: bytes) -> list[bytes]:
    """The two frames of a well-formed request."""
    return [address.encode("utf-8"), data]


def encode_request_without_address(data: bytes) -> list[bytes]:
    """The seed's deliberately malformed request: the data, no address."""
    return [data]


def request_fault(
    frames: Sequence[bytes], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Fault | None:
    """Why a request's frames are malformed, or None if they are a request."""
    size = message_size(frames)
    if size > max_message_bytes:
        return Fault(
            TOO_LARGE, f"message of {size} bytes exceeds the {max_message_bytes}-byte limit"
        )
    if len(frames) == 0:
        return Fault(EMPTY_MESSAGE, "empty message")
    if len(frames) == 1:
        return Fault(MISSING_ADDRESS, "missing address: 1 frame, expected address and data")
    if len(frames) != REQUEST_FRAMES:
        return Fault(
            FRAME_COUNT, f"wrong number of frames: {len(frames)}, expected 2 (address, data)"
        )
    raw_address = frames[0]
    if not raw_address:
        return Fault(EMPTY_ADDRESS, "empty address")
    if len(raw_address) > MAX_ADDRESS_BYTES:
        return Fault(
            ADDRESS_TOO_LONG, f"address of {len(raw_address)} bytes exceeds {MAX_ADDRESS_BYTES}"
        )
    try:
        bytes(raw_address).decode("utf-8")
    except UnicodeDecodeError:
        return Fault(ADDRESS_NOT_UTF8, "address is not valid UTF-8")
    return None


def parse_request(
    frames: Sequence[bytes], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Request:
    """Validate a request's frames; raise ``MalformedRequest`` with a reason."""
    fault = request_fault(frames, max_message_bytes)
    if fault is not None:
        raise MalformedRequest(fault)
    return Request(address=bytes(frames[0]).decode("utf-8"), data=bytes(frames[1]))


def ok_reply(replica: bytes, body: bytes = b"") -> list[bytes]:
    return [SERVER_RESPONSE, replica, body]


def invalid_reply(replica: bytes, reason: str) -> list[bytes]:
    return [INVALID_MESSAGE, replica, reason.encode("utf-8")]


def describe_error(error: BaseException) -> str:
    """What a ``Server error`` reply says of an exception: its type and message, no traceback."""
    name = type(error).__name__
    message = str(error)
    return f"{name}: {message}" if message else name


def error_reply(replica: bytes, error: BaseException) -> list[bytes]:
    """``Server error``: the handler raised ``error``."""
    return [SERVER_ERROR, replica, _detail(describe_error(error))]


def timeout_reply(replica: bytes, timeout_ms: float) -> list[bytes]:
    """``Server timeout``: the handler did not finish within ``timeout_ms``."""
    return [SERVER_TIMEOUT, replica, f"handler did not finish within {timeout_ms:g} ms".encode()]


def _detail(text: str) -> bytes:
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= MAX_DETAIL_BYTES:
        return encoded
    return encoded[: MAX_DETAIL_BYTES - 3].decode("utf-8", errors="ignore").encode() + b"..."


_STATUS_TEXT: Final = {status: status.decode() for status in STATUSES}


def parse_reply(frames: Sequence[bytes]) -> Reply:
    """Decode a reply's frames; raise ``MalformedReply`` if it is not one."""
    if len(frames) != REPLY_FRAMES:
        raise MalformedReply(f"wrong number of frames: {len(frames)}, expected 3")
    status, replica, body = frames
    text = _STATUS_TEXT.get(bytes(status))
    if text is None:
        raise MalformedReply(f"unknown status {bytes(status)[:40]!r}")
    try:
        return Reply(text, bytes(replica).decode("utf-8"), bytes(body))
    except UnicodeDecodeError:
        raise MalformedReply("replica name is not valid UTF-8") from None


_FAILURES: Final[dict[str, type[ReplyError]]] = {
    INVALID_MESSAGE_TEXT: InvalidRequest,
    SERVER_ERROR_TEXT: ServerError,
    SERVER_TIMEOUT_TEXT: ServerTimeout,
}


def body_of(reply: Reply) -> bytes:
    """The body of a ``Server response``; for any other status, raise its ``ReplyError``."""
    if reply.ok:
        return reply.body
    raise _FAILURES[reply.status](reply)


def split_envelope(frames: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split what a ROUTER socket received into (routing envelope, request).

    The envelope is the routing id(s) up to and including the empty delimiter
    that a REQ peer sends; the reply must be sent back behind the same
    envelope. A peer that sent no delimiter (a bare DEALER) gets its reply
    behind its routing id alone, so it too hears why its message was refused.
    """
    if len(frames) > 1 and not frames[1]:  # the usual case: one routing id
        return [frames[0], frames[1]], list(frames[2:])
    for index in range(2, min(len(frames), MAX_ROUTING_FRAMES + 1)):
        if not frames[index]:
            return list(frames[: index + 1]), list(frames[index + 1 :])
    return list(frames[:1]), list(frames[1:])


def respond(
    frames: Sequence[bytes], replica: bytes, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> tuple[list[bytes], Fault | None]:
    """The default handler's reply to a request's frames (an empty body), and its fault if it
    was malformed, without building a ``Request``."""
    fault = request_fault(frames, max_message_bytes)
    if fault is not None:
        return invalid_reply(replica, fault.reason), fault
    return ok_reply(replica), None
