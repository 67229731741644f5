"""Jobs: what each scheduled flow runs, with the job log, the one-at-a-time lock and retries.

``run_job(name)`` is the whole behaviour of a flow; the files in ``flows/`` only wrap it.
Per run:

1. connect and take the job's advisory lock (wait at most ``lock_wait_seconds``; if another
   run still holds it, log a FAILED row marked ``skipped`` and stop: no double work);
2. mark abandoned RUNNING rows of this job FAILED (we hold the lock; never our own row, nor
   one whose owner process is still alive on this host - see :func:`joblog.mark_stale`);
3. insert this run's RUNNING row, with its owner (token, host, pid, lock backend pid). After a
   lost connection (PostgreSQL restart) the retry reconnects, takes the lock again and keeps
   updating the same row; if another run took the lock meanwhile, this run ends its row FAILED;
4. up to ``RetryPolicy.attempts`` attempts of the dbt build (through PrefectDbtRunner, under
   the rollups' advisory lock so CLI rollup runs and other jobs do not interleave). Transient
   failures (database unreachable, lock timeout, serialization failure) are retried after an
   exponential backoff with jitter; anything else ends the run at once: FAILED, or PARTIAL
   when some models succeeded, with dbt's message;
5. the row gets exactly one final status, rows changed, periods touched and the latest growth.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import psycopg

from metricsmith import db, rollups
from metricsmith.config import Settings, load_settings
from metricsmith.core import dbt as core_dbt
from metricsmith.core import pglock
from metricsmith.core.status import JobStatus
from metricsmith.errors import UserFacingError
from metricsmith.orchestration import joblog
from metricsmith.orchestration.retry import RetryPolicy, is_transient, is_transient_message

MARTS = rollups.MART_MODELS


@dataclass(frozen=True)
class JobSpec:
    name: str
    description: str
    #: dbt selection (``dbt build --select ...``)
    select: tuple[str, ...]
    #: the mart models whose rows count as "rows changed"
    marts: tuple[str, ...]
    timeout_seconds: int = 2 * 3600
    needs_period: bool = False


JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec(
            "daily-metrics",
            "incremental build of daily_metrics and what it needs; closes the rollup ledger, so the weeks and "
            "months of changed days are refreshed too (that is what keeps the incremental rollups exact)",
            select=("+int_rollup_ledger", "stg_events_rejected"),
            marts=MARTS,
        ),
        JobSpec("weekly-rollup", "weekly_metrics and what it needs, with its data tests",
                select=("+weekly_metrics",), marts=("daily_metrics", "weekly_metrics")),
        JobSpec("monthly-rollup", "monthly_metrics and what it needs, with its data tests",
                select=("+monthly_metrics",), marts=("daily_metrics", "monthly_metrics")),
        JobSpec("backfill", "recompute a date range and the weeks and months above it (set-based)",
                select=("+int_rollup_ledger", "stg_events_rejected"), marts=MARTS,
                timeout_seconds=6 * 3600, needs_period=True),
    )
}


class JobFailed(RuntimeError):
    """Raised by the flows so that Prefect marks the flow run Failed; carries the result."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(f"{result.job_name} {result.status}: {result.error_message}")
        self.result = result


@dataclass
class JobResult:
    job_name: str
    status: JobStatus
    log_id: int | None
    attempts: int
    seconds: float
    rows_affected: int = 0
    models_ok: int = 0
    models_failed: int = 0
    error_message: str | None = None
    skipped: bool = False
    period_start: date | None = None
    period_end: date | None = None
    changed: rollups.ChangedPeriods = field(default_factory=lambda: rollups.ChangedPeriods((), (), ()))
    latest_weeks: list[dict[str, Any]] = field(default_factory=list)
    latest_months: list[dict[str, Any]] = field(default_factory=list)
    attempt_errors: list[dict[str, Any]] = field(default_factory=list)
    stale_marked: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status is JobStatus.COMPLETED

    def render(self) -> str:
        head = f"{self.job_name}: {self.status} after {self.attempts} attempt(s) in {self.seconds:.1f} s"
        if self.skipped:
            return f"{head} - {self.error_message}"
        c = self.changed
        body = (f"{self.rows_affected:,} mart row(s) written; {self.models_ok} model(s) ok, "
                f"{self.models_failed} failed; {len(c.days)} day(s), {len(c.weeks)} week(s), "
                f"{len(c.months)} month(s) touched")
        if c.days:
            body += f" ({c.days[0]} .. {c.days[-1]})"
        out = f"{head}: {body}"
        if self.error_message:
            out += f"\n  error: {self.error_message}"
        return out


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a flow run
        return logging.getLogger("metricsmith.jobs")


