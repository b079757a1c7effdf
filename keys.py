"""CurveZMQ key pairs for the server and its clients: `python3 keys.py --help`.

A thin entry point: the command is ``reqrep.commands.keys`` (also ``python -m reqrep``)."""

import sys

from reqrep.commands.keys import main

if __name__ == "__main__":
    sys.exit(main())
