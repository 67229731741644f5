"""The islands around a week that straddles a quarter (and a year): the ISO week of Monday
2025-12-29 holds Q4 2025 (Mon-Wed) and Q1 2026 (Thu 1 January - Sun). A changed day recomputes
itself and the later days of every period holding it, reading events from its week's start
(macros/rollups/state.sql, rollup_islands_sql): a late Q4 day of that week must recompute the
week's Q1 days, and a late Q1 day must see the week's Q4 days without recomputing Q4. Marts
against the independent Python reference, "first in" counts against a direct count."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from rollups_reference import Event, diff_tables, fetch_tables, insert_events, reference

from metricsmith import rollups

TUESDAY, THURSDAY, FRIDAY = date(2025, 12, 30), date(2026, 1, 1), date(2026, 1, 2)
MONDAY = date(2025, 12, 29)


def _event(user: str, day: date) -> Event:
    at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    return Event(occurred_at=at, received_at=at + timedelta(minutes=1), event_type="page_view", user_id=user,
                 organization_id=f"org-{user}", session_id=f"{user}-{day.isoformat()}")


def _late(user: str, day: date) -> Event:
    """An event of ``day`` that arrives now (after the runs that built its day)."""
    return Event(occurred_at=datetime(day.year, day.month, day.day, 12, tzinfo=UTC), received_at=datetime.now(UTC),
                 event_type="page_view", user_id=user, organization_id=f"org-{user}", session_id=f"{user}-late")


def _first_in(events: list[Event], day: date, period_start: date) -> int:
    """Users active on ``day`` and on no earlier day of the period starting ``period_start`` (UTC days)."""
    days = {(e.user_id, e.occurred_at.date()) for e in events if e.user_id and e.occurred_at}
    return len({u for u, d in days if d == day} - {u for u, d in days if period_start <= d < day})


def _activity(conn: psycopg.Connection[Any]) -> dict[date, tuple[int, int, str]]:
    """int_daily_user_activity by day: (users first in week, users first in quarter, the row's xmin)."""
    rows = conn.execute("select metric_date, users_first_in_week, users_first_in_quarter, xmin::text "
                        "from analytics.int_daily_user_activity").fetchall()
    return {r[0]: (int(r[1]), int(r[2]), str(r[3])) for r in rows}


def _run_and_check(conn: psycopg.Connection[Any], events: list[Event], changed: set[date] | None) -> dict[
        date, tuple[int, int, str]]:
    result = rollups.run_rollups(full_refresh=changed is None, timezone="UTC", quiet=True,
                                 extra_vars={"rollups_safety_lag_seconds": 0})  # each run reads only what is new
    if changed is not None:
        assert result.mode == "incremental" and set(result.changed.days) == changed, result
    problems = diff_tables(reference(events, "UTC"), fetch_tables(conn))
    assert not problems, "\n".join(problems)
    activity = _activity(conn)
    for day in (THURSDAY, FRIDAY):
        assert activity[day][0] == _first_in(events, day, MONDAY), (day, activity[day])
    return activity


def test_late_days_in_a_week_that_straddles_a_quarter(empty_events: psycopg.Connection[Any]) -> None:
    conn = empty_events
    events = [_event("steady", date(2025, 12, 15) + timedelta(days=i)) for i in range(23)]  # to 2026-01-06
    events += [_event("a", date(2025, 12, 15)), _event("a", FRIDAY),  # a: seen before, first in the week on Friday
               _event("b", FRIDAY),  # b: first seen on Friday
               _event("c", TUESDAY)]  # c: active on the week's Tuesday
    insert_events(conn, events)
    built = _run_and_check(conn, events, None)
    assert built[FRIDAY][0] == 2 and built[THURSDAY][:2] == (0, 1)  # a, b / steady first in Q1

    # a's late Tuesday: only a Q4 day changed, yet Friday (Q1) loses a first-in-week user
    events.append(_late("a", TUESDAY))
    insert_events(conn, events[-1:])
    assert _run_and_check(conn, events, {TUESDAY})[FRIDAY][0] == 1

    # c's late Thursday: c was active on Tuesday, so Thursday's first-in-week count stays 0 (the
    # events are read from the week's start) while c is first in Q1 there; Q4 is not recomputed
    before = _activity(conn)
    events.append(_late("c", THURSDAY))
    insert_events(conn, events[-1:])
    after = _run_and_check(conn, events, {THURSDAY})
    assert after[THURSDAY][:2] == (0, 2)
    assert {d for d in after if after[d][2] != before[d][2]} == {d for d in after if d >= THURSDAY}

    # b's late Tuesday moves b's first day into Q4: Friday loses its last first-in-week user
    events.append(_late("b", TUESDAY))
    insert_events(conn, events[-1:])
    assert _run_and_check(conn, events, {TUESDAY, FRIDAY})[FRIDAY][0] == 0