def _flow_run_id() -> str | None:
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        return str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    except Exception:  # noqa: BLE001
        return None


def dbt_args(spec: JobSpec) -> list[str]:
    # cautious: a test that also needs an unselected model (e.g. weekly vs monthly) is left out
    return ["build", "--select", *spec.select, "--indirect-selection", "cautious"]


def dbt_vars(spec: JobSpec, settings: Settings, start: date | None, end: date | None) -> dict[str, Any]:
    vars_: dict[str, Any] = {"metrics_timezone": settings.timezone}
    if spec.needs_period:
        if start is None or end is None:
            raise UserFacingError(f"job {spec.name} needs a start and an end date")
        if start > end:
            raise UserFacingError(f"backfill start {start} is after end {end}")
        vars_.update({"backfill_start": start.isoformat(), "backfill_end": end.isoformat()})
    return vars_


def dbt_environment(settings: Settings, attempt: int) -> dict[str, str]:
    """The environment dbt's profile reads for this attempt (tests replace this to inject faults)."""
    return core_dbt.prepare_environment(settings)


def _transient(outcome: core_dbt.DbtOutcome) -> bool:
    """True when every failure is a transient one (database unreachable, lock, serialization)."""
    messages = [n.message for n in outcome.failures] + ([outcome.exception] if outcome.exception else [])
    return bool(messages) and all(is_transient_message(m) for m in messages)


def _read_effects(settings: Settings, result: JobResult, changed_rebuilt: bool) -> None:
    with db.connect(settings, autocommit=True) as conn:
        if changed_rebuilt and rollups._table_exists(conn, "int_changed_days"):
            days = [r[0] for r in conn.execute(
                f"select metric_date from {rollups.SCHEMA}.int_changed_days order by 1").fetchall()]
            result.changed = rollups.ChangedPeriods.from_days(days)
            if days and result.period_start is None:
                result.period_start, result.period_end = days[0], days[-1]
        result.latest_weeks = rollups.latest_weeks(conn, 2)
        result.latest_months = rollups.latest_months(conn, 2)


