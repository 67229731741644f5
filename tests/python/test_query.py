"""MetricsQueryService: typed rows equal the marts, summaries equal a plain-Python computation,
bad input gives clear errors."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
import pytest
from _cache_marts import Marts, like_for_like, month_add, pct

from metricsmith.cache import TwoTierCache, load_cache_config
from metricsmith.cache.invalidation import invalidate_periods, warm_cache
from metricsmith.query import MetricsQueryService, NotAvailable, QueryError

FIRST, LAST = date(2023, 1, 1), date(2024, 12, 31)
TODAY = date(2024, 12, 31)


@pytest.fixture(scope="module")
def marts(test_database: str) -> Iterator[Marts]:
    with psycopg.connect(test_database, autocommit=True) as conn:
        m = Marts(conn, FIRST, LAST)
        yield m
        m.drop()


@pytest.fixture()
def cache() -> Iterator[TwoTierCache]:
    c = TwoTierCache(config=load_cache_config())
    assert c.wait_until_listening()
    c.clear()
    c.reset_stats()
    yield c
    c.close()


@pytest.fixture()
def svc(marts: Marts, cache: TwoTierCache) -> Iterator[MetricsQueryService]:
    with MetricsQueryService(cache=cache, schema=marts.schema, today=TODAY) as s:
        yield s


def as_dict(row: Any) -> dict[str, Any]:
    return dataclasses.asdict(row)


def round4(value: Decimal | None) -> Decimal | None:
    """The marts' and metricsmith.growth_pct's rounding: 4 decimal places, half away from zero."""
    return None if value is None else value.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def expected_row(grain: str, row: dict[str, Any]) -> dict[str, Any]:
    """A helper row as the service types it: breakdown starts as dates."""
    out = dict(row)
    for column, value in row.items():
        if column.endswith("_breakdown"):
            out[column] = [{k: date.fromisoformat(v) if k.endswith("_start") else v for k, v in e.items()}
                           for e in value]
    return out


def test_daily_rows_equal_the_mart_cold_and_warm(svc: MetricsQueryService, marts: Marts, cache: TwoTierCache) -> None:
    start, end = date(2024, 2, 20), date(2024, 3, 5)  # crosses 29 February
    expected = [marts.daily[start + timedelta(days=i)] for i in range((end - start).days + 1)]
    cold = svc.get_daily_metrics(start, end)
    warm = svc.get_daily_metrics(start, end)
    assert [as_dict(r) for r in cold] == expected
    assert warm == cold
    assert isinstance(cold[0].metric_date, date) and isinstance(cold[0].revenue_cents, int)
    s = cache.local_stats().counters
    assert s["computations"] == 1 and s["l1_hits"] == 1


def test_weekly_summary(svc: MetricsQueryService, marts: Marts) -> None:
    start, end = date(2024, 1, 3), date(2024, 2, 14)
    summary = svc.get_weekly_metrics_summary(start, end)
    expected = [w for ws, w in marts.weekly.items() if ws <= end and ws + timedelta(days=6) >= start]
    assert [as_dict(w) for w in summary.weeks] == expected
    assert summary.totals["revenue_cents"] == sum(w["revenue_cents"] for w in expected)
    assert summary.complete_weeks == len(expected)
    # the warm read builds the same typed summary
    assert svc.get_weekly_metrics_summary(start, end) == summary


def aligned(daily: dict[date, dict[str, Any]], pairs: list[tuple[date, date, date, date]], m: str,
            whole: bool = False) -> tuple[int, int, int, int]:
    """Plain Python like-for-like: (current sum, previous sum, aligned days, compared periods) over
    the days both periods of each (cur_start, cur_end, prev_start, prev_end) pair have, matched by
    their offset in the period; with ``whole`` (the marts' rule but for a month against the month a
    year earlier), a pair of complete periods compares the whole periods."""
    cur = prev = days = compared = 0
    for cs, ce, ps, pe in pairs:
        complete = all(cs + timedelta(days=i) in daily for i in range((ce - cs).days + 1)) and all(
            ps + timedelta(days=i) in daily for i in range((pe - ps).days + 1))
        if whole and complete:
            cur += sum(daily[cs + timedelta(days=i)][m] for i in range((ce - cs).days + 1))
            prev += sum(daily[ps + timedelta(days=i)][m] for i in range((pe - ps).days + 1))
            days, compared = days + (ce - cs).days + 1, compared + 1
            continue
        hits = [(d, ps + (d - cs)) for d in sorted(daily) if cs <= d <= ce
                and ps + (d - cs) <= pe and ps + (d - cs) in daily]
        cur += sum(daily[c][m] for c, _ in hits)
        prev += sum(daily[p][m] for _, p in hits)
        days += len(hits)
        compared += bool(hits)
    return cur, prev, days, compared


def month_pairs(first: date, months: int, back: int) -> list[tuple[date, date, date, date]]:
    out = []
    for i in range(months):
        ms = month_add(first, i)
        ps = month_add(ms, -back)
        out.append((ms, month_add(ms, 1) - timedelta(days=1), ps, month_add(ps, 1) - timedelta(days=1)))
    return out


def test_monthly_summary_with_yoy(svc: MetricsQueryService, marts: Marts) -> None:
    summary = svc.get_monthly_metrics_summary(2024)
    assert len(summary.months) == 12
    got = summary.months[1]
    want = marts.monthly[date(2024, 2, 1)]
    assert got.month_end == date(2024, 2, 29) and got.is_complete
    assert [dataclasses.asdict(b) | {"week_start": b.week_start.isoformat()} for b in got.weekly_breakdown] \
        == want["weekly_breakdown"]
    assert got.revenue_cents_yoy_pct == want["revenue_cents_yoy_pct"]
    assert got.yoy_basis == "full" and got.yoy_basis_days == 28  # 29 February has no partner in 2023
    assert got.mom_basis == want["mom_basis"] and got.mom_basis_days == want["mom_basis_days"]
    total = sum(marts.daily[d]["revenue_cents"] for d in marts.daily if d.year == 2024)
    this, prev, days, compared = aligned(marts.daily, month_pairs(date(2024, 1, 1), 12, 12), "revenue_cents")
    assert days == 365 and compared == 12 and this == total - marts.daily[date(2024, 2, 29)]["revenue_cents"]
    assert summary.totals["revenue_cents"] == total
    assert summary.previous_year_totals["revenue_cents"] == prev
    assert summary.yoy_pct["revenue_cents"] == round4(pct(this, prev))
    assert summary.compared_months == 12 and summary.compared_days == 365
    assert summary.growth_basis == "full" and summary.alignment == "Jan–Dec vs Jan–Dec"
    # the first year has no previous year: growth is None, not 0 or an error
    first = svc.get_monthly_metrics_summary(2023)
    assert first.yoy_pct["revenue_cents"] is None and first.months[0].total_events_yoy_pct is None
    assert svc.get_monthly_metrics_summary(2030).months == []


def test_invalidation_after_a_change(svc: MetricsQueryService, marts: Marts) -> None:
    day = date(2024, 6, 12)
    before = svc.get_weekly_metrics(day, day)[0].total_events
    old = marts.daily[day]["total_events"]
    marts.set_day(day, total_events=old + 1000)
    assert svc.get_weekly_metrics(day, day)[0].total_events == before  # closed week: served from cache
    result = invalidate_periods(days=[day], cache=svc.cache)
    assert result.ok and result.keys_deleted >= 1
    assert svc.get_weekly_metrics(day, day)[0].total_events == before + 1000
    # the month and the following week's growth changed too and were dropped with it
    next_week = day + timedelta(days=7)
    assert svc.get_weekly_metrics(next_week, next_week)[0].total_events_wow_pct == \
        marts.weekly[next_week - timedelta(days=next_week.weekday())]["total_events_wow_pct"]
    marts.set_day(day, total_events=old)
    invalidate_periods(days=[day], cache=svc.cache)


def test_warm_cache_then_all_hits(svc: MetricsQueryService, cache: TwoTierCache) -> None:
    result = warm_cache(svc, today=TODAY)
    # each grain's recent periods, and this year's summary of the two grains with YoY growth
    assert [w.split()[0] for w in result.warmed] == ["daily", "weekly", "monthly", "quarterly", "monthly",
                                                     "quarterly"], result.render()
    before = cache.local_stats().counters["computations"]
    svc.get_daily_metrics(TODAY - timedelta(days=29), TODAY)
    svc.get_monthly_metrics_summary(TODAY.year)
    svc.get_period_summary("quarter", date(2024, 1, 1), date(2024, 12, 31))
    svc.get_weekly_metrics_summary(date(2024, 10, 14), TODAY)  # `metricsmith query weekly`'s default
    assert cache.local_stats().counters["computations"] == before


def test_without_cache_same_rows(marts: Marts, svc: MetricsQueryService) -> None:
    with MetricsQueryService(schema=marts.schema, use_cache=False) as direct:
        assert direct.get_monthly_metrics_summary(2024) == svc.get_monthly_metrics_summary(2024)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.get_daily_metrics(date(2024, 2, 1), date(2024, 1, 1)), "is after end"),
        (lambda s: s.get_daily_metrics("2024-01-01", date(2024, 1, 1)), "must be dates"),
        (lambda s: s.get_weekly_metrics_summary(date(1900, 1, 1), date(2024, 1, 1)), "longer than 20 years"),
        (lambda s: s.get_monthly_metrics_summary(24), "year must be"),
        (lambda s: s.get_monthly_metrics_summary("2024"), "year must be"),
    ],
)
def test_bad_input_is_a_clear_error(svc: MetricsQueryService, call: Any, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        call(svc)
    assert svc.get_daily_metrics(date(2024, 1, 1), date(2024, 1, 1))  # the service still works


def test_missing_marts_and_capabilities_are_not_available(cache: TwoTierCache) -> None:
    with MetricsQueryService(cache=cache, schema="no_such_schema") as s:
        with pytest.raises(NotAvailable, match="does not exist"):
            s.get_daily_metrics(date(2024, 1, 1), date(2024, 1, 2))
        with pytest.raises(QueryError, match="realtime"):
            s.get_realtime_value("no_such_metric_total")


def test_invalidate_periods_rejects_bad_dates() -> None:
    with pytest.raises(ValueError, match="not a date"):
        invalidate_periods(days=["2024-13-01"])


def test_numeric_types(svc: MetricsQueryService) -> None:
    week = svc.get_weekly_metrics(date(2024, 3, 4), date(2024, 3, 4))[0]
    assert isinstance(week.avg_daily_revenue_cents, Decimal)
    assert week.is_complete is True


# ---------------------------------------------------------------- CLI
def test_cli_formats(marts: Marts, cache: TwoTierCache, capsys: pytest.CaptureFixture[str]) -> None:
    import csv
    import io
    import json

    from metricsmith.cli import main

    base = ["--schema", marts.schema]
    assert main(["query", "daily", "--start", "2024-02-28", "--end", "2024-03-01", *base]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["metric_date", "total_events"]
    assert table[2].split()[0] == "2024-02-28" and len(table) == 5
    assert table[3].split()[1] == f"{marts.daily[date(2024, 2, 29)]['total_events']:,}"

    assert main(["query", "weekly", "--start", "2024-01-01", "--end", "2024-01-14", "--format", "json", *base]) == 0
    weeks = json.loads(capsys.readouterr().out)
    assert [w["week_start"] for w in weeks] == ["2024-01-01", "2024-01-08"]
    assert weeks[1]["total_events"] == marts.weekly[date(2024, 1, 8)]["total_events"]

    assert main(["query", "monthly", "--year", "2024", "--format", "csv", *base]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 12 and int(rows[11]["revenue_cents"]) == marts.monthly[date(2024, 12, 1)]["revenue_cents"]
    assert json.loads(rows[0]["weekly_breakdown"])[0]["week_start"] == "2024-01-01"

    assert main(["query", "monthly", "--year", "2024", *base]) == 0
    assert "YoY" in capsys.readouterr().out

    assert main(["query", "daily", "--start", "2024-01-01", "--end", "2024-01-02", "--columns", "nope", *base]) == 2
    assert "unknown column(s) nope" in capsys.readouterr().err
    assert main(["query", "daily", "--start", "2024-02-01", "--end", "2024-01-01", *base]) == 2
    assert "is after end" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["query", "daily", "--start", "yesterday"])
    assert "not a date" in capsys.readouterr().err
    assert main(["cache", "invalidate"]) == 2
    assert "say what to invalidate" in capsys.readouterr().err


def test_cli_cache_stats_and_invalidate(marts: Marts, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from metricsmith.cli import main

    assert main(["query", "daily", "--start", "2024-05-01", "--end", "2024-05-03", "--schema", marts.schema]) == 0
    assert main(["cache", "invalidate", "--day", "2024-05-02"]) == 0
    out = capsys.readouterr().out
    # the day's own tag and its period's in every grain; the keys: this daily read (+ whatever earlier
    # tests of this session cached under those tags in the default cache)
    assert re.search(r"invalidated [1-9]\d* key\(s\) for day:2024-05-02, month:2024-05-01, quarter:2024-04-01, "
                     r"week:2024-04-29", out), out
    assert main(["cache", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["health"]["status"] == "ok" and stats["stats"]["computations"] >= 1
    assert main(["cache", "stats", "--prometheus"]) == 0
    assert "# TYPE metricsmith_cache_latency_seconds histogram" in capsys.readouterr().out
    assert main(["cache", "stats"]) == 0
    assert "overall hit rate" in capsys.readouterr().out


def test_refresh_after_run_invalidates_then_warms(marts: Marts) -> None:
    from metricsmith.cache import get_cache
    from metricsmith.cache.invalidation import refresh_after_run

    cache = get_cache()
    with MetricsQueryService(schema=marts.schema, today=TODAY) as svc:
        svc.get_daily_metrics(date(2024, 7, 1), date(2024, 7, 3))
    report = refresh_after_run(days=[date(2024, 7, 2)], warm=True, today=TODAY)
    assert report.ok and report.invalidation.keys_deleted >= 1
    assert report.warming is not None
    # the warmer reads the default analytics schema, which this test session does not build
    assert report.warming.warmed or report.warming.skipped
    assert cache.health()["status"] == "ok"


def test_realtime_values_cached_in_the_realtime_tier() -> None:
    service_module = pytest.importorskip("metricsmith.realtime.service")
    import secrets
    import time

    from metricsmith.cache import CacheConfig

    rt = service_module.RealtimeMetricsService()
    if not hasattr(rt, "declare_counter"):
        pytest.skip("the realtime service has a different API")
    name = f"cache_test_{secrets.token_hex(3)}_total"
    rt.declare_counter(name, "test counter", labels=["kind"])
    rt.increment_counter(name, 5, {"kind": "a"})
    cache = TwoTierCache(config=CacheConfig(**{**load_cache_config().__dict__, "ttl_realtime": 1.0, "xfetch_beta": 0}))
    assert cache.wait_until_listening()
    with MetricsQueryService(cache=cache) as svc:
        assert svc.get_realtime_value(name, {"kind": "a"}).value == 5
        rt.increment_counter(name, 2, {"kind": "a"})
        assert svc.get_realtime_value(name, {"kind": "a"}).value == 5  # cached (realtime tier)
        time.sleep(1.1)
        assert svc.get_realtime_value(name, {"kind": "a"}).value == 7  # refreshed after ttl_realtime
        with pytest.raises(QueryError, match="unknown realtime metric"):
            svc.get_realtime_value("no_such_metric_total")
    cache.close()


# ---------------------------------------------------------------- custom metric values
CUSTOM_DDL = """
create table {s}.custom_metric_values (metric_slug text, metric_version int, grain text, period_start date,
  dimensions jsonb, value numeric, previous_value numeric, growth_pct numeric, computed_at timestamptz, growth_basis text, growth_basis_days integer)
