"""``/v1/jobs`` (the health report of every scheduled job) and ``/v1/jobs/{name}/runs`` (its log)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from metricsmith import health
from metricsmith.api import params
from metricsmith.api.deps import State, User
from metricsmith.api.errors import NotFound
from metricsmith.api.serialization import JSONResponse
from metricsmith.orchestration.joblog import TABLE
from metricsmith.orchestration.jobs import JOBS
from metricsmith.orchestration.schedules import SCHEDULES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_RUN_COLUMNS = ("id", "job_name", "status", "attempt", "started_at", "finished_at", "duration_ms", "period_start",
                "period_end", "rows_affected", "models_ok", "models_failed", "error_message", "prefect_flow_run_id")


def job_names() -> list[str]:
    return sorted({*SCHEDULES, *JOBS})


@router.get("", summary="Health of every scheduled job (last success, failures, freshness, next run)")
def jobs(state: State, user: User) -> JSONResponse:
    return JSONResponse(health.get_metrics_aggregation_health(settings=state.settings, schema=state.schema).to_dict())


@router.get("/{name}/runs", summary="The job's runs, newest first, paged with limit/cursor")
def runs(name: str, state: State, user: User,
         limit: Annotated[int, Query(ge=1, le=500)] = 50,
         cursor: Annotated[str | None, Query(max_length=params.MAX_CURSOR_LENGTH)] = None) -> JSONResponse:
    if name not in job_names():
        raise NotFound(f"no job {name!r}; jobs: {', '.join(job_names())}")
    query = params.fingerprint("runs", name)
    before = params.decode_cursor(cursor, query) or None  # the id the next page starts below
    cols = ", ".join(f"{c}::text" if c in ("status", "prefect_flow_run_id") else c for c in _RUN_COLUMNS)
    with state.connection() as conn:
        rows = conn.execute(
            f"select {cols} from {TABLE} where job_name = %s and (%s::bigint is null or id < %s)"
            " order by id desc limit %s", (name, before, before, limit + 1)).fetchall()
    items = [dict(zip(_RUN_COLUMNS, r, strict=True)) for r in rows[:limit]]
    more = len(rows) > limit
    return JSONResponse({"job": name, "runs": items,
                         "next_cursor": params.encode_cursor(items[-1]["id"], query) if more else None})