def run_job(
    name: str,
    *,
    start: date | None = None,
    end: date | None = None,
    settings: Settings | None = None,
    policy: RetryPolicy | None = None,
    lock_wait_seconds: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> JobResult:
    """Run job ``name`` once (with retries) and return its result; never raises for a job that
    failed in dbt - the status says so. Raises :class:`UserFacingError` for bad parameters."""
    if name not in JOBS:
        raise UserFacingError(f"unknown job {name!r}; jobs: {', '.join(JOBS)}")
    spec = JOBS[name]
    settings = settings or load_settings()
    policy = policy or RetryPolicy.from_env()
    vars_ = dbt_vars(spec, settings, start, end)
    args = dbt_args(spec)
    log = _logger()
    began = time.perf_counter()
    result = JobResult(job_name=name, status=JobStatus.RUNNING, log_id=None, attempts=0, seconds=0.0,
                       period_start=start, period_end=end)
    job_lock = pglock.job_lock(name)
    lock_conn: psycopg.Connection[Any] | None = None
    common_details = {"dbt_args": args, "vars": vars_, "flow": name, "timeout_seconds": spec.timeout_seconds}

    def record_attempt_error(attempt: int, message: str, transient: bool) -> None:
        result.attempt_errors.append({"attempt": attempt, "at": datetime.now(UTC).isoformat(),
                                      "transient": transient, "error": message[:2000]})

    # who this run is: its own row is never taken for an abandoned one (e.g. after a reconnect)
    owner = joblog.new_owner()

    try:
        for attempt in range(1, policy.attempts + 1):
            result.attempts = attempt
            try:
                if lock_conn is None or lock_conn.closed or lock_conn.broken:
                    lock_conn = db.connect(settings, autocommit=True)
                    if not job_lock.acquire(lock_conn, lock_wait_seconds):
                        if result.log_id is not None:  # we lost the lock with our connection; someone took over
                            return _lost_lock(result, lock_conn, job_lock, settings, spec, common_details, began, log)
                        return _refuse(result, lock_conn, job_lock, spec, common_details, lock_wait_seconds, began, log)
                    backend = lock_conn.execute("select pg_backend_pid()").fetchone()
                    owner["backend_pid"] = int(backend[0]) if backend else None
                    marked = joblog.mark_stale(lock_conn, name, own_token=owner["token"])
                    result.stale_marked += marked
                    for stale in marked:
                        log.warning("job log row %s of %s was still RUNNING from a run that died: marked FAILED",
                                    stale, name)
                if result.log_id is None:
                    result.log_id = joblog.start(lock_conn, name, attempt=attempt, timeout_seconds=spec.timeout_seconds,
                                                 period_start=start, period_end=end, flow_run_id=_flow_run_id(),
                                                 details=common_details, owner=owner)
                else:
                    joblog.update_attempt(lock_conn, result.log_id, attempt,
                                          {"attempts": result.attempt_errors, "owner": owner})
                log.info("%s attempt %d/%d: dbt %s", name, attempt, policy.attempts, " ".join(args))
                # the rollups' own lock (the one ``metricsmith rollups run`` takes), same policy
                with pglock.ROLLUPS.held(lock_conn, lock_wait_seconds):
                    outcome = core_dbt.invoke(args, vars=vars_, settings=settings, in_flow=True,
                                              environment=functools.partial(dbt_environment, attempt=attempt))
            except Exception as exc:  # noqa: BLE001 - classified below
                transient = isinstance(exc, pglock.LockBusy) or is_transient(exc)
                message = f"{type(exc).__name__}: {exc}".strip()
                record_attempt_error(attempt, message, transient)
                if transient and attempt < policy.attempts:
                    _backoff(policy, attempt, message, log, sleep)
                    lock_conn = _drop_if_broken(lock_conn)
                    continue
                result.status, result.error_message = JobStatus.FAILED, message
                break
            result.models_ok, result.models_failed = outcome.models_ok, outcome.models_failed
            if outcome.success:
                result.status, result.error_message = JobStatus.COMPLETED, None
                break
            message = outcome.error_message or "dbt failed"
            transient = _transient(outcome)
            record_attempt_error(attempt, message, transient)
            if transient and attempt < policy.attempts:
                _backoff(policy, attempt, message, log, sleep)
                continue
            result.status = JobStatus.PARTIAL if outcome.models_ok > 0 else JobStatus.FAILED
            result.error_message = message if transient or attempt == 1 else f"{message} (attempt {attempt})"
            if not transient:
                log.error("%s: not retried (not a transient error): %s", name, message)
            break
        if result.status is JobStatus.RUNNING:  # pragma: no cover - loop always sets a status
            result.status = JobStatus.FAILED
        if result.status in (JobStatus.COMPLETED, JobStatus.PARTIAL):
            try:
                rebuilt = any(n.name == "int_changed_days" and n.status == "success" for n in outcome.nodes)
                _read_effects(settings, result, rebuilt)
                result.rows_affected = outcome.rows_affected(spec.marts)
            except psycopg.Error as exc:
                log.warning("could not read what the run changed: %s", exc)
        result.seconds = time.perf_counter() - began
        _finish(result, lock_conn, settings, spec, common_details, log)
        return result
    except BaseException as exc:  # interrupted (e.g. Ctrl-C, flow cancelled): the row must not stay RUNNING
        if result.log_id is not None and result.status is JobStatus.RUNNING:
            result.status = JobStatus.FAILED
            result.error_message = f"interrupted: {type(exc).__name__}: {exc}".strip()
            result.seconds = time.perf_counter() - began
            with contextlib.suppress(Exception):
                _finish(result, lock_conn, settings, spec, common_details, log)
        raise
    finally:
        if lock_conn is not None and not lock_conn.closed:
            job_lock.release(lock_conn)
            lock_conn.close()


def _drop_if_broken(conn: psycopg.Connection[Any] | None) -> psycopg.Connection[Any] | None:
    if conn is None:
        return None
    try:
        conn.execute("select 1")
        return conn
    except psycopg.Error:
        with contextlib.suppress(Exception):
            conn.close()
        return None


def _backoff(policy: RetryPolicy, attempt: int, message: str, log: Any, sleep: Callable[[float], None]) -> None:
    delay = policy.delay(attempt)
    log.warning("attempt %d/%d failed with a transient error, retrying in %.1f s: %s",
                attempt, policy.attempts, delay, message[:500])
    sleep(delay)


def _details(result: JobResult, common: dict[str, Any]) -> dict[str, Any]:
    c = result.changed
    return {
        **common,
        "attempts": result.attempt_errors,
        "changed": {"days": len(c.days), "weeks": [str(w) for w in c.weeks[-20:]],
                    "months": [str(m) for m in c.months[-20:]],
                    "first_day": str(c.days[0]) if c.days else None, "last_day": str(c.days[-1]) if c.days else None},
        "stale_marked": result.stale_marked,
        "latest_growth": _growth(result),
    }


def _growth(result: JobResult) -> dict[str, Any]:
    def num(v: Any) -> float | None:
        return None if v is None else round(float(v), 2)

    out: dict[str, Any] = {}
    if result.latest_weeks:
        w = result.latest_weeks[-1]
        out["week"] = {"week_start": str(w["week_start"]), "total_events": w["total_events"],
                       "active_users": w["active_users"], "revenue_cents": w["revenue_cents"],
                       "total_events_wow_pct": num(w["total_events_wow_pct"]),
                       "active_users_wow_pct": num(w["active_users_wow_pct"]),
                       "revenue_cents_wow_pct": num(w["revenue_cents_wow_pct"])}
    if result.latest_months:
        m = result.latest_months[-1]
        out["month"] = {"month_start": str(m["month_start"]), "total_events": m["total_events"],
                        "active_users": m["active_users"], "revenue_cents": m["revenue_cents"],
                        "total_events_mom_pct": num(m["total_events_mom_pct"]),
                        "active_users_mom_pct": num(m["active_users_mom_pct"]),
                        "revenue_cents_mom_pct": num(m["revenue_cents_mom_pct"])}
    return out


def _finish(result: JobResult, conn: psycopg.Connection[Any] | None, settings: Settings, spec: JobSpec,
            common: dict[str, Any], log: Any) -> None:
    final = joblog.Final(status=result.status, rows_affected=result.rows_affected, models_ok=result.models_ok,
                         models_failed=result.models_failed, error_message=result.error_message,
                         period_start=result.period_start, period_end=result.period_end)
    details = _details(result, common)
    for _ in range(2):
        try:
            if conn is None or conn.closed or conn.broken:
                conn = db.connect(settings, autocommit=True)
            if result.log_id is None:
                result.log_id = joblog.start(conn, result.job_name, attempt=max(1, result.attempts),
                                             timeout_seconds=spec.timeout_seconds, period_start=result.period_start,
                                             period_end=result.period_end, flow_run_id=_flow_run_id())
            joblog.finish(conn, result.log_id, final, details)
            break
        except psycopg.Error as exc:
            log.error("could not write the job log (%s); result: %s", exc, result.render())
            conn = None
    (log.info if result.ok else log.error)(result.render())


def _lost_lock(result: JobResult, conn: psycopg.Connection[Any], lock: pglock.AdvisoryLock, settings: Settings, spec: JobSpec,
               common: dict[str, Any], began: float, log: Any) -> JobResult:
    """Our connection (and with it the job lock) was lost and another run took the lock before
    we reconnected: stop, and end our own row FAILED with its attempts (never left RUNNING)."""
    pid = lock.holder_pid(conn)
    result.status = JobStatus.FAILED
    result.error_message = (f"lost the connection during attempt {result.attempts - 1} and another run of "
                            f"{spec.name} took the job lock meanwhile (backend pid {pid}); stopped without finishing")
    result.seconds = time.perf_counter() - began
    try:
        _finish(result, conn, settings, spec, common, log)
    finally:
        conn.close()
    return result


def _refuse(result: JobResult, conn: psycopg.Connection[Any], lock: pglock.AdvisoryLock, spec: JobSpec, common: dict[str, Any],
            waited: float, began: float, log: Any) -> JobResult:
    pid = lock.holder_pid(conn)
    running = joblog.recent(conn, spec.name, limit=1, status=JobStatus.RUNNING)
    since = f" (its job log row {running[0]['id']} started {running[0]['started_at']:%Y-%m-%d %H:%M:%S %Z})" if running else ""
    result.status, result.skipped = JobStatus.FAILED, True
    result.error_message = (f"skipped: another run of {spec.name} is still working{since}, held by backend pid {pid}; "
                            f"waited {waited:.0f} s - nothing was done")
    result.seconds = time.perf_counter() - began
    row_id = joblog.start(conn, spec.name, attempt=1, timeout_seconds=spec.timeout_seconds,
                          period_start=result.period_start, period_end=result.period_end,
                          flow_run_id=_flow_run_id(), details={**common, "skipped": True})
    joblog.finish(conn, row_id, joblog.Final(status=JobStatus.FAILED, error_message=result.error_message),
                  {"skipped": True})
    result.log_id = row_id
    log.error(result.render())
    conn.close()
    return result
