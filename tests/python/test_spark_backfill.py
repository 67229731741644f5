"""A day-range backfill on Spark: rows of past days rewritten in raw.events' Parquet files behind
the change tracking's back (their inserted_at and received_date kept, older than the watermark:
an incremental run cannot see them) are recomputed by the backfill of their days, with every
period above them (weeks, months, quarters, and the periods whose growth compares with them);
the published marts equal the independent Python reference cell for cell, and a day outside the
range, rewritten the same way, keeps its old (stale) values until its own backfill. Bad ranges
are refused in one line with nothing run. On Spark ``metrics estimate`` prints bytes.

Lean on purpose: two Spark runs on the edge-case data from 2023 on: the ``backfill`` flow's body on no model
state (it builds every model), then ``metricsmith backfill`` on METRICSMITH_ENGINE=spark."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

import psycopg
import pytest
from _spark import empty_spark_events, insert_spark_events, spark_available, spark_fixture  # noqa: F401 - fixture
from rollups_reference import Event, diff_tables, fetch_tables, reference
from test_rollups import edge_case_events
from test_spark_property import _drop_models

from metricsmith.cli import main
from metricsmith.core.dbt import invoke
from metricsmith.custom_metrics import CustomMetricsService
from metricsmith.errors import UserFacingError
from metricsmith.orchestration import flowkit, joblog
from metricsmith.spark import job, raw, rollups

pytestmark = [spark_available]
NEW_YORK = ZoneInfo("America/New_York")
#: the range backfilled first: March 2023 (its quarter is the year-over-year base of 2024 Q1)
RANGE = (date(2023, 3, 13), date(2023, 3, 16))
#: a day outside it (another quarter, not one whose growth reads the range), rewritten too
OUTSIDE = date(2024, 10, 26)


def _local_day(e: Event) -> date | None:
    return e.occurred_at.astimezone(NEW_YORK).date() if e.occurred_at else None


def _corrected(e: Event, n: int) -> Event:
    """What the correction pipeline wrote for an event of the backfilled range: purchases at
    another price, every third page view a signup, anonymous events attributed to new users."""
    if e.event_type == "purchase":
        e = replace(e, revenue_cents=e.revenue_cents + 1001)
    elif e.event_type == "page_view" and n % 3 == 0:
        e = replace(e, event_type="signup")
    return replace(e, user_id=f"rw-{n % 7}") if e.user_id is None else e


def _repriced(e: Event) -> Event:
    """OUTSIDE's correction: every event a purchase, 5.03 more (no user changes its first day)."""
    return replace(e, event_type="purchase", revenue_cents=e.revenue_cents + 503)


def _rewrite(spark: Any, change: Callable[[Event], Event], ids: set[str]) -> None:
    """Rewrite the rows ``ids`` of raw.events in place: the received_date partitions holding them
    are overwritten with every other column (inserted_at, received_date) and row kept."""
    table = spark.table(raw.EVENTS)
    parts = [r[0] for r in table.where(table.event_id.isin(*ids)).select("received_date").distinct().collect()]
    rows = []
    for r in table.where(table.received_date.isin(*parts)).collect():
        d = r.asDict()
        if d["event_id"] in ids:
            e = change(Event(occurred_at=d["occurred_at"], received_at=d["received_at"], event_type=d["event_type"],
                             user_id=d["user_id"], organization_id=d["organization_id"],
                             session_id=d["session_id"], revenue_cents=d["revenue_cents"], event_id=d["event_id"]))
            d.update(event_type=e.event_type, user_id=e.user_id, revenue_cents=e.revenue_cents)
        rows.append(tuple(d[c] for c in table.columns))
    # dynamic partition overwrite (the session's mode): only these received_date partitions
    spark.createDataFrame(rows, table.schema).write.insertInto(raw.EVENTS, overwrite=True)


def _backdated(spark: Any) -> None:
    """Every row loaded two hours ago (inserted_at), long before the runs' watermark."""
    from pyspark.sql import functions as F

    table = spark.table(raw.EVENTS)
    rows = table.withColumn("inserted_at", F.col("inserted_at") - F.expr("interval 2 hours")).collect()
    spark.createDataFrame(rows, table.schema).write.insertInto(raw.EVENTS, overwrite=True)


def _files(spark: Any, table: str) -> dict[str, set[str]]:
    """The Parquet files of a table, by partition folder."""
    out: dict[str, set[str]] = {}
    for f in spark.table(table).inputFiles():
        path = Path(urlparse(f).path)
        out.setdefault(path.parent.name, set()).add(path.name)
    return out


def _check(conn: psycopg.Connection[Any], events: list[Event]) -> dict[str, list[dict[str, Any]]]:
    actual = fetch_tables(conn)
    problems = diff_tables(reference(events, "America/New_York"), actual)
    assert not problems, "\n".join(problems[:40])
    return actual


