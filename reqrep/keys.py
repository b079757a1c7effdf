"""CurveZMQ keys: generate them, and load them for the server and the client.

The command line is ``reqrep keys`` (the top-level ``keys.py``):

    python3 keys.py generate --dir keys server
    python3 keys.py generate --dir keys --authorize keys/authorized client1 client2

``generate`` writes, per NAME, ``NAME.key`` (the public certificate, safe to
share) and ``NAME.key_secret`` (public and secret key, mode 0600, never to
leave the machine it is for). ``--authorize DIR`` also copies each public
certificate into DIR, the directory the server is given with
``--curve-authorized-keys``: a client may connect if and only if its public
certificate is in there. Existing files are never overwritten.

The server takes its own ``.key_secret`` (``--curve-secret-key``); a client
takes the server's public ``.key`` (``--curve-server-key``) and its own
``.key_secret`` (``--curve-secret-key``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

from reqrep.errors import CurveKeyError

logger = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
KEYS_DIR_ENV = "CURVE_KEYS_DIR"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CURVE key pair, both halves Z85-encoded (40 bytes each)."""

    public: bytes
    secret: bytes


def _load(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise CurveKeyError(f"cannot read CURVE certificate {path}: {error}") from None
    if not public:
        raise CurveKeyError(f"{path} holds no public key")
    return public, secret


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The public key in a certificate file (``.key`` or ``.key_secret``)."""
    return _load(path)[0]


def load_key_pair(path: str | os.PathLike[str]) -> KeyPair:
    """The key pair in a secret certificate file (``.key_secret``)."""
    public, secret = _load(path)
    if not secret:
        raise CurveKeyError(f"{path} holds no secret key: pass the .key_secret file")
    return KeyPair(public, secret)


def ephemeral_key_pair() -> KeyPair:
    """A fresh key pair, for a client that encrypts but is not authorized by key."""
    public, secret = zmq.curve_keypair()
    return KeyPair(public, secret)


@dataclass(frozen=True, slots=True)
class ClientCurve:
    """What a client socket needs for CURVE: the server's public key and its own pair."""

    server_key: bytes
    pair: KeyPair

    @classmethod
    def load(
        cls, server_key: str | os.PathLike[str] | None, secret_key: str | os.PathLike[str] | None
    ) -> ClientCurve | None:
        """From the two certificate paths; None if CURVE is off (no server key).

        Without a secret key the client gets a throwaway key pair: encrypted,
        but refused by a server that checks client keys.
        """
        if server_key is None:
            if secret_key is not None:
                raise CurveKeyError("a CURVE secret key needs the server's public key too")
            return None
        pair = ephemeral_key_pair() if secret_key is None else load_key_pair(secret_key)
        return cls(load_public_key(server_key), pair)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client; before it connects."""
        sock.curve_serverkey = self.server_key
        sock.curve_publickey = self.pair.public
        sock.curve_secretkey = self.pair.secret


def check_authorized_keys(directory: str | os.PathLike[str]) -> int:
    """How many public certificates ``directory`` holds; ``CurveKeyError`` if it is not a
    directory, or holds none (every client would be refused)."""
    path = Path(directory)
    if not path.is_dir():
        raise CurveKeyError(f"authorized keys directory {directory} does not exist")
    count = sum(1 for _ in path.glob(f"*{PUBLIC_SUFFIX}"))
    if count == 0:
        raise CurveKeyError(
            f"no client public key (*{PUBLIC_SUFFIX}) in {directory}: every client would be "
            f"refused; add one with `python3 keys.py generate --authorize {directory} NAME`"
        )
    return count


def generate(directory: Path, names: Sequence[str], authorize: Path | None = None) -> list[Path]:
    """Create a certificate pair per name; return the files written."""
    for name in names:
        if not _NAME.fullmatch(name):
            raise CurveKeyError(f"not a usable key name: {name!r} (letters, digits, . _ -)")
    suffixes = (PUBLIC_SUFFIX, SECRET_SUFFIX)
    targets = [directory / f"{name}{suffix}" for name in names for suffix in suffixes]
    if authorize is not None:
        targets += [authorize / f"{n}{PUBLIC_SUFFIX}" for n in names]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise CurveKeyError(f"refusing to overwrite {', '.join(existing)}")
    directory.mkdir(parents=True, exist_ok=True)
    if authorize is not None:
        authorize.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in names:
        # The secret file is created private (umask), not made private afterwards.
        umask = os.umask(0o077)
        try:
            public_file, secret_file = zmq.auth.create_certificates(directory, name)
        finally:
            os.umask(umask)
        os.chmod(public_file, 0o644)
        written += [Path(public_file), Path(secret_file)]
        if authorize is not None:
            written.append(Path(shutil.copy(public_file, authorize / f"{name}{PUBLIC_SUFFIX}")))
    return written


def secure_server(
    sock: zmq.Socket[Any],
    context: zmq.Context[Any],
    secret_key: str | None,
    authorized_keys: str | None,
) -> AsyncioAuthenticator | None:
    """Make ``sock`` a CURVE server, with ZAP checking client keys, if configured.

    Returns the authenticator to stop when the socket closes (None without
    ``authorized_keys``). It is started before the socket binds, so no
    handshake can happen without it, and runs in the running event loop.
    """
    if secret_key is None:
        if authorized_keys is not None:
            raise CurveKeyError("--curve-authorized-keys needs --curve-secret-key")
        return None
    pair = load_key_pair(secret_key)
    authenticator = None
    if authorized_keys is not None:
        count = check_authorized_keys(authorized_keys)
        asyncio.get_running_loop()  # raises outside the loop that will answer ZAP
        authenticator = AsyncioAuthenticator(context)
        authenticator.start()
        # No allow(): every IP may try (behind nginx they all look alike); the key decides.
        authenticator.configure_curve(domain="*", location=authorized_keys)
        logger.info("CURVE on: %d authorized client key(s) in %s", count, authorized_keys)
    else:
        logger.warning("CURVE on without --curve-authorized-keys: any client key is accepted")
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public
    sock.curve_server = True
    return authenticator
