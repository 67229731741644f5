"""What a ``metric_threshold`` may compare: the numeric columns of the core marts (as declared in
``models/marts/_marts__models.yml``, one mart per grain of :mod:`metricsmith.grains`), the
columns of ``custom_metric_values``, and the growth basis.
"""

from __future__ import annotations

import functools

import yaml

from metricsmith import grains
from metricsmith.alerts.errors import ExpressionError
from metricsmith.config import project_root

MARTS_YML = "models/marts/_marts__models.yml"
#: the numeric columns of custom_metric_values a rule may compare
CUSTOM_COLUMNS = ("value", "previous_value", "growth_pct")
#: growth bases: ``full`` = the growth columns of the marts (complete periods compared in full).
#: ``to_date`` (like-for-like growth up to the same day of the period) comes later: add it here.
BASES: dict[str, str] = {"full": "complete periods compared in full (the marts' growth columns)"}
PLANNED_BASES = {"to_date": "like-for-like growth up to the same day of the period"}


def check_basis(basis: object) -> str:
    """The growth basis of a rule (default ``full``); the one place that knows the bases."""
    if basis is None:
        return "full"
    if basis in BASES:
        return str(basis)
    if basis in PLANNED_BASES:
        raise ExpressionError(f"basis {basis!r} ({PLANNED_BASES[str(basis)]}) is not available yet in this "
                              "version; use basis: full")
    raise ExpressionError(f"unknown basis {basis!r}: use {', '.join(BASES)}")


def _not_numeric(grain: grains.Grain, column: str) -> bool:
    return column in (grain.start_column, grain.end_column, "is_complete") or column.endswith("_breakdown")


@functools.cache
def mart_columns() -> dict[str, tuple[str, ...]]:
    """Grain name -> the numeric columns of its mart, from the marts' yml."""
    declared = yaml.safe_load((project_root() / MARTS_YML).read_text(encoding="utf-8")) or {}
    by_model = {m.get("name"): [c.get("name") for c in m.get("columns") or []] for m in declared.get("models") or []}
    return {g.name: tuple(c for c in by_model.get(g.model, []) if isinstance(c, str) and not _not_numeric(g, c))
            for g in grains.load()}


def check_column(grain: grains.Grain, column: str, custom: bool) -> None:
    """``column`` must be a numeric column of the grain's mart (or of custom_metric_values)."""
    allowed = CUSTOM_COLUMNS if custom else mart_columns()[grain.name]
    if column not in allowed:
        where = "custom_metric_values" if custom else grain.model
        raise ExpressionError(f"unknown column {column!r} of {where}: use one of {', '.join(allowed)}")
