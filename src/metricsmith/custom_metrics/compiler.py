"""Validated metric -> generated dbt model text (and the equivalent SQL for EXPLAIN).

A generated model is a thin call of the ``metricsmith.custom_metric`` macro. Its text is
deterministic (same spec -> same bytes) and its name stable: ``cm_<slug>__v<version>``. It
carries identifiers only; the validated expressions are read from PostgreSQL by id when dbt
runs the model, so no user-supplied text is ever placed into a file that dbt renders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from metricsmith.custom_metrics import dialects
from metricsmith.custom_metrics import identifiers as ids
from metricsmith.custom_metrics.errors import ExpressionError, MetricSpecError
from metricsmith.custom_metrics.registry import DataSource
from metricsmith.custom_metrics.spec import GRAINS, METRIC_TYPES, MetricSpec, Part
from metricsmith.custom_metrics.validation import BOOLEAN, NUMERIC, check_expression

GENERATED_TAG = "metricsmith_custom_metric"

#: custom_metric_values' (in the marts schema) description and contract, written into the generated
#: folder's _generated__models.yml next to the model (it exists only where metrics are compiled)
VALUES_MODEL_YAML = """\
models:
  - name: custom_metric_values
    description: >
      Every custom metric's values: one row per metric version, period and combination of
      dimension values, with the previous period's value (same metric version and dimensions)
      and the growth against it. Rebuilt from the generated per-metric models by
      `metricsmith metrics run` (a metric version whose last run failed is left out); read access goes through `metricsmith metrics values`, which
      enforces each metric's visibility.
    config:
      contract:
        enforced: true
    columns:
      - name: metric_slug
        data_type: text
        description: Stable identifier of the metric (custom_metric_definitions.slug).
        data_tests: [not_null]
      - name: metric_version
        data_type: integer
        description: Version of the metric definition these values were computed with.
        data_tests: [not_null]
      - name: grain
        data_type: text
        description: day, week (ISO, Monday start) or month.
        data_tests:
          - accepted_values:
              arguments:
                values: [day, week, month]
      - name: period_start
        data_type: date
        description: First day of the period, in the reporting time zone (var metrics_timezone).
        data_tests: [not_null]
      - name: dimensions
        data_type: jsonb
        description: Dimension values of this row as a JSON object; '{}' when the metric has no dimensions.
      - name: value
        data_type: numeric
        description: The metric's value for the period and dimensions (NULL e.g. for a RATIO with a zero denominator).
      - name: previous_value
        data_type: numeric
        description: Value of the previous period (same metric version and dimensions); NULL when it has no row.
      - name: growth_pct
        data_type: numeric
        description: >
          Growth against the previous period, like for like (docs/custom_metrics.md, Growth):
          100 * (value - previous_value) / previous_value when both periods are complete on the
          spine of the metric, else the metric recomputed over the aligned days of both periods (growth_basis);
          rounded to 4 decimals (the SQL function metricsmith.growth_pct); NULL when the baseline over
          those days is missing or 0, or there is no previous period.
      - name: computed_at
        data_type: timestamptz
        description: When the generated model computed this row.
      - name: growth_basis
        data_type: text
        description: >
          What growth_pct compares: 'full' (both periods complete), 'to_date' (this period partial:
          its first days against the same days of the previous one), 'partial_baseline' (the previous
          period partial: only the days both have), 'none' (no previous period on the spine, or no
          day in common).
        data_tests:
          - not_null
          - accepted_values:
              arguments:
                values: [full, to_date, partial_baseline, none]
      - name: growth_basis_days
        data_type: integer
        description: Number of aligned days growth_pct compares; NULL when there is no previous period.
