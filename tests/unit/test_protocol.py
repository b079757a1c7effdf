"""The pure protocol: no sockets."""

from __future__ import annotations

import time

import pytest

from reqrep import protocol
from reqrep.errors import (
    InvalidRequest,
    MalformedReply,
    MalformedRequest,
    ServerError,
    ServerTimeout,
)
from reqrep.protocol import Reply, Request


def test_well_formed_request_is_two_frames_and_parses_back() -> None:
    frames = protocol.encode_request("client-1", b"hello")
    assert frames == [b"client-1", b"hello"]
    assert protocol.parse_request(frames) == Request("client-1", b"hello")


def test_request_with_empty_data_parses() -> None:
    assert protocol.parse_request([b"a", b""]) == Request("a", b"")


MALFORMED = [
    ([], protocol.EMPTY_MESSAGE, "empty message"),
    ([b"data only"], protocol.MISSING_ADDRESS, "missing address"),
    (protocol.encode_request_without_address(b"x"), protocol.MISSING_ADDRESS, "missing address"),
    ([b"", b"data"], protocol.EMPTY_ADDRESS, "empty address"),
    ([b"a", b"b", b"c"], protocol.FRAME_COUNT, "wrong number of frames: 3"),
    ([b"\xff\xfe", b"data"], protocol.ADDRESS_NOT_UTF8, "not valid UTF-8"),
    ([b"a" * 257, b"data"], protocol.ADDRESS_TOO_LONG, "exceeds 256"),
    ([b"a", b"x" * 2000], protocol.TOO_LARGE, "exceeds the 1024-byte limit"),
]


@pytest.mark.parametrize(("frames", "kind", "reason"), MALFORMED)
def test_malformed_requests_carry_their_kind_and_a_reason(
    frames: list[bytes], kind: str, reason: str
) -> None:
    with pytest.raises(MalformedRequest) as raised:
        protocol.parse_request(frames, max_message_bytes=1024)
    assert raised.value.fault.kind == kind
    assert reason in raised.value.reason
    assert reason in str(raised.value)


def test_the_cases_cover_every_fault_kind() -> None:
    assert {kind for _, kind, _ in MALFORMED} == set(protocol.FAULT_KINDS)


def test_size_limit_counts_every_frame() -> None:
    protocol.parse_request([b"a" * 32, b"b" * 32], max_message_bytes=64)
    with pytest.raises(MalformedRequest):
        protocol.parse_request([b"a" * 32, b"b" * 33], max_message_bytes=64)


def test_respond_gives_server_response_or_invalid_message_with_reason() -> None:
    reply, fault = protocol.respond([b"a", b"data"], b"replica-1")
    assert reply == [b"Server response", b"replica-1", b""]
    assert fault is None
    reply, fault = protocol.respond([b"data"], b"replica-1")
    assert reply[:2] == [b"Invalid message", b"replica-1"]
    assert fault is not None
    assert fault.kind == protocol.MISSING_ADDRESS
    assert reply[2].decode() == fault.reason


def test_every_kind_of_reply_parses_back_to_what_was_built() -> None:
    assert protocol.parse_reply(protocol.ok_reply(b"r1")) == Reply("Server response", "r1", b"")
    assert protocol.parse_reply(protocol.ok_reply(b"r1", b"\x00\xffbody")).body == b"\x00\xffbody"
    parsed = protocol.parse_reply(protocol.invalid_reply(b"r2", "missing address"))
    assert parsed == Reply("Invalid message", "r2", b"missing address")
    assert (parsed.ok, parsed.detail) == (False, "missing address")
    failed = protocol.parse_reply(protocol.error_reply(b"r3", ValueError("no such key: 42")))
    assert failed == Reply("Server error", "r3", b"ValueError: no such key: 42")
    late = protocol.parse_reply(protocol.timeout_reply(b"r4", 250))
    assert late == Reply("Server timeout", "r4", b"handler did not finish within 250 ms")


def test_the_four_statuses_are_distinct_and_only_one_is_ok() -> None:
    assert len(set(protocol.STATUSES)) == 4
    oks = [protocol.parse_reply([status, b"r", b""]).ok for status in protocol.STATUSES]
    assert oks == [True, False, False, False]


def test_an_error_detail_names_type_and_message_and_is_bounded() -> None:
    assert protocol.describe_error(KeyError("k")) == "KeyError: 'k'"
    assert protocol.describe_error(RuntimeError()) == "RuntimeError"
    huge = protocol.error_reply(b"r", ValueError("é" * 5000))[2]
    assert len(huge) <= protocol.MAX_DETAIL_BYTES
    assert huge.endswith(b"...")
    huge.decode("utf-8")  # cut on a character boundary


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (protocol.INVALID_MESSAGE, InvalidRequest),
        (protocol.SERVER_ERROR, ServerError),
        (protocol.SERVER_TIMEOUT, ServerTimeout),
    ],
)
def test_body_of_gives_the_body_or_raises_the_statuss_error(
    status: bytes, error: type[Exception]
) -> None:
    assert protocol.body_of(Reply("Server response", "r", b"data")) == b"data"
    reply = protocol.parse_reply([status, b"r", b"why"])
    with pytest.raises(error, match="why") as raised:
        protocol.body_of(reply)
    assert raised.value.reply == reply  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "frames",
    [[], [b"Server response"], [b"Nope", b"r", b""], [b"Server response", b"\xff", b""]],
)
def test_malformed_replies_raise_malformed_reply(frames: list[bytes]) -> None:
    with pytest.raises(MalformedReply):
        protocol.parse_reply(frames)


@pytest.mark.parametrize(
    ("frames", "envelope", "body"),
    [
        # REQ peer through ROUTER: routing id, delimiter, request frames.
        ([b"id", b"", b"addr", b"data"], [b"id", b""], [b"addr", b"data"]),
        # The seed's malformed request: address missing.
        ([b"id", b"", b"data"], [b"id", b""], [b"data"]),
        # Empty address: the first empty frame is the delimiter, the second the address.
        ([b"id", b"", b"", b"data"], [b"id", b""], [b"", b"data"]),
        # Behind a proxy: two routing ids.
        ([b"id1", b"id2", b"", b"a", b"d"], [b"id1", b"id2", b""], [b"a", b"d"]),
        # A bare DEALER with no delimiter: answered behind its routing id alone.
        ([b"id", b"a", b"d"], [b"id"], [b"a", b"d"]),
        ([b"id"], [b"id"], []),
    ],
)
def test_split_envelope_separates_routing_ids_and_delimiter_from_request(
    frames: list[bytes], envelope: list[bytes], body: list[bytes]
) -> None:
    assert protocol.split_envelope(frames) == (envelope, body)


def test_request_carries_the_servers_context_and_time_left() -> None:
    request = Request("a", b"d", replica="r", peer="00ab", deadline=time.monotonic() + 5)
    assert 4 < request.time_left_s <= 5
    assert Request("a", b"d").time_left_s == float("inf")
