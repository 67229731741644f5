"""Errors the CLI prints as one clear line instead of a traceback, and their exit statuses.

:func:`metricsmith.cli.main` is the one error boundary: every exception a command raises goes
through :func:`classify`, which gives the exit status and the line to print. The statuses are
listed in :data:`EXIT_STATUSES` (shown by ``metricsmith --help`` and in the README).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

#: the command worked
EXIT_OK = 0
#: the command ran but reports a problem it documents (quarantined rows, degraded cache, drift...)
EXIT_PROBLEM = 1
#: bad input: a usage error, a bad argument or file, a setting to fix (the line says what)
EXIT_USAGE = 2
#: PostgreSQL or Redis unreachable, or the connection was lost mid-command: retry when it is back
EXIT_UNAVAILABLE = 3
#: an unexpected error (a bug): one line; METRICSMITH_TRACEBACK=1 shows the traceback
EXIT_INTERNAL = 70
#: interrupted (Ctrl-C)
EXIT_INTERRUPTED = 130
#: stdout was closed by its reader (``metricsmith ... | head``): quiet, as for SIGPIPE
EXIT_BROKEN_PIPE = 141

EXIT_STATUSES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_PROBLEM, "the command ran and reports a problem (quarantined rows, degraded cache, drift, "
                   "health degraded; see the command)"),
    (EXIT_USAGE, "bad input: usage, argument, file or setting (health: failing)"),
    (EXIT_UNAVAILABLE, "PostgreSQL or Redis unreachable, or the connection was lost: retry when it is back"),
    (EXIT_INTERNAL, "unexpected error (a bug; METRICSMITH_TRACEBACK=1 shows the traceback)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
    (EXIT_BROKEN_PIPE, "stdout closed by the reader (e.g. `| head`): nothing printed"),
)


class UserFacingError(RuntimeError):
    """Something the user can fix: the message says what and how (exit status 2)."""


class ServiceUnavailable(UserFacingError):
    """PostgreSQL or Redis cannot be reached (exit status 3)."""


#: how a server that went away reads in a message that lost its exception (dbt's, for one)
_LOST = re.compile(
    r"connection refused|could not connect to server|server closed the connection unexpectedly|"
    r"terminating connection due to administrator command|connection to server .* failed|"
    r"the database system is (starting up|shutting down|in recovery mode)|connection already closed",
    re.IGNORECASE,
)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for an integer of at least ``minimum`` (a usage error otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def port_number(text: str) -> int:
    """An argparse ``type`` for a TCP port (0 = any free port)."""
    value = int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0-65535)")
    return value


def one_line(text: str, limit: int = 400) -> str:
    """``text`` with its line breaks and runs of blanks folded into single spaces."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 20:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _unavailable(exc: BaseException) -> str | None:
    """The one-line reason when ``exc`` is (or was caused by) a lost/unreachable server."""
    import psycopg
    import redis

    if isinstance(exc, ServiceUnavailable):
        return str(exc)
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return f"Redis unavailable: {exc} (check METRICSMITH_REDIS_URL or `metricsmith status`)"
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return f"PostgreSQL unavailable: {exc} (check METRICSMITH_DATABASE_URL or `metricsmith status`)"
    if isinstance(exc, (ConnectionError, TimeoutError)):  # OSError subclasses: refused, reset, timed out
        return f"connection lost: {exc}"
    return None


def classify(exc: BaseException) -> tuple[int, str | None]:
    """``(exit status, line to print or None)`` for an exception that reached the CLI."""
    from metricsmith.config import ConfigError

    if isinstance(exc, BrokenPipeError):
        return EXIT_BROKEN_PIPE, None
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    for link in _chain(exc):
        reason = _unavailable(link)
        if reason is not None:  # a command's own explanation beats the driver's
            return EXIT_UNAVAILABLE, one_line(str(exc) if isinstance(exc, UserFacingError) else reason)
    if isinstance(exc, UserFacingError) and _LOST.search(str(exc)):  # e.g. dbt's report of a lost server
        return EXIT_UNAVAILABLE, one_line(str(exc))
    if isinstance(exc, ConfigError):
        return EXIT_USAGE, one_line(f"configuration error: {exc}")
    if isinstance(exc, (UserFacingError, OSError)):  # OSError: files, the embedded servers
        return EXIT_USAGE, one_line(str(exc) or type(exc).__name__)
    return EXIT_INTERNAL, one_line(f"internal error: {type(exc).__name__}: {exc} "
                                   "(METRICSMITH_TRACEBACK=1 shows the traceback)")
