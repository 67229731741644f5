"""The one job runner: every job (the dbt jobs of :mod:`metricsmith.orchestration.jobs`, the
custom-metrics job) runs through :func:`run`, which owns the protocol around the job's work.

Per run:

1. connect and take the job's advisory lock (``core.pglock.job_lock``; wait at most
   ``lock_wait_seconds``). If another run still holds it, log a FAILED row marked ``skipped``
   and stop: no double work;
2. mark abandoned RUNNING rows FAILED (we hold the lock; never our own row, nor one whose owner
   is still alive - :func:`joblog.mark_stale`);
3. insert this run's RUNNING row with its owner (token, host, pid, lock backend pid). After a
   lost connection (PostgreSQL restart) the next attempt reconnects, takes the lock again and
   keeps updating the same row; if another run took the lock meanwhile, this run ends its row
   FAILED saying so;
4. run the job's :meth:`Work.attempt` under the :class:`RetryPolicy` (Prefect task retries in a
   flow run, the same policy in-process without a server): transient failures are retried with
   backoff, anything else ends the run at once;
5. end the row with exactly one final status - COMPLETED, PARTIAL (some models built, others
   failed) or FAILED - with the job's effects (rows, periods touched, latest growth). An
   interrupted run (Ctrl-C, cancelled flow run) ends its row FAILED ``interrupted: ...``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol

import psycopg

from metricsmith import db
from metricsmith.config import Settings, load_settings
from metricsmith.core import pglock
from metricsmith.core.status import JobStatus
from metricsmith.orchestration import joblog
from metricsmith.orchestration.context import flow_run_context, in_flow_run
from metricsmith.orchestration.retry import AttemptFailed, RetryPolicy, is_transient


@dataclass(frozen=True)
class Outcome:
    """What one attempt did. ``error_message`` None = all done; ``payload`` is the job's own
    record (e.g. the dbt outcome) for its :meth:`Work.effects`."""

    models_ok: int = 0
    models_failed: int = 0
    error_message: str | None = None
    transient: bool = False
    payload: Any = None

    @property
    def status(self) -> JobStatus:
        if self.error_message is None:
            return JobStatus.COMPLETED
        return JobStatus.PARTIAL if self.models_ok > 0 else JobStatus.FAILED


@dataclass(frozen=True)
class Attempt:
    """What the runner hands one attempt: the lock connection (autocommit), its number, the settings."""

    conn: psycopg.Connection[Any]
    number: int
    settings: Settings
    lock_wait_seconds: float


@dataclass
class JobResult:
    job_name: str
    status: JobStatus
    log_id: int | None = None
    attempts: int = 0
    seconds: float = 0.0
    rows_affected: int = 0
    models_ok: int = 0
    models_failed: int = 0
    error_message: str | None = None
    skipped: bool = False
    period_start: date | None = None
    period_end: date | None = None
    #: the days whose rows were recomputed, and per grain the periods touched (growth included)
    changed_days: tuple[date, ...] = ()
    changed: dict[str, tuple[date, ...]] = field(default_factory=dict)
    #: per grain, the newest rows of its mart (for the artifact and ``details.latest_growth``)
    latest: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    attempt_errors: list[dict[str, Any]] = field(default_factory=list)
    stale_marked: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.COMPLETED

    def render(self) -> str:
        head = f"{self.job_name}: {self.status} after {self.attempts} attempt(s) in {self.seconds:.1f} s"
        if self.skipped:
            return f"{head} - {self.error_message}"
        touched = ", ".join([f"{len(self.changed_days)} day(s)",
                             *(f"{len(v)} {k}(s)" for k, v in self.changed.items())])
        body = (f"{self.rows_affected:,} row(s) written; {self.models_ok} model(s) ok, "
                f"{self.models_failed} failed; {touched} touched")
        if self.changed_days:
            body += f" ({self.changed_days[0]} .. {self.changed_days[-1]})"
        out = f"{head}: {body}"
        if self.error_message:
            out += f"\n  error: {self.error_message}"
        return out


class Work(Protocol):
    """What a job does; the runner does everything around it."""

    @property
    def name(self) -> str: ...

    @property
    def timeout_seconds(self) -> int: ...

    @property
    def period_start(self) -> date | None: ...

    @property
    def period_end(self) -> date | None: ...

    def details(self) -> dict[str, Any]:
        """What the job log row records about the run (``details``), besides the runner's own: read
        when the run starts and again when it ends (so it may add what an attempt learnt)."""
        ...

    def attempt(self, ctx: Attempt) -> Outcome:
        """One try of the work. Raise for errors (classified by :func:`retry.is_transient`);
        return an :class:`Outcome` (with ``error_message`` when the work failed)."""
        ...

    def effects(self, result: JobResult, outcome: Outcome) -> None:
        """After a COMPLETED or PARTIAL run: fill ``result`` (rows, periods, latest rows)."""
        ...


class _Stop(Exception):
    """The run must end now, without another attempt (refused, or lost the lock)."""


def logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The flow run's logger inside a flow run, plain logging outside."""
    if in_flow_run():
        try:
            from prefect import get_run_logger

            return get_run_logger()
        except Exception:  # noqa: BLE001 - e.g. a flow run context without its logger
            pass
    return logging.getLogger("metricsmith.jobs")


