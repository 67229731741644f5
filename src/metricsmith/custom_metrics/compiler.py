"""Validated metric -> generated dbt model text (and the equivalent SQL for EXPLAIN).

A generated model is a thin call of the ``metricsmith.custom_metric`` macro. Its text is
deterministic (same spec -> same bytes) and its name stable: ``cm_<slug>__v<version>``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metricsmith.custom_metrics.errors import ExpressionError, MetricSpecError
from metricsmith.custom_metrics.registry import DataSource
from metricsmith.custom_metrics.spec import MetricSpec, Part
from metricsmith.custom_metrics.validation import BOOLEAN, NUMERIC, check_expression

GENERATED_TAG = "metricsmith_custom_metric"
_NUMERIC_TYPES = ("SUM", "AVERAGE", "PERCENTILE", "MAX", "MIN")


@dataclass(frozen=True)
class CheckedPart:
    type: str
    expression: str | None
    filter: str | None
    percentile: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "expression": self.expression, "filter": self.filter,
                "percentile": self.percentile}


@dataclass(frozen=True)
class CheckedMetric:
    """A spec whose expressions are validated and rendered (quoted) against its source."""

    spec: MetricSpec
    source: DataSource
    expression: str | None
    filter: str | None
    numerator: CheckedPart | None
    denominator: CheckedPart | None


def model_name(slug: str, version: int) -> str:
    return f"cm_{slug}__v{version}"


def _check_part(part: CheckedPart | Part, cats: dict[str, str], where: str) -> CheckedPart:
    assert part.type is not None
    expr = None
    if part.expression:
        want = NUMERIC if part.type in _NUMERIC_TYPES else None
        expr = check_expression(part.expression, cats, field=f"{where}.expression", want=want).sql
    elif part.type != "COUNT":
        raise MetricSpecError(f"{where}: {part.type} needs an expression")
    filt = check_expression(part.filter, cats, field=f"{where}.filter", want=BOOLEAN).sql if part.filter else None
    if part.type == "PERCENTILE" and part.percentile is None:
        raise MetricSpecError(f"{where}: PERCENTILE needs percentile: 0.0-1.0")
    return CheckedPart(part.type, expr, filt, part.percentile)


def check_metric(spec: MetricSpec, source: DataSource, cats: dict[str, str],
                 resolve_metric: Callable[[str], MetricSpec] | None = None) -> CheckedMetric:
    """Validate every expression and dimension of ``spec`` over ``source``'s columns."""
    for dim in spec.dimensions:
        if dim not in source.dimensions:
            allowed = ", ".join(source.dimensions) or "none"
            raise ExpressionError("dimensions", f"not an allowed dimension of {source.name} (allowed: {allowed})", dim)
    expr = None
    if spec.expression:
        want = NUMERIC if spec.type in _NUMERIC_TYPES else None
        expr = check_expression(spec.expression, cats, field="expression", want=want).sql
    filt = check_expression(spec.filter, cats, field="filter", want=BOOLEAN).sql if spec.filter else None
    parts: list[CheckedPart | None] = []
    for where, part in (("numerator", spec.numerator), ("denominator", spec.denominator)):
        if part is None:
            parts.append(None)
            continue
        if part.metric is not None:
            if resolve_metric is None:
                raise MetricSpecError(f"{where}: metric references need the metric store")
            other = resolve_metric(part.metric)
            if other.type == "RATIO":
                raise MetricSpecError(f"{where}: referenced metric {part.metric} is itself a RATIO")
            if other.source != spec.source and not {other.source, spec.source} <= {"events", "stg_events",
                                                                                      "valid_events"}:
                raise MetricSpecError(f"{where}: referenced metric {part.metric} reads {other.source}, "
                                      f"this metric reads {spec.source}")
            filters = [f for f in (other.filter,) if f]
            part = Part(type=other.type, expression=other.expression,
                        filter=" and ".join(f"({f})" for f in filters) or None, percentile=other.percentile)
        parts.append(_check_part(part, cats, where))
    return CheckedMetric(spec=spec, source=source, expression=expr, filter=filt,
                         numerator=parts[0], denominator=parts[1])