"""


def test_custom_metric_values_with_visibility_enforced(marts: Marts, svc: MetricsQueryService,
                                                        cache: TwoTierCache, conn: psycopg.Connection[Any]) -> None:
    access = pytest.importorskip("metricsmith.custom_metrics.access")
    errors = pytest.importorskip("metricsmith.custom_metrics.errors")
    from datetime import UTC, datetime

    from psycopg.types.json import Jsonb

    from metricsmith.cache.invalidation import invalidate_periods, warm_cache

    conn.execute(CUSTOM_DDL.format(s=marts.schema))
    access.add_user(conn, "cq_owner", "cq_org_a", teams=("cq_team",))
    access.add_user(conn, "cq_teammate", "cq_org_a", teams=("cq_team",))
    access.add_user(conn, "cq_colleague", "cq_org_a")
    access.add_user(conn, "cq_admin", "cq_org_a", is_org_admin=True)
    access.add_user(conn, "cq_outsider", "cq_org_b")
    metrics = {"cq_private": "PRIVATE", "cq_team": "TEAM", "cq_org": "ORGANIZATION", "cq_public": "PUBLIC"}
    expected: dict[str, list[tuple[Any, ...]]] = {}
    for slug, visibility in metrics.items():
        conn.execute("insert into metricsmith.custom_metric_definitions (slug, name, owner_id, team_id, organization_id,"
                     " visibility, current_version) values (%s, %s, 'cq_owner', %s, 'cq_org_a', %s, 2)",
                     (slug, slug, "cq_team" if visibility == "TEAM" else None, visibility))
        rows = []
        for version in (1, 2):
            for week in range(3):
                value = Decimal(100 * version + week)
                row = (slug, version, "week", date(2024, 1, 1) + timedelta(weeks=week), {"organization_id": "o1"},
                       value, None if week == 0 else value - 1, None, datetime(2024, 2, 1, tzinfo=UTC),
                       "none" if week == 0 else "to_date", None if week == 0 else 4)
                conn.execute(f"insert into {marts.schema}.custom_metric_values values (%s,%s,%s,%s,%s,%s,%s,%s,%s,"
                             "%s,%s)",
                             (*row[:4], Jsonb(row[4]), *row[5:]))
                if version == 2:
                    rows.append(row)
        expected[slug] = rows

    def read(slug: str, user: str) -> list[tuple[Any, ...]]:
        return [dataclasses.astuple(v) for v in svc.get_custom_metric_values(slug, user=user)]

    allowed = {
        "cq_owner": set(metrics), "cq_admin": set(metrics), "cq_teammate": {"cq_team", "cq_org", "cq_public"},
        "cq_colleague": {"cq_org", "cq_public"}, "cq_outsider": {"cq_public"},
    }
    for user, visible in allowed.items():
        for slug in metrics:
            if slug in visible:
                assert read(slug, user) == expected[slug], (user, slug)
            else:
                with pytest.raises(errors.MetricNotFound, match=f"no metric '{slug}' visible to {user}"):
                    read(slug, user)
    # values are computed once per metric, whoever reads them; the access check is not cached
    assert cache.local_stats().counters["computations"] == len(metrics)
    with pytest.raises(errors.AccessDenied, match="unknown user"):
        read("cq_public", "nobody")
    conn.execute("update metricsmith.custom_metric_definitions set visibility = 'PRIVATE' where slug = 'cq_org'")
    with pytest.raises(errors.MetricNotFound):
        read("cq_org", "cq_colleague")  # revoked: refused at once although the values are cached
    # older versions stay readable; a range narrows the values
    old = svc.get_custom_metric_values("cq_public", user="cq_outsider", version=1,
                                       start=date(2024, 1, 8), end=date(2024, 1, 8))
    assert [(v.metric_version, v.value) for v in old] == [(1, Decimal(101))]
    # invalidation by slug, then warming reads the public metric again
    assert invalidate_periods(slugs=["cq_public"], cache=cache).keys_deleted == 2
    result = warm_cache(svc, today=TODAY)
    assert "custom cq_public v2 (3 values)" in result.warmed
    conn.execute("delete from metricsmith.custom_metric_definitions where slug like 'cq\\_%'")


# ---------------------------------------------------------------- money: cents or currency units
def test_cli_money_in_cents_or_currency_units(marts: Marts, cache: TwoTierCache,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import csv
    import io
    import json

    from metricsmith.cli import main

    base = ["--schema", marts.schema]
    day = date(2024, 3, 1)
    cents = marts.daily[day]["revenue_cents"]
    # default: cents, and the header says so
    assert main(["query", "daily", "--start", "2024-03-01", "--end", "2024-03-01", *base]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[-1] == "revenue_cents" and table[2].split()[-1] == f"{cents:,}"
    # --currency: currency units with two decimals, in a column named revenue
    assert main(["query", "daily", "--start", "2024-03-01", "--end", "2024-03-01", "--currency", *base]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[-1] == "revenue" and table[2].split()[-1] == f"{cents / 100:,.2f}"
    assert main(["query", "daily", "--start", "2024-03-01", "--end", "2024-03-01", "--currency",
                 "--format", "csv", *base]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert "revenue_cents" not in row and Decimal(row["revenue"]) == Decimal(cents) / 100

    week = date(2024, 3, 4)
    assert main(["query", "weekly", "--start", "2024-03-04", "--end", "2024-03-04", "--currency",
                 "--format", "json", *base]) == 0
    w = json.loads(capsys.readouterr().out)[0]
    expected = marts.weekly[week]
    assert w["revenue"] == pytest.approx(expected["revenue_cents"] / 100)
    assert w["avg_daily_revenue"] == pytest.approx(float(expected["avg_daily_revenue_cents"]) / 100, abs=0.005)
    assert w["revenue_wow_pct"] == pytest.approx(float(expected["revenue_cents_wow_pct"]), abs=1e-4)  # a ratio: unchanged

    assert main(["query", "monthly", "--year", "2024", "--currency", "--format", "json", *base]) == 0
    summary = json.loads(capsys.readouterr().out)
    year_cents = sum(marts.monthly[date(2024, m, 1)]["revenue_cents"] for m in range(1, 13))
    now, before, _, _ = aligned(marts.daily, month_pairs(date(2024, 1, 1), 12, 12), "revenue_cents")
    assert summary["totals"]["revenue"] == pytest.approx(year_cents / 100)
    assert summary["yoy_pct"]["revenue"] == pytest.approx(float(pct(now, before)), abs=1e-4)
    assert summary["months"][0]["weekly_breakdown"][0]["revenue"] == pytest.approx(
        marts.monthly[date(2024, 1, 1)]["weekly_breakdown"][0]["revenue_cents"] / 100)
    # --columns takes either name
    assert main(["query", "monthly", "--year", "2024", "--currency", "--columns", "month_start,revenue_cents",
                 *base]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["month_start", "revenue"]
    assert out[2].split()[1] == f"{marts.monthly[date(2024, 1, 1)]['revenue_cents'] / 100:,.2f}"
    assert any(line.split()[0] == "revenue" for line in out[3:])  # the YoY block too


def test_counts_stay_integers_whatever_the_sql_type(marts: Marts, conn: psycopg.Connection[Any]) -> None:
    """The marts may declare sums as numeric(38,0) (overflow-safe): the service still returns int."""
    conn.execute(f"alter table {marts.schema}.daily_metrics alter column revenue_cents type numeric(38,0)")
    try:
        with MetricsQueryService(use_cache=False, schema=marts.schema, today=TODAY) as direct:
            row = direct.get_daily_metrics(date(2024, 3, 1), date(2024, 3, 1))[0]
        assert type(row.revenue_cents) is int and row.revenue_cents == marts.daily[date(2024, 3, 1)]["revenue_cents"]
    finally:
        conn.execute(f"alter table {marts.schema}.daily_metrics alter column revenue_cents type bigint")


# ---------------------------------------------------------------- the generic API, every grain
@pytest.mark.parametrize("grain", ["day", "week", "month", "quarter"])
def test_period_metrics_equal_the_mart_for_every_grain(svc: MetricsQueryService, marts: Marts, grain: str) -> None:
    from metricsmith import grains

    g = grains.get(grain)
    start, end = date(2023, 11, 15), date(2024, 5, 2)
    rows = svc.get_period_metrics(grain, start, end)
    expected = [expected_row(grain, r) for s, r in marts.rows(grain).items()
                if s <= end and g.end_of(s) >= start]
    assert rows == expected and rows
    assert all(list(r) == svc.period_columns(grain) for r in rows)  # every column, in mart order
    with marts.conn.cursor() as cur:
        cur.execute(f"select * from {marts.schema}.{g.model} limit 0")
        assert [d.name for d in cur.description or []] == svc.period_columns(grain)
    assert svc.get_period_metrics(g.adjective, start, end) == rows  # the adjective names it too
    assert svc.get_period_metrics(grain, start, end) is not rows  # callers get their own dicts


def test_quarterly_rows_typed(svc: MetricsQueryService, marts: Marts) -> None:
    rows = svc.get_quarterly_metrics(date(2024, 2, 10), date(2024, 8, 1))
    assert [q.quarter_start for q in rows] == [date(2024, 1, 1), date(2024, 4, 1), date(2024, 7, 1)]
    q2 = rows[1]
    want = marts.quarterly[date(2024, 4, 1)]
    assert q2.quarter_end == date(2024, 6, 30) and q2.is_complete and q2.days_with_data == 91
    assert type(q2.revenue_cents) is int and q2.revenue_cents == want["revenue_cents"]
    assert q2.revenue_cents_qoq_pct == want["revenue_cents_qoq_pct"]
    assert q2.total_events_yoy_pct == want["total_events_yoy_pct"] is not None
    assert [(b.month_start, b.days_in_quarter) for b in q2.monthly_breakdown] == [
        (date(2024, 4, 1), 30), (date(2024, 5, 1), 31), (date(2024, 6, 1), 30)]
    assert sum(b.revenue_cents for b in q2.monthly_breakdown) == q2.revenue_cents
    assert svc.get_quarterly_metrics(date(2023, 1, 1), date(2023, 1, 1))[0].total_events_qoq_pct is None


def test_period_summary_growth_like_with_like(svc: MetricsQueryService, marts: Marts) -> None:
    summary = svc.get_period_summary("quarter", date(2024, 1, 1), date(2024, 12, 31))
    quarters = [marts.quarterly[date(2024, m, 1)] for m in (1, 4, 7, 10)]
    before = [marts.quarterly[date(2023, m, 1)] for m in (1, 4, 7, 10)]
    assert [p["quarter_start"] for p in summary.periods] == [q["quarter_start"] for q in quarters]
    days = sum(1 for d in marts.daily if d.year == 2024)
    assert summary.days_with_data == days == 366 and summary.complete_periods == 4
    qpairs = [(q["quarter_start"], q["quarter_end"], b["quarter_start"], b["quarter_end"])
              for q, b in zip(quarters, before, strict=True)]
    for m in ("total_events", "revenue_cents", "new_users"):
        total = sum(marts.daily[d][m] for d in marts.daily if d.year == 2024)
        cur, previous, n_days, _ = aligned(marts.daily, qpairs, m, whole=True)  # Q1 2024: 91 days vs 90
        assert summary.totals[m] == total == sum(q[m] for q in quarters)
        assert summary.compared_totals[m] == cur and summary.previous_totals[m] == previous
        assert summary.growth_pct[m] == round4(pct(cur, previous))
        assert summary.avg_daily[m] == round4(Decimal(total) / days)
    assert summary.compared_days == n_days == 366 and summary.growth_basis == "full"
    assert (summary.previous_start, summary.previous_end) == (date(2023, 1, 1), date(2023, 12, 31))
    # six weeks compare with the six weeks before them
    weeks = svc.get_period_summary("week", date(2024, 3, 4), date(2024, 4, 14))
    prior = [marts.weekly[date(2024, 3, 4) - timedelta(weeks=i)] for i in range(1, 7)]
    assert weeks.previous_start == date(2024, 1, 22) and len(weeks.periods) == 6 == weeks.compared_periods
    assert weeks.previous_totals["revenue_cents"] == sum(w["revenue_cents"] for w in prior)
    # the first year has no previous periods: nothing compared, growth None
    first = svc.get_period_summary("month", date(2023, 1, 1), date(2023, 12, 31))
    assert first.compared_periods == 0 and first.growth_pct["revenue_cents"] is None
    assert first.totals["revenue_cents"] == sum(marts.daily[d]["revenue_cents"] for d in marts.daily if d.year == 2023)
    # a range half outside the data: only the months both ranges have are compared
    part = svc.get_period_summary("month", date(2024, 7, 1), date(2025, 6, 30))
    assert part.compared_periods == 6 and len(part.periods) == 6
    cur, prev, _, _ = aligned(marts.daily, month_pairs(date(2024, 7, 1), 12, 12), "total_events")
    assert cur == sum(marts.monthly[date(2024, m, 1)]["total_events"] for m in range(7, 13))
    assert part.compared_totals["total_events"] == cur and part.previous_totals["total_events"] == prev
    assert part.growth_pct["total_events"] == round4(pct(cur, prev))
    # day grain
    days_summary = svc.get_period_summary("day", date(2024, 2, 28), date(2024, 3, 1))
    assert days_summary.days_with_data == 3 == days_summary.complete_periods
    assert days_summary.previous_start == date(2024, 2, 25)


def test_unknown_grain_is_a_clear_error(svc: MetricsQueryService) -> None:
    for call in (lambda: svc.get_period_metrics("year", date(2024, 1, 1), date(2024, 1, 2)),
                 lambda: svc.get_period_summary("fortnight", date(2024, 1, 1), date(2024, 1, 2)),
                 lambda: svc.period_columns("hour")):
        with pytest.raises(QueryError, match="unknown grain .*: use day, week, month, quarter"):
            call()
    with pytest.raises(QueryError, match="grain must be a name"):
        svc.get_period_metrics(7, date(2024, 1, 1), date(2024, 1, 2))  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="is after end"):
        svc.get_period_metrics("quarter", date(2024, 5, 1), date(2024, 1, 2))


def test_period_tiers_and_tags(svc: MetricsQueryService, marts: Marts, cache: TwoTierCache) -> None:
    # a closed quarter is invalidated by a change to any of its days (or to the quarter its growth reads)
    q = date(2024, 4, 1)
    before = svc.get_period_metrics("quarter", q, q)[0]["total_events"]
    day = date(2024, 5, 20)
    old = marts.daily[day]["total_events"]
    marts.set_day(day, total_events=old + 7)
    try:
        assert svc.get_period_metrics("quarter", q, q)[0]["total_events"] == before
        assert invalidate_periods(days=[day], cache=cache).keys_deleted >= 1
        assert svc.get_period_metrics("quarter", q, q)[0]["total_events"] == before + 7
        # the next quarter's qoq growth read that quarter: it was dropped with it
        svc.get_period_metrics("quarter", date(2024, 7, 1), date(2024, 7, 1))
        marts.set_day(day, total_events=old)
        assert invalidate_periods(changed={"quarter": [q]}, cache=cache).keys_deleted >= 2
        assert svc.get_period_metrics("quarter", date(2024, 7, 1), date(2024, 7, 1))[0]["total_events_qoq_pct"] \
            == marts.quarterly[date(2024, 7, 1)]["total_events_qoq_pct"]
    finally:
        marts.set_day(day, total_events=old)
        invalidate_periods(days=[day], cache=cache)


# ---------------------------------------------------------------- CLI: every grain, one date parser
def test_cli_query_quarterly(marts: Marts, cache: TwoTierCache, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from metricsmith.cli import main

    base = ["--schema", marts.schema]
    assert main(["query", "quarterly", "--year", "2024", *base]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["quarter_start", "days_with_data", "total_events"]
    assert [line.split()[0] for line in out[2:6]] == ["2024-01-01", "2024-04-01", "2024-07-01", "2024-10-01"]
    assert out[6] == "2024 (4 quarters) vs the same quarters of 2023: Q1–Q4 vs Q1–Q4 (the quarters and days both years have)"
    qpairs = [(q, month_add(q, 3) - timedelta(days=1), month_add(q, -12), month_add(q, -9) - timedelta(days=1))
              for q in (date(2024, m, 1) for m in (1, 4, 7, 10))]
    this, prev, _, _ = aligned(marts.daily, qpairs, "revenue_cents", whole=True)
    revenue = next(line for line in out if line.split()[0] == "revenue_cents")
    assert revenue.split() == ["revenue_cents", f"{this:,}", "vs", f"{prev:,}", "YoY", f"{round4(pct(this, prev)):+.2f}%"]

    assert main(["query", "quarterly", "--year", "2024", "--format", "json", *base]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["compared_quarters"] == 4 and len(data["quarters"]) == 4
    assert data["quarters"][1]["monthly_breakdown"][0] == {
        "month_start": "2024-04-01", "days_in_quarter": 30,
        **{k: sum(marts.daily[date(2024, 4, d)][k] for d in range(1, 31))
           for k in ("total_events", "active_users", "revenue_cents")}, "is_complete": True}
    assert data["yoy_basis"] == "full" and data["compared_days"] == 366 and data["quarters"][0]["yoy_basis"] == "full"
    assert data["yoy_pct"]["revenue_cents"] == pytest.approx(float(round4(pct(this, prev))))  # type: ignore[arg-type]

    # a range instead of a year: the quarters overlapping it, against as many quarters before
    assert main(["query", "quarterly", "--start", "2024-05-01", "--end", "2024-08-01", *base]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[2:4]] == ["2024-04-01", "2024-07-01"]
    assert out[4].startswith("2 quarters, 2 complete; totals: total_events=")
    assert out[5].startswith("vs the previous 2 quarters (2023-10-01 .. 2024-03-31; 2 compared")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "quarterly", "--year", "24"], "'24' is not a year (1900..9999)"),
        (["query", "weekly", "--start", "2024-02-30"], "'2024-02-30' is not a date (YYYY-MM-DD)"),
        (["query", "daily", "--end", "20240101"], "'20240101' is not a date (YYYY-MM-DD)"),
        (["backfill", "--start", "2024-W01-1", "--end", "2024-01-02"], "'2024-W01-1' is not a date (YYYY-MM-DD)"),
        (["generate", "--start", "tomorrow"], "'tomorrow' is not a date (YYYY-MM-DD)"),
        (["cache", "invalidate", "--quarter", "2024-13"], "'2024-13' is not a date (YYYY-MM-DD) or a month (YYYY-MM)"),
        (["query", "yearly"], "invalid choice: 'yearly'"),
    ],
)
def test_cli_bad_arguments_one_message(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from metricsmith.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_year_and_range_are_exclusive(marts: Marts, capsys: pytest.CaptureFixture[str]) -> None:
    from metricsmith.cli import main

    assert main(["query", "monthly", "--year", "2024", "--start", "2024-01-01", "--schema", marts.schema]) == 2
    assert "give either --year or --start / --end, not both" in capsys.readouterr().err


def test_cli_invalidate_a_quarter(marts: Marts, capsys: pytest.CaptureFixture[str]) -> None:
    from metricsmith.cli import main

    assert main(["query", "quarterly", "--start", "2024-04-01", "--end", "2024-04-01", "--schema", marts.schema]) == 0
    capsys.readouterr()
    assert main(["cache", "invalidate", "--quarter", "2024-05"]) == 0
    out = capsys.readouterr().out
    # every day of the second quarter (91), its 14 ISO weeks, 3 months and the quarter itself
    assert re.search(r"invalidated [1-9]\d* key\(s\) for day:2024-04-01, .* \(\+102 tags\)", out), out


# ---------------------------------------------------------------- like-for-like basis on partial data
@pytest.fixture(scope="module")
def partial(test_database: str) -> Iterator[Marts]:
    """Data from Wednesday 2023-11-29 (mid-month, mid-week) to Thursday 2024-12-05 (mid-week, a
    one-day... five-day December), across a leap day and a year boundary."""
    with psycopg.connect(test_database, autocommit=True) as conn:
        m = Marts(conn, date(2023, 11, 29), date(2024, 12, 5), seed=11)
        yield m
        m.drop()


def test_typed_and_generic_rows_carry_the_basis(partial: Marts, cache: TwoTierCache) -> None:
    with MetricsQueryService(cache=cache, schema=partial.schema, today=date(2024, 12, 5)) as svc:
        months = svc.get_monthly_metrics(date(2023, 11, 1), date(2024, 12, 31))
        weeks = svc.get_weekly_metrics(date(2023, 11, 27), date(2024, 12, 5))
        generic = svc.get_period_metrics("month", date(2023, 11, 1), date(2024, 12, 31))
    end = lambda d: month_add(d, 1) - timedelta(days=1)  # noqa: E731
    for row, plain in zip(months, generic, strict=True):
        for suffix, back in (("mom", -1), ("yoy", -12)):
            prev = month_add(row.month_start, back)
            want = like_for_like(partial.daily, (row.month_start, end(row.month_start)), (prev, end(prev)),
                                 prev in partial.monthly)
            assert (getattr(row, f"{suffix}_basis"), getattr(row, f"{suffix}_basis_days")) == \
                (want["basis"], want["basis_days"]) == (plain[f"{suffix}_basis"], plain[f"{suffix}_basis_days"])
            assert getattr(row, f"revenue_cents_{suffix}_pct") == want["revenue_cents"]
        assert [b.is_complete for b in row.weekly_breakdown] == [b["is_complete"] for b in plain["weekly_breakdown"]]
    by_start = {m.month_start: m for m in months}
    # the first (partial) month has nothing before it; December 2023 compares with 2 days of November
    assert by_start[date(2023, 11, 1)].mom_basis == "none" and by_start[date(2023, 11, 1)].mom_basis_days is None
    assert (by_start[date(2023, 12, 1)].mom_basis, by_start[date(2023, 12, 1)].mom_basis_days) == ("partial_baseline", 2)
    # the last month, five days in: to date against the same five days of November
    assert (by_start[date(2024, 12, 1)].mom_basis, by_start[date(2024, 12, 1)].mom_basis_days) == ("to_date", 5)
    assert by_start[date(2024, 11, 1)].yoy_basis == "partial_baseline" and by_start[date(2024, 11, 1)].yoy_basis_days == 2
    assert weeks[-1].wow_basis == "to_date" and weeks[-1].wow_basis_days == 4  # Monday .. Thursday
    assert weeks[0].wow_basis == "none" and weeks[1].wow_basis == "partial_baseline" and weeks[1].wow_basis_days == 5
    assert [dataclasses.fields(type(weeks[0]))[i].name for i in (-2, -1)] == ["wow_basis_days", "wow_basis"]


def test_yearly_summary_aligns_months_and_days(partial: Marts, cache: TwoTierCache) -> None:
    with MetricsQueryService(cache=cache, schema=partial.schema, today=date(2024, 12, 5)) as svc:
        y2024 = svc.get_monthly_metrics_summary(2024)
        y2023 = svc.get_monthly_metrics_summary(2023)
    # 2024 against 2023: only November (2 days: 29, 30) and December (1..5 of 2024 vs 1..5 of 2023)
    pairs = month_pairs(date(2024, 1, 1), 12, 12)
    for m in ("revenue_cents", "total_events", "new_users"):
        cur, prev, days, compared = aligned(partial.daily, pairs, m)
        assert (y2024.previous_year_totals[m], y2024.yoy_pct[m]) == (prev, round4(pct(cur, prev)))
    assert (y2024.compared_months, y2024.compared_days) == (compared, days) == (2, 7)
    assert y2024.growth_basis == "partial_baseline"
    assert y2024.alignment == "Nov–Dec vs Nov–Dec, 7 aligned days"
    assert y2023.compared_months == 0 and y2023.growth_basis == "none" and y2023.yoy_pct["revenue_cents"] is None


def test_cli_marks_growth_not_on_the_full_basis(partial: Marts, cache: TwoTierCache,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import csv
    import io
    import json

    from metricsmith.cli import main
    from metricsmith.query import BASIS_LEGEND, BASIS_MARKS

    base = ["--schema", partial.schema, "--no-cache"]
    assert main(["query", "monthly", "--year", "2024", *base]) == 0
    out = capsys.readouterr().out.splitlines()
    header = out[0].split()
    mom, yoy = header.index("revenue_cents_mom_pct"), header.index("revenue_cents_yoy_pct")
    marks = set(BASIS_MARKS.values()) - {""}
    for line in out[2:14]:
        cells = line.split()
        want = partial.monthly[date.fromisoformat(cells[0])]
        for at, suffix in ((mom, "mom"), (yoy, "yoy")):
            if want[f"revenue_cents_{suffix}_pct"] is None:
                continue
            cell, mark = cells[at], BASIS_MARKS[want[f"{suffix}_basis"]]
            assert cell.endswith(mark) if mark else cell[-1].isdigit(), (cells[0], suffix, cell)
            assert Decimal(cell.rstrip("".join(marks))) == round(want[f"revenue_cents_{suffix}_pct"], 2)
    assert out.count(f"({BASIS_LEGEND})") == 1
    assert out[14] == ("2024 (12 months) vs the same months of 2023: Nov–Dec vs Nov–Dec, 7 aligned days "
                       "(the months and days both years have)")
    revenue = next(line for line in out if line.split()[0] == "revenue_cents")
    assert revenue.endswith("%ᵖᵇ") and out[-1] == f"({BASIS_LEGEND})"
    # json and csv carry the basis fields
    assert main(["query", "monthly", "--year", "2024", "--format", "json", *base]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["yoy_basis"] == "partial_baseline" and data["compared_days"] == 7
    assert [(m["mom_basis"], m["mom_basis_days"]) for m in data["months"]] == \
        [(partial.monthly[date(2024, i, 1)]["mom_basis"], partial.monthly[date(2024, i, 1)]["mom_basis_days"])
         for i in range(1, 13)]
    assert main(["query", "weekly", "--start", "2024-11-25", "--end", "2024-12-05", "--format", "csv", *base]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["wow_basis"], r["wow_basis_days"]) for r in rows] == [("full", "7"), ("to_date", "4")]
    # a range on the full basis only: no marker, no legend
    assert main(["query", "weekly", "--start", "2024-03-04", "--end", "2024-03-17", *base]) == 0
    text = capsys.readouterr().out
    assert BASIS_LEGEND not in text and not any(m in text for m in marks)


def test_custom_metric_values_printed_with_their_basis() -> None:
    from metricsmith.cli.metrics import value_lines
    from metricsmith.custom_metrics.demo import value_line
    from metricsmith.query import BASIS_LEGEND, CustomMetricValue

    def value(start: date, growth: str | None, basis: str, days: int | None) -> CustomMetricValue:
        return CustomMetricValue("m", 1, "month", start, {}, Decimal(10), None if growth is None else Decimal(9),
                                 None if growth is None else Decimal(growth), None, basis, days)

    rows = [value(date(2024, 1, 1), None, "none", None), value(date(2024, 2, 1), "11.1111", "full", 29),
            value(date(2024, 3, 1), "-3.5", "to_date", 5)]
    lines = value_lines([dataclasses.asdict(r) for r in rows])
    assert lines[1].split()[-1] == "none" and "ⁿ" not in lines[1]  # no figure, no marker
    assert lines[2].split()[-4:] == ["11.11", "full", "(29", "days)"]
    assert "-3.50ᵗᵈ" in lines[3] and lines[3].endswith("to_date (5 days)") and lines[-1] == f"({BASIS_LEGEND})"
    assert value_lines([dataclasses.asdict(rows[1])])[-1].endswith("full (29 days)")  # all full: no legend
    assert value_line(rows[2]).endswith("growth  -3.50 %ᵗᵈ  (to_date, 5 days)")
    assert "%ᵗᵈ" not in value_line(rows[1]) and value_line(rows[1]).endswith("(full, 29 days)")
