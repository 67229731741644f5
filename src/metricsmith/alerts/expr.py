"""The small languages of a rule: threshold expressions, durations and period counts.

Expression grammar (whitespace free between tokens)::

    expr     := operand OP number
    operand  := column | FUNC "(" name ["," duration] ")"
    OP       := "<" | "<=" | ">" | ">=" | "==" | "!="
    FUNC     := "rate" (needs a window) | "counter" | "gauge"

``revenue_cents_wow_pct < -20``, ``active_users < 1000``, ``rate(metricsmith_events_per_second, 60s) < 1``.
Every malformed input raises :class:`ExpressionError` (never anything else): the parser is a
regular-expression tokenizer and a fixed sequence of checks, with no recursion and no eval.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from metricsmith.alerts.errors import ExpressionError

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}
FUNCTIONS = ("rate", "counter", "gauge")
MAX_SECONDS = 366 * 86400
MAX_PERIODS = 60
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?:\d{1,7}[smhd])+")
_DURATION_PART = re.compile(r"(\d{1,7})([smhd])")
_PERIODS = re.compile(r"(\d{1,3})\s+periods?")
_TOKEN = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<op><=|>=|==|!=|<|>)|"
    r"(?P<name>[A-Za-z_][A-Za-z0-9_:.]*)|(?P<punct>[(),]))"
)
_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SERIES = re.compile(r"[A-Za-z_][A-Za-z0-9_:]{0,199}")


@dataclass(frozen=True)
class Operand:
    """A mart or custom-metric column (``function`` None) or a realtime series read."""

    name: str
    function: str | None = None
    window: int | None = None

    def __str__(self) -> str:
        if self.function is None:
            return self.name
        return f"{self.function}({self.name}{f', {self.window}s' if self.window else ''})"


@dataclass(frozen=True)
class Expr:
    operand: Operand
    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.operand} {self.op} {self.threshold:g}"


def parse_duration(text: object) -> int:
    """``90s``, ``5m``, ``2h``, ``1h30m``, ``1d`` -> seconds (0 allowed: ``0s``)."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ExpressionError(f"expected a duration like 5m or 2h, got {text!r}")
    raw = str(text).strip()
    if not _DURATION.fullmatch(raw):
        raise ExpressionError(f"{raw!r} is not a duration: use a number and a unit, e.g. 90s, 5m, 2h, 1d")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(raw))
    if seconds > MAX_SECONDS:
        raise ExpressionError(f"{raw!r} is longer than a year")
    return seconds


def parse_periods(value: object) -> int:
    """``2 periods`` (or a whole number) -> 2: how many consecutive periods must cross."""
    if isinstance(value, bool):
        raise ExpressionError(f"expected N periods, got {value!r}")
    if isinstance(value, int):
        count = value
    elif isinstance(value, str) and (m := _PERIODS.fullmatch(value.strip())):
        count = int(m.group(1))
    else:
        raise ExpressionError(f"expected a number of periods like '2 periods', got {value!r}")
    if not 1 <= count <= MAX_PERIODS:
        raise ExpressionError(f"{count} periods: use 1..{MAX_PERIODS}")
    return count


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    rest = text.rstrip()
    while pos < len(rest):
        m = _TOKEN.match(rest, pos)
        if m is None or m.end() == pos:
            ops = re.match(r"\s*([<>=!~]+)", rest[pos:])
            if ops:
                raise ExpressionError(f"unknown operator {ops.group(1)!r}: use {' '.join(OPERATORS)}")
            raise ExpressionError(f"unexpected {rest[pos:pos + 10].strip()!r} at character {pos + 1}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _number(kind: str, text: str) -> float:
    if kind != "num":
        raise ExpressionError(f"expected a number after the operator, got {text!r}")
    value = float(text)
    if not math.isfinite(value):
        raise ExpressionError(f"{text!r} is not a finite number")
    return value


def _call(function: str, args: list[tuple[str, str]]) -> Operand:
    """``rate(name, 60s)``: the tokens between the parentheses."""
    if not args or args[0][0] != "name" or not _SERIES.fullmatch(args[0][1]):
        raise ExpressionError(f"{function}() needs a realtime series name as its first argument")
    window: int | None = None
    if len(args) == 3 and args[1] == ("punct", ","):
        duration = "".join(v for _, v in args[2:])
        window = parse_duration(duration)
        if window <= 0:
            raise ExpressionError("the window must be longer than 0s")
    elif len(args) != 1:
        raise ExpressionError(f"{function}(name[, window]) takes a name and an optional window like 60s")
    if function == "rate" and window is None:
        raise ExpressionError("rate(name, window) needs a window, e.g. rate(events, 60s)")
    if function != "rate" and window is not None:
        raise ExpressionError(f"{function}(name) takes no window")
    return Operand(args[0][1], function, window)


def _window_tokens(text: str) -> str:
    """Durations like ``60s`` tokenize as number + name: glue them back inside a call."""
    return re.sub(r"(\d)\s+([smhd])\b", r"\1\2", text)


def _operand(tokens: list[tuple[str, str]]) -> tuple[Operand, list[tuple[str, str]]]:
    if not tokens or tokens[0][0] != "name":
        raise ExpressionError("an expression starts with a column or a function, e.g. active_users < 1000")
    name = tokens[0][1]
    if len(tokens) > 1 and tokens[1] == ("punct", "("):
        if name not in FUNCTIONS:
            raise ExpressionError(f"unknown function {name!r}: use {', '.join(FUNCTIONS)}")
        try:
            close = tokens.index(("punct", ")"))
        except ValueError:
            raise ExpressionError(f"{name}( is not closed with )") from None
        args = [t for t in tokens[2:close]]
        merged: list[tuple[str, str]] = []
        for kind, value in args:  # 60 s -> one duration token
            if merged and kind == "name" and merged[-1][0] == "num":
                merged[-1] = ("dur", merged[-1][1] + value)
            else:
                merged.append((kind, value))
        return _call(name, merged), tokens[close + 1:]
    if not _IDENT.fullmatch(name):
        raise ExpressionError(f"{name!r} is not a column name (lowercase letters, digits, _)")
    return Operand(name), tokens[1:]


def parse_expr(text: object) -> Expr:
    """Parse a threshold expression; :class:`ExpressionError` for anything malformed."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(f"expected an expression like 'active_users < 1000', got {text!r}")
    if len(text) > 500:
        raise ExpressionError("the expression is longer than 500 characters")
    operand, rest = _operand(_tokens(_window_tokens(text)))
    if not rest or rest[0][0] != "op":
        raise ExpressionError(f"expected an operator ({' '.join(OPERATORS)}) after {operand}")
    if len(rest) != 2:
        raise ExpressionError(f"expected one number after {rest[0][1]!r}")
    return Expr(operand, rest[0][1], _number(*rest[1]))
