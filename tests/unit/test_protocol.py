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


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([], "empty message"),
        ([b"data only"], "missing address"),
        (protocol.encode_request_without_address(b"x"), "missing address"),
        ([b"", b"data"], "empty address"),
        ([b"a", b"b", b"c"], "wrong number of frames: 3"),
        ([b"\xff\xfe", b"data"], "not valid UTF-8"),
        ([b"a" * 257, b"data"], "exceeds 256"),
        ([b"a", b"x" * 2000], "exceeds the 1024-byte limit"),
    ],
)
def test_malformed_requests_carry_a_reason(frames: list[bytes], reason: str) -> None:
    with pytest.raises(MalformedRequest) as raised:
        protocol.parse_request(frames, max_message_bytes=1024)
    assert reason in raised.value.reason
    assert reason in str(raised.value)


def test_size_limit_counts_every_frame() -> None:
    protocol.parse_request([b"a" * 32, b"b" * 32], max_message_bytes=64)
    with pytest.raises(MalformedRequest):
        protocol.parse_request([b"a" * 32, b"b" * 33], max_message_bytes=64)


def test_respond_gives_server_response_or_invalid_message_with_reason() -> None:
    reply, reason = protocol.respond([b"a", b"data"], b"replica-1")
    assert reply == [b"Server response", b"replica-1", b""]
    assert reason is None
    reply, reason = protocol.respond([b"data"], b"replica-1")
    assert reply[:2] == [b"Invalid message", b"replica-1"]
    assert reason is not None
    assert reply[2].decode() == reason


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
