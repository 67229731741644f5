"""Retry policy: a few attempts with exponential backoff and jitter, for transient errors only.

Transient = the database could not be reached or the statement lost a race it may win next
time: connection refused / reset / timed out, server starting or shutting down, admin
shutdown, lock timeout, serialization failure, deadlock. A model whose SQL is wrong or a
failing data test is *not* transient: retrying would fail the same way.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass

import psycopg

#: SQLSTATE classes / codes that are worth another attempt
TRANSIENT_SQLSTATES = ("08", "40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300")

_TRANSIENT_PATTERNS = [
    r"connection refused",
    r"could not connect to server",
    r"connection to server at .* failed",
    r"server closed the connection unexpectedly",
    r"connection (?:reset|timed out|timeout)",
    r"timeout expired",
    r"could not translate host name",
    r"the database system is (?:starting up|shutting down|in recovery mode)",
    r"terminating connection due to administrator command",
    r"too many clients already",
    r"canceling statement due to lock timeout",
    r"lock timeout",
    r"could not obtain lock",
    r"could not serialize access",
    r"serialization failure",
    r"deadlock detected",
    r"ssl syscall error",
    r"no route to host",
    r"network is unreachable",
]
_TRANSIENT_RE = re.compile("|".join(_TRANSIENT_PATTERNS), re.IGNORECASE)


def is_transient_message(message: str) -> bool:
    return bool(_TRANSIENT_RE.search(message or ""))


def is_transient(exc: BaseException) -> bool:
    """Classify an exception (psycopg by SQLSTATE, anything else by its message)."""
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        if state and any(state.startswith(p) for p in TRANSIENT_SQLSTATES):
            return True
        if isinstance(exc, psycopg.OperationalError) and not state:
            return True  # connection-level failure without a server answer
    return is_transient_message(str(exc))


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; before try n+1 wait ``base * 2**(n-1)`` (capped) with jitter:
    uniformly between half and all of that delay, so runs that failed together do not retry together."""

    attempts: int = 3
    base_seconds: float = 10.0
    max_seconds: float = 300.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        def num(name: str, default: float) -> float:
            value = os.environ.get(name)
            return float(value) if value else default

        return cls(
            attempts=max(1, int(num("METRICSMITH_JOB_ATTEMPTS", 3))),
            base_seconds=max(0.0, num("METRICSMITH_JOB_RETRY_BASE_SECONDS", 10.0)),
            max_seconds=max(0.0, num("METRICSMITH_JOB_RETRY_MAX_SECONDS", 300.0)),
        )

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        full = min(self.max_seconds, self.base_seconds * (2 ** (attempt - 1)))
        return full / 2 + (rng or random).uniform(0, full / 2)
