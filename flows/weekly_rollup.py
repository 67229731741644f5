"""Prefect flow ``weekly-rollup`` (schedule: 0 4 * * 1 UTC, see metricsmith.orchestration.schedules):
the week grain's mart and what it needs, with its data tests. Logic: :mod:`metricsmith.orchestration`."""

from __future__ import annotations

from typing import Any

from prefect import flow

from metricsmith.orchestration.flowkit import run_job_flow


@flow(name="weekly-rollup", log_prints=True)
def weekly_rollup(refresh_cache: bool = True) -> dict[str, Any]:
    return run_job_flow("weekly-rollup", refresh=refresh_cache)


if __name__ == "__main__":
    weekly_rollup()
