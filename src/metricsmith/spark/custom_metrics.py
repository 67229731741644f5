"""Custom metrics on Spark (METRICSMITH_ENGINE=spark): the same definitions, rules and models.

The definitions stay in PostgreSQL and pass the one allow-list (PostgreSQL dialect,
:mod:`metricsmith.custom_metrics.validation`). For a Spark run:

1. **Definitions**: the checked definitions of the active metrics are copied into the Spark table
   ``metricsmith.custom_metric_models`` (rewritten whole before each run: a few rows), their
   expressions rendered for Spark by :mod:`metricsmith.custom_metrics.dialects` with the source's
   Spark column types. The generated models read them there by ``(metric_id, version)`` (macro
   ``spark__custom_metric_definition_query``): data to Jinja, as on PostgreSQL.
2. **dbt**: the generated models and ``custom_metric_values`` run with target ``spark``.
3. **Publish**: ``custom_metric_values`` is copied to the serving PostgreSQL (one transaction,
   :func:`metricsmith.spark.publish.publish_table`), so the query service, the API and the
   dashboard read it unchanged.

The cost budget on Spark is the size in bytes Spark's optimizer estimates for the metric's query
(``queryExecution().optimizedPlan().stats().sizeInBytes()``), against a budget in bytes.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from metricsmith.config import ConfigError, Settings
from metricsmith.custom_metrics import dialects
from metricsmith.custom_metrics.errors import MetricSpecError
from metricsmith.errors import UserFacingError
from metricsmith.spark.session import application_id, get_session

ENV_BYTES_BUDGET = "METRICSMITH_CUSTOM_METRIC_SPARK_BYTES_BUDGET"
DEFAULT_BYTES_BUDGET = 100 * 10**9
#: the Spark copy of metricsmith.custom_metric_models (the definitions rendered for Spark)
DEFINITIONS = "metricsmith.custom_metric_models"
#: the columns of the Spark raw layout that hold JSON text (docs/spark.md: properties)
JSON_TEXT_COLUMNS = frozenset({"properties"})
_SPARK_TO_PG = {"string": "text", "bigint": "bigint", "int": "integer", "smallint": "smallint",
                "tinyint": "smallint", "double": "double precision", "float": "real", "boolean": "boolean",
                "date": "date", "timestamp": "timestamp with time zone", "timestamp_ntz": "timestamp"}


def bytes_budget(value: float | None = None) -> float:
    raw = value if value is not None else os.environ.get(ENV_BYTES_BUDGET, "").strip() or DEFAULT_BYTES_BUDGET
    try:
        budget = float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_BYTES_BUDGET}={raw!r}: use a number of bytes") from None
    if budget <= 0:
        raise ConfigError(f"{ENV_BYTES_BUDGET}={raw!r}: use a positive number of bytes")
    return budget


def human_size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


class SparkCostBudgetExceeded(UserFacingError):
    """The metric's query on Spark is estimated larger than the budget in bytes."""

    def __init__(self, size: float, rows: float, budget: float) -> None:
        self.cost = self.size = size
        self.rows = rows
        self.budget = budget
        super().__init__(f"estimated size {human_size(size)} ({size:,.0f} bytes, about {rows:,.0f} rows: Spark's optimized"
                         f" plan) exceeds the "
                         f"budget {human_size(budget)}; narrow the filter, coarsen the grain or drop dimensions "
                         f"(budget: {ENV_BYTES_BUDGET})")


def pg_type(spark_type: str, column: str) -> str:
    """A Spark column type as the PostgreSQL type name the allow-list reads (JSON text as jsonb)."""
    base = spark_type.lower().strip()
    if column in JSON_TEXT_COLUMNS and base == "string":
        return "jsonb"
    m = re.fullmatch(r"decimal\((\d+),\s*(\d+)\)", base)
    if m:
        return f"numeric({m.group(1)},{m.group(2)})"
    return _SPARK_TO_PG.get(base, "")


def column_types(session: Any, schema: str, identifier: str) -> dict[str, str]:
    """column -> PostgreSQL type name of a built Spark relation (``{}`` when it is not built)."""
    name = f"{schema}.{identifier}"
    if not session.catalog.tableExists(name):
        return {}
    return {c: pg_type(t, c) for c, t in session.table(name).dtypes}


def source_types(session: Any, source: Any) -> dict[str, str]:
    """The source's column types: declared in its YAML, else Spark's (as PostgreSQL names)."""
    built = column_types(session, source.schema, source.identifier)
    if not built:
        raise MetricSpecError(f"data source {source.name} is not built on Spark yet (run `metricsmith spark run`)"
                              " so its cost cannot be estimated")
    return {c: (declared or built.get(c, "")) for c, declared in source.columns.items()}


@dataclass(frozen=True)
class SizeEstimate:
    size: float
    #: Spark's row count when it has one (cost-based statistics), else the size over the row size
    rows: float


def _tables_without_statistics(frame: Any) -> list[Any]:
    """The catalog tables ``frame`` reads that have no statistics (Java TableIdentifiers)."""
    found = []
    leaves = frame._jdf.queryExecution().analyzed().collectLeaves().iterator()
    while leaves.hasNext():
        leaf = leaves.next()
        if leaf.getClass().getSimpleName() != "LogicalRelation":
            continue
        table = leaf.catalogTable()
        if table.isDefined() and not table.get().stats().isDefined():
            found.append(table.get().identifier())
    return found


