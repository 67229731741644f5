"""Property on Spark: the PostgreSQL property test's random batches (test_rollups_property: late, out of
order, re-sent, some invalid, some in either side of the week that straddles a quarter) appended to
raw.events on Spark one after another (from no model state: the first run builds every model), an
incremental run after each; after every run the four marts,
published to PostgreSQL, equal the independent Python computation of all data so far, and at the end a
--full-refresh gives the same tables cell for cell. The strategies are imported, not copied; an example
has at most 2 random batches (each Spark run costs seconds; the straddling week has 3), 4 in deep mode.
5 examples by default (4 random and the straddling week), 50 with METRICSMITH_DEEP=1."""

from __future__ import annotations

import os
from typing import Any

import psycopg
from _spark import empty_spark_events, insert_spark_events, spark_available, spark_fixture  # noqa: F401 - fixture
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rollups_reference import Event, diff_tables, fetch_tables, reference
from test_rollups_property import NO_LAG, STRADDLING_WEEK, TZ, _events, batch_spec

from metricsmith.core.schema import marts_schema
from metricsmith.spark import publish, rollups
from metricsmith.spark.config import SPARK_TARGET

pytestmark = [spark_available]
DEEP = os.environ.get("METRICSMITH_DEEP") == "1"
EXAMPLES = 49 if DEEP else 4  # + the explicit example: 5 (deep 50)
spark_batches = st.lists(batch_spec, min_size=1, max_size=4 if DEEP else 2)


def _drop_models(spark: Any) -> None:
    """No model state on Spark (the first run of an example builds every model from scratch, as on
    a new warehouse): dropping the tables costs a second where a full refresh of nothing costs a run."""
    schema = marts_schema(SPARK_TARGET)
    if not spark.catalog.databaseExists(schema):
        return
    for table in spark.catalog.listTables(schema):
        spark.sql(f"drop {'view' if table.tableType == 'VIEW' else 'table'} if exists {schema}.{table.name}")


def _run(*, full_refresh: bool = False) -> None:
    """One rollup run on Spark (no safety lag: a run reads only what arrived since the last), published."""
    rollups.run_rollups(full_refresh=full_refresh, timezone=TZ, extra_vars=NO_LAG)
    publish.publish()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])
@given(batches=spark_batches)
@example(batches=STRADDLING_WEEK)
def test_spark_incremental_runs_equal_full_refresh(spark: Any, conn: psycopg.Connection[Any],
                                                   batches: list[Any]) -> None:
    empty_spark_events(spark)
    _drop_models(spark)
    loaded: list[Event] = []
    for number, (window, specs, resend) in enumerate(batches):
        batch = _events(number, window, specs)
        batch += loaded[:resend]  # re-sent events: same event_id, skipped on append
        insert_spark_events(spark, batch)
        loaded += [e for e in batch if e not in loaded]
        _run()
        problems = diff_tables(reference(loaded, TZ), fetch_tables(conn))
        assert not problems, f"after batch {number}:\n" + "\n".join(problems)
    incremental = fetch_tables(conn)
    _run(full_refresh=True)
    assert fetch_tables(conn) == incremental
