"""Parsers of everything a request brings from outside: dates and ranges, ``fields``, ``format``,
``order``, ``dim.<name>`` filters and paging cursors. Each raises :class:`BadParameter` naming
the parameter, so bad input answers 422 with a clear message and never reaches SQL (the values
only ever filter rows in Python or travel as bound parameters)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from typing import Any

import orjson

from metricsmith.api.errors import BadParameter

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
DIM_PREFIX = "dim."
FORMATS = ("json", "csv")
CURSOR_PREFIX = "c1."
MAX_CURSOR_LENGTH = 512
#: the dates a request may name (room on both sides for a period's start, end and growth baseline)
MIN_DATE, MAX_DATE = date(1900, 1, 1), date(9998, 12, 31)


def parse_date(param: str, text: str | None) -> date | None:
    """``YYYY-MM-DD`` (None when absent or empty)."""
    if text is None or text == "":
        return None
    if not _ISO_DATE.fullmatch(text):
        raise BadParameter(param, f"{param}: {_show(text)} is not a date (YYYY-MM-DD)")
    try:
        value = date.fromisoformat(text)
    except ValueError:
        raise BadParameter(param, f"{param}: {_show(text)} is not a calendar date") from None
    if not MIN_DATE <= value <= MAX_DATE:
        raise BadParameter(param, f"{param}: {value} is outside {MIN_DATE} .. {MAX_DATE}")
    return value


def parse_range(start_text: str | None, end_text: str | None, *, today: date, default_days: int,
                max_days: int) -> tuple[date, date]:
    """``start .. end`` inclusive; ``end`` defaults to today, ``start`` to ``default_days`` before ``end``."""
    end = parse_date("end", end_text) or today
    start = parse_date("start", start_text) or max(MIN_DATE, end - timedelta(days=default_days))
    if end < start:
        raise BadParameter("end", f"end {end} is before start {start}")
    if (end - start).days + 1 > max_days:
        raise BadParameter("end", f"the range {start} .. {end} is {(end - start).days + 1} days; "
                                  f"at most {max_days} are allowed (METRICSMITH_API_MAX_RANGE_DAYS)")
    return start, end


def parse_fields(text: str | None, columns: Sequence[str], *, keep: Sequence[str] = ()) -> list[str]:
    """A comma-separated subset of ``columns`` (all when absent), in the columns' order; ``keep``
    (the period key) is always included."""
    if text is None or text.strip() == "":
        return list(columns)
    asked = [f.strip() for f in text.split(",")]
    unknown = [f for f in asked if f not in columns]
    if unknown:
        raise BadParameter("fields", f"fields: unknown field {_show(unknown[0])}; available: {', '.join(columns)}")
    wanted = set(asked) | set(keep)
    return [c for c in columns if c in wanted]


def parse_format(text: str | None, accept: str | None) -> str:
    """``json`` or ``csv``: the ``format`` parameter, else ``Accept: text/csv``, else json."""
    if text is not None and text != "":
        if text not in FORMATS:
            raise BadParameter("format", f"format: {_show(text)} is not one of {', '.join(FORMATS)}")
        return text
    if accept and "text/csv" in accept.lower():
        return "csv"
    return "json"


def parse_order(text: str | None, allowed: Sequence[str], default: str) -> tuple[str, bool]:
    """``column`` or ``-column`` (descending) among ``allowed``: ``(column, descending)``."""
    value = default if text is None or text == "" else text
    descending = value.startswith("-")
    column = value[1:] if descending else value
    if column not in allowed:
        choices = ", ".join(f"{c}, -{c}" for c in allowed)
        raise BadParameter("order", f"order: {_show(value)} is not one of {choices}")
    return column, descending


def parse_dimension_filters(items: Iterable[tuple[str, str]], dimensions: Sequence[str]) -> dict[str, str]:
    """``dim.<name>=value`` query parameters as ``{name: value}``; the name must be one of the
    metric's ``dimensions``, each at most once."""
    filters: dict[str, str] = {}
    for key, value in items:
        if not key.startswith(DIM_PREFIX):
            continue
        name = key[len(DIM_PREFIX):]
        if name not in dimensions:
            known = ", ".join(dimensions) or "none"
            raise BadParameter(key if len(key) <= 80 else key[:80],
                               f"{_show(key)}: unknown dimension {_show(name)}; this metric's dimensions: {known}")
        if name in filters:
            raise BadParameter(key, f"{key}: given more than once; one value per dimension")
        if len(value) > 200:
            raise BadParameter(key, f"{key}: value longer than 200 characters")
        filters[name] = value
    return filters


def fingerprint(*parts: Any) -> str:
    """A short digest of what a cursor was issued for (so it is refused for another query)."""
    return hashlib.sha256(orjson.dumps([str(p) for p in parts])).hexdigest()[:16]


def encode_cursor(position: int, query: str) -> str:
    """An opaque cursor: where the next page starts in the query ``query`` (its fingerprint)."""
    raw = orjson.dumps({"p": position, "q": query})
    return CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str | None, query: str) -> int:
    """The position a cursor points at (0 without one); 422 for anything this API did not issue
    for the same query."""
    if text is None or text == "":
        return 0
    bad = BadParameter("cursor", "cursor: not a cursor this endpoint issued for these parameters; "
                                 "start again without a cursor")
    if len(text) > MAX_CURSOR_LENGTH or not text.startswith(CURSOR_PREFIX):
        raise bad
    payload = text[len(CURSOR_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise bad from None
    if not isinstance(data, dict) or set(data) != {"p", "q"} or data["q"] != query:
        raise bad
    position = data["p"]
    if type(position) is not int or position < 0:
        raise bad
    return position


def _show(text: str) -> str:
    """A parameter value quoted for an error message (shortened, control characters escaped)."""
    shown = text if len(text) <= 60 else text[:57] + "..."
    return repr(shown)
