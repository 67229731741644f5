"""What every job flow does around :func:`metricsmith.orchestration.jobs.run_job`: publish
the artifact, refresh the metric cache for the days that changed, and end the flow run
Failed when the job did not complete (so the UI shows it red and notifications fire).

:func:`job_flow` is the whole body of the dbt jobs' flows (``flows/*.py`` only wrap it in
``@flow``): ``metricsmith jobs run`` with no Prefect server calls it directly, without loading
the flow files or Prefect (same lock, job log, retries, cache refresh and alerts)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from psycopg import sql

from metricsmith import db
from metricsmith.config import Settings, load_settings
from metricsmith.core.schema import marts_schema
from metricsmith.core.status import JobStatus
from metricsmith.orchestration import artifacts, runner
from metricsmith.orchestration.context import in_flow_run
from metricsmith.orchestration.jobs import DAILY_JOB, JobFailed, run_job
from metricsmith.orchestration.runner import Attempt, JobResult, Outcome, flow_run_id, logger


def refresh_cache(result: JobResult) -> None:
    """Invalidate and warm the metric cache for the changed days (the cache expands a day to
    every period holding it); fail-open: a cache problem is logged, never fails the job."""
    from metricsmith.cache.invalidation import refresh_after_run

    log = logger()
    try:
        report = refresh_after_run(list(result.changed_days), warm=True)
        log.info(report.render())
    except Exception as exc:  # noqa: BLE001 - fail-open
        log.warning("cache refresh after %s failed (metrics are correct in Postgres): %s", result.job_name, exc)


def summary(result: JobResult) -> dict[str, Any]:
    """The flow's return value: status, log row, attempts, rows and periods touched per grain."""
    return {"job": result.job_name, "status": result.status, "log_id": result.log_id, "attempts": result.attempts,
            "rows_affected": result.rows_affected, "days": len(result.changed_days),
            **{f"{name}s": len(periods) for name, periods in result.changed.items()},
            "flow_run_id": flow_run_id(), "summary": result.render()}


def run_job_flow(name: str, *, start: date | None = None, end: date | None = None,
                 refresh: bool = True, **kwargs: Any) -> dict[str, Any]:
    from metricsmith.spark.config import engine

    if engine() == "spark":  # docs/spark.md: the rollups on Spark, then the publish to PostgreSQL
        from metricsmith.spark.job import run_spark_rollup_flow_job

        result = run_spark_rollup_flow_job(name, start=start, end=end)
    else:
        result = run_job(name, start=start, end=end, **kwargs)
    if in_flow_run():  # the artifact belongs to the flow run (there is none on the direct path)
        artifacts.publish(result)
    if refresh and result.status in (JobStatus.COMPLETED, JobStatus.PARTIAL) and result.changed_days:
        refresh_cache(result)
    if not result.ok:
        raise JobFailed(result)
    return summary(result)


@dataclass
class _NothingToRun:
    """The custom-metrics run when no metric would run (a :class:`runner.Work`): the job log
    row, lock and status as usual, no dbt."""

    name: str
    timeout_seconds: int = 60
    period_start: date | None = None
    period_end: date | None = None

    def details(self) -> dict[str, Any]:
        return {"skipped_dbt": "no active custom metric to run; custom_metric_values is built and empty"}

    def attempt(self, ctx: Attempt) -> Outcome:
        return Outcome()

    def effects(self, result: JobResult, outcome: Outcome) -> None:
        result.rows_affected = 0


def custom_metrics_idle(settings: Settings) -> bool:
    """True when a custom-metrics run would change nothing, so its two dbt invocations can be
    skipped: PostgreSQL engine, the compile (the run's own first step, done here) writes, removes
    and refuses nothing and yields no metric model, and custom_metric_values exists with no row
    (the run would rebuild it empty)."""
    from metricsmith.custom_metrics.service import VALUES_MODEL, CustomMetricsService

    service = CustomMetricsService(settings)
    if service.engine != "postgres":
        return False
    compiled = service.compile()
    if compiled.written or compiled.removed or compiled.refused or compiled.models != [VALUES_MODEL]:
        return False
    values = sql.Identifier(marts_schema(), VALUES_MODEL)
    with db.connect(settings, autocommit=True) as conn:
        built = conn.execute("select to_regclass(%s)", (values.as_string(conn),)).fetchone()
        if not built or built[0] is None:
            return False
        row = conn.execute(sql.SQL("select exists (select 1 from {})").format(values)).fetchone()
    return not (row and row[0])


def run_custom_metrics_step(full_refresh: bool = False, settings: Settings | None = None) -> dict[str, Any]:
    """Compile and run every active custom metric (after the daily job); fails the flow unless
    COMPLETED. With nothing to run (:func:`custom_metrics_idle`) the job still records its run,
    without starting dbt (twice ~3 s of dbt start-up for nothing, issue 17 P5)."""
    from metricsmith.custom_metrics.job import JOB_NAME, CustomMetricsJobResult, run_custom_metrics_job

    settings = settings or load_settings()
    if not full_refresh and custom_metrics_idle(settings):
        result = CustomMetricsJobResult.of(runner.run(_NothingToRun(JOB_NAME), settings=settings))
    else:
        result = run_custom_metrics_job(full_refresh=full_refresh, settings=settings)
    logger().info("custom metrics %s: %d models ok, %d failed, %d value rows", result.status, result.models_ok,
                  result.models_failed, result.rows)
    if result.status is not JobStatus.COMPLETED:
        raise RuntimeError(f"custom-metrics {result.status}: {result.message}")
    return result.as_dict()


def daily_metrics(refresh_cache: bool = True, custom_metrics: bool = True) -> dict[str, Any]:
    """The ``daily-metrics`` flow: the daily job, then every active custom metric on the same fresh data."""
    result = run_job_flow(DAILY_JOB, refresh=refresh_cache)
    if custom_metrics:
        result["custom_metrics"] = run_custom_metrics_step()
    return result


def job_flow(name: str, *, start: date | None = None, end: date | None = None,
             refresh_cache: bool = True) -> dict[str, Any]:
    """The body of job ``name``'s flow (the daily one runs the custom metrics after it)."""
    if name == DAILY_JOB:
        return daily_metrics(refresh_cache=refresh_cache)
    return run_job_flow(name, start=start, end=end, refresh=refresh_cache)
