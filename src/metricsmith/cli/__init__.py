"""The ``metricsmith`` command line (``python -m metricsmith.cli`` or the ``metricsmith`` script)."""

from metricsmith.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
