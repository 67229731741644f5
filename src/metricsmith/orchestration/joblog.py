"""The job log ``metricsmith.metrics_aggregation_jobs_log``: one row per job run.

A row is inserted RUNNING when a run starts and updated exactly once to its final status
(COMPLETED, FAILED or PARTIAL). Every row records its owner in ``details.owner``: a token
unique to the run, the host, the process id (and its start time) and the backend pid that
holds the job's advisory lock. A process that dies leaves its row RUNNING; the next run of
the same job (which then holds the job's advisory lock) and any run once the row is older
than its ``details.timeout_seconds`` mark it FAILED - but never a row whose owner is provably
alive: the caller's own run (same token), a process still alive on this host, or a backend
that still holds the job's lock. So a run that lost its connections (a PostgreSQL restart)
and reconnects keeps its own row and finishes it.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from metricsmith.core import pglock
from metricsmith.core.status import FINAL_STATUSES, JobStatus

TABLE = "metricsmith.metrics_aggregation_jobs_log"
FINAL_STATUSES = FINAL_STATUSES
STATUSES: tuple[JobStatus, ...] = tuple(JobStatus)

KILLED_MESSAGE = "the run ended without finishing (process killed or lost); marked FAILED by a later run"


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):  # numeric sums (overflow-safe revenue) come back as Decimal
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, date | datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _jsonb(value: dict[str, Any]) -> Jsonb:
    """``details`` as jsonb: numbers from numeric columns, dates and uuids included."""
    return Jsonb(value, dumps=lambda obj: json.dumps(obj, default=_json_default))


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def new_owner(backend_pid: int | None = None) -> dict[str, Any]:
    """The ``details.owner`` record of a new run in this process."""
    pid = os.getpid()
    return {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": pid,
            "pid_start": _process_start(pid), "backend_pid": backend_pid}


def owner_alive(owner: Any) -> bool:
    """True when ``owner`` is a process that is provably still alive on this host."""
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return False
    try:
        pid = int(owner.get("pid") or 0)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    except OSError:
        return False
    recorded, actual = owner.get("pid_start"), _process_start(pid)
    return recorded is None or actual is None or str(recorded) == actual


@dataclass(frozen=True)
class Final:
    status: JobStatus | str
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
    owner: dict[str, Any] | None = None,
) -> int:
    """Insert a RUNNING row and return its id (autocommit connection). ``owner`` (default: a
    new one for this process, with ``conn``'s backend pid) goes to ``details.owner``."""
    if owner is None:
        backend = conn.execute("select pg_backend_pid()").fetchone()
        owner = new_owner(int(backend[0]) if backend else None)
    row = conn.execute(
        f"""insert into {TABLE} (job_name, status, attempt, period_start, period_end, prefect_flow_run_id, details)
            values (%s, 'RUNNING', %s, %s, %s, %s, %s) returning id""",
        (job_name, attempt, period_start, period_end, str(flow_run_id) if flow_run_id else None,
         _jsonb({"timeout_seconds": timeout_seconds, **(details or {}), "owner": owner})),
    ).fetchone()
    assert row is not None
    return int(row[0])


def update_attempt(conn: psycopg.Connection[Any], row_id: int, attempt: int, details: dict[str, Any]) -> None:
    conn.execute(f"update {TABLE} set attempt = %s, details = details || %s where id = %s and status = 'RUNNING'",
                 (attempt, _jsonb(details), row_id))


def finish(conn: psycopg.Connection[Any], row_id: int, final: Final, details: dict[str, Any] | None = None) -> None:
    """Set the final status once; a row that is no longer RUNNING is left alone."""
    if final.status not in FINAL_STATUSES:  # a JobStatus or its text
        raise ValueError(f"not a final status: {final.status!r}")
    conn.execute(
        f"""update {TABLE} set status = %s, finished_at = clock_timestamp(),
                duration_ms = greatest(0, (extract(epoch from clock_timestamp() - started_at) * 1000)::bigint),
                rows_affected = %s, models_ok = %s, models_failed = %s, error_message = %s,
                period_start = coalesce(%s, period_start), period_end = coalesce(%s, period_end),
                details = details || %s
            where id = %s and status = 'RUNNING'""",
        (final.status, final.rows_affected, final.models_ok, final.models_failed, final.error_message,
         final.period_start, final.period_end, _jsonb(details or {}), row_id),
    )


def mark_stale(conn: psycopg.Connection[Any], job_name: str | None = None, *,
               own_token: str | None = None) -> list[int]:
    """Mark abandoned RUNNING rows FAILED and return their ids.

    Candidates: with ``job_name`` (call it while holding that job's advisory lock) every
    RUNNING row of that job; in any case every RUNNING row older than its
    ``details.timeout_seconds`` (default 6 h). A candidate is left alone when its owner is
    provably alive: ``own_token`` (the caller's own run, e.g. after it reconnected), a
    process still alive on this host, or a backend that still holds the job's lock."""
    candidates = conn.execute(
        f"""select id, job_name, details->'owner' from {TABLE}
            where status = 'RUNNING'
              and (job_name = %s
                   or started_at < clock_timestamp()
                        - make_interval(secs => coalesce((details->>'timeout_seconds')::int, 21600)))""",
        (job_name,),
    ).fetchall()
    stale: list[int] = []
    for row_id, row_job, owner in candidates:
        if own_token is not None and isinstance(owner, dict) and owner.get("token") == own_token:
            continue
        if owner_alive(owner):
            continue
        if row_job != job_name and isinstance(owner, dict) and owner.get("backend_pid") is not None \
                and pglock.job_lock(row_job).holder_pid(conn) == owner.get("backend_pid"):
            continue
        stale.append(int(row_id))
    if not stale:
        return []
    rows = conn.execute(
        f"""update {TABLE} set status = 'FAILED', finished_at = clock_timestamp(),
                duration_ms = greatest(0, (extract(epoch from clock_timestamp() - started_at) * 1000)::bigint),
                error_message = %s || ' (started ' || to_char(started_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC)',
                details = details || jsonb_build_object('stale', true)
            where status = 'RUNNING' and id = any(%s)
            returning id""",
        (KILLED_MESSAGE, stale),
    ).fetchall()
    return sorted(int(r[0]) for r in rows)


def recent(conn: psycopg.Connection[Any], job_name: str | None = None, limit: int = 20,
           status: JobStatus | str | None = None) -> list[dict[str, Any]]:
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
