"""The ``metricsmith`` command line: assembles the command groups and holds the error boundary.

Each command group is one module of this package (``core``, ``rollups``, ``query``, ...)
exposing ``register(subparsers)``; handlers return an exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Sequence

from metricsmith import demo
from metricsmith.cli import alerts, api, core, metrics, orchestration, query, realtime, redis_cluster, rollups
from metricsmith.cli import spark as spark_commands
from metricsmith.config import ConfigError, env_flag
from metricsmith.errors import EXIT_BROKEN_PIPE, EXIT_STATUSES, classify

#: The command groups, in the order ``--help`` lists them.
COMMAND_GROUPS = [core, rollups, demo, query, realtime, redis_cluster, spark_commands, orchestration, metrics, alerts,
                  api]


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
    for group in COMMAND_GROUPS:
        group.register(sub)
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
        with contextlib.suppress(ConfigError):  # a bad value must not hide the error being reported
            if env_flag("METRICSMITH_TRACEBACK", os.environ.get("METRICSMITH_TRACEBACK")):
                traceback.print_exc()
        with contextlib.suppress(OSError, ValueError):
            print(f"metricsmith: {message}", file=sys.stderr)
        return code
