"""The custom-metrics job (flow ``custom-metrics``): compile and run every active custom metric.

Scheduled after the daily run. It runs through the one job runner
(:func:`metricsmith.orchestration.runner.run`): job log row ``custom-metrics``, one-at-a-time
advisory lock, stale-row repair, the retry policy. A generated model that fails at run time is
isolated (the others publish into ``<marts schema>.custom_metric_values``): the job ends PARTIAL
with each failed model's error, FAILED when every model failed or dbt itself failed, else
COMPLETED.

When the attempt's own compile shows there is nothing to run (no active metric model, nothing
written or removed, custom_metric_values built and empty; PostgreSQL, not ``full_refresh``), it
starts no dbt and the job log row says so (``details.skipped_dbt = true``): the decision is taken
under the job's lock, from the run's one compile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from psycopg import sql

from metricsmith import db
from metricsmith.config import Settings, load_settings
from metricsmith.core.dbt import DbtError
from metricsmith.core.schema import marts_schema
from metricsmith.core.status import JobStatus
from metricsmith.custom_metrics.service import VALUES_MODEL, CustomMetricsService
from metricsmith.orchestration import runner
from metricsmith.orchestration.jobs import CUSTOM_METRICS_JOB
from metricsmith.orchestration.retry import RetryPolicy, is_transient_message
from metricsmith.orchestration.runner import Attempt, JobResult, Outcome

JOB_NAME = CUSTOM_METRICS_JOB
#: the daily job runs at 02:00 UTC; this one at 03:00 UTC, after it
SCHEDULE_CRON = "0 3 * * *"


#: ``details.skip_reason`` of a run that started no dbt
SKIP_REASON = "no active custom metric to run; custom_metric_values is built and empty"


@dataclass(frozen=True)
class CustomMetricsJobResult:
    status: JobStatus
    models_ok: int
    models_failed: int
    rows: int
    message: str | None
    log_id: int | None
    attempts: int = 0
    seconds: float = 0.0
    #: the run had nothing to do and started no dbt (``details.skipped_dbt`` of its job log row)
    skipped_dbt: bool = False
    #: the runner's result (for :class:`metricsmith.orchestration.jobs.JobFailed`)
    job: JobResult | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, result: JobResult, *, skipped_dbt: bool = False) -> CustomMetricsJobResult:
        return cls(result.status, result.models_ok, result.models_failed, result.rows_affected,
                   result.error_message, result.log_id, result.attempts, result.seconds, skipped_dbt, result)

    def render(self) -> str:
        """One line (and the error's), in the style of the dbt jobs' :meth:`JobResult.render`."""
        head = f"{JOB_NAME}: {self.status} after {self.attempts} attempt(s) in {self.seconds:.1f} s"
        if self.job is not None and self.job.skipped:  # refused: another run holds the lock
            return f"{head} - {self.message}"
        if self.skipped_dbt:
            return f"{head}: dbt not started ({SKIP_REASON})"
        out = (f"{head}: {self.models_ok} model(s) ok, {self.models_failed} failed; "
               f"{self.rows:,} value row(s) in custom_metric_values")
        return f"{out}\n  error: {self.message}" if self.message else out

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "job"}
        return {**out, "summary": self.render()}


@dataclass
class CustomMetricsWork:
    """One run of every active custom metric (a :class:`runner.Work`)."""

    service: CustomMetricsService
    full_refresh: bool = False
    name: str = JOB_NAME
    timeout_seconds: int = 3600
    period_start: date | None = None
    period_end: date | None = None
    settings: Settings = field(default_factory=load_settings)
    #: on Spark: the application, the dbt run and the publish (filled in as the run goes)
    record: dict[str, Any] = field(default_factory=dict)
    #: the last attempt found nothing to run and started no dbt
    skipped_dbt: bool = False

    def details(self) -> dict[str, Any]:
        # the runner copies this dict at the start; the nested record fills in as the run goes
        details: dict[str, Any] = {"full_refresh": self.full_refresh, "engine": self.service.engine}
        if self.service.engine == "spark":
            details["spark_job"] = self.record
        if self.skipped_dbt:  # learnt by the attempt (the runner reads the details again at the end)
            details.update(skipped_dbt=True, skip_reason=SKIP_REASON)
        return details

    def attempt(self, ctx: Attempt) -> Outcome:
        try:
            run = self.service.run(full_refresh=self.full_refresh, skip_if_idle=True)  # under the job lock
        except DbtError as exc:  # dbt itself failed (or custom_metric_values did): nothing published
            return Outcome(models_ok=0, models_failed=len(exc.failures) or 1, error_message=str(exc),
                           transient=is_transient_message(str(exc)))
        self.record.update(run.spark or {})
        self.skipped_dbt = run.skipped_dbt
        ok = sum(1 for s in run.models.node_status.values() if s == "success")
        message = "; ".join(f"{f.model}: {f.error}" for f in run.failures) or None
        return Outcome(models_ok=ok, models_failed=len(run.failures), error_message=message, payload=run)

    def effects(self, result: JobResult, outcome: Outcome) -> None:
        with db.connect(self.settings, autocommit=True) as conn:
            query = sql.SQL("select count(*) from {}").format(sql.Identifier(marts_schema(), VALUES_MODEL))
            got = conn.execute(query).fetchone()
            result.rows_affected = int(got[0]) if got else 0
            _invalidate_cached_values(conn)


def run_custom_metrics_job(*, full_refresh: bool = False, lock_wait_seconds: float = 600.0,
                           settings: Settings | None = None, service: CustomMetricsService | None = None,
                           policy: RetryPolicy | None = None, engine: str | None = None) -> CustomMetricsJobResult:
    """One run of every active metric, on ``engine`` (default METRICSMITH_ENGINE; on Spark the
    values are published to PostgreSQL and the job log records the Spark application)."""
    settings = settings or load_settings()
    work = CustomMetricsWork(service or CustomMetricsService(settings, engine=engine), full_refresh=full_refresh,
                             settings=settings)
    result = runner.run(work, settings=settings, policy=policy, lock_wait_seconds=lock_wait_seconds)
    return CustomMetricsJobResult.of(result, skipped_dbt=work.skipped_dbt and result.ok)


def _invalidate_cached_values(conn: Any) -> None:
    """Re-runs recompute values of the same versions: drop their cached copies (never fails the job)."""
    from metricsmith.cache.invalidation import invalidate_periods

    try:
        slugs = [r[0] for r in conn.execute(
            "select slug from metricsmith.custom_metric_definitions where status = 'active'").fetchall()]
        if slugs:
            invalidate_periods(slugs=slugs)
    except Exception as exc:  # noqa: BLE001 - the cache is an optimisation; the job's result stands
        runner.logger().warning("custom metric cache invalidation failed: %s", exc)