def _job_rows(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute(f"select count(*) from {joblog.TABLE}").fetchone()[0])


@pytest.fixture(scope="module")
def world(spark: Any, test_database: str) -> Iterator[dict[str, Any]]:
    """The edge-case events on Spark, loaded two hours ago; the ``backfill`` flow's body on no model
    state (it builds every model, as the first run on a new warehouse does) published and equal to
    the reference; then the hidden rewrite of the range's and OUTSIDE's rows."""
    saved = {k: os.environ.get(k) for k in ("METRICSMITH_ENGINE", "METRICSMITH_TIMEZONE")}
    os.environ.update(METRICSMITH_ENGINE="spark", METRICSMITH_TIMEZONE="America/New_York")
    try:
        with psycopg.connect(test_database, autocommit=True) as conn:
            empty_spark_events(spark)
            _drop_models(spark)
            first, late = edge_case_events(seed=23)
            # from 2023 on (the range, its year-over-year partner 2024 Q1, OUTSIDE, the invalid rows):
            # a spine of ~600 days, not ~1400 (each Spark run's cost grows with the spine)
            events = [e for e in first + late if e.occurred_at is None or e.occurred_at.year >= 2023]
            insert_spark_events(spark, events)
            _backdated(spark)
            flow = flowkit.job_flow("backfill", start=OUTSIDE, end=OUTSIDE, refresh_cache=False)
            built = _check(conn, events)
            in_range = [e.event_id for e in sorted(events, key=lambda e: (e.occurred_at, e.event_id))
                        if (d := _local_day(e)) and RANGE[0] <= d <= RANGE[1]]
            outside = {e.event_id for e in events if _local_day(e) == OUTSIDE}
            number = {event_id: n for n, event_id in enumerate(in_range)}
            by_id = {e.event_id: e for e in events}
            corrected = {i: _corrected(by_id[i], number[i]) for i in in_range}
            _rewrite(spark, lambda e: corrected[e.event_id], set(in_range))
            _rewrite(spark, _repriced, outside)
            range_only = [corrected.get(e.event_id, e) for e in events]
            rewritten = [_repriced(e) if e.event_id in outside else e for e in range_only]
            yield {"conn": conn, "events": events, "flow": flow, "built": built, "range_only": range_only,
                   "rewritten": rewritten}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_backfill_flow_on_spark_logged_with_its_range(world: dict[str, Any]) -> None:
    """The ``backfill`` flow (as `metricsmith jobs run backfill --start --end`) on Spark: its job's
    row holds the range and mode backfill; the marts built by it equal the reference (checked by
    the fixture)."""
    flow, conn = world["flow"], world["conn"]
    assert flow["job"] == "backfill" and flow["status"] == "COMPLETED"
    row = conn.execute(f"select job_name, status, period_start, period_end, details from {joblog.TABLE} "
                       "where id = %s", (flow["log_id"],)).fetchone()
    assert row[:4] == ("backfill", "COMPLETED", OUTSIDE, OUTSIDE)
    assert row[4]["engine"] == "spark" and row[4]["mode"] == "backfill"
    assert row[4]["backfill"] == {"start": str(OUTSIDE), "end": str(OUTSIDE)}
    assert row[4]["spark_job"]["spark"]["mode"] == "backfill"
    assert row[4]["spark_job"]["publish"]["rows"] == {t: len(rows) for t, rows in world["built"].items()}


