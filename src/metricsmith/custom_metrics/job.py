"""The custom-metrics job (flow ``custom-metrics``): compile and run every active custom metric.

Scheduled after the daily run. Uses the orchestration job log
(``metricsmith.metrics_aggregation_jobs_log``, job name ``custom-metrics``) and its
one-at-a-time advisory lock. A generated model that fails at run time is isolated (the others
publish into analytics.custom_metric_values): the job ends PARTIAL with each failed model's
error, FAILED when every model failed or dbt itself failed, else COMPLETED.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metricsmith import db
from metricsmith.config import Settings, load_settings
from metricsmith.core.dbt import DbtError
from metricsmith.core.status import JobStatus
from metricsmith.custom_metrics.service import CustomMetricsService

JOB_NAME = "custom-metrics"
#: the daily job runs at 02:00 UTC; this one at 03:00 UTC, after it
SCHEDULE_CRON = "0 3 * * *"


@dataclass(frozen=True)
class CustomMetricsJobResult:
    status: JobStatus
    models_ok: int
    models_failed: int
    rows: int
    message: str | None
    log_id: int | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_custom_metrics_job(*, full_refresh: bool = False, lock_wait_seconds: float = 600.0,
                           settings: Settings | None = None, service: CustomMetricsService | None = None,
                           ) -> CustomMetricsJobResult:
    from metricsmith.core import pglock
    from metricsmith.orchestration import joblog

    settings = settings or load_settings()
    svc = service or CustomMetricsService(settings)
    with db.connect(settings, autocommit=True) as conn:
        lock = pglock.job_lock(JOB_NAME)
        if not lock.acquire(conn, lock_wait_seconds):
            row_id = joblog.start(conn, JOB_NAME, attempt=1, timeout_seconds=3600, details={"skipped": True})
            msg = f"another {JOB_NAME} run holds the lock; waited {lock_wait_seconds:.0f} s"
            joblog.finish(conn, row_id, joblog.Final(JobStatus.FAILED, error_message=msg))
            return CustomMetricsJobResult(JobStatus.FAILED, 0, 0, 0, msg, row_id)
        try:
            joblog.mark_stale(conn, JOB_NAME)
            row_id = joblog.start(conn, JOB_NAME, attempt=1, timeout_seconds=3600,
                                  details={"full_refresh": full_refresh})
            published = False
            try:
                run = svc.run(full_refresh=full_refresh)
            except DbtError as exc:
                ok, failed = 0, len(exc.failures) or 1
                message: str | None = str(exc)
            else:
                published = True
                ok = sum(1 for s in run.models.node_status.values() if s == "success")
                failed = len(run.failures)
                message = "; ".join(f"{f.model}: {f.error}" for f in run.failures) or None
            rows = 0
            if published:
                got = conn.execute("select count(*) from analytics.custom_metric_values").fetchone()
                rows = int(got[0]) if got else 0
            status = (JobStatus.COMPLETED if published and not failed
                      else JobStatus.PARTIAL if published and ok else JobStatus.FAILED)
            joblog.finish(conn, row_id, joblog.Final(status, rows_affected=rows, models_ok=ok, models_failed=failed,
                                                     error_message=message))
            if status is not JobStatus.FAILED:
                _invalidate_cached_values(conn)
            return CustomMetricsJobResult(status, ok, failed, rows, message, row_id)
        finally:
            lock.release(conn)


def _invalidate_cached_values(conn: Any) -> None:
    """Re-runs recompute values of the same versions: drop their cached copies (never fails the job)."""
    from metricsmith.cache.invalidation import invalidate_periods

    try:
        slugs = [r[0] for r in conn.execute(
            "select slug from metricsmith.custom_metric_definitions where status = 'active'").fetchall()]
        if slugs:
            invalidate_periods(slugs=slugs)
    except Exception as exc:  # noqa: BLE001 - the cache is an optimisation; the job's result stands
        print(f"warning: custom metric cache invalidation failed: {exc}")
