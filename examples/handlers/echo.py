"""The smallest handler: the request's data, back.

From the project directory, or from anywhere with this directory on PYTHONPATH:

    python3 server.py --handler examples.handlers.echo:echo
    SERVER_HANDLER=echo:echo PYTHONPATH=examples/handlers python3 server.py
"""

from reqrep import Request


def echo(request: Request) -> bytes:
    """Synchronous and quick: it runs in the replica's event loop (no --threads needed)."""
    return request.data


async def echo_async(request: Request) -> bytes:
    """The same as an ``async def``: awaited as a task, at most --max-inflight at once."""
    return request.data
