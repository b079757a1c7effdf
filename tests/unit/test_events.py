"""reqrep.events.explain: what a client's socket monitor saw, turned into why no reply came.
The event sequences are the ones libzmq gives (tests/integration/test_events.py sees them
for real)."""

from __future__ import annotations

import pytest
import zmq

from reqrep.errors import ConnectFailed, HandshakeFailed, RequestTimeout
from reqrep.events import Event, explain

DELAYED = Event(zmq.EVENT_CONNECT_DELAYED, 115)
RETRIED = Event(zmq.EVENT_CONNECT_RETRIED, 200)
CLOSED = Event(zmq.EVENT_CLOSED, 12)
CONNECTED = Event(zmq.EVENT_CONNECTED, 12)
HANDSHAKEN = Event(zmq.EVENT_HANDSHAKE_SUCCEEDED, 0)
DISCONNECTED = Event(zmq.EVENT_DISCONNECTED, 12)
ENDPOINT = ["tcp://127.0.0.1:1"]


@pytest.mark.parametrize(
    ("tries", "failure", "words"),
    [
        ([[DELAYED, CLOSED, RETRIED]] * 3, ConnectFailed, "nothing accepted the connection"),
        ([[CONNECTED, HANDSHAKEN]], RequestTimeout, "no reply came in time"),
        (
            [[CONNECTED, DISCONNECTED, RETRIED]],
            RequestTimeout,
            "closed before the ZeroMQ handshake",
        ),
        (
            [[CONNECTED, HANDSHAKEN, DISCONNECTED], [CONNECTED, HANDSHAKEN, DISCONNECTED]],
            RequestTimeout,
            "frame over its size limit",
        ),
        (
            [[CONNECTED, HANDSHAKEN, DISCONNECTED], [CONNECTED, HANDSHAKEN]],
            RequestTimeout,
            "no reply came in time",
        ),
        (
            [[CONNECTED, Event(zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400), DISCONNECTED]],
            HandshakeFailed,
            "refused this client's key (ZAP status 400)",
        ),
        (
            [[CONNECTED, Event(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32)]],
            HandshakeFailed,
            "the connection closed during the handshake",
        ),
        (
            [
                [
                    CONNECTED,
                    Event(
                        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                        zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH,
                    ),
                ]
            ],
            HandshakeFailed,
            "one side uses CURVE encryption and the other does not",
        ),
        ([[]], ConnectFailed, "nothing accepted the connection"),
    ],
)
def test_explain_names_the_failure_and_its_class(
    tries: list[list[Event]], failure: type[RequestTimeout], words: str
) -> None:
    found, reason = explain(tries, ENDPOINT)
    assert found is failure
    assert words in reason


def test_a_handshake_closed_without_detail_is_read_by_whether_the_client_uses_curve() -> None:
    closed = [[CONNECTED, Event(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32)]]
    assert "server's public key" in explain(closed, ENDPOINT, curve=True)[1]
    assert "requires CURVE encryption, which this client does not" in explain(closed, ENDPOINT)[1]


def test_a_host_that_does_not_resolve_is_named() -> None:
    found, reason = explain([[RETRIED, RETRIED]], ["tcp://no-such-host.invalid:5555"])
    assert found is ConnectFailed
    assert reason == "host 'no-such-host.invalid' does not resolve"
