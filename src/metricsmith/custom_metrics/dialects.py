"""A checked expression (PostgreSQL SQL, :mod:`validation`'s output) rendered for another engine.

There is one allow-list (:func:`validation.check_expression`, PostgreSQL dialect): what another
engine runs is that checked SQL translated by sqlglot, with the same meaning. sqlglot translates
the syntax (quoting, ``->>``, casts); three things it cannot know without the column types are
made explicit here, from the source's column types:

- integer division: PostgreSQL's ``int / int`` truncates; Spark's ``/`` is a fractional division,
  so a division of two integer operands becomes Spark's ``div`` (truncating, as PostgreSQL);
- an unconstrained ``numeric`` cast: Spark's bare ``decimal`` is ``decimal(10, 0)``; it becomes
  :data:`SPARK_NUMERIC`;
- ``extract`` fields: PostgreSQL's ``dow`` (0 = Sunday) is Spark's ``dow - 1``, ``isodow`` is
  ``dow_iso``, ``isoyear`` is ``yearofweek``; a field Spark spells differently or not at all
  (``epoch``, ``century``, ``milliseconds`` ...) is refused with a one-line error.

Nothing here widens what is accepted: the input is already checked, and the rendered SQL is
checked for template markers again.
"""

from __future__ import annotations

from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.qualify import qualify

from metricsmith.custom_metrics.errors import ExpressionError
from metricsmith.custom_metrics.validation import DIALECT, no_template_markers

SPARK = "spark"
#: PostgreSQL's unconstrained numeric on Spark (38 digits at most there)
SPARK_NUMERIC = (38, 12)
#: extract fields with the same meaning on both engines
_SAME_FIELDS = frozenset({"YEAR", "QUARTER", "MONTH", "WEEK", "DAY", "DOY", "HOUR", "MINUTE", "SECOND"})
_RENAMED_FIELDS = {"ISODOW": "DOW_ISO", "ISOYEAR": "YEAROFWEEK"}
_SOURCE = "mm__source"


def _annotated(tree: Any, column_types: dict[str, str]) -> Any:
    """``tree`` with every node typed, the columns from ``column_types`` (PostgreSQL type names)."""
    schema: dict[str, object] = {_SOURCE: {c: t or "text" for c, t in column_types.items()}}
    query = qualify(exp.select(tree).from_(_SOURCE), schema=schema, dialect=DIALECT, quote_identifiers=False,
                    expand_stars=False, validate_qualify_columns=False)
    query = annotate_types(query, schema=schema, dialect=DIALECT)
    out = query.selects[0]
    out = out.this if isinstance(out, exp.Alias) else out
    for column in out.find_all(exp.Column):
        column.set("table", None)
    return out


def _spark_node(node: Any, field: str) -> Any:
    if isinstance(node, exp.Div) and all(side.is_type(*exp.DataType.INTEGER_TYPES)
                                         for side in (node.left, node.right)):
        return exp.IntDiv(this=node.left.copy(), expression=node.right.copy())
    if isinstance(node, exp.DataType) and node.this == exp.DataType.Type.DECIMAL and not node.expressions:
        precision, scale = SPARK_NUMERIC
        return exp.DataType.build(f"decimal({precision}, {scale})")
    if isinstance(node, exp.Extract):
        name = node.this.name.upper()
        if name == "DOW":
            return exp.Paren(this=exp.Sub(this=node.copy(), expression=exp.Literal.number(1)))
        if name in _RENAMED_FIELDS:
            return exp.Extract(this=exp.var(_RENAMED_FIELDS[name]), expression=node.expression.copy())
        if name not in _SAME_FIELDS:
            raise ExpressionError(field, f"extract({name.lower()} ...) has no equivalent on the Spark engine "
                                         f"(allowed there: {', '.join(sorted(_SAME_FIELDS | {'DOW', 'ISODOW', 'ISOYEAR'})).lower()})",
                                  name.lower())
    return node


def render(sql: str, dialect: str, column_types: dict[str, str], *, field: str) -> str:
    """The checked PostgreSQL expression ``sql`` for ``dialect`` (``postgres``: unchanged)."""
    if dialect == DIALECT:
        return sql
    if dialect != SPARK:
        raise ValueError(f"no rendering of custom metrics for dialect {dialect!r}")
    tree = _annotated(sqlglot.parse_one(sql, read=DIALECT), column_types)
    tree = tree.transform(lambda node: _spark_node(node, field))
    out = tree.sql(SPARK, identify=True)
    no_template_markers(out, field)
    return out


def render_definition(definition: dict[str, Any], dialect: str, column_types: dict[str, str]) -> dict[str, Any]:
    """A stored checked definition (``custom_metric_models.definition``) with its expressions for ``dialect``."""
    out = dict(definition)
    for key in ("expression", "filter"):
        if out.get(key):
            out[key] = render(out[key], dialect, column_types, field=key)
    for part in ("numerator", "denominator"):
        if out.get(part):
            out[part] = {**out[part], **{k: render(out[part][k], dialect, column_types, field=f"{part}.{k}")
                                         for k in ("expression", "filter") if out[part].get(k)}}
    return out
