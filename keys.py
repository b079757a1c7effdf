"""CurveZMQ keys: generate them, and load them for the server and the client.

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

import argparse
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

import cli

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CurveKeyError(ValueError):
    """A key file that is missing, unreadable or not the kind expected."""


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
    """How many public certificates ``directory`` holds; raise if it is not a directory."""
    path = Path(directory)
    if not path.is_dir():
        raise CurveKeyError(f"authorized keys directory {directory} does not exist")
    return sum(1 for _ in path.glob(f"*{PUBLIC_SUFFIX}"))


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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="CurveZMQ key pairs for server.py and client.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate",
        help="write NAME.key (public) and NAME.key_secret (mode 0600) per NAME",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen.add_argument("names", nargs="+", metavar="NAME", help="one key pair per name")
    gen.add_argument(
        "--dir",
        type=Path,
        default=Path(cli.env("CURVE_KEYS_DIR", "keys")),
        help="where to write the key pairs (env CURVE_KEYS_DIR)",
    )
    gen.add_argument(
        "--authorize",
        type=Path,
        metavar="DIR",
        help="also copy each public key into DIR, the server's --curve-authorized-keys",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written = generate(args.dir, args.names, args.authorize)
    except (CurveKeyError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
