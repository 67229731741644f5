"""Stream shards: which stream an event goes to, and the one shard count every process agrees on.

``METRICSMITH_STREAM_SHARDS=N`` (default 1) spreads ``track()`` over N streams (each with its own
consumer group and apply lock). The shard of an event is a stable hash of its ``event_id``
(CRC-32, the same in every process and Python version), so a re-sent event always lands on the
shard of its first copy, and de-duplication stays exact: within a shard by the consumer, across
shards because no event_id is ever in two of them.

The count the streams were written with is recorded in Redis (:attr:`Keys.shards`; absent means
1, the layout before shards). A process configured with another count may change it only while
every stream of the recorded count is empty (no unread and no pending entries); otherwise it is
refused with :class:`ShardCountError`, whose message says how to drain. Producers and consumers
check at start and then at most every :data:`RECHECK_S` seconds.
"""

from __future__ import annotations

import threading
import time
import zlib
from typing import Any

import orjson

from metricsmith.errors import UserFacingError
from metricsmith.realtime.keys import Keys

#: seconds a process trusts the shard count it verified
RECHECK_S = 5.0


class ShardCountError(UserFacingError):
    """The configured shard count differs from the streams' and they still hold entries."""


def shard_of(event_id: str, shards: int) -> int:
    """The shard (0..shards-1) of an event_id: CRC-32 of its text, modulo the shard count."""
    if shards <= 1:
        return 0
    return zlib.crc32(event_id.strip().lower().encode()) % shards


def event_id_of(payload: bytes) -> str:
    """The event_id inside a raw payload ("" when it has none or is not a JSON object)."""
    try:
        record = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""
    value = record.get("event_id") if isinstance(record, dict) else None
    return value if isinstance(value, str) else ""


def shard_for_payload(event_id: str, payload: bytes, shards: int) -> int:
    """The shard of a payload: by event_id, or (no event_id) by the payload's own bytes."""
    if shards <= 1:
        return 0
    key = event_id or event_id_of(payload)
    return shard_of(key, shards) if key else zlib.crc32(payload) % shards


def parse_shards(text: str, count: int) -> list[int]:
    """``"0-3"``, ``"1,3"`` or ``"2"`` -> shard numbers, each within ``0..count-1`` (ValueError otherwise)."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"{text!r}: use shard numbers and ranges such as 0-3 or 0,2")
        first, last = int(low), int(high) if sep else int(low)
        if first > last:
            raise ValueError(f"{part!r}: a range goes upwards (e.g. 0-3)")
        out.extend(range(first, last + 1))
    if not out:
        raise ValueError(f"{text!r} names no shard")
    outside = sorted({s for s in out if s >= count})
    if outside:
        raise ValueError(f"shard(s) {', '.join(map(str, outside))} do not exist: METRICSMITH_STREAM_SHARDS is "
                         f"{count} (shards 0-{count - 1})")
    return sorted(set(out))


def stored_count(client: Any, keys: Keys) -> int:
    """The shard count recorded in Redis (1 when none was recorded)."""
    raw = client.get(keys.shards)
    return int(raw) if raw is not None else 1


def backlog(client: Any, keys: Keys, shards: int) -> dict[int, tuple[int, int]]:
    """``{shard: (entries in its stream, pending in its group)}`` for the shards holding any."""
    out: dict[int, tuple[int, int]] = {}
    for shard in range(shards):
        stream = keys.stream_shard(shard)
        length = int(client.xlen(stream))
        pending = 0
        for group in client.xinfo_groups(stream) if client.exists(stream) else ():
            pending += int(group.get("pending", 0))
        if length or pending:
            out[shard] = (length, pending)
    return out


def ensure_count(client: Any, keys: Keys, wanted: int) -> None:
    """Make Redis record ``wanted`` shards, or raise :class:`ShardCountError` when the streams of the
    recorded count still hold entries (the message says how to drain them)."""
    current = stored_count(client, keys)
    if current == wanted:
        if client.get(keys.shards) is None and wanted != 1:
            client.set(keys.shards, wanted, nx=True)
        return
    busy = backlog(client, keys, current)
    if busy:
        detail = ", ".join(f"shard {s}: {n:,} entries ({p:,} pending)" for s, (n, p) in sorted(busy.items()))
        raise ShardCountError(
            f"METRICSMITH_STREAM_SHARDS={wanted}, but the stream is split in {current} shard(s) that still hold "
            f"entries ({detail}); changing the shard count now could leave them unread. Drain them first: stop "
            f"the producers, run `METRICSMITH_STREAM_SHARDS={current} metricsmith realtime consume --shards "
            f"0-{current - 1} --until-idle`, then start again with METRICSMITH_STREAM_SHARDS={wanted}")
    client.set(keys.shards, wanted)


class ShardGuard:
    """One process's verified shard count: :meth:`check` calls :func:`ensure_count` at most every
    :data:`RECHECK_S` seconds."""

    def __init__(self, keys: Keys, wanted: int) -> None:
        self.keys, self.wanted = keys, wanted
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def check(self, client: Any) -> None:
        now = time.monotonic()
        if now - self._checked < RECHECK_S:
            return
        with self._lock:
            ensure_count(client, self.keys, self.wanted)
            self._checked = now