"""
#: custom_metric_values' types on Spark (macros custom_metric_type_*; the PostgreSQL types above
#: are the published contract): the generated YAML picks them by ``target.type``
SPARK_VALUE_TYPES = {"metric_slug": "string", "metric_version": "int", "grain": "string", "dimensions": "string",
                     "value": "decimal(38,12)", "previous_value": "decimal(38,12)", "growth_pct": "decimal(38,4)",
                     "computed_at": "timestamp", "growth_basis": "string", "growth_basis_days": "int"}


def _values_model_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(VALUES_MODEL_YAML)["models"][0]
    for column in doc["columns"]:
        spark = SPARK_VALUE_TYPES.get(column["name"])
        if spark is not None:
            column["data_type"] = f"{{{{ '{spark}' if target.type == 'spark' else '{column['data_type']}' }}}}"
    return doc


VALUES_MODEL_DOC: dict[str, Any] = _values_model_doc()
#: the PostgreSQL contract of custom_metric_values, (column, data_type) in order: the table the
#: Spark engine publishes to
VALUES_CONTRACT: tuple[tuple[str, str], ...] = tuple(
    (str(c["name"]), str(c["data_type"])) for c in yaml.safe_load(VALUES_MODEL_YAML)["models"][0]["columns"])
#: the columns of every generated ``cm_*`` model, described by the docs blocks of models/docs.md
GENERATED_MODEL_COLUMNS: tuple[dict[str, str], ...] = tuple(
    {"name": column, "description": f"{{{{ doc('custom_metric_{column}') }}}}"}
    for column in ("period_start", "dimensions", "value", "source_watermark", "computed_at")
)
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


def definition(metric: CheckedMetric) -> dict[str, Any]:
    """The checked definition stored in ``metricsmith.custom_metric_models`` (read by the model by id).

    Expressions are the re-serialized validated ASTs (canonical, quoted SQL from sqlglot), never
    the text the user typed; the name, description and owner are not part of it.
    """
    spec, src = metric.spec, metric.source
    return {"source": src.name, "source_kind": src.resource_type, "source_name": src.source_name,
            "time_column": src.time_column, "change_column": src.change_column, "grain": spec.grain,
            "type": spec.type, "dimensions": list(spec.dimensions), "percentile": spec.percentile,
            "expression": metric.expression, "filter": metric.filter,
            "numerator": metric.numerator.as_dict() if metric.numerator else None,
            "denominator": metric.denominator.as_dict() if metric.denominator else None}


def _source_ref(d: dict[str, Any]) -> str:
    name = ids.name(d["source"], "data source")
    if d.get("source_kind") == "source":
        return f"source('{ids.name(d['source_name'], 'source')}', '{name}')"
    return f"ref('{name}')"


def _model_args(metric_id: int, slug: str, version: int, d: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``custom_metric`` macro's arguments as Jinja literals, every value checked again here
    (validated identifiers, enums and numbers only), so a stored definition that does not pass
    cannot reach a file that dbt renders."""
    ids.slug(slug)
    ids.version(version)
    if isinstance(metric_id, bool) or not isinstance(metric_id, int) or metric_id < 1:
        raise ids.InvalidIdentifier(f"metric id {metric_id!r} is not a positive integer")
    if d.get("grain") not in GRAINS or d.get("type") not in METRIC_TYPES:
        raise ids.InvalidIdentifier(f"stored definition of {slug} v{version} has an unknown grain or type")
    dims = [ids.name(x, "dimension") for x in d.get("dimensions") or []]
    change = d.get("change_column")
    percentile = d.get("percentile")
    if percentile is not None:
        percentile = float(percentile)
        if not 0.0 <= percentile <= 1.0:
            raise ids.InvalidIdentifier(f"stored definition of {slug} v{version} has percentile {percentile!r}")
    return [
        ("metric_id", str(metric_id)),
        ("version", str(version)),
        ("source", _source_ref(d)),
        ("time_column", f"'{ids.name(d['time_column'], 'time column')}'"),
        ("change_column", f"'{ids.name(change, 'change column')}'" if change else "none"),
        ("grain", f"'{d['grain']}'"),
        ("metric_type", f"'{d['type']}'"),
        ("dimensions", "[" + ", ".join(f"'{x}'" for x in dims) + "]"),
        ("percentile", "none" if percentile is None else repr(percentile)),
    ]


def render_model(metric_id: int, slug: str, version: int, d: dict[str, Any]) -> str:
    """The generated model file's text (deterministic).

    It holds only validated identifiers (slug, version, metric id, column and model names),
    enums and numbers (:func:`_model_args`). The expressions are read by id when dbt runs it.
    """
    args = _model_args(metric_id, slug, version, d)
    config = ["materialized='incremental'" if d.get("change_column") else "materialized='table'",
              f"tags=['{GENERATED_TAG}', 'custom_metric:{slug}']"]
    if d.get("change_column"):
        config += ["incremental_strategy='delete+insert'", "unique_key='period_start'", "on_schema_change='fail'"]
    header = (f"{{#- generated by `metricsmith metrics compile`; do not edit. Metric {slug} version {version}:\n"
              f"    its definition is read from metricsmith.custom_metric_models (metric_id {metric_id}) -#}}\n")
    body = ",\n".join(f"    {k}={v}" for k, v in args)
    return (header + "{{ config(" + ", ".join(config) + ") }}\n\n"
            + "{{ metricsmith.custom_metric(\n" + body + "\n) }}\n")


