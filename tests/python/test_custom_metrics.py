"""Custom metrics end to end: stored definitions -> generated dbt models -> values.

Generated models go to this test database's own folder (.metricsmith/generated/<database>/,
never the source tree), dbt runs in a temporary copy of the project, and all metrics run in ONE
dbt invocation per phase. Values are compared with an independent plain-Python computation over
the same raw events.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
import pytest

from metricsmith import generator
from metricsmith.config import load_settings
from metricsmith.custom_metrics import (
    AccessDenied,
    CostBudgetExceeded,
    CustomMetricsService,
    MetricNotFound,
    MetricSpecError,
)
from metricsmith.custom_metrics.project import copy_project

Row = dict[str, Any]
START = date(2026, 1, 19)
DAYS = 50
TYPES = ("COUNT", "SUM", "AVERAGE", "DISTINCT_COUNT", "PERCENTILE", "RATIO", "MAX", "MIN")
GRAINS = ("day", "week", "month")
FILTER_SQL = "event_type <> 'logout' and user_id is not null"
DIMS = ["organization_id"]


def _filter_py(e: Row) -> bool:
    return e["event_type"] != "logout" and e["user_id"] is not None


# -- independent reference ------------------------------------------------------------------------

def valid_events(conn: psycopg.Connection[Any]) -> list[Row]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    rows = cur.execute("select occurred_at, received_at, event_type, user_id, organization_id, revenue_cents"
                       " from raw.events").fetchall()
    tz = load_settings().tz
    out = []
    for r in rows:
        if r["occurred_at"] is None or r["occurred_at"] > r["received_at"] + timedelta(days=1):
            continue
        if not r["event_type"] or r["revenue_cents"] < 0:
            continue
        r["day"] = r["occurred_at"].astimezone(tz).date()
        out.append(r)
    return out


def period(d: date, grain: str) -> date:
    if grain == "week":
        return d - timedelta(days=d.weekday())
    if grain == "month":
        return d.replace(day=1)
    return d


def percentile_cont(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    pos = p * (len(values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def aggregate(kind: str, rows: list[Row]) -> float | None:
    revenue = [float(r["revenue_cents"]) for r in rows]
    if kind == "COUNT":
        return float(len(rows))
    if kind == "SUM":
        return sum(revenue)
    if kind == "AVERAGE":
        return sum(revenue) / len(revenue)
    if kind == "DISTINCT_COUNT":
        return float(len({r["user_id"] for r in rows if r["user_id"] is not None}))
    if kind == "PERCENTILE":
        return percentile_cont(revenue, 0.75)
    if kind == "MAX":
        return max(revenue)
    if kind == "MIN":
        return min(revenue)
    if kind == "RATIO":
        num = sum(float(r["revenue_cents"]) for r in rows if r["event_type"] == "purchase")
        den = len({r["user_id"] for r in rows if r["user_id"] is not None})
        return num / den if den else None
    raise AssertionError(kind)


def reference(events: list[Row], kind: str, grain: str, dims: list[str],
              keep: Callable[[Row], bool] | None) -> dict[tuple[date, tuple[Any, ...]], float | None]:
    groups: dict[tuple[date, tuple[Any, ...]], list[Row]] = defaultdict(list)
    for e in events:
        if keep is None or keep(e):
            groups[(period(e["day"], grain), tuple((d, e[d]) for d in dims))].append(e)
    return {k: aggregate(kind, rows) for k, rows in groups.items()}


def spec_for(kind: str, grain: str, variant: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": f"t {kind} {variant} {grain}", "type": kind, "source": "events", "grain": grain,
                            "visibility": "PUBLIC"}
    if kind == "RATIO":
        spec["numerator"] = {"type": "SUM", "expression": "revenue_cents", "filter": "event_type = 'purchase'"}
        spec["denominator"] = {"type": "DISTINCT_COUNT", "expression": "user_id"}
    elif kind == "DISTINCT_COUNT":
        spec["expression"] = "user_id"
    elif kind != "COUNT":
        spec["expression"] = "revenue_cents"
    if kind == "PERCENTILE":
        spec["percentile"] = 0.75
    if variant == "dimf":
        spec["dimensions"] = DIMS
        spec["filter"] = FILTER_SQL
    return spec


def slug_for(kind: str, grain: str, variant: str) -> str:
    return f"t_{kind.lower()}_{variant}_{grain}"


def stored_values(conn: psycopg.Connection[Any], slug: str, version: int = 1) -> dict[tuple[date, tuple[Any, ...]], float | None]:
    rows = conn.execute("select period_start, dimensions, value from analytics.custom_metric_values"
                        " where metric_slug = %s and metric_version = %s", (slug, version)).fetchall()
    return {(p, tuple(sorted(d.items()))): (None if v is None else float(v)) for p, d, v in rows}


def assert_same(got: dict[Any, float | None], want: dict[Any, float | None], what: str) -> None:
    assert set(got) == set(want), f"{what}: periods/dimensions differ: {sorted(set(got) ^ set(want))[:5]}"
    for key, value in want.items():
        if value is None:
            assert got[key] is None, (what, key)
        else:
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (what, key, got[key], value)


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(test_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from metricsmith import rollups

    with psycopg.connect(test_database, autocommit=True) as conn:
        conn.execute("truncate raw.events, raw.events_quarantine")
        generator.generate_to_db(days=DAYS, events_per_day=60, seed=11, start=START)
        # one invalid row (negative revenue is refused by the table, so: occurred far after received)
        conn.execute("insert into raw.events (event_id, occurred_at, received_at, event_type, user_id)"
                     " values (%s, now() + interval '5 days', now(), 'purchase', 'u_bad')", (uuid.uuid4(),))
    # a full refresh: earlier tests in this session may have left a rollup watermark past these events
    rollups.run_rollups(full_refresh=True, quiet=True)  # builds stg_events and the marts in this database
    svc = CustomMetricsService(project_dir=copy_project(tmp_path_factory.mktemp("cmproj")))
    svc.add_user("owner", "org_a", teams=("team_1",))
    svc.add_user("teammate", "org_a", teams=("team_1",))
    svc.add_user("orgmate", "org_a")
    svc.add_user("admin", "org_a", is_org_admin=True)
    svc.add_user("outsider", "org_b", teams=("team_b",))
    for kind in TYPES:
        for grain in GRAINS:
            for variant in ("plain", "dimf"):
                svc.create("owner", spec_for(kind, grain, variant) | {"slug": slug_for(kind, grain, variant)})
    svc.create_metric_definition("owner", {"name": "Revenue Per Project", "metric_type": "SUM",
                                           "data_source": "daily_metrics", "calculation_formula": "revenue_cents",
                                           "aggregation_method": "sum"})
    svc.create("owner", {"name": "versioned", "type": "SUM", "source": "events", "expression": "revenue_cents",
                         "grain": "week"})
    svc.run()
    yield {"svc": svc, "url": test_database}


@pytest.fixture()
def svc(world: dict[str, Any]) -> CustomMetricsService:
    return world["svc"]


def _check_matrix(conn: psycopg.Connection[Any]) -> None:
    events = valid_events(conn)
    for kind in TYPES:
        for grain in GRAINS:
            for variant in ("plain", "dimf"):
                dims = DIMS if variant == "dimf" else []
                want = reference(events, kind, grain, dims, _filter_py if variant == "dimf" else None)
                want = {(p, tuple(sorted(d))): v for (p, d), v in want.items()}
                assert want, "reference must not be empty"
                assert_same(stored_values(conn, slug_for(kind, grain, variant)), want,
                            slug_for(kind, grain, variant))


# -- tests --------------------------------------------------------------------------------------

def test_every_type_grain_dimension_and_filter_matches_python(world: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    _check_matrix(conn)


def test_metric_type_spelling_on_daily_metrics(world: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    events = valid_events(conn)
    want = {(p, ()): v for (p, _), v in reference(events, "SUM", "day", [], None).items()}
    got = stored_values(conn, "revenue_per_project")
    # daily_metrics has a row (zero) for every spine day; the events only for days with events
    assert {k: v for k, v in got.items() if k in want} == pytest.approx(want)
    assert all(v == 0 for k, v in got.items() if k not in want)


def _next(p: date, grain: str, n: int) -> date:
    """The start of the period ``n`` periods after ``p`` (n < 0: before)."""
    if grain == "month":
        i = p.year * 12 + p.month - 1 + n
        return date(i // 12, i % 12 + 1, 1)
    return p + timedelta(days=n * (7 if grain == "week" else 1))


def _growth(cur: float | None, prev: float | None) -> Decimal | None:
    if cur is None or prev is None or prev == 0:
        return None
    return (Decimal(100) * (Decimal(cur) - Decimal(prev)) / Decimal(prev)).quantize(
        Decimal("0.0001"), rounding=ROUND_HALF_UP)


def like_for_like(events: list[Row], kind: str, grain: str, dims: list[str], keep: Callable[[Row], bool] | None,
                  ) -> dict[tuple[date, tuple[Any, ...]], tuple[Decimal | None, str, int | None]]:
    """(growth, basis, basis days) of every (period, dimensions), from the definition: the spine is the
    source's first to last day (every valid event); a period's days are numbered by their offset; growth
    compares the metric over the offsets both periods have on the spine (the whole periods when both are
    complete), recomputed from the events of those days."""
    days = {e["day"] for e in events}
    spine = {min(days) + timedelta(days=i) for i in range((max(days) - min(days)).days + 1)}
    whole = reference(events, kind, grain, dims, keep)
    out = {}
    for (p, dim), value in whole.items():
        prev = _next(p, grain, -1)
        cur_days = [p + timedelta(days=i) for i in range((_next(p, grain, 1) - p).days)]
        prev_days = [prev + timedelta(days=i) for i in range((p - prev).days)]
        cur_off = {i for i, d in enumerate(cur_days) if d in spine}
        prev_off = {i for i, d in enumerate(prev_days) if d in spine}
        if not prev_off:
            out[(p, dim)] = (None, "none", None)
            continue
        if len(cur_off) == len(cur_days) and len(prev_off) == len(prev_days):
            out[(p, dim)] = (_growth(value, whole.get((prev, dim))), "full", len(cur_days))
            continue
        both = cur_off & prev_off
        basis = ("none" if not both else "partial_baseline" if len(prev_off) < len(prev_days) else "to_date")
        sides = []
        for start_days in (cur_days, prev_days):
            chosen = {start_days[i] for i in both}
            rows = [e for e in events if e["day"] in chosen and tuple((d, e[d]) for d in dims) == dim
                    and (keep is None or keep(e))]
            sides.append(aggregate(kind, rows) if rows else None)
        out[(p, dim)] = (None if basis == "none" else _growth(sides[0], sides[1]), basis, len(both))
    return out


def stored_growth(conn: psycopg.Connection[Any], slug: str) -> dict[tuple[date, tuple[Any, ...]], tuple[Any, ...]]:
    rows = conn.execute("select period_start, dimensions, growth_pct, growth_basis, growth_basis_days"
                        " from analytics.custom_metric_values where metric_slug = %s and metric_version = 1",
                        (slug,)).fetchall()
    return {(p, tuple(sorted(d.items()))): (g, b, n) for p, d, g, b, n in rows}


def test_previous_value_and_growth(world: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute("select period_start, value, previous_value from analytics.custom_metric_values"
                        " where metric_slug = 't_sum_plain_week' order by period_start").fetchall()
    assert len(rows) >= 7
    assert rows[0][2] is None
    for (p0, v0, _), (p1, _, prev) in zip(rows, rows[1:], strict=False):
        assert p1 - p0 == timedelta(days=7)
        assert prev == v0  # previous_value: the whole previous period
    dims = conn.execute("select distinct dimensions::text from analytics.custom_metric_values"
                        " where metric_slug = 't_count_plain_day'").fetchall()
    assert dims == [("{}",)]


def test_growth_is_like_for_like_with_its_basis(world: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    """Every type, grain and variant against the plain-Python like-for-like computation: the data start
    on a Monday in mid-January and end on a Monday in March, so the first month is a partial baseline,
    the last week and month are to date, and growth over their aligned days is recomputed (distinct
    counts, percentiles, ratios included); growth on a 'full' basis is value against previous_value."""
    events = valid_events(conn)
    seen: set[tuple[str, str]] = set()
    for kind in TYPES:
        for grain in GRAINS:
            for variant in ("plain", "dimf"):
                slug = slug_for(kind, grain, variant)
                dims = DIMS if variant == "dimf" else []
                want = like_for_like(events, kind, grain, dims, _filter_py if variant == "dimf" else None)
                want = {(p, tuple(sorted(d))): v for (p, d), v in want.items()}
                got = stored_growth(conn, slug)
                assert set(got) == set(want), slug
                for key, (growth, basis, n) in want.items():
                    g, b, days = got[key]
                    assert (b, days) == (basis, n), (slug, key, got[key], want[key])
                    assert (g is None) == (growth is None), (slug, key, got[key], want[key])
                    if growth is not None:  # Python floats vs numeric: equal to the 4th decimal
                        assert abs(g - growth) <= Decimal("0.0002"), (slug, key, g, growth)
                    seen.add((grain, basis))
    assert seen == {("day", "none"), ("day", "full"), ("week", "none"), ("week", "full"), ("week", "to_date"),
                    ("month", "none"), ("month", "partial_baseline"), ("month", "to_date")}


def test_values_carry_the_basis_everywhere(world: dict[str, Any], svc: CustomMetricsService) -> None:
    """The service's values(), the query service's typed rows and `metricsmith query custom` carry the
    basis of the stored rows: the last month (2026-03-01 to 03-09) is to date over 9 days."""
    from metricsmith.query import MetricsQueryService

    rows = svc.values("outsider", "t_count_plain_month")
    assert [(r["period_start"], r["growth_basis"], r["growth_basis_days"]) for r in rows] == [
        (date(2026, 1, 1), "none", None), (date(2026, 2, 1), "partial_baseline", 10),
        (date(2026, 3, 1), "to_date", 9)]
    typed = MetricsQueryService().get_custom_metric_values("t_count_plain_month", user="outsider")
    assert [(v.period_start, v.growth_pct, v.growth_basis, v.growth_basis_days) for v in typed] == [
        (r["period_start"], r["growth_pct"], r["growth_basis"], r["growth_basis_days"]) for r in rows]


def test_late_data_incremental_and_versioning(world: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    svc: CustomMetricsService = world["svc"]
    before_v1 = stored_values(conn, "versioned", 1)
    # late events: occurred in the first week, received now; a brand-new organization and user
    late = [(uuid.uuid4(), datetime(2026, 1, 20, 10, tzinfo=UTC), "purchase", "late_user", "org_late", 12345),
            (uuid.uuid4(), datetime(2026, 2, 2, 23, tzinfo=UTC), "signup", "late_user2", "org_late", 0)]
    with conn.cursor() as cur:
        cur.executemany("insert into raw.events (event_id, occurred_at, event_type, user_id, organization_id,"
                        " revenue_cents) values (%s, %s, %s, %s, %s, %s)", late)
    new = svc.update("owner", "versioned", {"name": "versioned", "type": "SUM", "source": "events",
                                            "expression": "revenue_cents", "filter": "event_type = 'purchase'",
                                            "grain": "week"})
    assert new.current_version == 2
    svc.run()  # incremental: only the touched periods are recomputed
    _check_matrix(conn)
    events = valid_events(conn)
    want_v1 = {(p, ()): v for (p, _), v in reference(events, "SUM", "week", [], None).items()}
    want_v2 = {(p, ()): v for (p, _), v in
               reference(events, "SUM", "week", [], lambda e: e["event_type"] == "purchase").items()}
    assert_same(stored_values(conn, "versioned", 1), want_v1, "versioned v1")
    assert_same(stored_values(conn, "versioned", 2), want_v2, "versioned v2")
    assert stored_values(conn, "versioned", 1) != before_v1  # the late purchase changed week 2026-01-19
    assert svc.values("owner", "versioned")[0]["metric_version"] == 2
    assert svc.values("owner", "versioned", version=1)[0]["metric_version"] == 1
    with pytest.raises(psycopg.errors.RaiseException, match="immutable"):
        conn.execute("update metricsmith.custom_metric_versions set spec = '{}'")


def test_backfill_recomputes_range(world: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    svc: CustomMetricsService = world["svc"]
    conn.execute("update analytics.cm_t_sum_plain_day__v1 set value = -1 where period_start between"
                 " '2026-01-25' and '2026-01-27'")
    with pytest.raises(AccessDenied):
        svc.backfill("teammate", "t_sum_plain_day", date(2026, 1, 25), date(2026, 1, 27))
    svc.backfill("owner", "t_sum_plain_day", date(2026, 1, 25), date(2026, 1, 27))
    events = valid_events(conn)
    want = {(p, ()): v for (p, _), v in reference(events, "SUM", "day", [], None).items()}
    assert_same(stored_values(conn, "t_sum_plain_day"), want, "after backfill")


def test_compile_is_deterministic_and_archive_removes_files(svc: CustomMetricsService) -> None:
    svc.create("owner", {"name": "to archive", "type": "COUNT", "source": "events", "grain": "day"})
    first = svc.compile()
    assert "cm_to_archive__v1.sql" in first.written
    text = (svc.generated_dir / "cm_to_archive__v1.sql").read_text()
    assert "metricsmith.custom_metric(" in text and "metricsmith_custom_metric" in text
    again = svc.compile()
    assert again.written == [] and again.removed == []
    with pytest.raises(MetricNotFound):
        svc.archive("orgmate", "to_archive")  # a PRIVATE metric is invisible to the rest of the org
    svc.archive("owner", "to_archive")
    third = svc.compile()
    assert "cm_to_archive__v1.sql" in third.removed
    assert not (svc.generated_dir / "cm_to_archive__v1.sql").exists()
    assert all(m not in {d.slug for d in svc.list_metrics("owner")} for m in ("to_archive",))


def test_cost_budget_refuses_expensive_definition(svc: CustomMetricsService, conn: psycopg.Connection[Any]) -> None:
    spec = {"name": "expensive", "type": "DISTINCT_COUNT", "expression": "user_id", "source": "events",
            "dimensions": ["session_id", "user_id"], "grain": "day"}
    est = svc.estimate("owner", spec)
    assert est.cost > 0 and est.rows > 0
    tight = CustomMetricsService(project_dir=svc.project_dir, cost_budget=est.cost / 2)
    n = conn.execute("select count(*) from metricsmith.custom_metric_definitions").fetchone()
    with pytest.raises(CostBudgetExceeded, match=r"estimated cost [\d,]+ .* exceeds the budget"):
        tight.create("owner", spec)
    assert conn.execute("select count(*) from metricsmith.custom_metric_definitions").fetchone() == n
    cheap = {"name": "cheap", "type": "COUNT", "source": "daily_metrics", "expression": "metric_date"}
    assert tight.estimate("owner", cheap).within_budget


# -- visibility matrix ------------------------------------------------------------------------------

READERS = {
    "PRIVATE": {"owner", "admin"},
    "TEAM": {"owner", "teammate", "admin"},
    "ORGANIZATION": {"owner", "teammate", "orgmate", "admin"},
    "PUBLIC": {"owner", "teammate", "orgmate", "admin", "outsider"},
}
USERS = ("owner", "teammate", "orgmate", "admin", "outsider")


@pytest.mark.parametrize("visibility", list(READERS))
def test_visibility_matrix(svc: CustomMetricsService, visibility: str) -> None:
    slug = f"vis_{visibility.lower()}"
    spec = {"name": slug, "type": "COUNT", "source": "events", "grain": "month", "visibility": visibility,
            **({"team": "team_1"} if visibility == "TEAM" else {})}
    svc.create("owner", spec)
    for user in USERS:
        visible = user in READERS[visibility]
        assert (slug in {d.slug for d in svc.list_metrics(user)}) is visible, (user, visibility)
        if visible:
            assert svc.show(user, slug).slug == slug
        else:
            with pytest.raises(MetricNotFound):
                svc.show(user, slug)
            with pytest.raises(MetricNotFound):
                svc.values(user, slug)
        for action in ("update", "archive"):
            if user in ("owner", "admin"):
                continue
            with pytest.raises(AccessDenied if visible else MetricNotFound):
                if action == "update":
                    svc.update(user, slug, spec)
                else:
                    svc.archive(user, slug)
    assert svc.update("admin", slug, spec).current_version == 2  # org admin may change
    assert svc.update("owner", slug, spec).current_version == 3
    svc.archive("admin", slug)
    with pytest.raises(MetricSpecError, match="archived"):
        svc.update("owner", slug, spec)


def test_unknown_user_and_foreign_team_refused(svc: CustomMetricsService) -> None:
    with pytest.raises(AccessDenied, match="unknown user"):
        svc.list_metrics("nobody")
    with pytest.raises(AccessDenied, match="not a member of team"):
        svc.create("owner", {"name": "x team", "type": "COUNT", "source": "events", "visibility": "TEAM",
                             "team": "team_b"})


def test_values_read_enforced_for_values_too(world: dict[str, Any], svc: CustomMetricsService) -> None:
    svc.create("owner", {"name": "private values", "type": "SUM", "source": "events", "expression": "revenue_cents"})
    with pytest.raises(MetricNotFound):
        svc.values("outsider", "private_values")
    assert svc.values("owner", "t_sum_plain_month")  # PUBLIC metric with values
    assert svc.values("outsider", "t_sum_plain_month")


def test_decimal_values_are_numeric(world: dict[str, Any], svc: CustomMetricsService) -> None:
    row = svc.values("outsider", "t_average_plain_month")[0]
    assert isinstance(row["value"], Decimal)


def test_custom_metrics_job_logs_completed_run(world: dict[str, Any], conn: psycopg.Connection[Any]) -> None:
    from metricsmith.custom_metrics.job import JOB_NAME, run_custom_metrics_job

    result = run_custom_metrics_job(service=world["svc"])
    assert result.status == "COMPLETED", result.message
    assert result.models_ok >= 50 and result.models_failed == 0
    row = conn.execute("select status, rows_affected, models_ok from metricsmith.metrics_aggregation_jobs_log"
                       " where job_name = %s order by id desc limit 1", (JOB_NAME,)).fetchone()
    assert row == ("COMPLETED", result.rows, result.models_ok)
    count = conn.execute("select count(*) from analytics.custom_metric_values").fetchone()
    assert count is not None and result.rows == count[0]
