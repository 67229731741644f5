"""Stand-ins for dbt's Jinja context when sqlfluff lints the models with its jinja templater
(.sqlfluff: library_path). sqlfluff provides ref, source, config, var, is_incremental, this and
return; the models also call this project's macros through the ``metricsmith.`` namespace,
dbt's cross-database macros through ``dbt.``, and adapter / flags / exceptions / modules /
execute. Here each renders small valid SQL of the right shape (an expression, a type, a CTE
list or a query) so that the SQL written in the model files themselves is parsed and linted;
what a macro generates is not (the dbt templater would need a compile against a database).
"""

from __future__ import annotations

import re as _re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

_PROJECT = Path(__file__).resolve().parents[3] / "dbt_project.yml"


def _grains() -> list[dict[str, Any]]:
    declared: list[dict[str, Any]] = yaml.safe_load(_PROJECT.read_text(encoding="utf-8"))["vars"]["grains"]
    return declared


def _windows(with_breakdowns: bool = False) -> list[dict[str, Any]]:
    out = [{"suffix": g["name"], "grains": [g]} for g in _grains()[1:]]
    return out + ([{"suffix": "week_month", "grains": []}] if with_breakdowns else [])


class _Namespace:
    """Attribute access returns the stub of that name, or a function rendering ``null``."""

    unsafe_callable = False
    alters_data = False

    def __init__(self, stubs: dict[str, Callable[..., Any]]) -> None:
        self._stubs = stubs

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return self._stubs.get(name, lambda *args, **kwargs: "null")


def _cast(expr: str, type_: str) -> str:
    return f"cast({expr} as {type_})"


metricsmith = _Namespace({
    # types and expressions
    "type_cents": lambda: "numeric(38, 0)",
    "type_average": lambda: "numeric(42, 4)",
    "type_growth_pct": lambda: "numeric(46, 4)",
    "type_timestamptz": lambda: "timestamptz",
    "metrics_timezone": lambda: "UTC",
    "local_date": lambda expr: _cast(expr, "date"),
    "local_day_start": lambda expr: _cast(expr, "timestamptz"),
    "week_start": lambda expr: _cast(expr, "date"),
    "month_start": lambda expr: _cast(expr, "date"),
    "add_days": lambda expr, n: _cast(expr, "date"),
    "add_months": lambda expr, n: _cast(expr, "date"),
    "growth_pct": lambda current, previous: _cast(current, "numeric(46, 4)"),
    "valid_event_condition": lambda alias="": "true",
    "rejected_event_reason": lambda alias="": "'reason'",
    "open_transaction_horizon": lambda: "now()",
    "rollups_safety_lag_seconds": lambda: "600",
    "rollup_session_tuning": lambda: "select 1",
    # queries and CTE lists
    "date_series": lambda start, end: "select current_date as metric_date",
    "island_ctes": lambda islands, relation, columns: (
        "islands as (select 1 as island_id),\n\n"
        "events as (select 1 as island_id, current_date as event_date),\n\n"
        "spine_days as (select 1 as island_id, current_date as metric_date)"),
    "first_activity_counts": lambda events, key, prefix, **kwargs: (
        f"{prefix}_counts as (select 1 as island_id, current_date as event_date, 1 as active)"),
    "first_activity_columns": lambda alias, prefix, **kwargs: (
        f"\n        {alias}.first_in_week as {prefix}_first_in_week"),
    "first_activity_column_list": lambda alias, prefix, **kwargs: f"\n        {alias}.{prefix}_first_in_week",
    "period_metrics": lambda *args, **kwargs: "select 1 as period_metrics",
    "day_activity": lambda *args, **kwargs: "select 1 as day_activity",
    "custom_metric_values": lambda *args, **kwargs: "select 1 as custom_metric_values",
    # compile-time values
    "grains": _grains,
    "period_grains": lambda: _grains()[1:],
    "first_activity_windows": _windows,
    "rollup_batch": lambda relation: {},
    "rollup_relation": lambda identifier: None,
    "rollup_islands": lambda relation: [],
    "backfill_range": lambda: [None, None],
})

dbt = _Namespace({
    "type_bigint": lambda: "bigint",
    "type_int": lambda: "integer",
    "type_string": lambda: "text",
    "type_timestamp": lambda: "timestamp",
    "current_timestamp": lambda: "now()",
    "dateadd": lambda part, n, expr: f"({expr} + interval '1 {part}')",
    "datediff": lambda first, second, part: f"({second} - {first})",
    "date_trunc": lambda part, expr: f"date_trunc('{part}', {expr})",
})


class _Adapter:
    unsafe_callable = False
    alters_data = False

    def dispatch(self, name: str, namespace: str = "metricsmith") -> Callable[..., Any]:
        return getattr(metricsmith, name)

    def get_columns_in_relation(self, relation: Any) -> list[Any]:
        return []

    def get_relation(self, **kwargs: Any) -> None:
        return None

    def quote(self, identifier: str) -> str:
        return f'"{identifier}"'

    def type(self) -> str:
        return "postgres"


class _Exceptions:
    def raise_compiler_error(self, message: str) -> None:
        raise RuntimeError(message)


class _Flags:
    FULL_REFRESH = False


class _Modules:
    re = _re


adapter = _Adapter()
exceptions = _Exceptions()
flags = _Flags()
modules = _Modules()
execute = False
selected_resources: list[str] = []
