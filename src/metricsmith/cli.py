"""The ``metricsmith`` command line.

Each capability keeps its own sub-commands in its own module (``commands_*.py``) exposing
``register(subparsers)``; this file only assembles them. Handlers return an exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from metricsmith.errors import EXIT_BROKEN_PIPE, EXIT_STATUSES, classify

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


def _epilog() -> str:
    lines = ["exit status:"] + [f"  {code:<4} {meaning}" for code, meaning in EXIT_STATUSES]
    lines.append("Errors are one line on stderr, prefixed with 'metricsmith:'.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metricsmith",
        description="Trustworthy product metrics: raw events -> daily / weekly / monthly metrics.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _quiet_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's last flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. The one error boundary: whatever a command raises ends as one line on
    stderr and an exit status from :data:`metricsmith.errors.EXIT_STATUSES`."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        status = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the boundary
        return status
    except SystemExit:
        raise  # argparse: usage errors (2), --help (0)
    except BaseException as exc:  # noqa: BLE001 - the boundary
        code, message = classify(exc)
        if code == EXIT_BROKEN_PIPE:
            _quiet_stdout()
            return code
        if os.environ.get("METRICSMITH_TRACEBACK", "").strip().lower() in ("1", "true", "yes", "on"):
            traceback.print_exc()
        with contextlib.suppress(OSError, ValueError):
            print(f"metricsmith: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