@contextmanager
def _size_statistics(session: Any, sql: str) -> Iterator[None]:
    """Tables without statistics get their size (``analyze ... noscan``: file sizes only) for the
    estimate, then lose it again: a partitioned table without statistics is estimated at
    spark.sql.defaultSizeInBytes (about 8 EB), and statistics left behind would go stale as the
    table grows (Spark would then broadcast it in joins)."""
    tables = _tables_without_statistics(session.sql(sql))
    try:
        for table in tables:
            session.sql(f"analyze table {table.unquotedString()} compute statistics noscan")
        yield
    finally:
        catalog = session._jsparkSession.sessionState().catalog()
        for table in tables:
            catalog.alterTableStats(table, session._jvm.scala.Option.empty())
            session.catalog.refreshTable(table.unquotedString())


def estimate(session: Any, sql: str) -> SizeEstimate:
    """Spark's estimate of ``sql``'s result: the optimized logical plan's statistics (nothing runs)."""
    try:
        with _size_statistics(session, sql):
            plan = session.sql(sql)._jdf.queryExecution().optimizedPlan()
            stats = plan.stats()
    except Exception as exc:  # noqa: BLE001 - Spark's AnalysisException / ParseException: one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MetricSpecError(f"the metric's query cannot be planned on Spark: {reason}") from None
    # Scala BigInts: py4j gives a Python int or a Java object whose text is the number
    size = float(str(stats.sizeInBytes()))
    count = stats.rowCount()
    return SizeEstimate(size=size, rows=float(str(count.get())) if count.isDefined() else size / _row_size(plan))


def _row_size(plan: Any) -> float:
    """Spark's size of one output row without column statistics (EstimationUtils.getSizePerRow:
    8 bytes of overhead plus each type's default size): the size estimate in rows."""
    output = plan.output().iterator()
    size = 8
    while output.hasNext():
        size += int(output.next().dataType().defaultSize())
    return float(size)


# --------------------------------------------------------------------------- definitions


def write_definitions(session: Any, conn: Any, types_for: Callable[[str], dict[str, str]]) -> dict[tuple[int, int], str]:
    """Copy the checked definitions of the active metrics into Spark, rendered for Spark with
    their source's column types (``types_for(source name)``: declared, else Spark's catalog).

    Returns the versions whose rendering was refused (model -> one-line reason): they get no row,
    so their model fails with "no checked definition"; the others run."""
    rows = conn.execute(
        "select m.metric_id, m.version, m.definition from metricsmith.custom_metric_models m"
        " join metricsmith.custom_metric_definitions d using (metric_id)"
        " where d.status = 'active' order by 1, 2").fetchall()
    types: dict[str, dict[str, str]] = {}
    out: list[tuple[int, int, str]] = []
    refused: dict[tuple[int, int], str] = {}
    for metric_id, version, stored in rows:
        definition = stored if isinstance(stored, dict) else json.loads(stored)
        try:
            source = str(definition.get("source"))
            if source not in types:
                types[source] = types_for(source)
            rendered = dialects.render_definition(definition, dialects.SPARK, types[source])
            out.append((int(metric_id), int(version), json.dumps(rendered)))
        except UserFacingError as exc:
            refused[(int(metric_id), int(version))] = str(exc)
    if not session.catalog.databaseExists("metricsmith"):
        session.sql("create database if not exists metricsmith")
    frame = session.createDataFrame(out, "metric_id bigint, version int, definition string")
    frame.write.mode("overwrite").format("parquet").saveAsTable(DEFINITIONS)
    return refused


# --------------------------------------------------------------------------- the run


@dataclass
class SparkRunRecord:
    """What the job log records of a custom-metrics run on Spark."""

    application_id: str = ""
    master: str = ""
    dbt_seconds: float = 0.0
    published_rows: int = 0
    publish_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"spark": {"application_id": self.application_id, "master": self.master,
                          "dbt_seconds": round(self.dbt_seconds, 3)},
                "publish": {"rows": {"custom_metric_values": self.published_rows},
                            "seconds": round(self.publish_seconds, 3)}}


@contextmanager
def spark_dbt(settings: Settings, record: SparkRunRecord | None = None) -> Iterator[Any]:
    """The SparkSession for dbt's ``method: session``, and dbt's spark target path, for a block
    of dbt invocations (their time is added to ``record``)."""
    from metricsmith.spark.raw import ensure_tables
    from metricsmith.spark.rollups import own_target_path

    session = get_session(settings)
    ensure_tables(session)
    began = time.perf_counter()
    with own_target_path(settings):
        yield session
    if record is not None:
        record.application_id = application_id(session)
        record.master = str(session.sparkContext.master)
        record.dbt_seconds += time.perf_counter() - began


def publish_values(settings: Settings, record: SparkRunRecord) -> None:
    """custom_metric_values from Spark to the serving PostgreSQL (one transaction)."""
    from metricsmith.custom_metrics.compiler import VALUES_CONTRACT
    from metricsmith.spark.publish import publish_table

    began = time.perf_counter()
    record.published_rows = publish_table(get_session(settings), "custom_metric_values", VALUES_CONTRACT,
                                          settings=settings)
    record.publish_seconds = time.perf_counter() - began
