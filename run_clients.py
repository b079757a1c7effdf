"""Many clients at once, interleaved output, a summary: `python3 run_clients.py --help`.

A thin entry point: the command is ``reqrep.commands.run_clients`` (also ``python -m reqrep``)."""

import sys

from reqrep.commands.run_clients import main

if __name__ == "__main__":
    sys.exit(main())
