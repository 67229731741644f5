"""Compact value encoding: one msgpack document, dates and decimals as small extension types.

A cache entry is ``[payload, compute_seconds, expires_at]`` - the two numbers are what the
XFetch early refresh needs; there is no other envelope.
"""

from __future__ import annotations

import struct
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import msgpack

_EXT_DATE = 1
_EXT_DECIMAL = 2
_EXT_DATETIME = 3
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SerializationError(TypeError):
    """A value the cache cannot store (the message names its type)."""


def _default(obj: Any) -> msgpack.ExtType:
    if isinstance(obj, datetime):
        if obj.tzinfo is None:
            raise SerializationError("naive datetime values cannot be cached; attach a time zone")
        micros = (obj - _EPOCH) // _MICRO
        return msgpack.ExtType(_EXT_DATETIME, struct.pack(">q", micros))
    if isinstance(obj, date):
        return msgpack.ExtType(_EXT_DATE, struct.pack(">i", obj.toordinal()))
    if isinstance(obj, Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
    if isinstance(obj, tuple):
        return list(obj)
    raise SerializationError(f"cannot cache a value of type {type(obj).__name__}")


_MICRO = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - _EPOCH


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_DATE:
        return date.fromordinal(struct.unpack(">i", data)[0])
    if code == _EXT_DECIMAL:
        return Decimal(data.decode())
    if code == _EXT_DATETIME:
        return _EPOCH + struct.unpack(">q", data)[0] * _MICRO
    return msgpack.ExtType(code, data)


def dumps(value: Any) -> bytes:
    try:
        return msgpack.packb(value, default=_default, use_bin_type=True)
    except SerializationError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot cache this value: {exc}") from None


def loads(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def encode_entry(payload: Any, delta: float, expires_at: float) -> bytes:
    return dumps([payload, round(delta, 6), round(expires_at, 3)])


def decode_entry(data: bytes) -> tuple[Any, float, float]:
    payload, delta, expires_at = loads(data)
    return payload, float(delta), float(expires_at)
