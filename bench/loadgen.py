"""The load generator of ``bench.run``'s rows: many callers in one process, a DEALER each.

Each caller keeps exactly one request outstanding, like a REQ client: it sends
``[b"", address, data]`` (the empty delimiter makes the envelope look like a
REQ socket's to the server) and sends the next request as soon as the reply is
in. One synchronous ``zmq.Poller`` loop drives all of them, so the generator
costs one Python thread plus ZeroMQ's I/O thread, whatever the caller count.
Frames go out and come in through the same lean send/receive helpers the
server uses (pyzmq's *_multipart sugar costs more per frame).

Only correct replies count: ``Server response`` from the project's server, or
the request itself from the echo ceiling. The measured window and both sides'
CPU time are ``bench.recorder``'s, as in every load process of the harness.

    python -m bench.loadgen --connect tcp://127.0.0.1:5555 --callers 16 --duration-s 3

prints one JSON object (``bench.recorder.LoadResult``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict

import zmq

from bench.recorder import LoadResult, Recorder
from reqrep import cli, protocol
from reqrep.frames import recv_now, send_now

EXPECT_SERVER = "server"
EXPECT_ECHO = "echo"
POLL_MS = 50
LOOP = "poll"  # what drives the callers: one zmq.Poller loop


def command(endpoints: Sequence[str], expect: str = EXPECT_SERVER) -> list[str]:
    """The generator's command line for ``endpoints``, before the harness's window flags."""
    argv = [sys.executable, "-m", "bench.loadgen", "--expect", expect]
    for endpoint in endpoints:
        argv += ["--connect", endpoint]
    return argv


def _is_correct(expect: str, request: list[bytes], reply: list[bytes]) -> bool:
    if expect == EXPECT_ECHO:
        return reply == request
    # [delimiter, status, replica, detail]: a DEALER sees the REQ-style envelope.
    return len(reply) == 1 + protocol.REPLY_FRAMES and reply[1] == protocol.SERVER_RESPONSE


def run_load(
    endpoints: Sequence[str],
    callers: int,
    duration_s: float,
    warmup_s: float,
    expect: str = EXPECT_SERVER,
    payload_bytes: int = 16,
    server_pids: Sequence[int] = (),
) -> LoadResult:
    """Drive ``callers`` closed-loop callers for ``warmup_s`` + ``duration_s``."""
    if callers < 1:
        raise ValueError("at least one caller is needed")
    if expect not in (EXPECT_SERVER, EXPECT_ECHO):
        raise ValueError(f"expect must be {EXPECT_SERVER!r} or {EXPECT_ECHO!r}")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sockets: list[zmq.Socket[bytes]] = []
    try:
        poller = zmq.Poller()
        for _ in range(callers):
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            for endpoint in endpoints:
                sock.connect(endpoint)
            poller.register(sock, zmq.POLLIN)
            sockets.append(sock)
        # The empty delimiter makes a DEALER's envelope look like a REQ socket's.
        requests = [
            [b"", *protocol.encode_request(f"bench-caller-{i}", b"x" * payload_bytes)]
            for i in range(callers)
        ]
        recorder = Recorder(server_pids, callers, callers, LOOP)
        _drive(poller, sockets, requests, duration_s, warmup_s, expect, recorder)
        return recorder.result()
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
    recorder: Recorder,
) -> None:
    clock = time.perf_counter
    index = {sock: i for i, sock in enumerate(sockets)}
    open_at = clock() + warmup_s
    close_at = open_at + duration_s
    sent_at = [0.0] * len(sockets)
    for i, sock in enumerate(sockets):
        sent_at[i] = clock()
        send_now(sock, requests[i])
    opened = False
    while (now := clock()) < close_at:
        if not opened and now >= open_at:
            recorder.open()
            opened = True
        for sock, _ in poller.poll(POLL_MS):
            i = index[sock]
            reply = recv_now(sock)
            now = clock()
            recorder.record(sent_at[i], now, _is_correct(expect, requests[i], reply))
            sent_at[i] = now
            send_now(sock, requests[i])
    if opened:
        recorder.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Closed-loop ZeroMQ load generator: N DEALER callers in one process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--connect", action="append", required=True, help="endpoint, repeatable")
    parser.add_argument(
        "--callers", type=cli.int_at_least(1), default=16, help="concurrent callers"
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
        "--server-pid",
        type=cli.int_at_least(1),
        action="append",
        default=[],
        help="a server process whose CPU time per reply to report (children included), repeatable",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_load(
        args.connect,
        args.callers,
        args.duration_s,
        args.warmup_s,
        args.expect,
        args.payload_bytes,
        args.server_pid,
    )
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