def _jinja(value: Any) -> str:
    """A Jinja literal for ``value`` (strings JSON-escaped, which Jinja reads back exactly)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_jinja(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_jinja(k)}: {_jinja(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Jinja literal for {type(value).__name__}")


def render_model(metric: CheckedMetric, slug: str, version: int, owner: str) -> str:
    """The generated model file's text (deterministic)."""
    spec = metric.spec
    src = metric.source
    incremental = src.change_column is not None
    config = [
        f"materialized={_jinja('incremental' if incremental else 'table')}",
        f"tags=[{_jinja(GENERATED_TAG)}, {_jinja('custom_metric:' + slug)}]",
    ]
    if incremental:
        config += ["incremental_strategy='delete+insert'", "unique_key='period_start'", "on_schema_change='fail'"]
    args = [
        ("source", src.ref_jinja()),
        ("time_column", _jinja(src.time_column)),
        ("change_column", _jinja(src.change_column)),
        ("grain", _jinja(spec.grain)),
        ("metric_type", _jinja(spec.type)),
        ("expression", _jinja(metric.expression)),
        ("filter", _jinja(metric.filter)),
        ("dimensions", _jinja(list(spec.dimensions))),
        ("percentile", _jinja(spec.percentile)),
        ("numerator", _jinja(metric.numerator.as_dict() if metric.numerator else None)),
        ("denominator", _jinja(metric.denominator.as_dict() if metric.denominator else None)),
    ]
    header = (f"{{#- generated by `metricsmith metrics compile`; do not edit.\n"
              f"    metric {slug} version {version}: {spec.name.replace('#}', '# }')} (owner {owner}) -#}}\n")
    body = ",\n".join(f"    {k}={v}" for k, v in args)
    return (header + "{{ config(" + ", ".join(config) + ") }}\n\n"
            + "{{ metricsmith.custom_metric(\n" + body + "\n) }}\n")


def render_values_model(inputs: list[tuple[str, int, str]]) -> str:
    """analytics.custom_metric_values over the generated models: (slug, version, grain) each."""
    items = [f"    {{'slug': {_jinja(s)}, 'version': {v}, 'grain': {_jinja(g)}, "
             f"'relation': ref({_jinja(model_name(s, v))})}}" for s, v, g in sorted(inputs)]
    listing = "[\n" + ",\n".join(items) + "\n]" if items else "[]"
    return ("{#- generated by `metricsmith metrics compile`; do not edit. See models/custom/_custom__models.yml -#}\n"
            "{{ config(materialized='table', tags=['metricsmith_custom_metric_values']) }}\n\n"
            "{{ metricsmith.custom_metric_values(" + listing + ") }}\n")


# -- plain SQL (Postgres) of the same computation, for EXPLAIN and the bench ----------------------

def _aggregate_sql(kind: str, expression: str | None, filt: str | None, percentile: float | None) -> str:
    expr = f"case when {filt} then {expression or '1'} end" if filt else expression
    if kind == "COUNT":
        return f"count({expr or '*'})"
    if kind == "DISTINCT_COUNT":
        return f"count(distinct {expr})"
    if kind == "SUM" and filt:
        return f"coalesce(sum({expr}), 0)"
    if kind == "PERCENTILE":
        return f"percentile_cont({percentile!r}) within group (order by {expr})"
    return {"SUM": "sum", "AVERAGE": "avg", "MAX": "max", "MIN": "min"}[kind] + f"({expr})"


def render_sql(metric: CheckedMetric) -> str:
    """A full (non-incremental) query equivalent to the generated model."""
    spec = metric.spec
    col = f'"{metric.source.time_column}"'
    period = f"cast({col} as date)" if spec.grain == "day" else \
        f"cast(date_trunc('{spec.grain}', cast({col} as timestamp)) as date)"
    dims = ("jsonb_build_object(" + ", ".join(f"'{d}', \"{d}\"" for d in spec.dimensions) + ")"
            if spec.dimensions else "'{}'::jsonb")
    if spec.type == "RATIO":
        assert metric.numerator and metric.denominator
        n, d = metric.numerator, metric.denominator
        value = (f"cast({_aggregate_sql(n.type, n.expression, n.filter, n.percentile)} as numeric) / "
                 f"nullif(cast({_aggregate_sql(d.type, d.expression, d.filter, d.percentile)} as numeric), 0)")
    else:
        value = f"cast({_aggregate_sql(spec.type, metric.expression, None, spec.percentile)} as numeric)"
    group = ", ".join([period, *(f'"{d}"' for d in spec.dimensions)])
    return (f"select {period} as period_start, {dims} as dimensions, {value} as value\n"
            f"from {metric.source.relation}\nwhere {metric.filter or 'true'}\ngroup by {group}")
