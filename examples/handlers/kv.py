"""A small key-value store on SQLite: a handler with state and blocking I/O.

    KV_PATH=/tmp/kv.sqlite3 python3 server.py --handler examples.handlers.kv:handle --threads 4

Requests (the data frame; keys are UTF-8, values any bytes):

    SET key value     store value under key; answers "OK"
    GET key           the value; NoSuchKey ("Server error") if there is none
    DEL key           remove it; answers "1" if it was there, else "0"

Anything else is answered ``Server error`` with ``BadCommand: ...``. SET and DEL
leave the same state when a client's retry sends them twice (docs/reliability.md).

SQLite blocks the thread that calls it, so this handler is synchronous and meant
for ``--threads N``: the replica's event loop keeps answering (pings, other requests,
SIGTERM) while a thread waits on the disk. Each thread has its own connection; the
database file is ``KV_PATH`` (default ``kv.sqlite3`` in the working directory), in
WAL mode so that readers do not wait for a writer. Several replicas may share one
file on one host; across hosts, use a real database.
"""

from __future__ import annotations

import os
import sqlite3
import threading

from reqrep import Request

PATH_ENV = "KV_PATH"
DEFAULT_PATH = "kv.sqlite3"
# How long a write waits for another connection's write to finish.
BUSY_TIMEOUT_S = 5.0
_local = threading.local()
# Switching the journal to WAL and making the table take the whole database: one thread at a
# time (done at once they can fail with "database is locked" instead of waiting).
_setting_up = threading.Lock()


class NoSuchKey(LookupError):
    """GET of a key that is not stored."""


class BadCommand(ValueError):
    """Not SET, GET or DEL with its arguments."""


def _database() -> sqlite3.Connection:
    """This thread's connection, opened (and the table made) on first use."""
    connection: sqlite3.Connection | None = getattr(_local, "connection", None)
    if connection is None:
        path = os.environ.get(PATH_ENV, DEFAULT_PATH)
        # Autocommit: each statement is its own transaction, which waits for another writer.
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        with _setting_up:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB)")
        _local.connection = connection
    return connection


def _parse(data: bytes) -> tuple[bytes, str, bytes]:
    """``COMMAND key [value]`` as (command, key, value); BadCommand if there is no key."""
    command, _, rest = data.partition(b" ")
    key, _, value = rest.partition(b" ")
    if not key:
        raise BadCommand(f"expected SET key value, GET key or DEL key, not {data[:40]!r}")
    try:
        return command, key.decode("utf-8"), value
    except UnicodeDecodeError:
        raise BadCommand(f"the key is not UTF-8: {key[:40]!r}") from None


def handle(request: Request) -> bytes:
    command, key, value = _parse(request.data)
    db = _database()
    if command == b"SET":
        db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))
        return b"OK"
    if command == b"GET":
        row = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise NoSuchKey(f"no such key: {key}")
        return bytes(row[0])
    if command == b"DEL":
        removed = db.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount
        return b"1" if removed else b"0"
    raise BadCommand(f"unknown command {command[:10]!r}: expected SET, GET or DEL")
