"""Prefect flow ``backfill`` (no schedule; run it from the UI or `metricsmith jobs run backfill
--start D --end D`): recompute days start..end and the weeks and months above them in one
set-based pass per model (the rollups' backfill). Logic: :mod:`metricsmith.orchestration`."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow

from metricsmith.orchestration.flowkit import run_job_flow


@flow(name="backfill", log_prints=True)
def backfill(start: date, end: date, refresh_cache: bool = True) -> dict[str, Any]:
    return run_job_flow("backfill", start=start, end=end, refresh=refresh_cache)


if __name__ == "__main__":
    import sys

    backfill(date.fromisoformat(sys.argv[1]), date.fromisoformat(sys.argv[2]))
