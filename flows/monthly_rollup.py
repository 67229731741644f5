"""Prefect flow ``monthly-rollup`` (schedule: 0 5 2 * * UTC, see metricsmith.orchestration.schedules):
the month grain's mart and what it needs, with its data tests. Logic: :mod:`metricsmith.orchestration`."""

from __future__ import annotations

from typing import Any

from prefect import flow

from metricsmith.orchestration.flowkit import run_job_flow


@flow(name="monthly-rollup", log_prints=True)
def monthly_rollup(refresh_cache: bool = True) -> dict[str, Any]:
    return run_job_flow("monthly-rollup", refresh=refresh_cache)


if __name__ == "__main__":
    monthly_rollup()
