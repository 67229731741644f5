"""The retry policy of every job: which failures are transient, how often and how long to wait.

Transient = the database could not be reached or a statement lost a race it may win next
time: connection refused / reset / timed out, server starting or shutting down, admin
shutdown, too many clients, a lock that stayed busy (lock timeout, :class:`LockBusy`),
serialization failure, deadlock. A model whose SQL is wrong, a dbt compile error, a failing
data test or a user error is *not* transient: retrying would fail the same way.

One :class:`RetryPolicy` object drives both ways a job runs:

- **inside a Prefect flow run** :meth:`RetryPolicy.call` runs the attempt as a Prefect task with
  ``retries``, ``retry_delay_seconds`` (exponential backoff, capped), ``retry_jitter_factor``
  and ``retry_condition_fn`` = :meth:`RetryPolicy.retry_condition`: Prefect owns the retries
  and every attempt is a task run state in the UI (AwaitingRetry / Retrying);
- **without a Prefect server** (``metricsmith jobs run`` with none, ``run_job`` from Python) the
  same call runs the same attempt function with the same delays, jitter (Prefect's own
  ``clamped_poisson_interval``) and the same condition, in this process.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from metricsmith.core.pglock import LockBusy
from metricsmith.orchestration.context import in_flow_run

T = TypeVar("T")

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

_log = logging.getLogger("metricsmith.jobs")


def is_transient_message(message: str) -> bool:
    return bool(_TRANSIENT_RE.search(message or ""))


class AttemptFailed(RuntimeError):
    """One attempt of a job ended without doing all its work (e.g. dbt reported failed nodes);
    ``transient`` says whether another attempt may succeed; ``outcome`` is the job's own."""

    def __init__(self, message: str, *, transient: bool, outcome: Any = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.outcome = outcome


def is_transient(exc: BaseException) -> bool:
    """Classify an exception: :class:`AttemptFailed` by its flag, a busy lock as transient,
    psycopg by SQLSTATE, anything else by its message."""
    if isinstance(exc, AttemptFailed):
        return exc.transient
    if isinstance(exc, LockBusy):
        return True
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        if state and any(state.startswith(p) for p in TRANSIENT_SQLSTATES):
            return True
        if isinstance(exc, psycopg.OperationalError) and not state:
            return True  # connection-level failure without a server answer
    if not isinstance(exc, Exception):
        return False  # KeyboardInterrupt, SystemExit, cancellation: never retried
    return is_transient_message(str(exc))


def _state_exception(state: Any) -> BaseException | None:
    """The exception a failed Prefect state carries (its data, or its result)."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    try:
        result = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - no result to classify: not retried
        return None
    return result if isinstance(result, BaseException) else None


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; before retry n (1-based) wait ``base * 2**(n-1)`` seconds, capped
    at ``max_seconds``, jittered by ``jitter`` (Prefect's ``retry_jitter_factor``: at most
    ``1 + jitter`` times the delay, the average delay unchanged), so runs that failed together
    do not retry together."""

    attempts: int = 3
    base_seconds: float = 10.0
    max_seconds: float = 300.0
    jitter: float = 0.5

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

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)

    def delays(self) -> list[float]:
        """The (un-jittered) wait before each retry: exponential backoff, capped."""
        return [min(self.max_seconds, self.base_seconds * 2**n) for n in range(min(self.retries, 50))]

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry ``retry`` (1-based), jittered the way Prefect does it."""
        from prefect.utilities.math import clamped_poisson_interval

        full = self.delays()[min(retry, len(self.delays())) - 1]
        return clamped_poisson_interval(full, clamping_factor=self.jitter) if self.jitter and full > 0 else full

    def retry_condition(self, task: Any, task_run: Any, state: Any) -> bool:
        """Prefect's ``retry_condition_fn``: retry only a transient failure."""
        exc = _state_exception(state)
        return exc is not None and is_transient(exc)

    def task_options(self) -> dict[str, Any]:
        """The Prefect task options of this policy."""
        return {"retries": self.retries, "retry_delay_seconds": self.delays(),
                "retry_jitter_factor": self.jitter or None, "retry_condition_fn": self.retry_condition}

    def call(self, fn: Callable[[], T], *, name: str, sleep: Callable[[float], None] = time.sleep) -> T:
        """Run ``fn`` with this policy: a Prefect task with retries inside a flow run, else in
        this process with the same delays and condition. Raises the last attempt's exception."""
        if in_flow_run():
            from prefect import Task
            from prefect.cache_policies import NO_CACHE

            attempt: Task[[], T] = Task(fn, name=name, task_run_name=name, cache_policy=NO_CACHE, persist_result=False,
                                        **self.task_options())
            return attempt()
        return self.call_here(fn, name=name, sleep=sleep)

    def call_here(self, fn: Callable[[], T], *, name: str, sleep: Callable[[float], None] = time.sleep) -> T:
        """What Prefect's task engine does with :meth:`task_options`, without a server."""
        retry = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if retry >= self.retries or not is_transient(exc):
                    raise
                retry += 1
                wait = self.delay(retry)
                _log.warning("%s failed with a transient error: %s - retry %d/%d in %.1f s", name,
                             str(exc)[:500], retry, self.retries, wait)
                sleep(wait)
