"""`make demo` step: run the daily job once (job log, lock, retries; outside Prefect, so no
server start-up) and print the job log and `metricsmith health`."""

from __future__ import annotations

from metricsmith import db
from metricsmith.health import get_metrics_aggregation_health
from metricsmith.orchestration import joblog
from metricsmith.orchestration.jobs import run_job


def step_jobs() -> None:
    result = run_job("daily-metrics")
    print(result.render())
    with db.connect(autocommit=True) as conn:
        rows = joblog.recent(conn, limit=3)
    print("latest job log rows (metricsmith jobs log):")
    for r in rows:
        print(f"  {r['id']:>4} {r['job_name']:<15} {r['status']:<9} attempt {r['attempt']} "
              f"{r['started_at']:%Y-%m-%d %H:%M:%S} {r['duration_ms'] or 0:>7} ms {r['rows_affected'] or 0:>6} rows")
    print(get_metrics_aggregation_health().render())
    print("(the weekly/monthly jobs run on their schedules: `metricsmith serve`, or `metricsmith jobs run NAME`)")
