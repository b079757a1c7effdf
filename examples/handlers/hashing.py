"""A CPU-bound handler: SHA-256 applied over and over to the data, in Python.

    python3 server.py --handler examples.handlers.hashing:stretch

The answer is the hex digest after ``HASH_ROUNDS`` rounds (default 2000): round 1
hashes the data, each later round the previous round's 32-byte digest. The work
holds Python's GIL (hashlib releases it only for inputs over 2 KiB, and these are
32 bytes), so it scales with replicas, which are processes, and not with
``--threads``, which share one GIL: docs/handlers.md#scale-it.
"""

from __future__ import annotations

import hashlib
import os

from reqrep import ConfigError, Request

ROUNDS_ENV = "HASH_ROUNDS"
DEFAULT_ROUNDS = 2000


def rounds_from_env() -> int:
    """``HASH_ROUNDS``, checked: a ``ConfigError`` ends the server at once with one line."""
    text = os.environ.get(ROUNDS_ENV, str(DEFAULT_ROUNDS))
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{ROUNDS_ENV} must be a whole number of rounds, at least 1: {text!r}")
    return int(text)


ROUNDS = rounds_from_env()


def stretch(request: Request) -> bytes:
    """The hex digest after ROUNDS rounds of SHA-256 over the data."""
    digest = request.data
    for _ in range(ROUNDS):
        digest = hashlib.sha256(digest).digest()
    return digest.hex().encode()
