"""Prefect flow ``quarterly-rollup`` (schedule: 0 6 3 1,4,7,10 * UTC, see metricsmith.orchestration.schedules):
the quarter grain's mart and what it needs, with its data tests. Logic: :mod:`metricsmith.orchestration`."""

from __future__ import annotations

from typing import Any

from prefect import flow

from metricsmith.orchestration.flowkit import run_job_flow


@flow(name="quarterly-rollup", log_prints=True)
def quarterly_rollup(refresh_cache: bool = True) -> dict[str, Any]:
    return run_job_flow("quarterly-rollup", refresh=refresh_cache)


if __name__ == "__main__":
    quarterly_rollup()
