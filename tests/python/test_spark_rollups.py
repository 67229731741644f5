"""The rollups on Spark: the dbt models through the spark target equal the independent Python
reference cell for cell on the PostgreSQL tests' edge-case data (UTC and America/New_York), after
a full refresh (through the job runner, logged) and after late data (incremental, insert_overwrite of
the changed partitions);
the marts published to PostgreSQL are the ones the query service reads, identical to the marts
PostgreSQL builds from the same events."""

from __future__ import annotations

from datetime import date
from typing import Any

import psycopg
from _spark import empty_spark_events, insert_spark_events, spark_available, spark_fixture  # noqa: F401 - fixture
from rollups_reference import Event, diff_tables, fetch_tables, insert_events, reference
from test_rollups import edge_case_events

from metricsmith import rollups as pg_rollups
from metricsmith.orchestration import joblog
from metricsmith.spark import job, publish, rollups

pytestmark = [spark_available]
NEW_YORK = "America/New_York"



def _checked(conn: psycopg.Connection[Any], events: list[Event], tz: str) -> dict[str, list[dict[str, Any]]]:
    """The marts in PostgreSQL, equal to the reference of ``events`` cell for cell."""
    actual = fetch_tables(conn)
    problems = diff_tables(reference(events, tz), actual)
    assert not problems, "\n".join(problems)
    return actual


def _published(conn: psycopg.Connection[Any], events: list[Event], tz: str) -> dict[str, list[dict[str, Any]]]:
    publish.publish()
    return _checked(conn, events, tz)


def test_spark_equals_reference_new_york_with_late_data(spark: Any, conn: psycopg.Connection[Any]) -> None:
    empty_spark_events(spark)
    first, late = edge_case_events()
    insert_spark_events(spark, first)
    # a full refresh through the job runner (it publishes): the job log records the Spark run
    # (mode, application id) and the publish (rows per mart)
    logged = job.run_job(full_refresh=True, timezone=NEW_YORK)
    assert logged.ok, logged.render()
    built = _checked(conn, first, NEW_YORK)
    details = conn.execute(f"select details from {joblog.TABLE} where id = %s", (logged.log_id,)).fetchone()[0]
    assert details["engine"] == "spark"
    assert details["spark_job"]["spark"]["mode"] == "full-refresh"
    assert details["spark_job"]["spark"]["application_id"].startswith("local-")
    assert details["spark_job"]["publish"]["rows"] == {t: len(rows) for t, rows in built.items()}
    assert logged.rows_affected == sum(len(rows) for rows in built.values())

    # late data: an incremental run rewrites the partitions of the changed days only, and equals
    # the reference of all the data (as a full refresh does: the UTC test below, test_spark_property)
    insert_spark_events(spark, late)
    result = rollups.run_rollups(timezone=NEW_YORK)
    assert result.mode == "incremental"
    assert result.application_id.startswith("local-")
    assert result.reasons.get("first_seen_moved") == 1
    assert date(2020, 12, 28) in {d for d in result.changed_days if d.weekday() == 0} | set(result.changed_days)
    assert len(result.changed_days) < 60  # not the whole ~1400-day spine
    _published(conn, first + late, NEW_YORK)


def test_spark_utc_equals_postgres_and_rejected_rows(spark: Any, conn: psycopg.Connection[Any]) -> None:
    empty_spark_events(spark)
    first, late = edge_case_events(seed=11)
    insert_spark_events(spark, first + late)
    rollups.run_rollups(full_refresh=True, timezone="UTC")
    from_spark = _published(conn, first + late, "UTC")

    # the same events through PostgreSQL: identical marts, every cell
    conn.execute("truncate raw.events, raw.events_quarantine")
    insert_events(conn, first + late)
    pg_rollups.run_rollups(full_refresh=True, timezone="UTC", quiet=True)
    assert fetch_tables(conn) == from_spark
    rejected = dict((r[0], r[1]) for r in spark.sql(
        "select user_id, reason from analytics.stg_events_rejected").collect())
    assert rejected == {"u-invalid": "occurred_after_received", "u1": "occurred_after_received",
                        "u-blank": "empty_event_type"}
