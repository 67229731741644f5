"""Silences (``metricsmith alerts silence RULE --for 2h --reason ...``): recorded, never deleted.

While a silence of a rule is in force its incidents still move (FIRING, RESOLVED) but queue no
firing notification; an incident still firing when the silence ends notifies then.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from metricsmith.alerts.errors import AlertError
from metricsmith.alerts.incidents import SILENCES


def add(conn: psycopg.Connection[Any], rule: str, seconds: int, reason: str, *, by: str | None = None,
        now: datetime | None = None) -> dict[str, Any]:
    if seconds <= 0:
        raise AlertError("a silence needs a duration longer than 0s (e.g. --for 2h)")
    if not reason.strip():
        raise AlertError("a silence needs a --reason (who will read it: the next on-call engineer)")
    start = now or datetime.now(UTC)
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(f"""insert into {SILENCES} (rule, starts_at, ends_at, reason, created_by)
                          values (%s, %s, %s, %s, %s) returning *""",
                      (rule, start, start + timedelta(seconds=seconds), reason.strip(),
                       by or getpass.getuser())).fetchone()
    assert row is not None
    return row


def active(conn: psycopg.Connection[Any], now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Rule -> its silence in force now (the one ending last)."""
    cur = conn.cursor(row_factory=dict_row)
    rows = cur.execute(f"""select distinct on (rule) * from {SILENCES} where starts_at <= %s and ends_at > %s
                           order by rule, ends_at desc""", (now or datetime.now(UTC),) * 2).fetchall()
    return {r["rule"]: r for r in rows}
