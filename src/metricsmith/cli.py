"""The ``metricsmith`` command line.

Each capability keeps its own sub-commands in its own module (``commands_*.py``) exposing
``register(subparsers)``; this file only assembles them. Handlers return an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from metricsmith.config import ConfigError
from metricsmith.errors import UserFacingError

#: Modules that add sub-commands. Each has ``register(subparsers) -> None``.
COMMAND_MODULES = [
    "metricsmith.commands_core",
    "metricsmith.commands_rollups",
    "metricsmith.demo",
    "metricsmith.commands_query",
    "metricsmith.commands_realtime",
    "metricsmith.commands_orchestration",
    "metricsmith.commands_metrics",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metricsmith",
        description="Trustworthy product metrics: raw events -> daily / weekly / monthly metrics.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"metricsmith: configuration error: {exc}", file=sys.stderr)
        return 2
    except UserFacingError as exc:
        print(f"metricsmith: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # embedded server / file problems
        print(f"metricsmith: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metricsmith: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
