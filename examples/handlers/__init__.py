"""Example request handlers, each a module of its own (docs/handlers.md).

From the project directory: ``--handler examples.handlers.echo:echo``; from anywhere,
with this directory on ``PYTHONPATH``: ``--handler echo:echo``.
"""