def test_bad_ranges_refused_in_one_line_nothing_run(world: dict[str, Any], spark: Any,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    conn = world["conn"]
    jobs_before, marts_before = _job_rows(conn), fetch_tables(conn)
    ledger = "select count(*) from analytics.int_rollup_ledger"
    ledger_before = spark.sql(ledger).collect()[0][0]
    capsys.readouterr()
    # the one check of every backfill: `spark run`, the flows, the Spark rollups
    assert main(["spark", "run", "--start", "2023-03-16", "--end", "2023-03-13"]) == 2
    assert capsys.readouterr().err == "metricsmith: backfill start 2023-03-16 is after end 2023-03-13\n"
    for refused in (lambda: flowkit.job_flow("backfill", start=RANGE[1], end=RANGE[0], refresh_cache=False),
                    lambda: job.run_job(backfill=(RANGE[1], RANGE[0])),
                    lambda: rollups.run_rollups(backfill=(RANGE[1], RANGE[0]))):
        with pytest.raises(UserFacingError, match=r"^backfill start 2023-03-16 is after end 2023-03-13$"):
            refused()
    with pytest.raises(UserFacingError, match=r"^job backfill needs a start and an end date$"):
        flowkit.job_flow("backfill", start=RANGE[0], end=None, refresh_cache=False)
    assert main(["spark", "run", "--start", "2023-03-13"]) == 2
    assert capsys.readouterr().err == ("metricsmith: spark run: give both --start and --end (the days to backfill)"
                                       " or neither\n")
    # `metricsmith backfill` checks its arguments first, whatever the engine
    assert main(["backfill", "--start", "2023-03-16", "--end", "2023-03-13"]) == 2
    assert capsys.readouterr().err == "metricsmith: backfill start 2023-03-16 is after end 2023-03-13\n"
    assert (_job_rows(conn), spark.sql(ledger).collect()[0][0]) == (jobs_before, ledger_before)
    assert fetch_tables(conn) == marts_before


def test_backfill_recomputes_range_and_periods_above(world: dict[str, Any], spark: Any,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    conn, built, range_only = world["conn"], world["built"], world["range_only"]
    expected = reference(range_only, "America/New_York")
    stale = {(t, str(r[k])) for t, k in (("daily_metrics", "metric_date"), ("weekly_metrics", "week_start"),
                                          ("monthly_metrics", "month_start"), ("quarterly_metrics", "quarter_start"))
             for r, b in zip(expected[t], built[t], strict=True) if r != b}
    # not vacuous: the range's days, its week, month and quarter, and the periods a year later
    # whose growth compares with them differ from what is published now
    assert any(("daily_metrics", str(RANGE[0] + timedelta(days=i))) in stale for i in range(4))
    assert {("weekly_metrics", "2023-03-13"), ("monthly_metrics", "2023-03-01"), ("quarterly_metrics", "2023-01-01"),
            ("monthly_metrics", "2024-03-01"), ("quarterly_metrics", "2024-01-01")} <= stale
    files_before = _files(spark, "analytics.daily_metrics")
    jobs_before = _job_rows(conn)
    capsys.readouterr()

    assert main(["backfill", "--start", str(RANGE[0]), "--end", str(RANGE[1])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("spark-rollups: COMPLETED after 1 attempt(s)")
    assert "4 day(s)" in out and f"({RANGE[0]} .. {RANGE[1]})" in out
    _check(conn, range_only)  # the range and everything above it recomputed; OUTSIDE still stale
    row = conn.execute(f"select job_name, status, period_start, period_end, details from {joblog.TABLE} "
                       "order by id desc limit 1").fetchone()
    assert _job_rows(conn) == jobs_before + 1
    assert row[:4] == ("spark-rollups", "COMPLETED", *RANGE)
    assert row[4]["mode"] == "backfill" and row[4]["backfill"] == {"start": "2023-03-13", "end": "2023-03-16"}
    assert row[4]["spark_job"]["spark"]["mode"] == "backfill"
    assert row[4]["spark_job"]["spark"]["changed_days"] == 4
    # only the range's month of daily_metrics was rewritten: every other partition keeps its files
    files_after = _files(spark, "analytics.daily_metrics")
    month = "partition_month=2023-03-01"
    assert files_after[month] != files_before[month]
    assert {p: f for p, f in files_after.items() if p != month} == {p: f for p, f in files_before.items() if p != month}

    # OUTSIDE was rewritten the same way, outside the range: still stale (its old revenue)
    stale_day = {r["metric_date"]: r for r in expected["daily_metrics"]}[OUTSIDE]
    fresh_day = {r["metric_date"]: r for r in reference(world["rewritten"], "America/New_York")["daily_metrics"]}[OUTSIDE]
    assert stale_day["revenue_cents"] < fresh_day["revenue_cents"]


def test_estimate_prints_bytes_on_spark(world: dict[str, Any], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    CustomMetricsService(engine="postgres").add_user("bea", "org_b")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "buyers", "type": "DISTINCT_COUNT", "expression": "user_id",
                                "source": "events", "grain": "day"}))
    capsys.readouterr()
    assert main(["metrics", "estimate", "--as", "bea", "-f", str(spec)]) == 0
    line = capsys.readouterr().out
    assert re.fullmatch(r"estimated bytes [\d,]+ \([\d.,]+ (B|kB|MB)\), rows [\d,]+, "
                                      r"budget 100\.0 GB: within budget\n", line), line
    assert main(["metrics", "estimate", "--as", "bea", "--json", "-f", str(spec)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["unit"] == "bytes" and {"cost", "rows", "budget", "within_budget", "sql"} <= set(got)
    # PostgreSQL: the planner's cost, as before, unit "cost"
    invoke(["run", "--select", "stg_events"]).raise_for_status()
    os.environ["METRICSMITH_ENGINE"] = "postgres"
    try:
        assert main(["metrics", "estimate", "--as", "bea", "--json", "-f", str(spec)]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["unit"] == "cost" and got["cost"] > 0
        assert main(["metrics", "estimate", "--as", "bea", "-f", str(spec)]) == 0
        assert capsys.readouterr().out.startswith("estimated cost ")
    finally:
        os.environ["METRICSMITH_ENGINE"] = "spark"
