"""The pure protocol: no sockets."""

from __future__ import annotations

import pytest

from reqrep import protocol
from reqrep.protocol import MalformedReply, MalformedRequest, Reply, Request


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


def test_the_cases_cover_every_fault_kind_but_the_servers_own_failure() -> None:
    covered = {kind for _, kind, _ in MALFORMED}
    assert covered | {protocol.INTERNAL_ERROR} == set(protocol.FAULT_KINDS)
    assert protocol.INTERNAL_ERROR_FAULT.kind == protocol.INTERNAL_ERROR


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


def test_ok_and_invalid_replies_parse_back_to_what_was_built() -> None:
    assert protocol.parse_reply(protocol.ok_reply(b"r1")) == Reply("Server response", "r1", "")
    parsed = protocol.parse_reply(protocol.invalid_reply(b"r2", "missing address"))
    assert parsed == Reply("Invalid message", "r2", "missing address")
    assert not parsed.ok


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


def test_request_timeout_message_names_server_request_and_tries() -> None:
    error = protocol.RequestTimeout(["tcp://localhost:5555"], "3", 4)
    assert str(error) == "server at tcp://localhost:5555 did not answer request 3 after 4 tries"


def test_a_timeout_is_not_a_protocol_error_but_both_are_reqrep_errors() -> None:
    timeout = protocol.RequestTimeout(["tcp://localhost:5555"], "3", 4)
    assert not isinstance(timeout, protocol.ProtocolError)
    assert isinstance(timeout, protocol.ReqRepError)
    for malformed in (MalformedReply("x"), MalformedRequest(protocol.INTERNAL_ERROR_FAULT)):
        assert isinstance(malformed, protocol.ProtocolError)
        assert isinstance(malformed, protocol.ReqRepError)
