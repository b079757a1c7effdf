"""The demo client, numbered requests, request 2 malformed: `python3 client.py --help`.

A thin entry point: the command is ``reqrep.commands.client`` (also ``python -m reqrep``)."""

import sys

from reqrep.commands.client import main

if __name__ == "__main__":
    sys.exit(main())
