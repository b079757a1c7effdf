"""CurveZMQ key pairs for server.py and client.py: parse the command line, write the keys.

    python3 keys.py generate --dir keys server
    python3 keys.py generate --dir keys --authorize keys/authorized client1 client2

See ``reqrep.keys`` for what is written and how server and client load it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reqrep import cli
from reqrep.keys import CurveKeyError, generate


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
