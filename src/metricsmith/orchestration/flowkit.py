"""What every job flow does around :func:`metricsmith.orchestration.jobs.run_job`: publish
the artifact, refresh the metric cache for the days that changed, and end the flow run
Failed when the job did not complete (so the UI shows it red and notifications fire).

:func:`job_flow` is the whole body of the dbt jobs' flows and of ``custom-metrics``
(``flows/*.py`` only wrap it in ``@flow``): ``metricsmith jobs run`` with no Prefect server calls
it directly, without loading the flow files or Prefect (same lock, job log, retries, cache
refresh and alerts)."""

from __future__ import annotations

from datetime import date
from typing import Any

from metricsmith.config import Settings, load_settings
from metricsmith.core.status import JobStatus
from metricsmith.orchestration import artifacts
from metricsmith.orchestration.context import in_flow_run
from metricsmith.orchestration.jobs import CUSTOM_METRICS_JOB, DAILY_JOB, JobFailed, run_job
from metricsmith.orchestration.runner import JobResult, flow_run_id, logger


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


def run_custom_metrics_step(full_refresh: bool = False, settings: Settings | None = None) -> dict[str, Any]:
    """The ``custom-metrics`` job (after the daily job, or ``jobs run custom-metrics``): compile
    and run every active custom metric; fails the flow unless COMPLETED. With nothing to run the
    job still records its run without starting dbt (the job decides, under its lock, from its one
    compile: :meth:`CustomMetricsService.run` ``skip_if_idle``)."""
    from metricsmith.custom_metrics.job import run_custom_metrics_job

    result = run_custom_metrics_job(full_refresh=full_refresh, settings=settings or load_settings())
    logger().info(result.render())
    if result.status is not JobStatus.COMPLETED:
        assert result.job is not None
        raise JobFailed(result.job, result.render())
    return {**result.as_dict(), "flow_run_id": flow_run_id()}


def daily_metrics(refresh_cache: bool = True, custom_metrics: bool = True) -> dict[str, Any]:
    """The ``daily-metrics`` flow: the daily job, then every active custom metric on the same fresh data."""
    result = run_job_flow(DAILY_JOB, refresh=refresh_cache)
    if custom_metrics:
        result["custom_metrics"] = run_custom_metrics_step()
    return result


def job_flow(name: str, *, start: date | None = None, end: date | None = None,
             refresh_cache: bool = True, full_refresh: bool = False) -> dict[str, Any]:
    """The body of job ``name``'s flow (the daily one runs the custom metrics after it);
    ``full_refresh``: custom-metrics only (the dbt jobs are incremental or take a period)."""
    if name == CUSTOM_METRICS_JOB:
        return run_custom_metrics_step(full_refresh=full_refresh)
    if name == DAILY_JOB:
        return daily_metrics(refresh_cache=refresh_cache)
    return run_job_flow(name, start=start, end=end, refresh=refresh_cache)
