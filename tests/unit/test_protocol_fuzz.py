"""Property-based fuzzing of the pure protocol: any frames in, a parse or a protocol error out."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reqrep import protocol
from reqrep.errors import MalformedReply, MalformedRequest
from reqrep.protocol import Reply, Request

# Bounded so the whole file stays CI-sized (a few seconds); deadline off for a noisy machine.
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Frames as they come off the wire: empty, short, around the address limit, a few KiB,
# text that is and is not UTF-8.
frame = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=8),
    st.binary(min_size=250, max_size=262),
    st.binary(max_size=3000),
    st.text(max_size=300).map(lambda text: text.encode("utf-8")),
)
frames = st.lists(frame, max_size=12)
limit = st.integers(min_value=1, max_value=4096)


def _parse_request(message: list[bytes], max_message_bytes: int) -> Request | MalformedRequest:
    """The parse, or the MalformedRequest it raised; any other exception fails the test."""
    try:
        return protocol.parse_request(message, max_message_bytes)
    except MalformedRequest as error:
        return error


def _parse_reply(message: list[bytes]) -> Reply | MalformedReply:
    try:
        return protocol.parse_reply(message)
    except MalformedReply as error:
        return error


@FUZZ
@given(frames, limit)
def test_parse_request_returns_a_request_or_raises_malformed(
    message: list[bytes], max_message_bytes: int
) -> None:
    request = _parse_request(message, max_message_bytes)
    if isinstance(request, MalformedRequest):
        assert request.reason
        return
    # Accepted: exactly the two frames, within every limit, and they round-trip.
    assert isinstance(request, Request)
    assert len(message) == protocol.REQUEST_FRAMES
    assert 1 <= len(message[0]) <= protocol.MAX_ADDRESS_BYTES
    assert protocol.message_size(message) <= max_message_bytes
    assert protocol.encode_request(request.address, request.data) == message


@FUZZ
@given(frames, limit)
def test_respond_always_gives_a_parseable_reply_that_agrees_with_the_parser(
    message: list[bytes], max_message_bytes: int
) -> None:
    reply_frames, fault = protocol.respond(message, b"replica-1", max_message_bytes)
    reply = protocol.parse_reply(reply_frames)
    assert reply.replica == "replica-1"
    parsed = _parse_request(message, max_message_bytes)
    if isinstance(parsed, MalformedRequest):
        assert (reply.status, reply.detail, fault) == (
            "Invalid message",
            parsed.reason,
            parsed.fault,
        )
        assert parsed.fault.kind in protocol.FAULT_KINDS
    else:
        assert reply.ok
        assert fault is None


@FUZZ
@given(st.lists(frame, min_size=1, max_size=14))
def test_split_envelope_cuts_at_the_first_delimiter_and_loses_nothing(
    message: list[bytes],
) -> None:
    envelope, body = protocol.split_envelope(message)
    assert envelope + body == message
    assert envelope[0] == message[0]  # the routing id always leads the envelope
    searched = message[1 : protocol.MAX_ROUTING_FRAMES + 1]
    if b"" in searched:
        assert len(envelope) == searched.index(b"") + 2
        assert envelope[-1] == b""
    else:
        assert envelope == message[:1]


@FUZZ
@given(
    st.lists(st.binary(min_size=1, max_size=16), min_size=1, max_size=protocol.MAX_ROUTING_FRAMES),
    frames,
)
def test_a_req_peer_request_is_always_split_off_whole(
    routing_ids: list[bytes], request: list[bytes]
) -> None:
    """Whatever a REQ client sends, even empty frames, reaches the parser unchanged."""
    envelope, body = protocol.split_envelope([*routing_ids, b"", *request])
    assert envelope == [*routing_ids, b""]
    assert body == request


@FUZZ
@given(frames)
def test_parse_reply_returns_a_reply_or_raises_malformed(message: list[bytes]) -> None:
    reply = _parse_reply(message)
    if isinstance(reply, MalformedReply):
        assert reply.reason
        return
    assert len(message) == protocol.REPLY_FRAMES
    assert message[0] in protocol.STATUSES


@FUZZ
@given(st.text(max_size=64), st.text(max_size=300), st.binary(max_size=300))
def test_replies_round_trip(replica: str, reason: str, body: bytes) -> None:
    name = replica.encode("utf-8")
    ok = protocol.parse_reply(protocol.ok_reply(name, body))
    assert ok == Reply("Server response", replica, body)
    invalid = protocol.parse_reply(protocol.invalid_reply(name, reason))
    assert (invalid.status, invalid.replica, invalid.detail) == ("Invalid message", replica, reason)