def flow_run_id() -> str | None:
    ctx = flow_run_context()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


class _Run:
    """The state of one run across its attempts: lock connection, owner, row, result."""

    def __init__(self, work: Work, settings: Settings, lock_wait_seconds: float) -> None:
        self.work, self.settings, self.lock_wait = work, settings, lock_wait_seconds
        self.lock = pglock.job_lock(work.name)
        self.conn: psycopg.Connection[Any] | None = None
        #: who this run is: its own row is never taken for an abandoned one (e.g. after a reconnect)
        self.owner = joblog.new_owner()
        self.details = {**work.details(), "timeout_seconds": work.timeout_seconds}
        self.log = logger()
        self.began = time.perf_counter()
        self.result = JobResult(job_name=work.name, status=JobStatus.RUNNING,
                                period_start=work.period_start, period_end=work.period_end)

    # -- one attempt -----------------------------------------------------------------------------
    def attempt(self) -> Outcome:
        """One attempt (the function the retry policy calls)."""
        r = self.result
        r.attempts += 1
        try:
            conn = self._lock_and_row(r.attempts)
            outcome = self.work.attempt(Attempt(conn, r.attempts, self.settings, self.lock_wait))
        except _Stop:
            raise
        except Exception as exc:
            self._record(f"{type(exc).__name__}: {exc}".strip(), is_transient(exc))
            self._drop_if_broken()
            raise
        r.models_ok, r.models_failed = outcome.models_ok, outcome.models_failed
        if outcome.error_message is not None:
            self._record(outcome.error_message, outcome.transient)
            raise AttemptFailed(outcome.error_message, transient=outcome.transient, outcome=outcome)
        return outcome

    def _record(self, message: str, transient: bool) -> None:
        self.result.attempt_errors.append({"attempt": self.result.attempts, "at": datetime.now(UTC).isoformat(),
                                           "transient": transient, "error": message[:2000]})

    def _lock_and_row(self, attempt: int) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = db.connect(self.settings, autocommit=True)
            if not self.lock.acquire(self.conn, self.lock_wait):
                raise _Stop("lost" if self.result.log_id is not None else "refused")
            backend = self.conn.execute("select pg_backend_pid()").fetchone()
            self.owner["backend_pid"] = int(backend[0]) if backend else None
            marked = joblog.mark_stale(self.conn, self.work.name, own_token=self.owner["token"])
            self.result.stale_marked += marked
            for stale in marked:
                self.log.warning("job log row %s of %s was still RUNNING from a run that died: marked FAILED",
                                 stale, self.work.name)
        if self.result.log_id is None:
            self.result.log_id = joblog.start(
                self.conn, self.work.name, attempt=attempt, timeout_seconds=self.work.timeout_seconds,
                period_start=self.work.period_start, period_end=self.work.period_end, flow_run_id=flow_run_id(),
                details=self.details, owner=self.owner)
        else:
            joblog.update_attempt(self.conn, self.result.log_id, attempt,
                                  {"attempts": self.result.attempt_errors, "owner": self.owner})
        self.log.info("%s attempt %d", self.work.name, attempt)
        return self.conn

    def _drop_if_broken(self) -> None:
        if self.conn is None:
            return
        try:
            self.conn.execute("select 1")
        except psycopg.Error:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    # -- the end of the run ------------------------------------------------------------------------
    def failed(self, exc: Exception) -> None:
        r = self.result
        if isinstance(exc, AttemptFailed) and isinstance(exc.outcome, Outcome):
            r.status = exc.outcome.status
            message = exc.outcome.error_message or str(exc)
            r.error_message = message if exc.transient or r.attempts == 1 else f"{message} (attempt {r.attempts})"
            if not exc.transient:
                self.log.error("%s: not retried (not a transient error): %s", r.job_name, message)
        else:
            r.status, r.error_message = JobStatus.FAILED, f"{type(exc).__name__}: {exc}".strip()

    def effects(self, outcome: Outcome | None) -> None:
        if outcome is None or self.result.status not in (JobStatus.COMPLETED, JobStatus.PARTIAL):
            return
        try:
            self.work.effects(self.result, outcome)
        except psycopg.Error as exc:
            self.log.warning("could not read what the run changed: %s", exc)

    def finish(self) -> JobResult:
        r = self.result
        r.seconds = time.perf_counter() - self.began
        final = joblog.Final(status=r.status, rows_affected=r.rows_affected, models_ok=r.models_ok,
                             models_failed=r.models_failed, error_message=r.error_message,
                             period_start=r.period_start, period_end=r.period_end)
        for _ in range(2):
            try:
                if self.conn is None or self.conn.closed or self.conn.broken:
                    self.conn = db.connect(self.settings, autocommit=True)
                if r.log_id is None:
                    r.log_id = joblog.start(self.conn, r.job_name, attempt=max(1, r.attempts),
                                            timeout_seconds=self.work.timeout_seconds, period_start=r.period_start,
                                            period_end=r.period_end, flow_run_id=flow_run_id())
                joblog.finish(self.conn, r.log_id, final, self._final_details())
                break
            except psycopg.Error as exc:
                self.log.error("could not write the job log (%s); result: %s", exc, r.render())
                self.conn = None
        (self.log.info if r.ok else self.log.error)(r.render())
        return r

    def _final_details(self) -> dict[str, Any]:
        r = self.result
        days = r.changed_days
        # the work's details again: what an attempt learnt (e.g. a run that had nothing to do) is kept
        return {**self.details, **self.work.details(), "attempts": r.attempt_errors, "stale_marked": r.stale_marked,
                "changed": {"days": len(days), **{k: [str(p) for p in v[-20:]] for k, v in r.changed.items()},
                            "first_day": str(days[0]) if days else None, "last_day": str(days[-1]) if days else None},
                "latest_growth": latest_growth(r.latest)}

    def stopped(self, why: str) -> JobResult:
        """Refused (another run holds the lock) or lost the lock to another run after a reconnect."""
        assert self.conn is not None
        r = self.result
        pid = self.lock.holder_pid(self.conn)
        r.status = JobStatus.FAILED
        if why == "lost":
            r.error_message = (f"lost the connection during attempt {r.attempts - 1} and another run of "
                               f"{r.job_name} took the job lock meanwhile (backend pid {pid}); stopped without finishing")
            return self.finish()
        running = joblog.recent(self.conn, r.job_name, limit=1, status=JobStatus.RUNNING)
        since = (f" (its job log row {running[0]['id']} started {running[0]['started_at']:%Y-%m-%d %H:%M:%S %Z})"
                 if running else "")
        r.skipped, r.seconds = True, time.perf_counter() - self.began
        r.error_message = (f"skipped: another run of {r.job_name} is still working{since}, held by backend pid {pid}; "
                           f"waited {self.lock_wait:.0f} s - nothing was done")
        r.log_id = joblog.start(self.conn, r.job_name, attempt=1, timeout_seconds=self.work.timeout_seconds,
                                period_start=r.period_start, period_end=r.period_end, flow_run_id=flow_run_id(),
                                details={**self.details, "skipped": True})
        joblog.finish(self.conn, r.log_id, joblog.Final(status=JobStatus.FAILED, error_message=r.error_message),
                      {"skipped": True})
        self.log.error(r.render())
        return r

    def interrupted(self, exc: BaseException) -> None:
        r = self.result
        if r.log_id is not None and r.status is JobStatus.RUNNING:
            r.status, r.error_message = JobStatus.FAILED, f"interrupted: {type(exc).__name__}: {exc}".strip()
            with contextlib.suppress(Exception):
                self.finish()

    def close(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.lock.release(self.conn)
            self.conn.close()


def latest_growth(latest: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per grain, the newest row's start, totals and growth columns (``details.latest_growth``)."""
    from metricsmith import grains

    def num(v: Any) -> float | None:
        return None if v is None else round(float(v), 2)

    out: dict[str, Any] = {}
    for name, rows in latest.items():
        if not rows:
            continue
        g, row = grains.get(name), rows[-1]
        entry: dict[str, Any] = {g.start_column: str(row[g.start_column])}
        entry.update({m: row.get(m) for m in GROWTH_MEASURES})
        entry.update({f"{m}_{c.suffix}_pct": num(row.get(f"{m}_{c.suffix}_pct"))
                      for c in g.comparisons for m in GROWTH_MEASURES})
        out[name] = entry
    return out


#: the measures the artifact and ``details.latest_growth`` show with their growth
GROWTH_MEASURES = ("total_events", "active_users", "revenue_cents")


def run(work: Work, *, settings: Settings | None = None, policy: RetryPolicy | None = None,
        lock_wait_seconds: float = 60.0) -> JobResult:
    """Run ``work`` once (with retries) and return its result; never raises for a job that
    failed - the status says so. Interruptions (Ctrl-C, cancellation) end the row and propagate."""
    state = _Run(work, settings or load_settings(), lock_wait_seconds)
    policy = policy or RetryPolicy.from_env()
    try:
        outcome: Outcome | None = None
        try:
            outcome = policy.call(state.attempt, name=f"{work.name} attempt")
            state.result.status = outcome.status
        except _Stop as stop:
            return _alerted(state.stopped(str(stop)), state.settings)
        except Exception as exc:  # noqa: BLE001 - the last attempt's failure becomes the run's
            state.failed(exc)
            outcome = exc.outcome if isinstance(exc, AttemptFailed) else None
        state.effects(outcome)
        return _alerted(state.finish(), state.settings)
    except BaseException as exc:  # interrupted (e.g. Ctrl-C, flow cancelled): the row must not stay RUNNING
        state.interrupted(exc)
        raise
    finally:
        state.close()


def _alerted(result: JobResult, settings: Settings) -> JobResult:
    """Evaluate the alert rules once the job-log row is final (docs/alerts.md; never raises)."""
    from metricsmith.alerts.evaluate import after_job_run

    after_job_run(result, settings=settings)
    return result
