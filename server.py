"""The server replica, until SIGTERM or SIGINT: `python3 server.py --help`.

A thin entry point: the command is ``reqrep.commands.server`` (also ``python -m reqrep``)."""

import sys

from reqrep.commands.server import main

if __name__ == "__main__":
    sys.exit(main())
