"""Prefect flow ``daily-metrics`` (schedule: 0 2 * * * UTC, see metricsmith.orchestration.schedules).

Incremental dbt build of daily_metrics and what it needs (each dbt node is a task), with
the job log, one-at-a-time lock, retries and artifact of :mod:`metricsmith.orchestration`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from metricsmith.orchestration import flowkit


@flow(name="daily-metrics", log_prints=True)
def daily_metrics(refresh_cache: bool = True, custom_metrics: bool = True) -> dict[str, Any]:
    # custom metrics run after the daily run, on the same fresh data
    return flowkit.daily_metrics(refresh_cache=refresh_cache, custom_metrics=custom_metrics)


if __name__ == "__main__":
    daily_metrics()
