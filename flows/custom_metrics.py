"""Prefect flow ``custom-metrics``: compile and run every active custom metric (after the daily run).

Thin on purpose: the logic is :func:`metricsmith.custom_metrics.job.run_custom_metrics_job`
(the one job runner: job log row ``custom-metrics``, one-at-a-time lock, retries, FAILED /
PARTIAL with dbt's message).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from metricsmith.orchestration.flowkit import run_custom_metrics_step


@flow(name="custom-metrics", log_prints=True)
def custom_metrics(full_refresh: bool = False) -> dict[str, Any]:
    return run_custom_metrics_step(full_refresh=full_refresh)


if __name__ == "__main__":
    custom_metrics()
