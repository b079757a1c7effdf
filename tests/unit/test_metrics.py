"""reqrep.metrics without a network: counters move as Server.answer answers, by fault kind.

The server is constructed (no socket is opened) with a metrics port, so its
metrics exist; the figures are read from its registry, as a scrape would.
"""

from __future__ import annotations

import time

import pytest
import zmq.asyncio

import reqrep
import server as server_script
from reqrep import protocol
from reqrep.config import ServerConfig
from reqrep.server import Server

SERVER_RESPONSE = protocol.SERVER_RESPONSE_TEXT
INVALID_MESSAGE = protocol.INVALID_MESSAGE_TEXT
LIMIT = 1024


@pytest.fixture
def server(context: zmq.asyncio.Context) -> Server:
    return Server(ServerConfig(name="unit", metrics_port=0, max_message_bytes=LIMIT), context)


def value(server: Server, name: str, **labels: str) -> float:
    assert server.metrics is not None
    found = server.metrics.registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name}{labels}"
    return found


def requests(server: Server, status: str) -> float:
    return value(server, "reqrep_requests_total", status=status)


def invalid(server: Server, reason: str) -> float:
    return value(server, "reqrep_invalid_requests_total", reason=reason)


# One request per fault kind protocol.request_fault gives (INTERNAL_ERROR: below).
REASON_EXAMPLES = [
    ([b"a" * (LIMIT + 1), b""], protocol.TOO_LARGE),
    ([], protocol.EMPTY_MESSAGE),
    ([b"data only"], protocol.MISSING_ADDRESS),
    ([b"alice", b"x", b"y"], protocol.FRAME_COUNT),
    ([b"", b"data"], protocol.EMPTY_ADDRESS),
    ([b"a" * (protocol.MAX_ADDRESS_BYTES + 1), b""], protocol.ADDRESS_TOO_LONG),
    ([b"\xff\xfe", b"data"], protocol.ADDRESS_NOT_UTF8),
]


# --- counters move as Server.answer answers --------------------------------------------


def test_every_series_exists_at_zero_before_any_request(server: Server) -> None:
    assert requests(server, SERVER_RESPONSE) == 0
    assert requests(server, INVALID_MESSAGE) == 0
    for cls in protocol.FAULT_KINDS:
        assert invalid(server, cls) == 0
    assert value(server, "reqrep_request_handling_seconds_count") == 0
    assert value(server, "reqrep_requests_in_flight") == 0
    assert value(server, "reqrep_connected_peers") == 0


def test_answered_requests_are_counted_by_status(server: Server) -> None:
    for number in range(5):
        server.answer(protocol.encode_request("alice", str(number).encode()), "-")
    server.answer(protocol.encode_request_without_address(b"x"), "-")
    assert requests(server, SERVER_RESPONSE) == 5
    assert requests(server, INVALID_MESSAGE) == 1
    assert invalid(server, protocol.MISSING_ADDRESS) == 1


@pytest.mark.parametrize(("frames", "expected"), REASON_EXAMPLES)
def test_invalid_requests_are_counted_by_reason_class(
    server: Server, frames: list[bytes], expected: str
) -> None:
    reply, valid = server.answer(frames, b"\x00peer")
    assert not valid
    assert reply[0] == protocol.INVALID_MESSAGE
    assert invalid(server, expected) == 1
    assert sum(invalid(server, cls) for cls in protocol.FAULT_KINDS) == 1
    assert requests(server, INVALID_MESSAGE) == 1
    assert requests(server, SERVER_RESPONSE) == 0


