"""A connection flood from one address, for tests/system/test_compose_faults.py.

Runs inside a container on the stack's network (standard library only):
``python flood.py HOST PORT IDLE GARBAGE LIMIT_S`` opens IDLE raw TCP
connections that send nothing and GARBAGE ones that send 64 random bytes,
holds them, and opens each one closed by the other side again a second later,
until SIGTERM or LIMIT_S seconds. A connection nginx refuses is closed before
any byte arrives; one let through gets the replica's ZMTP greeting. Prints
``ready`` once the first wave is in, and at the end its counts as one JSON line.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field

REOPEN_S = 1.0
GARBAGE_BYTES = 64


@dataclass
class Counts:
    address: str = ""
    opened: int = 0
    refused: int = 0  # closed by the other side before any byte
    let_through: int = 0  # got bytes: reached a replica
    closed_after: int = 0  # closed by the other side after some bytes
    most_open_through: int = 0  # the most connections let through open at once


@dataclass
class Flood:
    host: str
    port: int
    counts: Counts = field(default_factory=Counts)
    selector: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)
    reopen: list[tuple[float, bool]] = field(default_factory=list)

    def open(self, garbage: bool) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=2)
        except OSError:
            self.reopen.append((time.monotonic() + REOPEN_S, garbage))
            return
        self.counts.address = sock.getsockname()[0]
        self.counts.opened += 1
        if garbage:
            sock.sendall(os.urandom(GARBAGE_BYTES))
        sock.setblocking(False)
        # data: [sends garbage, bytes received]
        self.selector.register(sock, selectors.EVENT_READ, [garbage, 0])

    def step(self) -> None:
        now = time.monotonic()
        while self.reopen and self.reopen[0][0] <= now:
            self.open(self.reopen.pop(0)[1])
        newly_through = False
        for key, _ in self.selector.select(timeout=0.05):
            sock, data = key.fileobj, key.data
            assert isinstance(sock, socket.socket)
            try:
                chunk = sock.recv(4096)
            except OSError:
                chunk = b""
            if chunk:
                newly_through |= data[1] == 0
                self.counts.let_through += data[1] == 0
                data[1] += len(chunk)
                continue
            self.selector.unregister(sock)
            sock.close()
            if data[1] == 0:
                self.counts.refused += 1
            else:
                self.counts.closed_after += 1
            self.reopen.append((now + REOPEN_S, data[0]))
        if newly_through:  # the most open at once can only grow when one gets through
            self.count_open_through()

    def count_open_through(self) -> None:
        through = sum(
            1 for key in self.selector.get_map().values() if key.data[1] > 0 and is_open(key)
        )
        self.counts.most_open_through = max(self.counts.most_open_through, through)


def is_open(key: selectors.SelectorKey) -> bool:
    """Whether the other side has not closed it, even if its end was not read yet."""
    sock = key.fileobj
    assert isinstance(sock, socket.socket)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return True  # nothing to read: open
    except OSError:
        return False


def main(argv: list[str]) -> int:
    host, port, idle, garbage, limit_s = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), argv[4]
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(signal.SIGTERM))
    flood = Flood(host, port)
    # Interleaved, so that both kinds get through nginx's limit.
    kinds = [False] * idle + [True] * garbage
    for sends_garbage in kinds[::2] + kinds[1::2]:
        flood.open(sends_garbage)
    ready_at = time.monotonic() + 1.0
    deadline = time.monotonic() + float(limit_s)
    while not stop and time.monotonic() < deadline:
        flood.step()
        if ready_at and time.monotonic() >= ready_at:
            print("ready", flush=True)
            ready_at = 0.0
    print(json.dumps(asdict(flood.counts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
