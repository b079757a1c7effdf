"""``reqrep keys`` (``keys.py``): CurveZMQ key pairs for the server and its clients.

    python3 keys.py generate --dir keys server
    python3 keys.py generate --dir keys --authorize keys/authorized client1 client2

See ``reqrep.keys`` for what is written and how server and client load them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from reqrep import cli
from reqrep.errors import CurveKeyError
from reqrep.keys import KEYS_DIR_ENV, generate

DEFAULT_DIR = "keys"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = cli.parser(prog, "CurveZMQ key pairs for the server and its clients.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate", help="write NAME.key (public) and NAME.key_secret (mode 0600) per NAME"
    )
    gen.add_argument("names", nargs="+", metavar="NAME", help="one key pair per name")
    from_env = os.environ.get(KEYS_DIR_ENV)
    gen.add_argument(
        "--dir",
        type=Path,
        default=Path(from_env or DEFAULT_DIR),
        help="where to write the key pairs "
        f"({cli.default_note(KEYS_DIR_ENV, from_env, from_env or DEFAULT_DIR)})",
    )
    gen.add_argument(
        "--authorize",
        type=Path,
        metavar="DIR",
        help="also copy each public key into DIR, the server's --curve-authorized-keys",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
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
