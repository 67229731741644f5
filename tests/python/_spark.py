"""Shared by the Spark tests: skip without Java 17+ / pyspark, one SparkSession per module in a
Spark home of its own, events from rollups_reference written to raw.events on Spark."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rollups_reference import Event

from metricsmith.spark.config import MIN_JAVA, java_version, pyspark_version

_JAVA = java_version()[0]
spark_available = pytest.mark.skipif(
    _JAVA is None or _JAVA < MIN_JAVA or pyspark_version() is None,
    reason="the Spark tests need Java 17+ and the spark extra (pip install -e '.[spark]')")

_ENV = ("METRICSMITH_SPARK_HOME", "METRICSMITH_SPARK_MASTER", "METRICSMITH_SPARK_SHUFFLE_PARTITIONS",
        "METRICSMITH_SPARK_WAREHOUSE", "METRICSMITH_SPARK_SMALL_DATA")


def spark_session(home: Path, master: str = "local[2]") -> Iterator[Any]:
    """A SparkSession over a fresh metastore and warehouse under ``home`` (stopped afterwards), tuned for
    tiny tables (``METRICSMITH_SPARK_SMALL_DATA``)."""
    from metricsmith.spark.session import get_session, stop_session

    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update({"METRICSMITH_SPARK_HOME": str(home), "METRICSMITH_SPARK_MASTER": master,
                       "METRICSMITH_SPARK_SHUFFLE_PARTITIONS": "2",
                       # tiny tables: no adaptive stages, broadcasts or whole-stage codegen (session.SMALL_DATA_CONF)
                       "METRICSMITH_SPARK_SMALL_DATA": "1"})
    os.environ.pop("METRICSMITH_SPARK_WAREHOUSE", None)
    stop_session()
    try:
        yield get_session()
    finally:
        stop_session()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_SHARED: list[Any] = []


@pytest.fixture(scope="session", name="spark")
def spark_fixture(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Any:
    """One SparkSession (local[2]) for every Spark test module of a pytest session (imported by
    each module, hence a shared instance): the embedded Hive metastore is created once (the
    slowest part of a Spark start); stopped when the pytest session ends."""
    if _SHARED and _SHARED[0].sparkContext._jsc is None:  # stopped by a test with a session of its own
        from metricsmith.spark.session import get_session

        _SHARED[0] = get_session()
    if not _SHARED:
        started = spark_session(tmp_path_factory.mktemp("spark"))
        _SHARED.append(next(started))

        def stop() -> None:
            _SHARED.clear()
            next(started, None)

        request.config.add_cleanup(stop)
    return _SHARED[0]


def insert_spark_events(session: Any, events: list[Event]) -> int:
    """Append events to raw.events on Spark (one inserted_at per call, like one load)."""
    from metricsmith.spark import raw

    raw.ensure_tables(session)
    schema = ", ".join(f"{c} {t}" for c, t in raw.EVENT_SCHEMA if c != "inserted_at")
    rows = [(e.event_id, e.occurred_at, e.received_at, e.event_type, e.user_id, e.organization_id, e.session_id,
             e.revenue_cents, "{}") for e in events]
    return int(raw.append_events(session, session.createDataFrame(rows, schema)).inserted)


def empty_spark_events(session: Any) -> None:
    from metricsmith.spark import raw

    raw.ensure_tables(session)
    session.sql(f"truncate table {raw.EVENTS}")
    session.sql(f"truncate table {raw.QUARANTINE}")
