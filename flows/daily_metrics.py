"""Prefect flow ``daily-metrics`` (schedule: 0 2 * * * UTC, see metricsmith.orchestration.schedules).

Incremental dbt build of daily_metrics and what it needs (each dbt node is a task), with
the job log, one-at-a-time lock, retries and artifact of :mod:`metricsmith.orchestration`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from metricsmith.orchestration.flowkit import run_custom_metrics_step, run_job_flow


@flow(name="daily-metrics", log_prints=True)
def daily_metrics(refresh_cache: bool = True, custom_metrics: bool = True) -> dict[str, Any]:
    result = run_job_flow("daily-metrics", refresh=refresh_cache)
    if custom_metrics:
        # custom metrics run after the daily run, on the same fresh data
        result["custom_metrics"] = run_custom_metrics_step()
    return result


if __name__ == "__main__":
    daily_metrics()
