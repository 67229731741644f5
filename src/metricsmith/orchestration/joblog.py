"""The job log ``metricsmith.metrics_aggregation_jobs_log``: one row per job run.

A row is inserted RUNNING when a run starts and updated exactly once to its final status
(COMPLETED, FAILED or PARTIAL). A process that dies leaves its row RUNNING; the next run of
the same job (which then holds the job's advisory lock, so the old process is gone) and any
run once the row is older than its ``details.timeout_seconds`` mark it FAILED.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

TABLE = "metricsmith.metrics_aggregation_jobs_log"
FINAL_STATUSES = ("COMPLETED", "FAILED", "PARTIAL")
STATUSES = ("RUNNING", *FINAL_STATUSES)

KILLED_MESSAGE = "the run ended without finishing (process killed or lost); marked FAILED by a later run"


@dataclass(frozen=True)
class Final:
    status: str
    rows_affected: int | None = None
    models_ok: int | None = None
    models_failed: int | None = None
    error_message: str | None = None
    period_start: date | None = None
    period_end: date | None = None


def start(
    conn: psycopg.Connection[Any],
    job_name: str,
    *,
    attempt: int,
    timeout_seconds: int,
    period_start: date | None = None,
    period_end: date | None = None,
    flow_run_id: UUID | str | None = None,
    details: dict[str, Any] | None = None,
) -> int:
    """Insert a RUNNING row and return its id (autocommit connection)."""
    row = conn.execute(
        f"""insert into {TABLE} (job_name, status, attempt, period_start, period_end, prefect_flow_run_id, details)
            values (%s, 'RUNNING', %s, %s, %s, %s, %s) returning id""",
        (job_name, attempt, period_start, period_end, str(flow_run_id) if flow_run_id else None,
         Jsonb({"timeout_seconds": timeout_seconds, **(details or {})})),
    ).fetchone()
    assert row is not None
    return int(row[0])


def update_attempt(conn: psycopg.Connection[Any], row_id: int, attempt: int, details: dict[str, Any]) -> None:
    conn.execute(f"update {TABLE} set attempt = %s, details = details || %s where id = %s and status = 'RUNNING'",
                 (attempt, Jsonb(details), row_id))


def finish(conn: psycopg.Connection[Any], row_id: int, final: Final, details: dict[str, Any] | None = None) -> None:
    """Set the final status once; a row that is no longer RUNNING is left alone."""
    if final.status not in FINAL_STATUSES:
        raise ValueError(f"not a final status: {final.status!r}")
    conn.execute(
        f"""update {TABLE} set status = %s, finished_at = clock_timestamp(),
                duration_ms = greatest(0, (extract(epoch from clock_timestamp() - started_at) * 1000)::bigint),
                rows_affected = %s, models_ok = %s, models_failed = %s, error_message = %s,
                period_start = coalesce(%s, period_start), period_end = coalesce(%s, period_end),
                details = details || %s
            where id = %s and status = 'RUNNING'""",
        (final.status, final.rows_affected, final.models_ok, final.models_failed, final.error_message,
         final.period_start, final.period_end, Jsonb(details or {}), row_id),
    )


def mark_stale(conn: psycopg.Connection[Any], job_name: str | None = None) -> list[int]:
    """Mark abandoned RUNNING rows FAILED and return their ids.

    With ``job_name`` (call it while holding that job's advisory lock): every RUNNING row of
    that job is abandoned, since no other live process can be running it. In any case:
    every RUNNING row older than its ``details.timeout_seconds`` (default 6 h)."""
    rows = conn.execute(
        f"""update {TABLE} set status = 'FAILED', finished_at = clock_timestamp(),
                duration_ms = greatest(0, (extract(epoch from clock_timestamp() - started_at) * 1000)::bigint),
                error_message = %s || ' (started ' || to_char(started_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC)',
                details = details || jsonb_build_object('stale', true)
            where status = 'RUNNING'
              and (job_name = %s
                   or started_at < clock_timestamp()
                        - make_interval(secs => coalesce((details->>'timeout_seconds')::int, 21600)))
            returning id""",
        (KILLED_MESSAGE, job_name),
    ).fetchall()
    return [int(r[0]) for r in rows]


def recent(conn: psycopg.Connection[Any], job_name: str | None = None, limit: int = 20,
           status: str | None = None) -> list[dict[str, Any]]:
    """Newest rows first, as dicts."""
    where: list[str] = []
    params: list[Any] = []
    if job_name:
        where.append("job_name = %s")
        params.append(job_name)
    if status:
        where.append("status = %s")
        params.append(status)
    sql = f"select * from {TABLE} {'where ' + ' and '.join(where) if where else ''} order by started_at desc, id desc limit %s"
    cur = conn.execute(sql, (*params, limit))
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
