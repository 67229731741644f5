"""Prefect flow ``custom-metrics``: compile and run every active custom metric (after the daily run).

Thin on purpose: the logic is :func:`metricsmith.custom_metrics.job.run_custom_metrics_job`
(job log row ``custom-metrics``, one-at-a-time lock, FAILED / PARTIAL with dbt's message).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from metricsmith.custom_metrics.job import run_custom_metrics_job


@flow(name="custom-metrics", log_prints=True)
def custom_metrics(full_refresh: bool = False) -> dict[str, Any]:
    result = run_custom_metrics_job(full_refresh=full_refresh)
    log = get_run_logger()
    log.info("custom metrics %s: %d models ok, %d failed, %d value rows", result.status, result.models_ok,
             result.models_failed, result.rows)
    if result.status != "COMPLETED":
        raise RuntimeError(f"custom-metrics {result.status}: {result.message}")
    return result.as_dict()


if __name__ == "__main__":
    custom_metrics()
