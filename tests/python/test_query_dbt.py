"""The query service on the real dbt marts of every declared grain: rows, columns and summaries
equal an independent plain-Python computation from the raw events (rollups_reference)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
import pytest
from rollups_reference import Event, insert_events, like_for_like_days, reference

from metricsmith import grains, rollups
from metricsmith.core.schema import marts_schema
from metricsmith.query import ADDITIVE, MetricsQueryService

TZ = "UTC"
FIRST, LAST = date(2023, 10, 20), date(2025, 2, 10)  # a year boundary, partial first and last quarters
TODAY = date(2030, 1, 1)


def _events(seed: int = 5) -> list[Event]:
    rng = random.Random(seed)
    out = []
    day = FIRST
    while day <= LAST:
        if rng.random() < 0.9:  # some empty days
            for _ in range(rng.randint(1, 6)):
                at = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 86399))
                kind = rng.choice(["page_view", "page_view", "signup", "purchase"])
                out.append(Event(occurred_at=at, received_at=at + timedelta(minutes=5), event_type=kind,
                                 user_id=f"u{rng.randint(1, 40)}", organization_id=f"o{rng.randint(1, 4)}",
                                 session_id=f"s{rng.randint(1, 90)}",
                                 revenue_cents=rng.randint(100, 9000) if kind == "purchase" else 0))
        day += timedelta(days=1)
    return out


@pytest.fixture(scope="module")
def built(test_database: str) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """The marts built by dbt from the events, and the reference computed from the same events."""
    events = _events()
    with psycopg.connect(test_database, autocommit=True) as conn:
        conn.execute("truncate raw.events, raw.events_quarantine")
        insert_events(conn, events)
        rollups.run_rollups(full_refresh=True, timezone=TZ, quiet=True)
        yield reference(events, TZ)
        conn.execute("truncate raw.events, raw.events_quarantine")


@pytest.fixture()
def svc() -> Iterator[MetricsQueryService]:
    with MetricsQueryService(use_cache=False, today=TODAY) as s:
        yield s


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """A reference row as the service types it: breakdown starts as dates."""
    out = dict(row)
    for column, value in row.items():
        if column.endswith("_breakdown"):
            out[column] = [{k: date.fromisoformat(v) if k.endswith("_start") else v for k, v in e.items()}
                           for e in value]
    return out


def _round4(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


@pytest.mark.parametrize("grain", [g.name for g in grains.load()])
def test_rows_equal_the_reference(built: dict[str, list[dict[str, Any]]], svc: MetricsQueryService, grain: str,
                                  conn: psycopg.Connection[Any]) -> None:
    g = grains.get(grain)
    if g.model not in built:
        pytest.skip(f"the reference does not compute {g.model} yet")
    rows = svc.get_period_metrics(grain, FIRST, LAST)
    assert rows == [_typed(r) for r in built[g.model]]
    # every column of the real mart, in its order
    cur = conn.execute(f'select * from "{marts_schema()}"."{g.model}" limit 0')
    assert [d.name for d in cur.description or []] == svc.period_columns(grain) == list(rows[0])


def _basis(ref: dict[date, dict[str, Any]], pairs: list[tuple[date, date]]) -> str:
    if not pairs:
        return "none"
    if not all(ref[p]["is_complete"] for _, p in pairs):
        return "partial_baseline"
    return "full" if all(ref[c]["is_complete"] for c, _ in pairs) else "to_date"


def test_typed_rows_carry_the_reference_basis(built: dict[str, list[dict[str, Any]]],
                                              svc: MetricsQueryService) -> None:
    views = {"week": svc.get_weekly_metrics, "month": svc.get_monthly_metrics, "quarter": svc.get_quarterly_metrics}
    seen: set[str] = set()
    for name, read in views.items():
        g = grains.get(name)
        typed = read(FIRST, LAST)
        assert len(typed) == len(built[g.model])
        for row, want in zip(typed, built[g.model], strict=True):
            for c in g.comparisons:
                for column in (f"{c.suffix}_basis", f"{c.suffix}_basis_days", f"revenue_cents_{c.suffix}_pct"):
                    assert getattr(row, column) == want[column], (name, getattr(row, g.start_column), column)
                seen.add(want[f"{c.suffix}_basis"])
            if g.breakdown_column:
                parts = getattr(row, g.breakdown_column)
                assert [p.is_complete for p in parts] == [e["is_complete"] for e in want[g.breakdown_column]]
    # the data starts mid-month on a Friday and ends mid-week: every basis occurs
    assert seen == {"full", "to_date", "partial_baseline", "none"}


@pytest.mark.parametrize("grain", [g.name for g in grains.periods()])
def test_one_period_summary_is_its_mart_row(built: dict[str, list[dict[str, Any]]], svc: MetricsQueryService,
                                            grain: str) -> None:
    """A range of one period compares it with the previous one exactly as the mart's growth column
    does (quarters by offset in the quarter, whole quarters when both are complete): the summary's
    growth, aligned days and basis are the row's ``*_<cmp>_pct``, ``<cmp>_basis_days``, ``<cmp>_basis``;
    a year of periods compares each with the period a year earlier like the ``yoy`` columns."""
    g = grains.get(grain)
    first = next(c for c in g.comparisons if not (c.months and c.months % 12 == 0))
    yoy = next((c for c in g.comparisons if c.months and c.months % 12 == 0), None)
    for row in built[g.model]:
        start = row[g.start_column]
        summary = svc.get_period_summary(grain, start, start)
        assert summary.growth_basis == row[f"{first.suffix}_basis"], (start, summary.alignment)
        assert summary.compared_days == (row[f"{first.suffix}_basis_days"] or 0), start
        for m in ("total_events", "new_users", "revenue_cents"):
            assert summary.growth_pct[m] == row[f"{m}_{first.suffix}_pct"], (start, m)
    if yoy is not None:
        summary = svc.get_period_summary(grain, date(2024, 1, 1), date(2024, 12, 31))
        rows = [r for r in built[g.model] if r[g.start_column] in summary.compared_starts]
        assert summary.compared_days == sum(r[f"{yoy.suffix}_basis_days"] for r in rows)


@pytest.mark.parametrize("grain", [g.name for g in grains.periods()])
def test_year_summary_equals_the_reference(built: dict[str, list[dict[str, Any]]], svc: MetricsQueryService,
                                           grain: str) -> None:
    g = grains.get(grain)
    if g.model not in built:
        pytest.skip(f"the reference does not compute {g.model} yet")
    start, end = date(2024, 1, 1), date(2024, 12, 31)
    summary = svc.get_period_summary(grain, start, end)
    ref = {r[g.start_column]: r for r in built[g.model]}
    current = list(g.periods_between(start, end))
    previous = [g.start_of(summary.previous_start)]
    while len(previous) < len(current):
        previous.append(g.next_start(previous[-1]))
    daily = {r["metric_date"]: r for r in built["daily_metrics"]}
    complete = {start: bool(r["is_complete"]) for start, r in ref.items()}
    cur_days, prev_days, pairs = like_for_like_days(g, daily, complete, list(zip(current, previous, strict=True)),
                                                    by_day=g.unit == "month" and g.count == 1)
    assert summary.compared_periods == len(pairs) and summary.compared_days == len(cur_days)
    assert summary.compared_starts == [c for c, _ in pairs]
    assert summary.growth_basis == _basis(ref, pairs)
    assert summary.complete_periods == sum(1 for c in current if c in ref and ref[c]["is_complete"])
    for m in ADDITIVE:
        assert summary.totals[m] == sum(ref[c][m] for c in current if c in ref)
        now, before = sum(daily[d][m] for d in cur_days), sum(daily[b][m] for b in prev_days)
        assert (summary.compared_totals[m], summary.previous_totals[m]) == (now, before)
        expected = None if not pairs or before == 0 else _round4(Decimal(100) * (now - before) / before)
        assert summary.growth_pct[m] == expected, m
    days = sum(ref[c]["days_with_data"] for c in current if c in ref)
    assert summary.days_with_data == days
    assert summary.avg_daily["revenue_cents"] == _round4(Decimal(summary.totals["revenue_cents"]) / days)
