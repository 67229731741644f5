"""Publish the marts built on Spark to the serving PostgreSQL (``analytics.*``, same contract).

The marts are small (one row per period), so each is copied whole, in one transaction per mart
(delete, then COPY): a reader sees the old or the new mart, never a mix. A mart missing in
PostgreSQL is created from its contract (models/marts/_marts__models.yml), so the query
service, the cache, health, the API and the dashboard read it unchanged.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import Any

import yaml
from psycopg import sql

from metricsmith import db, grains
from metricsmith.config import Settings, load_settings, project_root
from metricsmith.core.schema import marts_schema
from metricsmith.spark.config import SPARK_TARGET
from metricsmith.spark.session import get_session


@cache
def contract(model: str) -> tuple[tuple[str, str], ...]:
    """(column, PostgreSQL data_type) of a mart, in contract order."""
    doc = yaml.safe_load((project_root() / "models" / "marts" / "_marts__models.yml").read_text())
    for m in doc.get("models", []):
        if m.get("name") == model:
            return tuple((str(c["name"]), str(c["data_type"])) for c in m.get("columns", []))
    raise KeyError(model)


@dataclass
class PublishResult:
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def render(self) -> str:
        parts = ", ".join(f"{m} {n:,}" for m, n in self.rows.items())
        return f"published to PostgreSQL in {self.seconds:.1f} s (one transaction per mart): {parts}"


def _cell(value: Any, data_type: str) -> Any:
    if value is not None and data_type == "jsonb" and not isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Decimal) and data_type == "numeric":
        # an unconstrained numeric keeps the scale it is given: a whole number from Spark's
        # decimal(38, 12) is stored as PostgreSQL computes it (7, not 7.000000000000)
        return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()
    return value


def _select(column: str, data_type: str) -> str:
    # an instant as text in the session time zone (UTC) with its offset: pyspark would turn it into
    # a naive datetime in the Python process's local time zone
    if data_type in ("timestamptz", "timestamp with time zone"):
        return f"date_format({column}, \"yyyy-MM-dd HH:mm:ss.SSSSSSxxx\")"
    return column


def mart_rows(session: Any, model: str, cols: tuple[tuple[str, str], ...] | None = None) -> list[tuple[Any, ...]]:
    """A Spark mart's rows in contract column order."""
    schema = marts_schema(SPARK_TARGET)
    select = ", ".join(_select(c, t) for c, t in cols or contract(model))
    return [tuple(r) for r in session.sql(f"select {select} from {schema}.{model}").collect()]


def _replace(conn: Any, target_schema: str, model: str, cols: tuple[tuple[str, str], ...],
             rows: list[tuple[Any, ...]]) -> None:
    """``analytics.<model>`` := ``rows``, in one transaction (created from its contract when missing)."""
    table = sql.Identifier(target_schema, model)
    with conn.transaction():
        conn.execute(sql.SQL("create table if not exists {} ({})").format(table, sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in cols)))
        conn.execute(sql.SQL("delete from {}").format(table))
        names = sql.SQL(", ").join(sql.Identifier(c) for c, _ in cols)
        with conn.cursor().copy(sql.SQL("copy {} ({}) from stdin").format(table, names)) as copy:
            for row in rows:
                copy.write_row(tuple(_cell(v, t) for v, (_, t) in zip(row, cols, strict=True)))


def publish_table(session: Any, model: str, cols: tuple[tuple[str, str], ...], *,
                  settings: Settings | None = None) -> int:
    """One Spark table (``cols``: its PostgreSQL contract) copied whole to the serving PostgreSQL."""
    rows = mart_rows(session, model, cols)
    with db.connect(settings or load_settings()) as conn:
        target_schema = marts_schema("default")
        conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(target_schema)))
        _replace(conn, target_schema, model, cols, rows)
    return len(rows)


def publish(settings: Settings | None = None, models: tuple[str, ...] | None = None) -> PublishResult:
    settings = settings or load_settings()
    session = get_session(settings)
    began = time.perf_counter()
    result = PublishResult()
    target_schema = marts_schema("default")
    with db.connect(settings) as conn:
        conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(target_schema)))
        conn.commit()
        for model in models or tuple(g.model for g in grains.load()):
            rows = mart_rows(session, model)
            _replace(conn, target_schema, model, contract(model), rows)
            result.rows[model] = len(rows)
    result.seconds = time.perf_counter() - began
    return result
