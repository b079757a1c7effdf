"""The load generator: many virtual clients in one process, one DEALER socket each.

Each virtual client keeps exactly one request outstanding, like a REQ client:
it sends ``[b"", address, data]`` (the empty delimiter makes the envelope look
like a REQ socket's to the server) and sends the next request as soon as the
reply is in. One synchronous ``zmq.Poller`` loop drives all of them, so the
generator costs one Python thread plus ZeroMQ's I/O thread, whatever the
client count. Frames go out and come in through the same lean send/receive
helpers the server uses (pyzmq's *_multipart sugar costs more per frame).

Only correct replies count: ``Server response`` from the project's server, or
the request itself from the echo ceiling. The generator measures its own CPU
time over the measured window and reports it, so a reader can see whether it,
rather than the server, was the limit.

    python -m bench.loadgen --connect tcp://127.0.0.1:5555 --clients 16 --duration-s 3

prints one JSON object (see ``LoadResult``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import zmq

from bench.machine import process_cpu_s
from reqrep import cli, protocol
from reqrep.frames import recv_now, send_now
from reqrep.report import percentile

EXPECT_SERVER = "server"
EXPECT_ECHO = "echo"
POLL_MS = 50


@dataclass(frozen=True, slots=True)
class LoadResult:
    clients: int
    duration_s: float
    replies: int
    errors: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    # CPU time of the whole generator (Python loop + ZeroMQ I/O thread) and of
    # its Python loop alone, in percent of one core over the measured window.
    cpu_percent: float
    loop_cpu_percent: float
    # CPU time (user + system, every thread) of the watched server processes
    # over the measured window, per reply, in microseconds; 0.0 if none watched.
    server_cpu_us_per_reply: float = 0.0


def _is_correct(expect: str, request: list[bytes], reply: list[bytes]) -> bool:
    if expect == EXPECT_ECHO:
        return reply == request
    # [delimiter, status, replica, detail]: a DEALER sees the REQ-style envelope.
    return len(reply) == 1 + protocol.REPLY_FRAMES and reply[1] == protocol.SERVER_RESPONSE


def run_load(
    endpoints: Sequence[str],
    clients: int,
    duration_s: float,
    warmup_s: float,
    expect: str = EXPECT_SERVER,
    payload_bytes: int = 16,
    watch_pids: Sequence[int] = (),
) -> LoadResult:
    """Drive ``clients`` closed-loop clients for ``warmup_s`` + ``duration_s``.

    The measured window starts when the warm-up ends and lasts ``duration_s``;
    every correct reply that arrives inside it counts, with its latency.
    """
    if clients < 1:
        raise ValueError("at least one client is needed")
    if expect not in (EXPECT_SERVER, EXPECT_ECHO):
        raise ValueError(f"expect must be {EXPECT_SERVER!r} or {EXPECT_ECHO!r}")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sockets: list[zmq.Socket[bytes]] = []
    try:
        poller = zmq.Poller()
        for _ in range(clients):
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            for endpoint in endpoints:
                sock.connect(endpoint)
            poller.register(sock, zmq.POLLIN)
            sockets.append(sock)
        # The empty delimiter makes a DEALER's envelope look like a REQ socket's.
        requests = [
            [b"", *protocol.encode_request(f"bench-client-{i}", b"x" * payload_bytes)]
            for i in range(clients)
        ]
        return _drive(poller, sockets, requests, duration_s, warmup_s, expect, watch_pids)
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()


def _drive(
    poller: zmq.Poller,
    sockets: list[zmq.Socket[bytes]],
    requests: list[list[bytes]],
    duration_s: float,
    warmup_s: float,
    expect: str,
    watch_pids: Sequence[int],
) -> LoadResult:
    clock = time.perf_counter_ns
    index = {sock: i for i, sock in enumerate(sockets)}
    started = clock()
    window_start = started + int(warmup_s * 1e9)
    window_end = window_start + int(duration_s * 1e9)
    sent_at = [0] * len(sockets)
    latencies_ns: list[int] = []
    errors = 0
    cpu_start = loop_cpu_start = server_cpu_start = 0.0
    measuring = False
    for i, sock in enumerate(sockets):
        sent_at[i] = clock()
        send_now(sock, requests[i])
    now = clock()
    while now < window_end:
        if not measuring and now >= window_start:
            measuring = True
            cpu_start, loop_cpu_start = time.process_time(), time.thread_time()
            server_cpu_start = process_cpu_s(watch_pids)
        for sock, _ in poller.poll(POLL_MS):
            i = index[sock]
            reply = recv_now(sock)
            now = clock()
            # Steady state: count every reply that arrives inside the window.
            if window_start <= now < window_end:
                if _is_correct(expect, requests[i], reply):
                    latencies_ns.append(now - sent_at[i])
                else:
                    errors += 1
            sent_at[i] = now
            send_now(sock, requests[i])
        now = clock()
    cpu_s = time.process_time() - cpu_start
    loop_cpu_s = time.thread_time() - loop_cpu_start
    server_cpu_s = process_cpu_s(watch_pids) - server_cpu_start if measuring else 0.0
    latencies_ms = [ns / 1e6 for ns in latencies_ns]
    return LoadResult(
        clients=len(sockets),
        duration_s=duration_s,
        replies=len(latencies_ns),
        errors=errors,
        requests_per_s=len(latencies_ns) / duration_s,
        p50_ms=percentile(latencies_ms, 0.50),
        p99_ms=percentile(latencies_ms, 0.99),
        cpu_percent=100 * cpu_s / duration_s if measuring else 0.0,
        loop_cpu_percent=100 * loop_cpu_s / duration_s if measuring else 0.0,
        server_cpu_us_per_reply=1e6 * server_cpu_s / len(latencies_ns) if latencies_ns else 0.0,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Closed-loop ZeroMQ load generator: N DEALER clients in one process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--connect", action="append", required=True, help="endpoint, repeatable")
    parser.add_argument(
        "--clients", type=cli.int_at_least(1), default=16, help="concurrent virtual clients"
    )
    parser.add_argument(
        "--duration-s", type=cli.float_at_least(0.01), default=3.0, help="measured time"
    )
    parser.add_argument(
        "--warmup-s", type=cli.float_at_least(0), default=0.5, help="unmeasured time first"
    )
    parser.add_argument(
        "--expect",
        choices=(EXPECT_SERVER, EXPECT_ECHO),
        default=EXPECT_SERVER,
        help="what a correct reply is: the server's 'Server response' or an echo",
    )
    parser.add_argument(
        "--payload-bytes", type=cli.int_at_least(0), default=16, help="size of the data frame"
    )
    parser.add_argument(
        "--watch-pid",
        type=cli.int_at_least(1),
        action="append",
        default=[],
        help="a server process whose CPU time per reply to report, repeatable",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_load(
        args.connect,
        args.clients,
        args.duration_s,
        args.warmup_s,
        args.expect,
        args.payload_bytes,
        args.watch_pid,
    )
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
