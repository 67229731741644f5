"""Revenue sums are overflow-safe: sums of many events exceed bigint (9.2 * 10^18), so every
revenue sum, average and growth is numeric with a declared precision, and no model fails with
"bigint out of range". Numbers are checked against the independent Python computation."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from rollups_reference import Event, diff_tables, fetch_tables, insert_events, reference

from metricsmith import event_rules, rollups

#: the loader's documented maximum per event (docs/rollups.md)
MAX_EVENT_CENTS = 10**12
BIGINT_MAX = 2**63 - 1


def _at(d: date, second: int) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(seconds=second)


def _purchases(d: date, n: int, cents: int, user: str = "buyer") -> list[Event]:
    return [Event(occurred_at=_at(d, i % 86400), received_at=_at(d, i % 86400), event_type="purchase",
                  user_id=f"{user}{i % 50}", session_id=f"s{i % 7}", revenue_cents=cents) for i in range(n)]


def _lifted_rules() -> tuple[dict[str, Any], event_rules.EventRules]:
    """event_rules with the per-event maximum lifted to bigint's (as raw.events allows), so
    that a few events make sums beyond bigint; everything else as declared."""
    declared = event_rules.load()
    as_var = {"max_revenue_cents": BIGINT_MAX, "min_occurred_at": declared.min_occurred_at.date().isoformat(),
              "max_future_seconds": declared.max_future_seconds}
    return {"event_rules": as_var}, event_rules.parse(as_var)


def _check(conn: psycopg.Connection[Any], events: list[Event],
           rules: event_rules.EventRules | None = None) -> dict[str, list[dict[str, Any]]]:
    actual = fetch_tables(conn)
    problems = diff_tables(reference(events, "UTC", rules), actual)
    assert not problems, "\n".join(problems)
    return actual


def test_many_events_at_the_bound_on_one_day(empty_events: psycopg.Connection[Any]) -> None:
    """20,000 purchases at the per-event maximum on one day: exact sums, averages and growth."""
    conn = empty_events
    day = date(2024, 5, 8)
    events = (_purchases(date(2024, 4, 30), 3, 1, "early") + _purchases(day, 20_000, MAX_EVENT_CENTS)
              + _purchases(date(2024, 5, 9), 1, MAX_EVENT_CENTS - 1))
    insert_events(conn, events)
    rollups.run_rollups(full_refresh=True, timezone="UTC", test=True, quiet=True)
    tables = _check(conn, events)
    daily = {r["metric_date"]: r for r in tables["daily_metrics"]}
    assert daily[day]["revenue_cents"] == 20_000 * MAX_EVENT_CENTS


def test_revenue_beyond_bigint_in_a_day_week_and_month(empty_events: psycopg.Connection[Any]) -> None:
    """Day, week and month sums far beyond bigint (and growth of ~10^21 %) build, pass the
    data tests, and equal the Python computation; incremental equals a full refresh."""
    conn = empty_events
    lifted, rules = _lifted_rules()
    big = BIGINT_MAX // 2  # two of these fit bigint, three do not
    monday = date(2024, 5, 6)
    events = (_purchases(date(2024, 4, 29), 1, 1, "prev")  # previous week / month: 1 cent
              + _purchases(monday, 3, big)  # one day beyond bigint
              + _purchases(monday + timedelta(days=2), 4, big)  # the week and month further
              + _purchases(date(2024, 5, 13), 1, 1, "next"))  # growth from ~10^19 to 1 cent
    insert_events(conn, events)
    rollups.run_rollups(full_refresh=True, timezone="UTC", test=True, quiet=True, extra_vars=lifted)
    tables = _check(conn, events, rules)
    week = {r["week_start"]: r for r in tables["weekly_metrics"]}[monday]
    assert week["revenue_cents"] == 7 * big > BIGINT_MAX
    assert week["revenue_cents_wow_pct"] == round(100 * (7 * big - 1), 4)

    # an incremental run on top of those sums (late event in the same week) is exact too
    late = _purchases(monday + timedelta(days=1), 2, big, "late")
    for e in late:
        e.received_at = datetime.now(UTC)
    insert_events(conn, late)
    result = rollups.run_rollups(timezone="UTC", test=True, quiet=True, extra_vars=lifted)
    assert result.mode == "incremental"
    incremental = _check(conn, events + late, rules)
    rollups.run_rollups(full_refresh=True, timezone="UTC", quiet=True, extra_vars=lifted)
    assert fetch_tables(conn) == incremental


def test_revenue_columns_are_numeric_with_declared_precision(conn: psycopg.Connection[Any]) -> None:
    """Every numeric column of the marts has a precision (no dbt 'unspecified precision'
    warning) and matches what metricsmith.rollups builds (the upgrade check)."""
    rollups.run_rollups(timezone="UTC", quiet=True)
    rows = conn.execute(
        "select table_name, column_name, data_type, numeric_precision from information_schema.columns "
        "where table_schema = 'analytics' and table_name in ('daily_metrics', 'weekly_metrics', 'monthly_metrics', "
        "'quarterly_metrics')"
    ).fetchall()
    numeric = [(t, c, p) for t, c, dt, p in rows if dt == "numeric"]
    assert numeric and all(p is not None for _, _, p in numeric), numeric
    assert {(t, c) for t, c, _ in numeric if c == "revenue_cents"} == {
        ("daily_metrics", "revenue_cents"), ("weekly_metrics", "revenue_cents"), ("monthly_metrics", "revenue_cents"),
        ("quarterly_metrics", "revenue_cents")}
    assert rollups.outdated_tables() == []


def test_tables_from_an_older_version_are_rebuilt(empty_events: psycopg.Connection[Any]) -> None:
    """A mart built with bigint revenue (an older metricsmith) makes the next run rebuild."""
    conn = empty_events
    events = _purchases(date(2024, 5, 6), 3, 500)
    insert_events(conn, events)
    rollups.run_rollups(full_refresh=True, timezone="UTC", quiet=True)
    conn.execute("alter table analytics.daily_metrics alter column revenue_cents type bigint")
    assert rollups.outdated_tables() == ["daily_metrics"]
    result = rollups.run_rollups(timezone="UTC", quiet=True)
    assert result.mode.startswith("full rebuild")
    assert rollups.outdated_tables() == []
    _check(conn, events)
