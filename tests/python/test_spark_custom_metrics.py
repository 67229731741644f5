"""Custom metrics on Spark: the same stored definitions, allow-list and generated models, run on
Spark and published to PostgreSQL. The values equal an independent Python computation and the
PostgreSQL engine's values of the same events, cell for cell; the cost budget reads Spark's
optimized-plan size (bytes); a disallowed construct is refused with PostgreSQL's message.

Lean on purpose: one Spark run of the custom metrics (through the job runner: two dbt
invocations) after one of stg_events, and one PostgreSQL run of the same metrics."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

import psycopg
import pytest
from _spark import empty_spark_events, spark_available, spark_fixture  # noqa: F401 - fixture
from test_custom_metrics import _filter_py, assert_same, reference, valid_events

from metricsmith import generator
from metricsmith.custom_metrics import CustomMetricsService, ExpressionError
from metricsmith.custom_metrics.job import run_custom_metrics_job
from metricsmith.custom_metrics.project import copy_project
from metricsmith.orchestration import joblog
from metricsmith.spark import raw
from metricsmith.spark.custom_metrics import SparkCostBudgetExceeded

pytestmark = [spark_available]
START, DAYS, PER_DAY, SEED = date(2026, 1, 19), 50, 40, 5
FILTER = "event_type <> 'logout' and user_id is not null"
#: slug -> (spec, reference kind or None when the test computes it itself)
METRICS: dict[str, dict[str, Any]] = {
    "s_count_day": {"type": "COUNT", "grain": "day"},
    "s_sum_week_org": {"type": "SUM", "expression": "revenue_cents", "grain": "week",
                       "dimensions": ["organization_id"], "filter": FILTER},
    "s_avg_month": {"type": "AVERAGE", "expression": "revenue_cents", "grain": "month"},
    "s_buyers_month": {"type": "DISTINCT_COUNT", "expression": "user_id", "grain": "month",
                       "filter": "event_type = 'purchase'"},
    "s_p75_week": {"type": "PERCENTILE", "expression": "revenue_cents", "percentile": 0.75, "grain": "week"},
    "s_ratio_week": {"type": "RATIO", "grain": "week",
                     "numerator": {"type": "SUM", "expression": "revenue_cents", "filter": "event_type = 'purchase'"},
                     "denominator": {"type": "DISTINCT_COUNT", "expression": "user_id"}},
    # PostgreSQL's integer division and extract(dow) (0 = Sunday), rendered for Spark
    "s_max_dollars_day": {"type": "MAX", "expression": "revenue_cents / 100", "grain": "day",
                          "dimensions": ["event_type"]},
    "s_sunday_sum_month": {"type": "SUM", "grain": "month",
                           "expression": "case when extract(dow from event_date) = 0 then revenue_cents else 0 end"},
}
#: metrics whose values are not whole numbers: equal to PostgreSQL's within decimal rounding
FRACTIONAL = {"s_avg_month", "s_p75_week", "s_ratio_week"}


def _spec(slug: str) -> dict[str, Any]:
    return {"name": slug, "slug": slug, "source": "events", "visibility": "PUBLIC", **METRICS[slug]}


def _values(conn: psycopg.Connection[Any]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    rows = conn.execute("select metric_slug, period_start, dimensions::text, value, previous_value, growth_pct,"
                        " growth_basis, growth_basis_days from analytics.custom_metric_values"
                        " where metric_slug like 's\\_%'").fetchall()
    return {r[:3]: r[3:] for r in rows}


@pytest.fixture(scope="module")
def world(spark: Any, test_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with psycopg.connect(test_database, autocommit=True) as conn:
        conn.execute("truncate raw.events, raw.events_quarantine")
        generator.generate_to_db(days=DAYS, events_per_day=PER_DAY, seed=SEED, start=START)
        empty_spark_events(spark)
        raw.generate(days=DAYS, events_per_day=PER_DAY, seed=SEED, start=START)
        on_spark = CustomMetricsService(project_dir=copy_project(tmp_path_factory.mktemp("cm_spark")), engine="spark")
        on_pg = CustomMetricsService(project_dir=copy_project(tmp_path_factory.mktemp("cm_pg")), engine="postgres")
        on_spark.run_dbt(["run", "--select", "stg_events"])  # the one source, a view over raw.events
        on_pg.run_dbt(["run", "--select", "stg_events"])
        on_pg.add_user("ana", "org_s")
        for slug in METRICS:
            on_spark.create("ana", _spec(slug))  # validated and costed on Spark
        job = run_custom_metrics_job(service=on_spark)
        from_spark = _values(conn)
        on_pg.run()
        yield {"conn": conn, "spark_svc": on_spark, "pg_svc": on_pg, "job": job, "from_spark": from_spark,
               "from_pg": _values(conn)}


def test_spark_values_equal_python_and_postgres(world: dict[str, Any], spark: Any) -> None:
    conn, from_spark, from_pg = world["conn"], world["from_spark"], world["from_pg"]
    events = valid_events(conn)
    assert spark.sql("select count(*) from analytics.stg_events").collect()[0][0] == len(events)
    # the independent computation (the PostgreSQL tests' reference), per metric
    simple = {"s_count_day": ("COUNT", "day", [], None), "s_avg_month": ("AVERAGE", "month", [], None),
              "s_sum_week_org": ("SUM", "week", ["organization_id"], _filter_py),
              "s_p75_week": ("PERCENTILE", "week", [], None), "s_ratio_week": ("RATIO", "week", [], None)}
    for slug, (kind, grain, dims, keep) in simple.items():
        want = {(p, tuple(sorted(d))): v for (p, d), v in reference(events, kind, grain, dims, keep).items()}
        got = {(k[1], tuple(sorted(json.loads(k[2]).items()))): (None if v[0] is None else float(v[0]))
               for k, v in from_spark.items() if k[0] == slug}
        assert_same(got, want, slug)
    buyers: dict[date, set[str]] = {}
    dollars: dict[tuple[date, str], int] = {}
    sundays: dict[date, int] = {}
    for e in events:
        if e["event_type"] == "purchase" and e["user_id"] is not None:
            buyers.setdefault(e["day"].replace(day=1), set()).add(e["user_id"])
        key = (e["day"], e["event_type"])
        dollars[key] = max(dollars.get(key, 0), int(e["revenue_cents"]) // 100)
        month = e["day"].replace(day=1)
        sundays[month] = sundays.get(month, 0) + (int(e["revenue_cents"]) if e["day"].weekday() == 6 else 0)
    spark_of = {slug: {k[1:]: v[0] for k, v in from_spark.items() if k[0] == slug} for slug in METRICS}
    assert spark_of["s_buyers_month"] == {(m, "{}"): len(u) for m, u in buyers.items()}
    assert spark_of["s_max_dollars_day"] == {(d, f'{{"event_type": "{t}"}}'): v for (d, t), v in dollars.items()}
    assert spark_of["s_sunday_sum_month"] == {(m, "{}"): v for m, v in sundays.items()}

    # the PostgreSQL engine on the same events: the same rows, every cell (whole numbers exactly;
    # averages, percentiles and ratios to the last decimals, growth to its 4th)
    assert set(from_spark) == set(from_pg)
    for key, (value, previous, growth, basis, days) in from_pg.items():
        s_value, s_previous, s_growth, s_basis, s_days = from_spark[key]
        assert (s_basis, s_days) == (basis, days), key
        if key[0] in FRACTIONAL:
            for a, b in ((s_value, value), (s_previous, previous)):
                assert (a is None) == (b is None) and (a is None or abs(a - b) <= Decimal("1e-9") * max(1, abs(b))), key
            assert (s_growth is None) == (growth is None), key
            assert growth is None or abs(s_growth - growth) <= Decimal("0.0001"), (key, s_growth, growth)
        else:
            assert (s_value, s_previous, s_growth) == (value, previous, growth), key
            assert str(s_value) == str(value), key  # stored as PostgreSQL computes it (7, not 7.000000000000)
    bases = {v[3] for v in from_spark.values()}
    assert {"full", "to_date", "partial_baseline", "none"} <= bases


def test_job_log_records_the_spark_run_and_the_publish(world: dict[str, Any]) -> None:
    job, conn = world["job"], world["conn"]
    assert job.status == "COMPLETED", job.message
    assert job.models_ok == len(METRICS) and job.models_failed == 0
    details = conn.execute(f"select details from {joblog.TABLE} where id = %s", (job.log_id,)).fetchone()[0]
    assert details["engine"] == "spark"
    assert details["spark_job"]["spark"]["application_id"].startswith("local-")
    assert details["spark_job"]["publish"]["rows"] == {"custom_metric_values": len(world["from_spark"])}
    # the readers of PostgreSQL read them unchanged
    from metricsmith.query import MetricsQueryService

    typed = MetricsQueryService().get_custom_metric_values("s_buyers_month", user="ana")
    assert [v.period_start for v in typed] == [date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)]


def test_cost_budget_in_bytes_from_spark_plan(world: dict[str, Any], spark: Any) -> None:
    """The estimate is the optimized plan's size: the bytes of raw.events' files (their size given
    to the plan for the estimate only, then removed) scaled to the columns the result keeps."""
    svc, conn = world["spark_svc"], world["conn"]
    spec = {"name": "wide", "type": "DISTINCT_COUNT", "expression": "user_id", "source": "events",
            "dimensions": ["session_id", "user_id"], "grain": "day"}
    est = svc.estimate("ana", spec)
    files = sum(os.path.getsize(urlparse(f).path) for f in spark.table("raw.events").inputFiles())
    assert est.unit == "bytes" and 0 < est.cost < files and "`session_id`" in est.sql and est.within_budget
    assert "Statistics" not in {r[0] for r in spark.sql("describe table extended raw.events").collect()}
    tight = CustomMetricsService(project_dir=svc.project_dir, engine="spark", cost_budget=est.cost / 2)
    count = "select count(*) from metricsmith.custom_metric_definitions"
    before = conn.execute(count).fetchone()
    with pytest.raises(SparkCostBudgetExceeded, match=r"^estimated size .* bytes, about [\d,]+ rows: Spark's optimized plan\) exceeds "
                                                     r"the budget .*METRICSMITH_CUSTOM_METRIC_SPARK_BYTES_BUDGET\)$"):
        tight.create("ana", spec)
    assert conn.execute(count).fetchone() == before


@pytest.mark.parametrize("expression", [
    "(select count(*) from pg_shadow)", "pg_sleep(1)", "revenue_cents; drop table x", "current_user",
    "raw.events.revenue_cents", "cast(revenue_cents as regclass)", "{{ env_var('X') }}", "sum(revenue_cents)",
])
def test_disallowed_sql_refused_as_on_postgres(world: dict[str, Any], expression: str) -> None:
    spec = {"name": "evil", "type": "SUM", "source": "events", "expression": expression}
    messages = []
    for svc in (world["spark_svc"], world["pg_svc"]):
        with pytest.raises(ExpressionError) as refused:
            svc.create("ana", spec)
        messages.append(str(refused.value))
    assert messages[0] == messages[1]
    assert world["conn"].execute("select count(*) from metricsmith.custom_metric_definitions"
                                 " where slug = 'evil'").fetchone() == (0,)


def test_spark_rendering_refuses_what_spark_cannot_mean(world: dict[str, Any]) -> None:
    spec = {"name": "epoch", "type": "MAX", "source": "events", "expression": "extract(epoch from occurred_at)"}
    with pytest.raises(ExpressionError, match=r"extract\(epoch \.\.\.\) has no equivalent on the Spark engine"):
        world["spark_svc"].create("ana", spec)
    assert world["pg_svc"].validate("ana", spec).expression  # valid on PostgreSQL
