"""The invalidation fence's PostgreSQL side: the records of ``metricsmith.cache_invalidations``.

Every invalidation is first inserted here (the database the rebuild wrote to), under an
advisory transaction lock so ids become visible in order. Each Redis keeps the highest record
it applied (``<prefix>cache:fence``); records it lacks are delivered to it by the first process
that sees the gap (:meth:`metricsmith.cache.core.TwoTierCache.check_fence`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from typing import Any

import psycopg

from metricsmith import db
from metricsmith.config import Settings

log = logging.getLogger(__name__)

#: serialises the inserts into metricsmith.cache_invalidations, so ids become visible in order
FENCE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"metricsmith.cache.fence").digest()[:8], "big", signed=True)
FENCE_TABLE = "metricsmith.cache_invalidations"

#: one record: (tags, patterns, keys)
Record = tuple[list[str], list[str], list[str]]


class FenceLog:
    """The fence records of one cache prefix, over one autocommit connection of this process."""

    def __init__(self, settings: Settings, root: str, prune_after: float) -> None:
        self._settings = settings
        self._root = root
        self._prune_after = prune_after
        self._pg: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        #: why PostgreSQL could not be reached for the fence last time (None once it answers again)
        self.error: str | None = None

    def _conn(self) -> psycopg.Connection[Any]:
        if self._pg is None or self._pg.closed:
            self._pg = db.connect(self._settings, autocommit=True, connect_timeout=3,
                                  options="-c statement_timeout=3000")
        return self._pg

    def _broken(self, exc: BaseException) -> None:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        if self.error is None:  # info, not warning: the read that follows reports the outage itself
            log.info("cache: PostgreSQL unreachable for the invalidation fence (%s); reads bypass the cache", reason)
        self.error = reason
        self._close()

    def _close(self) -> None:
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.close()
        self._pg = None

    def record(self, tags: list[str], patterns: list[str], keys: list[str]) -> tuple[int | None, str | None]:
        """Insert one invalidation; ``(id, None)`` or ``(None, why not)``. Prunes old records."""
        for attempt in (1, 2):
            try:
                with self._lock:
                    conn = self._conn()
                    with conn.transaction():
                        conn.execute("select pg_advisory_xact_lock(%s)", (FENCE_LOCK_KEY,))
                        row = conn.execute(
                            f"insert into {FENCE_TABLE} (prefix, tags, patterns, keys) values (%s, %s, %s, %s) "
                            "returning id", (self._root, tags, patterns, keys),
                        ).fetchone()
                        # records older than any cached value can be forgotten
                        conn.execute(f"delete from {FENCE_TABLE} where prefix = %s and "
                                     "created_at < now() - make_interval(secs => %s)", (self._root, self._prune_after))
                assert row is not None
                return int(row[0]), None
            except psycopg.errors.UndefinedTable:
                if attempt == 2:
                    return None, f"{FENCE_TABLE} does not exist"
                from metricsmith import migrate  # a database migrated before the fence existed

                migrate.upgrade(self._settings)
            except psycopg.Error as exc:
                with self._lock:
                    self._broken(exc)
                return None, f"{type(exc).__name__}: {exc}"
        return None, "unreachable"  # pragma: no cover

    def records(self, after: int, upto: int) -> list[Record]:
        """The records with ids in ``(after, upto]``, oldest first."""
        return [(r[1], r[2], r[3]) for r in self.since(after, upto)[1]]

    def since(self, after: int | None, upto: int | None = None) -> tuple[int, list[Any]]:
        """``(highest id, rows (id, tags, patterns, keys) after ``after``)``; with ``after=None``
        only the highest id. Raises :class:`psycopg.Error` when PostgreSQL is unreachable."""
        with self._lock:
            try:
                conn = self._conn()
                if after is None:
                    row = conn.execute(f"select coalesce(max(id), 0) from {FENCE_TABLE} where prefix = %s",
                                       (self._root,)).fetchone()
                    return (int(row[0]) if row else 0), []
                rows = conn.execute(
                    f"select id, tags, patterns, keys from {FENCE_TABLE} where prefix = %s and id > %s "
                    "and id <= %s order by id", (self._root, after, upto if upto is not None else 2**62),
                ).fetchall()
            except psycopg.errors.UndefinedTable:
                return 0, []  # nothing was ever recorded (the database predates the fence)
            except psycopg.Error as exc:
                self._broken(exc)
                raise
        return (int(rows[-1][0]) if rows else after), rows

    def close(self) -> None:
        with self._lock:
            self._close()
