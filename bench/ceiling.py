"""The ceiling: the least a ZeroMQ reply server can do, a synchronous REP echo loop.

    python -m bench.ceiling --bind tcp://127.0.0.1:*

Echoes every request until killed (SIGTERM's default action ends it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import zmq


def command(port: int) -> list[str]:
    """The command line that runs the ceiling on 127.0.0.1:``port``."""
    return [sys.executable, "-m", "bench.ceiling", "--bind", f"tcp://127.0.0.1:{port}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Synchronous pyzmq REP echo loop.")
    parser.add_argument("--bind", default="tcp://127.0.0.1:*", help="endpoint to bind")
    args = parser.parse_args(argv)
    sock = zmq.Context().socket(zmq.REP)
    sock.bind(args.bind)
    while True:
        sock.send_multipart(sock.recv_multipart())


if __name__ == "__main__":
    sys.exit(main())