def test_a_failure_inside_the_server_counts_as_internal_error(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(protocol, "respond", broken)
    reply, valid = server.answer(protocol.encode_request("alice", b"x"), "-")
    assert not valid
    assert reply[0] == protocol.INVALID_MESSAGE
    assert invalid(server, protocol.INTERNAL_ERROR) == 1
    assert requests(server, INVALID_MESSAGE) == 1


def test_no_label_value_is_free_text_or_a_peer_id(server: Server) -> None:
    server.answer([b"\xff\xfe", b"data"], b"\x00\x6b\x8b\x45\x67")
    server.answer([b"a", b"b", b"c"], b"\x00\x6b\x8b\x45\x68")
    assert server.metrics is not None
    for family in server.metrics.registry.collect():
        if not family.name.startswith("reqrep_") or family.name == "reqrep_build":
            continue
        for sample in family.samples:
            for label, text in sample.labels.items():
                assert label in {"status", "reason", "le"}, sample
                if label == "reason":
                    assert text in protocol.FAULT_KINDS
                if label == "status":
                    assert text in {SERVER_RESPONSE, INVALID_MESSAGE}


# --- handling time and requests in flight ------------------------------------------


def test_the_timed_answer_fills_the_histogram(server: Server) -> None:
    assert server.metrics is not None
    answer = server.metrics.timed(server.answerer.answer_routed)
    routed = [b"\x00\x6b\x8b\x45\x67", b"", *protocol.encode_request("alice", b"x")]
    for _ in range(10):
        assert answer(routed)[2] == protocol.SERVER_RESPONSE
    count = value(server, "reqrep_request_handling_seconds_count")
    assert count == 10
    assert value(server, "reqrep_request_handling_seconds_bucket", le="+Inf") == 10
    assert 0 < value(server, "reqrep_request_handling_seconds_sum") < 1
    assert value(server, "reqrep_requests_in_flight") == 0
    assert requests(server, SERVER_RESPONSE) == 10


def test_buckets_are_cumulative_and_hold_the_time_handled(server: Server) -> None:
    assert server.metrics is not None
    started = time.perf_counter_ns() - 30_000_000  # 30 ms ago: in the 0.05 s bucket
    server.answer(protocol.encode_request("alice", b"x"), "-")
    server.metrics.handled(started)
    assert value(server, "reqrep_request_handling_seconds_bucket", le="0.025") == 0
    assert value(server, "reqrep_request_handling_seconds_bucket", le="0.05") == 1
    assert value(server, "reqrep_request_handling_seconds_bucket", le="10.0") == 1
    assert value(server, "reqrep_request_handling_seconds_sum") >= 0.03


def test_a_request_answered_but_not_yet_handled_is_in_flight(server: Server) -> None:
    assert server.metrics is not None
    started = time.perf_counter_ns()
    server.answer(protocol.encode_request("alice", b"x"), "-")  # then the work would run
    assert value(server, "reqrep_requests_in_flight") == 1
    server.metrics.handled(started)
    assert value(server, "reqrep_requests_in_flight") == 0


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


# --- off by default, and the flag ------------------------------------------------------


def test_metrics_are_off_without_a_port(context: zmq.asyncio.Context) -> None:
    plain = Server(ServerConfig(name="unit"), context)
    assert plain.metrics is None
    plain.answer(protocol.encode_request_without_address(b"x"), "-")
    assert plain.requests_served == 1


@pytest.fixture
def no_metrics_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVER_METRICS_PORT", raising=False)


@pytest.mark.usefixtures("no_metrics_env")
def test_the_flag_is_off_by_default_and_takes_a_port() -> None:
    assert server_script.parse_args([]).metrics_port is None
    assert server_script.config_from_args(server_script.parse_args([])).metrics_port is None
    args = server_script.parse_args(["--metrics-port", "9100"])
    assert server_script.config_from_args(args).metrics_port == 9100


@pytest.mark.usefixtures("no_metrics_env")
def test_the_port_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVER_METRICS_PORT", "9100")
    assert server_script.parse_args([]).metrics_port == 9100
    monkeypatch.setenv("SERVER_METRICS_PORT", "")
    assert server_script.parse_args([]).metrics_port is None


@pytest.mark.usefixtures("no_metrics_env")
@pytest.mark.parametrize("bad", ["-1", "65536", "http", "9100.5"])
def test_a_bad_port_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        server_script.parse_args(["--metrics-port", bad])
    assert exit_info.value.code == 2
    assert "--metrics-port" in capsys.readouterr().err
