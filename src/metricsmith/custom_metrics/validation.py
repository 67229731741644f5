"""Expression validation with a real SQL parser (sqlglot, Postgres dialect).

An ``expression`` or ``filter`` is one SQL scalar expression over the data source's columns.
Allowed: column references, literals, arithmetic, comparisons, boolean logic, CASE, and an
allow-list of functions and casts. Everything else — subqueries, several statements,
comments, unknown or system functions, qualified / unknown columns, unsafe casts — is refused
with an :class:`ExpressionError` naming the offending token. Validation only parses: nothing
is executed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from metricsmith.custom_metrics.errors import ExpressionError

DIALECT = "postgres"
MAX_EXPRESSION_LENGTH = 2000
#: Jinja delimiters: refused in the text given and in the SQL re-serialized from it
TEMPLATE_MARKERS = ("{{", "}}", "{%", "%}", "{#", "#}")

#: type categories of columns (from the manifest / catalog) and of expressions
NUMERIC, TEXT, BOOLEAN, DATE, TIMESTAMP, JSON, UUID, UNKNOWN = (
    "numeric", "text", "boolean", "date", "timestamp", "json", "uuid", "unknown")

_PG_TYPE_CATEGORY = {
    "smallint": NUMERIC, "integer": NUMERIC, "int": NUMERIC, "int2": NUMERIC, "int4": NUMERIC,
    "int8": NUMERIC, "bigint": NUMERIC, "numeric": NUMERIC, "decimal": NUMERIC, "real": NUMERIC,
    "double precision": NUMERIC, "float": NUMERIC, "float4": NUMERIC, "float8": NUMERIC,
    "text": TEXT, "character varying": TEXT, "varchar": TEXT, "character": TEXT, "char": TEXT,
    "boolean": BOOLEAN, "bool": BOOLEAN, "date": DATE,
    "timestamp with time zone": TIMESTAMP, "timestamptz": TIMESTAMP,
    "timestamp without time zone": TIMESTAMP, "timestamp": TIMESTAMP,
    "jsonb": JSON, "json": JSON, "uuid": UUID,
}


def type_category(data_type: str | None) -> str:
    if not data_type:
        return UNKNOWN
    base = data_type.lower().split("(")[0].strip()
    return _PG_TYPE_CATEGORY.get(base, UNKNOWN)


#: casts allowed, by sqlglot DataType.Type name -> result category
_SAFE_CASTS = {
    "SMALLINT": NUMERIC, "INT": NUMERIC, "BIGINT": NUMERIC, "DECIMAL": NUMERIC, "DOUBLE": NUMERIC,
    "FLOAT": NUMERIC, "TEXT": TEXT, "VARCHAR": TEXT, "BOOLEAN": BOOLEAN, "DATE": DATE,
    "TIMESTAMPTZ": TIMESTAMP, "TIMESTAMP": TIMESTAMP,
}

_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)
_COMPARISON = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ, exp.NullSafeNEQ)
_LOGIC = (exp.And, exp.Or)
_PATTERN = (exp.Like, exp.ILike)
#: allowed functions -> result category (None: same as first argument)
_FUNCTIONS: dict[type[exp.Expression], str | None] = {
    exp.Coalesce: None, exp.Nullif: None, exp.Greatest: None, exp.Least: None,
    exp.Abs: NUMERIC, exp.Round: NUMERIC, exp.Floor: NUMERIC, exp.Ceil: NUMERIC,
    exp.Lower: TEXT, exp.Upper: TEXT, exp.Length: NUMERIC, exp.Trim: TEXT,
    exp.Extract: NUMERIC, exp.JSONExtractScalar: TEXT,
}
_STRUCTURAL = (exp.Identifier, exp.DataType, exp.Var, exp.JSONPath, exp.JSONPathRoot, exp.JSONPathKey)


@dataclass(frozen=True)
class CheckedExpression:
    """A validated expression: its canonical, quoted SQL and its type category."""

    sql: str
    category: str
    columns: tuple[str, ...]


def _token_text(node: Any) -> str:
    try:
        text = node.sql(DIALECT)
    except Exception:  # noqa: BLE001 - only for the message
        text = type(node).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _check_text(text: Any, field: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(field, "must be a non-empty SQL expression")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(field, f"is longer than {MAX_EXPRESSION_LENGTH} characters")
    no_template_markers(text, field)
    if "\x00" in text:
        raise ExpressionError(field, "NUL characters are not allowed", "\\x00")


def no_template_markers(text: str, field: str) -> None:
    for marker in TEMPLATE_MARKERS:
        if marker in text:
            raise ExpressionError(field, "template markers are not allowed", marker)


def _check_tokens(text: str, field: str) -> None:
    try:
        tokens = sqlglot.Dialect.get_or_raise(DIALECT).tokenize(text)
    except (TokenError, ValueError) as exc:
        raise ExpressionError(field, f"cannot be tokenized: {exc}") from None
    for token in tokens:
        if token.comments:
            raise ExpressionError(field, "comments are not allowed", f"/* {token.comments[0].strip()} */")
        if token.token_type == TokenType.SEMICOLON:
            raise ExpressionError(field, "only one expression is allowed, no statement separators", ";")


def _parse_one(text: str, field: str) -> Any:
    try:
        trees = sqlglot.parse(text, read=DIALECT)
    except (ParseError, TokenError) as exc:
        raise ExpressionError(field, f"is not a valid SQL expression: {str(exc).splitlines()[0]}") from None
    if len(trees) != 1 or trees[0] is None:
        raise ExpressionError(field, "must be exactly one expression", ";")
    tree = trees[0]
    if isinstance(tree, (exp.Query, exp.DML, exp.DDL, exp.Command)) or not isinstance(tree, exp.Expression):
        raise ExpressionError(field, "statements are not allowed; give a scalar expression", _token_text(tree))
    return tree


def _check_category(tree: Any, category: str, want: str | None, field: str) -> None:
    if want == BOOLEAN and category not in (BOOLEAN, UNKNOWN):
        raise ExpressionError(field, f"a filter must be a boolean condition, this is {category}", _token_text(tree))
    if want == NUMERIC and category not in (NUMERIC, UNKNOWN):
        raise ExpressionError(field, f"must be numeric for this metric type, this is {category}", _token_text(tree))


def check_expression(text: str, columns: dict[str, str], *, field: str,
                     want: str | None = None) -> CheckedExpression:
    """Validate ``text`` over ``columns`` (name -> type category); return canonical SQL.

    ``want``: ``"boolean"`` for filters, ``"numeric"`` for SUM / AVERAGE / PERCENTILE
    expressions, ``None`` for anything.
    """
    _check_text(text, field)
    _check_tokens(text, field)
    tree = _parse_one(text, field)
    used: list[str] = []
    category = _infer(tree, columns, field, used)
    _check_category(tree, category, want, field)
    sql = tree.sql(DIALECT, identify=True)
    # what is stored and run is this re-serialized AST, never ``text``; it too must be template-free
    no_template_markers(sql, field)
    return CheckedExpression(sql=sql, category=category, columns=tuple(dict.fromkeys(used)))


def _need(node: Any, got: str, allowed: tuple[str, ...], field: str) -> None:
    if got not in allowed and got != UNKNOWN:
        raise ExpressionError(field, f"operand of type {got} not allowed here (expected {' or '.join(allowed)})",
                              _token_text(node))


def _operands(node: Any, kind: str, columns: dict[str, str], field: str, used: list[str]) -> str:
    """Both sides of a binary operator must be of ``kind``, and so is the result."""
    for side in (node.left, node.right):
        _need(side, _infer(side, columns, field, used), (kind,), field)
    return kind


def _column(node: Any, columns: dict[str, str], field: str, used: list[str]) -> str:
    if node.table or node.args.get("db") or node.args.get("catalog"):
        raise ExpressionError(field, "qualified column references are not allowed", _token_text(node))
    if isinstance(node.this, exp.Star):
        raise ExpressionError(field, "* is not allowed", "*")
    name = node.name
    if name not in columns:
        known = ", ".join(sorted(columns))
        raise ExpressionError(field, f"unknown column (the source has: {known})", name)
    used.append(name)
    return columns[name]


def _subquery(node: Any, columns: dict[str, str], field: str, used: list[str]) -> str:
    raise ExpressionError(field, "subqueries are not allowed", _token_text(node))


def _neg(node: Any, columns: dict[str, str], field: str, used: list[str]) -> str:
    _need(node.this, _infer(node.this, columns, field, used), (NUMERIC,), field)
    return NUMERIC


def _concat(node: Any, columns: dict[str, str], field: str, used: list[str]) -> str:
    for side in (node.left, node.right):
        _infer(side, columns, field, used)
    return TEXT


def _comparison(node: Any, columns: dict[str, str], field: str, used: list[str]) -> str:
    left = _infer(node.left, columns, field, used)
    right = _infer(node.right, columns, field, used)
    if UNKNOWN not in (left, right) and left != right and {left, right} != {DATE, TIMESTAMP}:
        raise ExpressionError(field, f"cannot compare {left} with {right}", _token_text(node))
    return BOOLEAN


def _not(node: Any, columns: dict[str, str], field: str, used: list[str]) -> str:
    _need(node.this, _infer(node.this, columns, field, used), (BOOLEAN,), field)
    return BOOLEAN


def _is(node: Any, columns: dict[str, str], field: str, used: list[str]) -> str:
    _infer(node.this, columns, field, used)
    if not isinstance(node.expression, (exp.Null, exp.Boolean)):
        raise ExpressionError(field, "IS takes only NULL, TRUE or FALSE", _token_text(node.expression))
    return BOOLEAN


def _in(node: Any, columns: dict[str, str], field: str, used: list[str]) -> str:
    if node.args.get("query") or node.args.get("unnest") or node.args.get("field"):
        raise ExpressionError(field, "IN takes a list of literals, not a subquery", _token_text(node))
    _infer(node.this, columns, field, used)
    for item in node.expressions:
        if not isinstance(item, (exp.Literal, exp.Null, exp.Boolean, exp.Neg)):
            raise ExpressionError(field, "IN lists may hold only literals", _token_text(item))
    return BOOLEAN


def _between(node: Any, columns: dict[str, str], field: str, used: list[str]) -> str:
    for part in (node.this, node.args["low"], node.args["high"]):
        _infer(part, columns, field, used)
    return BOOLEAN


def _pattern(node: Any, columns: dict[str, str], field: str, used: list[str]) -> str:
    _need(node.this, _infer(node.this, columns, field, used), (TEXT,), field)
    if not isinstance(node.expression, exp.Literal) or not node.expression.is_string:
        raise ExpressionError(field, "LIKE patterns must be string literals", _token_text(node.expression))
    return BOOLEAN


def _case(node: Any, columns: dict[str, str], field: str, used: list[str]) -> str:
    if node.this is not None:
        _infer(node.this, columns, field, used)
    results: list[str] = []
    for branch in node.args.get("ifs") or []:
        _need(branch.this, _infer(branch.this, columns, field, used), (BOOLEAN,), field)
        results.append(_infer(branch.args["true"], columns, field, used))
    default = node.args.get("default")
    if default is not None:
        results.append(_infer(default, columns, field, used))
    return next((r for r in results if r != UNKNOWN), UNKNOWN)


def _cast(node: Any, columns: dict[str, str], field: str, used: list[str]) -> str:
    if isinstance(node, exp.TryCast) or not isinstance(node.to, exp.DataType):
        raise ExpressionError(field, "cast to this type is not allowed", _token_text(node.to))
    target = node.to.this.name if hasattr(node.to.this, "name") else str(node.to.this)
    if target not in _SAFE_CASTS or node.to.expressions and target not in ("DECIMAL", "VARCHAR"):
        raise ExpressionError(field, f"cast to {node.to.sql(DIALECT)} is not allowed "
                                     f"(allowed: {', '.join(sorted(_SAFE_CASTS))})", node.to.sql(DIALECT))
    _infer(node.this, columns, field, used)
    return _SAFE_CASTS[target]


def _function(node: Any, returns: str | None, columns: dict[str, str], field: str, used: list[str]) -> str:
    first: str | None = None
    for child in node.iter_expressions():
        if isinstance(child, _STRUCTURAL):
            continue
        got = _infer(child, columns, field, used)
        first = first or got
    if isinstance(node, exp.JSONExtractScalar):
        _need(node.this, columns.get(node.this.name, UNKNOWN) if isinstance(node.this, exp.Column)
              else UNKNOWN, (JSON,), field)
    return returns if returns is not None else (first or UNKNOWN)


def _refused(node: Any, field: str) -> ExpressionError:
    if isinstance(node, (exp.Anonymous, exp.Func)):
        name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
        return ExpressionError(field, "function is not in the allow-list "
                                      "(allowed: coalesce, nullif, greatest, least, abs, round, floor, ceil, "
                                      "lower, upper, length, trim, extract/date_part, ->>)", name.lower())
    return ExpressionError(field, f"{type(node).__name__} is not allowed", _token_text(node))


Handler = Callable[[Any, dict[str, str], str, list[str]], str]

#: node kinds in the order they are tried (first match decides); anything else is refused
_HANDLERS: tuple[tuple[type | tuple[type, ...], Handler], ...] = (
    ((exp.Subquery, exp.Query, exp.Exists), _subquery),
    (exp.Paren, lambda node, columns, field, used: _infer(node.this, columns, field, used)),
    (exp.Column, _column),
    (exp.Literal, lambda node, *_: TEXT if node.is_string else NUMERIC),
    (exp.Boolean, lambda *_: BOOLEAN),
    (exp.Null, lambda *_: UNKNOWN),
    (exp.Neg, _neg),
    (_ARITHMETIC, lambda node, columns, field, used: _operands(node, NUMERIC, columns, field, used)),
    (exp.DPipe, _concat),
    (_COMPARISON, _comparison),
    (_LOGIC, lambda node, columns, field, used: _operands(node, BOOLEAN, columns, field, used)),
    (exp.Not, _not),
    (exp.Is, _is),
    (exp.In, _in),
    (exp.Between, _between),
    (_PATTERN, _pattern),
    (exp.Case, _case),
    (exp.Cast, _cast),
)


def _infer(node: Any, columns: dict[str, str], field: str, used: list[str]) -> str:
    """The type category of ``node``; raises :class:`ExpressionError` for anything not allowed."""
    for kinds, handler in _HANDLERS:
        if isinstance(node, kinds):
            return handler(node, columns, field, used)
    for cls, returns in _FUNCTIONS.items():
        if type(node) is cls:
            return _function(node, returns, columns, field, used)
    if isinstance(node, _STRUCTURAL):
        return UNKNOWN
    raise _refused(node, field)
