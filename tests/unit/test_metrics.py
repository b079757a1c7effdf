"""reqrep.metrics without a network: counters move as a replica answers, by status, by fault
kind and by the exception a handler raised.

The server is made (no socket is opened) with a metrics port, so its metrics exist;
requests go through its inline answer path, timed as the serving loop times them, and
the figures are read from its registry, as a scrape would.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
import zmq.asyncio

import reqrep
from reqrep import protocol
from reqrep.config import ServerConfig
from reqrep.events import REFUSAL_KINDS
from reqrep.handlers import Handler
from reqrep.protocol import Request
from reqrep.server import Server

SERVER_RESPONSE = protocol.SERVER_RESPONSE_TEXT
INVALID_MESSAGE = protocol.INVALID_MESSAGE_TEXT
SERVER_ERROR = protocol.SERVER_ERROR_TEXT
SERVER_TIMEOUT = protocol.SERVER_TIMEOUT_TEXT
LIMIT = 1024
PEER = b"\x00\x6b\x8b\x45\x67"


def make_server(
    context: zmq.asyncio.Context, handler: Handler | None = None, **settings: Any
) -> Server:
    config = replace(ServerConfig(name="unit", metrics_port=0, max_message_bytes=LIMIT), **settings)
    return Server(handler, config, context=context)


@pytest.fixture
def server(context: zmq.asyncio.Context) -> Server:
    return make_server(context)


def answer(server: Server, request: list[bytes]) -> list[bytes]:
    """One request through the server's inline path, timed as its serving loop times it."""
    assert server.metrics is not None
    timed = server.metrics.timed(server.answerer.routed(server.answerer.inline_answer()))
    return timed([PEER, b"", *request])[2:]


def value(server: Server, name: str, **labels: str) -> float:
    assert server.metrics is not None
    found = server.metrics.registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name}{labels}"
    return found


def requests(server: Server, status: str) -> float:
    return value(server, "reqrep_requests_total", status=status)


def invalid(server: Server, reason: str) -> float:
    return value(server, "reqrep_invalid_requests_total", reason=reason)


# One request per fault kind protocol.request_fault gives.
REASON_EXAMPLES = [
    ([b"a" * (LIMIT + 1), b""], protocol.TOO_LARGE),
    ([], protocol.EMPTY_MESSAGE),
    ([b"data only"], protocol.MISSING_ADDRESS),
    ([b"alice", b"x", b"y"], protocol.FRAME_COUNT),
    ([b"", b"data"], protocol.EMPTY_ADDRESS),
    ([b"a" * (protocol.MAX_ADDRESS_BYTES + 1), b""], protocol.ADDRESS_TOO_LONG),
    ([b"\xff\xfe", b"data"], protocol.ADDRESS_NOT_UTF8),
]


def test_every_series_exists_at_zero_before_any_request(server: Server) -> None:
    for status in (SERVER_RESPONSE, INVALID_MESSAGE, SERVER_ERROR, SERVER_TIMEOUT):
        assert requests(server, status) == 0
    for kind in protocol.FAULT_KINDS:
        assert invalid(server, kind) == 0
    assert value(server, "reqrep_request_handling_seconds_count") == 0
    assert value(server, "reqrep_requests_in_flight") == 0
    assert value(server, "reqrep_connected_peers") == 0


def test_answered_requests_are_counted_by_status(server: Server) -> None:
    for number in range(5):
        answer(server, protocol.encode_request("alice", str(number).encode()))
    answer(server, protocol.encode_request_without_address(b"x"))
    assert requests(server, SERVER_RESPONSE) == 5
    assert requests(server, INVALID_MESSAGE) == 1
    assert invalid(server, protocol.MISSING_ADDRESS) == 1


@pytest.mark.parametrize(("frames", "expected"), REASON_EXAMPLES)
def test_invalid_requests_are_counted_by_fault_kind(
    server: Server, frames: list[bytes], expected: str
) -> None:
    assert answer(server, frames)[0] == protocol.INVALID_MESSAGE
    assert invalid(server, expected) == 1
    assert sum(invalid(server, kind) for kind in protocol.FAULT_KINDS) == 1
    assert requests(server, INVALID_MESSAGE) == 1
    assert requests(server, SERVER_RESPONSE) == 0


def failing(request: Request) -> bytes:
    if request.data == b"key":
        raise KeyError(request.data)
    raise ValueError("no such key: 42")