def model_description(metric_id: int, slug: str, version: int) -> str:
    """The generated YAML's description of a model: identifiers only (the name and owner stay in PostgreSQL)."""
    return (f"Custom metric {ids.slug(slug)} version {ids.version(version)} (metric_id {int(metric_id)}); its name,"
            " description and owner are in metricsmith.custom_metric_definitions. Generated; do not edit.")


def render_values_model(inputs: list[tuple[int, str, int, dict[str, Any]]]) -> str:
    """custom_metric_values (in the marts schema) over the generated models: (metric_id, slug,
    version, stored definition) each. An item carries the model's ref and, for the like-for-like
    growth over the aligned days of partial periods, the same checked identifiers as the model
    (:func:`_model_args`; the expressions are read by id when dbt runs it)."""
    items = []
    for metric_id, s, v, d in sorted(inputs, key=lambda i: (i[1], i[2])):
        args = dict(_model_args(metric_id, s, v, d))
        fields = [f"'slug': '{s}'", f"'relation': ref('{model_name(s, v)}')",
                  *(f"'{k}': {args[k]}" for k in ("metric_id", "version", "source", "time_column", "grain",
                                                  "metric_type", "dimensions", "percentile"))]
        items.append("    {" + ", ".join(fields) + "}")
    listing = "[\n" + ",\n".join(items) + "\n]" if items else "[]"
    return ("{#- generated by `metricsmith metrics compile`; do not edit. Described in _generated__models.yml -#}\n"
            "{{ config(materialized='table', tags=['metricsmith_custom_metric_values']) }}\n\n"
            "{{ metricsmith.custom_metric_values(" + listing + ") }}\n")


# -- plain SQL of the same computation, for the cost estimate (EXPLAIN; Spark's plan statistics) ----

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


def _quote(name: str, dialect: str) -> str:
    return f"`{name}`" if dialect == dialects.SPARK else f'"{name}"'


def _part_sql(part: CheckedPart, dialect: str, types: dict[str, str]) -> str:
    def r(sql: str | None, key: str) -> str | None:
        return dialects.render(sql, dialect, types, field=key) if sql else None

    return _aggregate_sql(part.type, r(part.expression, "expression"), r(part.filter, "filter"), part.percentile)


def render_sql(metric: CheckedMetric, dialect: str = "postgres", column_types: dict[str, str] | None = None) -> str:
    """A full (non-incremental) query equivalent to the generated model, in ``dialect``
    (``column_types``: the source's PostgreSQL type names, for the rendering of its expressions)."""
    spec, types = metric.spec, column_types or {}
    col = _quote(metric.source.time_column, dialect)
    period = f"cast({col} as date)" if spec.grain == "day" else \
        f"cast(date_trunc('{spec.grain}', cast({col} as timestamp)) as date)"
    pairs = ", ".join(f"'{d}', {_quote(d, dialect)}" for d in spec.dimensions)
    if dialect == dialects.SPARK:
        dims, number = (f"to_json(named_struct({pairs}))" if spec.dimensions else "'{}'"), "double"
        relation = f"`{metric.source.schema}`.`{metric.source.identifier}`"
    else:
        dims, number = (f"jsonb_build_object({pairs})" if spec.dimensions else "'{}'::jsonb"), "numeric"
        relation = metric.source.relation
    if spec.type == "RATIO":
        assert metric.numerator and metric.denominator
        value = (f"cast({_part_sql(metric.numerator, dialect, types)} as {number}) / "
                 f"nullif(cast({_part_sql(metric.denominator, dialect, types)} as {number}), 0)")
    else:
        whole = CheckedPart(spec.type, metric.expression, None, spec.percentile)
        value = f"cast({_part_sql(whole, dialect, types)} as {number})"
    filt = dialects.render(metric.filter, dialect, types, field="filter") if metric.filter else "true"
    group = ", ".join([period, *(_quote(d, dialect) for d in spec.dimensions)])
    return (f"select {period} as period_start, {dims} as dimensions, {value} as value\n"
            f"from {relation}\nwhere {filt}\ngroup by {group}")
