"""Responses serialized with orjson: dataclasses, dates and datetimes natively, Decimal as a number."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse

from metricsmith import csvtext

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and abs(value) < 2**53 else float(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=_OPTIONS)


class JSONResponse(StarletteJSONResponse):
    """A JSON response rendered by orjson (the default response class of the app)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


def csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows as CSV (header line first); Decimals and dates as their plain text, None as empty."""
    return csvtext.csv_text(rows, columns, _cell)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return dumps(value).decode()
    return str(value)


def etag(body: bytes) -> str:
    """A strong ETag: the SHA-256 of the exact body bytes (quoted)."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