def test_a_handler_that_raises_is_counted_by_exception_type(context: zmq.asyncio.Context) -> None:
    server = make_server(context, failing)
    for data in (b"key", b"value", b"value"):
        assert answer(server, protocol.encode_request("alice", data))[0] == protocol.SERVER_ERROR
    errors = "reqrep_handler_errors_total"
    assert value(server, errors, exception="KeyError") == 1
    assert value(server, errors, exception="ValueError") == 2
    assert requests(server, SERVER_ERROR) == 3
    assert requests(server, SERVER_RESPONSE) == 0


def slow(request: Request) -> bytes:
    time.sleep(0.02)
    return b""


def test_a_handler_past_its_time_is_counted_as_server_timeout(context: zmq.asyncio.Context) -> None:
    server = make_server(context, slow, handler_timeout_ms=1)
    assert answer(server, protocol.encode_request("alice", b""))[0] == protocol.SERVER_TIMEOUT
    assert requests(server, SERVER_TIMEOUT) == 1
    assert requests(server, SERVER_RESPONSE) == 0


def test_no_label_value_is_free_text_or_a_peer_id(context: zmq.asyncio.Context) -> None:
    server = make_server(context, failing)
    answer(server, [b"\xff\xfe", b"data"])
    answer(server, [b"a", b"b", b"c"])
    answer(server, protocol.encode_request("alice", b"secret-value"))
    assert server.metrics is not None
    for family in server.metrics.registry.collect():
        if not family.name.startswith("reqrep_") or family.name == "reqrep_build":
            continue
        for sample in family.samples:
            for label, text in sample.labels.items():
                assert label in {"status", "reason", "exception", "kind", "le"}, sample
                if label == "kind":
                    assert text in REFUSAL_KINDS
                if label == "reason":
                    assert text in protocol.FAULT_KINDS
                if label == "status":
                    assert text.encode() in protocol.STATUSES
                if label == "exception":
                    assert text == "ValueError"


# --- handling time and requests in flight ------------------------------------------


def test_the_timed_answer_fills_the_histogram(server: Server) -> None:
    for _ in range(10):
        assert answer(server, protocol.encode_request("alice", b"x"))[0] == protocol.SERVER_RESPONSE
    assert value(server, "reqrep_request_handling_seconds_count") == 10
    assert value(server, "reqrep_request_handling_seconds_bucket", le="+Inf") == 10
    assert 0 < value(server, "reqrep_request_handling_seconds_sum") < 1
    assert value(server, "reqrep_requests_in_flight") == 0
    assert requests(server, SERVER_RESPONSE) == 10


def test_buckets_are_cumulative_and_hold_the_time_handled(server: Server) -> None:
    assert server.metrics is not None
    started = time.perf_counter_ns() - 30_000_000  # 30 ms ago: in the 0.05 s bucket
    server.answerer.answer_default(protocol.encode_request("alice", b"x"), PEER)
    server.metrics.handled(started)
    assert value(server, "reqrep_request_handling_seconds_bucket", le="0.025") == 0
    assert value(server, "reqrep_request_handling_seconds_bucket", le="0.05") == 1
    assert value(server, "reqrep_request_handling_seconds_bucket", le="10.0") == 1
    assert value(server, "reqrep_request_handling_seconds_sum") >= 0.03


def test_a_request_received_but_not_yet_answered_is_in_flight(server: Server) -> None:
    assert server.metrics is not None
    started = time.perf_counter_ns()
    server.answerer.answer_default(protocol.encode_request("alice", b"x"), PEER)
    assert value(server, "reqrep_requests_in_flight") == 1
    assert requests(server, SERVER_RESPONSE) == 0  # counted once its reply is ready
    server.metrics.handled(started)
    assert value(server, "reqrep_requests_in_flight") == 0
    assert requests(server, SERVER_RESPONSE) == 1


def test_build_info_names_the_versions(server: Server) -> None:
    labels = {
        "version": reqrep.__version__,
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "replica": "unit",
    }
    assert server.metrics is not None
    samples = [
        s for f in server.metrics.registry.collect() for s in f.samples if s.name.endswith("_info")
    ]
    build = [s for s in samples if s.name == "reqrep_build_info"]
    assert len(build) == 1
    assert build[0].value == 1
    assert labels.items() <= build[0].labels.items()
    assert build[0].labels["python"]


def test_metrics_are_off_without_a_port(context: zmq.asyncio.Context) -> None:
    plain = Server(None, ServerConfig(name="unit"), context=context)
    assert plain.metrics is None
    plain.answerer.answer_default(protocol.encode_request_without_address(b"x"), PEER)
    assert plain.requests_served == 1
