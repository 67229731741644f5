"""Generator: deterministic, realistic, and what it writes equals what it yields."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import date, datetime
from typing import Any

import psycopg
import pytest

from metricsmith.generator import EventGenerator, generate_events, generate_to_db

START = date(2024, 1, 1)


def digest(events: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(events, sort_keys=True).encode()).hexdigest()


def test_same_seed_same_events_different_seed_different() -> None:
    a = list(generate_events(days=10, events_per_day=300, seed=1, start=START))
    b = list(generate_events(days=10, events_per_day=300, seed=1, start=START))
    c = list(generate_events(days=10, events_per_day=300, seed=2, start=START))
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_a_day_does_not_depend_on_how_much_is_generated() -> None:
    short = EventGenerator(days=5, events_per_day=300, seed=9, start=START)
    assert short.day(2).event_id == EventGenerator(days=5, events_per_day=300, seed=9, start=START).day(2).event_id


def test_shape_of_the_data() -> None:
    events = list(generate_events(days=60, events_per_day=1_000, seed=3, start=START))
    assert abs(len(events) - 60_000) < 600
    types = Counter(e["event_type"] for e in events)
    users = {e["user_id"] for e in events if e["user_id"]}
    signups = [e for e in events if e["event_type"] == "signup"]
    assert len(signups) == len(users), "every user signs up exactly once"
    assert {"page_view", "purchase", "signup", "search"} <= set(types)
    anon = sum(1 for e in events if e["user_id"] is None)
    assert 0.03 < anon / len(events) < 0.09
    purchases = [e for e in events if e["event_type"] == "purchase"]
    assert purchases and all(e["revenue_cents"] > 0 for e in purchases)
    assert all(e["revenue_cents"] == 0 for e in events if e["event_type"] != "purchase")
    late = [e for e in events
            if datetime.fromisoformat(e["received_at"]) - datetime.fromisoformat(e["occurred_at"]) > _hours(1)]
    assert late, "some events arrive late"
    assert len({e["organization_id"] for e in events}) > 20
    assert len({e["event_id"] for e in events}) == len(events)
    by_weekday = Counter(datetime.fromisoformat(e["occurred_at"]).weekday() for e in events)
    assert by_weekday[6] < by_weekday[2], "weekends are quieter"
    first_half = sum(1 for e in events if e["occurred_at"] < "2024-01-31")
    assert first_half < len(events) / 2, "volume grows"


def _hours(n: int) -> Any:
    from datetime import timedelta

    return timedelta(hours=n)


def test_database_rows_equal_the_records(empty_events: psycopg.Connection[Any]) -> None:
    result = generate_to_db(days=4, events_per_day=2_000, seed=5, start=START)
    expected = list(generate_events(days=4, events_per_day=2_000, seed=5, start=START))
    assert result.events == len(expected)
    rows = empty_events.execute(
        "select event_id::text, occurred_at, received_at, event_type, user_id, organization_id, session_id, "
        "revenue_cents, properties from raw.events").fetchall()
    got = {r[0]: r for r in rows}
    assert len(got) == len(expected)
    for e in expected[:: max(1, len(expected) // 500)]:
        r = got[e["event_id"]]
        assert r[1] == datetime.fromisoformat(e["occurred_at"])
        assert r[2] == datetime.fromisoformat(e["received_at"])
        assert r[3:8] == (e["event_type"], e["user_id"], e["organization_id"], e["session_id"], e["revenue_cents"])
        assert r[8] == json.loads(e["properties"])
    assert sum(r[7] for r in rows) == sum(e["revenue_cents"] for e in expected)


def test_generating_the_same_range_twice_is_refused(empty_events: psycopg.Connection[Any]) -> None:
    generate_to_db(days=1, events_per_day=100, seed=5, start=START)
    with pytest.raises(psycopg.errors.UniqueViolation):
        generate_to_db(days=1, events_per_day=100, seed=5, start=START)
    assert empty_events.execute("select count(*) from raw.events").fetchone() == (
        len(list(generate_events(days=1, events_per_day=100, seed=5, start=START))),)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="--days"):
        EventGenerator(days=0, events_per_day=10, seed=1)
    with pytest.raises(ValueError, match="--events-per-day"):
        EventGenerator(days=1, events_per_day=0, seed=1)


def test_no_time_is_in_the_future(empty_events: psycopg.Connection[Any]) -> None:
    from datetime import UTC, timedelta

    start = datetime.now(UTC).date() - timedelta(days=3)
    result = generate_to_db(days=4, events_per_day=5_000, seed=12, start=start)  # up to and including today
    after = datetime.now(UTC)
    row = empty_events.execute(
        "select max(received_at), max(occurred_at), count(*) filter (where received_at < occurred_at), "
        "count(*) filter (where received_at - occurred_at > interval '1 hour'), count(*) from raw.events").fetchone()
    assert row is not None
    max_received, max_occurred, backwards, late, count = row
    assert count == result.events
    assert max_received <= after and max_occurred <= after
    assert backwards == 0
    assert late > 0, "late arrivals are still generated (received up to now)"
    # the records (for the loader and tests) agree: received_at <= generation time, >= occurred_at
    now = datetime.now(UTC)
    gen = EventGenerator(days=4, events_per_day=2_000, seed=12, start=start, now=now)
    for batch in gen.days_iter():
        for e in EventGenerator.records(batch):
            occurred = datetime.fromisoformat(e["occurred_at"])
            received = datetime.fromisoformat(e["received_at"])
            assert occurred <= received <= now


def test_a_range_past_today_is_refused() -> None:
    from datetime import UTC, timedelta

    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    with pytest.raises(ValueError, match="no future events"):
        EventGenerator(days=1, events_per_day=10, seed=1, start=tomorrow)
    with pytest.raises(ValueError, match="no future events"):
        EventGenerator(days=3, events_per_day=10, seed=1, start=tomorrow - timedelta(days=2))


def test_a_year_starting_on_the_28th_has_like_for_like_growth_and_flags(empty_events: psycopg.Connection[Any]) -> None:
    """Issue 12: a generated year starting on the 28th (2024-11-28, a Thursday) used to show YoY users of
    thousands of percent against a 3-day November. Like-for-like: no growth above +500 % on the
    full basis, and every comparison with the first partial month / week, or of the last
    partial ones, says so in its basis."""
    from metricsmith import rollups

    generate_to_db(days=370, events_per_day=500, seed=12, start=date(2024, 11, 28))
    rollups.run_rollups(full_refresh=True, quiet=True)
    conn = empty_events
    for table, key, cmps in (("weekly_metrics", "week_start", ("wow",)), ("monthly_metrics", "month_start", ("mom", "yoy")),
                             ("quarterly_metrics", "quarter_start", ("qoq", "yoy"))):
        cur = conn.execute(f"select * from analytics.{table} order by {key}")
        rows = [dict(zip([d.name for d in cur.description], r, strict=True)) for r in cur.fetchall()]
        for r in rows:
            for c in cmps:
                if r[f"{c}_basis"] == "full":
                    for m in ("total_events", "active_users", "new_users", "revenue_cents"):
                        value = r[f"{m}_{c}_pct"]
                        assert value is None or value <= 500, (table, r[key], m, c, value)
        assert all(r[f"{c}_basis"] == "none" and r[f"{c}_basis_days"] is None for c in cmps for r in rows[:1])
    months = {r[0]: r[1:] for r in conn.execute(
        "select month_start, is_complete, mom_basis, mom_basis_days, yoy_basis, yoy_basis_days "
        "from analytics.monthly_metrics").fetchall()}
    assert months[date(2024, 11, 1)] == (False, "none", None, "none", None)
    assert months[date(2024, 12, 1)][1:4] == ("partial_baseline", 3, "none")
    assert months[date(2025, 1, 1)][1:3] == ("full", 31)
    assert months[date(2025, 11, 1)][3:] == ("partial_baseline", 3)
    assert months[date(2025, 12, 1)][:3] == (False, "to_date", 2)
    weeks = conn.execute("select wow_basis, wow_basis_days from analytics.weekly_metrics order by week_start").fetchall()
    assert weeks[0] == ("none", None) and weeks[1] == ("partial_baseline", 4) and weeks[2] == ("full", 7)
    assert weeks[-1][0] == "to_date"
