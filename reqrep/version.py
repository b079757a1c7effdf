"""The package's version: one place, read by ``reqrep.__version__``, the metrics' build info
and the package's metadata (pyproject.toml)."""

__version__ = "2.0.0"
