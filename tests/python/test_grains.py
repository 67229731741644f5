"""The grain declaration (dbt_project.yml vars.grains) and its calendar, against an independent
day-by-day walk of the calendar."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metricsmith import grains
from metricsmith.grains import GrainError


def test_declared_grains() -> None:
    assert grains.names() == ("day", "week", "month", "quarter")
    quarter = grains.get("quarter")
    assert (quarter.model, quarter.start_column, quarter.end_column) == \
        ("quarterly_metrics", "quarter_start", "quarter_end")
    assert [c.suffix for c in quarter.comparisons] == ["qoq", "yoy"]
    assert quarter.breakdown_column == "monthly_breakdown"
    assert grains.get("monthly") is grains.get("month")
    with pytest.raises(GrainError, match="unknown grain 'year': use day, week, month, quarter"):
        grains.get("year")


def _walk_start(grain: grains.Grain, day: date) -> date:
    """Independent: step back day by day until the period boundary rule holds."""
    d = day
    while True:
        if grain.unit == "day":
            return d
        if grain.unit == "week" and d.isoweekday() == 1:
            return d
        if grain.unit == "month" and d.day == 1 and (d.month - 1) % grain.count == 0:
            return d
        d -= timedelta(days=1)


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31)))
def test_period_boundaries(day: date) -> None:
    for grain in grains.load():
        start = grain.start_of(day)
        assert start == _walk_start(grain, day)
        end = grain.end_of(day)
        assert start <= day <= end
        assert _walk_start(grain, end + timedelta(days=1)) == end + timedelta(days=1)
        assert grain.days_in(day) == (end - start).days + 1
        for comparison in grain.comparisons:
            base = comparison.baseline(start)
            assert grain.start_of(base) == base < start


def test_quarter_calendar() -> None:
    q = grains.get("quarter")
    assert list(q.periods_between(date(2025, 11, 28), date(2026, 4, 1))) == \
        [date(2025, 10, 1), date(2026, 1, 1), date(2026, 4, 1)]
    assert q.days_in(date(2024, 2, 10)) == 91  # leap year Q1
    assert q.comparisons[1].baseline(date(2026, 1, 1)) == date(2025, 1, 1)
    assert q.comparisons[0].baseline(date(2026, 1, 1)) == date(2025, 10, 1)
    assert q.tag(date(2026, 5, 17)) == "quarter:2026-04-01"


@pytest.mark.parametrize(("declared", "message"), [
    ([], "non-empty list"),
    ([{"name": "week", "adjective": "weekly", "model": "w", "start": "s", "end": "e", "unit": "week", "count": 1}],
     "first grain must be the day"),
    ([{"name": "day", "adjective": "daily", "model": "d", "start": "s", "unit": "fortnight", "count": 1}],
     "unit='fortnight'"),
    ([{"name": "day", "adjective": "daily", "model": "d; drop", "start": "s", "unit": "day", "count": 1}],
     "lowercase identifier"),
    ([{"name": "day", "adjective": "daily", "model": "d", "start": "s", "unit": "day", "count": 1},
      {"name": "half", "adjective": "halfly", "model": "h", "start": "s", "end": "e", "unit": "month", "count": 5}],
     "divisor of 12"),
    ([{"name": "day", "adjective": "daily", "model": "d", "start": "s", "unit": "day", "count": 1,
       "compare": {"dod": {"days": 1}}}], "months: N"),
])
def test_malformed_declarations_are_refused(declared: object, message: str) -> None:
    with pytest.raises(GrainError, match=message):
        grains.parse(declared)


def test_marts_schema_follows_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    from metricsmith.core.schema import marts_schema

    monkeypatch.delenv("METRICSMITH_DBT_TARGET", raising=False)
    assert marts_schema() == "analytics"
    assert marts_schema("embedded") == "analytics"
    monkeypatch.setenv("METRICSMITH_DBT_TARGET", "dev")
    assert marts_schema() == "analytics_dev"
