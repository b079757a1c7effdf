"""``python -m reqrep COMMAND ...`` (and the ``reqrep`` script): the package's commands.

python -m reqrep server --handler mypackage.handlers:echo
python -m reqrep client --connect tcp://localhost:5555
python -m reqrep run-clients --local 3
python -m reqrep keys generate --dir keys server
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from reqrep.commands import client, keys, run_clients, server

COMMANDS: dict[str, Callable[[Sequence[str], str], int]] = {
    "server": server.main,
    "client": client.main,
    "run-clients": run_clients.main,
    "keys": keys.main,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reqrep",
        description="Asynchronous ZeroMQ request/reply: server replicas, clients, keys.",
        epilog="Each command has its own --help, e.g. `reqrep server --help`.",
    )
    parser.add_argument("command", choices=COMMANDS, help="what to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    args = parser.parse_args(argv)
    return COMMANDS[args.command](args.args, f"{parser.prog} {args.command}")


if __name__ == "__main__":
    sys.exit(main())
