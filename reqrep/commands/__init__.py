"""The commands: ``python -m reqrep server|client|run-clients|keys`` (and the ``reqrep``
script), and the project's top-level ``server.py``, ``client.py``, ``run_clients.py`` and
``keys.py``, which call these. Each module parses its command line and calls the package."""
