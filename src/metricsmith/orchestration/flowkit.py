"""What every job flow does around :func:`metricsmith.orchestration.jobs.run_job`: publish
the artifact, refresh the metric cache for the periods that changed, and end the flow run
Failed when the job did not complete (so the UI shows it red and notifications fire)."""

from __future__ import annotations

from datetime import date
from typing import Any

from metricsmith.orchestration import artifacts
from metricsmith.orchestration.jobs import JobFailed, JobResult, _flow_run_id, _logger, run_job


def refresh_cache(result: JobResult) -> None:
    """Invalidate and warm the metric cache for the changed periods (fail-open: a cache
    problem is logged, never fails the job)."""
    log = _logger()  # the flow run's logger, or plain logging outside a flow run
    try:
        from metricsmith.cache.invalidation import refresh_after_run
    except ImportError:  # the cache capability is optional
        return
    c = result.changed
    try:
        report = refresh_after_run(list(c.days), list(c.weeks), list(c.months), [], warm=True)
        log.info(report.render())
    except Exception as exc:  # noqa: BLE001 - fail-open
        log.warning("cache refresh after %s failed (metrics are correct in Postgres): %s", result.job_name, exc)


def run_job_flow(name: str, *, start: date | None = None, end: date | None = None,
                 refresh: bool = True, **kwargs: Any) -> dict[str, Any]:
    result = run_job(name, start=start, end=end, **kwargs)
    artifacts.publish(result)
    if refresh and result.status in ("COMPLETED", "PARTIAL") and result.changed.days:
        refresh_cache(result)
    if not result.ok:
        raise JobFailed(result)
    return {"job": name, "status": result.status, "log_id": result.log_id, "attempts": result.attempts,
            "rows_affected": result.rows_affected, "days": len(result.changed.days),
            "weeks": len(result.changed.weeks), "months": len(result.changed.months),
            "flow_run_id": _flow_run_id(), "summary": result.render()}


def run_custom_metrics_step() -> dict[str, Any]:
    """Compile and run every active custom metric (after the daily job); fails the flow unless COMPLETED."""
    from metricsmith.custom_metrics.job import run_custom_metrics_job

    result = run_custom_metrics_job()
    _logger().info("custom metrics %s: %d models ok, %d failed, %d value rows", result.status, result.models_ok,
                   result.models_failed, result.rows)
    if result.status != "COMPLETED":
        raise RuntimeError(f"custom-metrics {result.status}: {result.message}")
    return result.as_dict()
