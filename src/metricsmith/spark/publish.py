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
    return value


def mart_rows(session: Any, model: str) -> list[tuple[Any, ...]]:
    """A Spark mart's rows in contract column order."""
    columns = [c for c, _ in contract(model)]
    schema = marts_schema(SPARK_TARGET)
    return [tuple(r) for r in session.sql(f"select {', '.join(columns)} from {schema}.{model}").collect()]


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
            cols = contract(model)
            rows = mart_rows(session, model)
            table = sql.Identifier(target_schema, model)
            with conn.transaction():
                conn.execute(sql.SQL("create table if not exists {} ({})").format(table, sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in cols)))
                conn.execute(sql.SQL("delete from {}").format(table))
                names = sql.SQL(", ").join(sql.Identifier(c) for c, _ in cols)
                with conn.cursor().copy(sql.SQL("copy {} ({}) from stdin").format(table, names)) as copy:
                    for row in rows:
                        copy.write_row(tuple(_cell(v, t) for v, (_, t) in zip(row, cols, strict=True)))
            result.rows[model] = len(rows)
    result.seconds = time.perf_counter() - began
    return result
