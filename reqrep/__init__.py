"""An asynchronous ZeroMQ request/reply service: protocol, server, client, local stack.

- ``reqrep.protocol``: the wire format, pure functions over ``list[bytes]``;
- ``reqrep.config``: every default (server, client, request plan);
- ``reqrep.server`` / ``reqrep.client``: the asyncio server replica and the Lazy Pirate client;
- ``reqrep.frames``: the server's hot-path frame I/O (the one place on pyzmq internals);
- ``reqrep.metrics``: a replica's Prometheus metrics and their HTTP endpoint (``--metrics-port``);
- ``reqrep.report``: the JSON report schema that clients, run_clients and benchmarks share;
- ``reqrep.runner``: many client processes at once; ``reqrep.stack``: replicas + nginx on loopback;
- ``reqrep.keys``: CurveZMQ keys; ``reqrep.cli``: the entry points' argparse/env/logging plumbing.
"""

__version__ = "1.1.0"
