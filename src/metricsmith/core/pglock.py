"""One PostgreSQL advisory lock: key derived from a name, session-level, one waiting policy.

``AdvisoryLock("metricsmith.rollups")`` names a lock; its key is the first 8 bytes (signed)
of the BLAKE2b digest of the name, so every process and every tool derives the same key.
The lock is session-level: it survives the transactions of the connection holding it and is
released by :meth:`AdvisoryLock.release` or when the connection ends (a killed process never
leaves it behind).

Waiting (``wait_seconds``):

- ``None``: block until the lock is free;
- ``0`` (or less): try once;
- ``> 0``: block at most that long (server-side, with ``lock_timeout``: waiters are served
  in order, no polling).

When the lock stays taken, :class:`LockBusy` names the lock, the backend pid holding it (when
PostgreSQL still shows it) and how long this caller waited. Use an autocommit connection.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from metricsmith.errors import UserFacingError

_HOLDER_SQL = (
    "select pid from pg_locks where locktype = 'advisory' and granted and database = "
    "(select oid from pg_database where datname = current_database()) "
    "and classid::bigint = %s and objid::bigint = %s and objsubid = 1 limit 1"
)


def lock_key(name: str) -> int:
    """The signed 64-bit advisory lock key of ``name`` (stable across processes and versions)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class LockBusy(UserFacingError):
    """The lock stayed taken by someone else for as long as the caller was willing to wait."""

    def __init__(self, lock: AdvisoryLock, waited: float, holder_pid: int | None) -> None:
        held = f"held by backend pid {holder_pid}" if holder_pid is not None else "holder not visible"
        super().__init__(f"another {lock.purpose} is still working on this database "
                         f"(lock {lock.name!r}, {held}; waited {waited:.0f} s); try again later")
        self.lock = lock
        self.waited = waited
        self.holder_pid = holder_pid


@dataclass(frozen=True)
class AdvisoryLock:
    """A named session-level advisory lock; ``purpose`` words the :class:`LockBusy` message."""

    name: str
    purpose: str = "run"

    @property
    def key(self) -> int:
        return lock_key(self.name)

    def acquire(self, conn: psycopg.Connection[Any], wait_seconds: float | None) -> bool:
        """Take the lock on ``conn``; False when it was still taken after ``wait_seconds``."""
        if wait_seconds is not None and wait_seconds <= 0:
            row = conn.execute("select pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            return bool(row and row[0])
        if wait_seconds is None:
            conn.execute("select pg_advisory_lock(%s)", (self.key,))
            return True
        try:
            with conn.transaction():  # set local: the timeout ends with this statement's transaction
                conn.execute("select set_config('lock_timeout', %s, true)", (f"{max(1, int(wait_seconds * 1000))}ms",))
                conn.execute("select pg_advisory_lock(%s)", (self.key,))
        except psycopg.errors.LockNotAvailable:
            return False
        return True

    def release(self, conn: psycopg.Connection[Any]) -> None:
        """Release the lock if ``conn`` is still usable (a lost connection released it already)."""
        if not conn.closed and not conn.broken:
            with contextlib.suppress(psycopg.Error):
                conn.execute("select pg_advisory_unlock(%s)", (self.key,))

    def holder_pid(self, conn: psycopg.Connection[Any]) -> int | None:
        """The backend pid holding the lock, or None when nobody (visible) holds it."""
        key = self.key
        row = conn.execute(_HOLDER_SQL, ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)).fetchone()
        return int(row[0]) if row else None

    def acquire_or_raise(self, conn: psycopg.Connection[Any], wait_seconds: float | None) -> None:
        """:meth:`acquire`, raising :class:`LockBusy` (with the holder) when it stays taken."""
        if not self.acquire(conn, wait_seconds):
            raise LockBusy(self, wait_seconds or 0.0, self.holder_pid(conn))

    @contextlib.contextmanager
    def held(self, conn: psycopg.Connection[Any], wait_seconds: float | None) -> Iterator[None]:
        """Hold the lock on ``conn`` for the ``with`` block (:class:`LockBusy` if it stays taken)."""
        self.acquire_or_raise(conn, wait_seconds)
        try:
            yield
        finally:
            self.release(conn)


def job_lock(job_name: str) -> AdvisoryLock:
    """The lock of job ``job_name``: one run of a job at a time per database."""
    return AdvisoryLock(f"metricsmith.job:{job_name}", purpose=f"run of {job_name}")


#: held for the duration of every rollup dbt run (CLI, flows and Python callers alike)
ROLLUPS = AdvisoryLock("metricsmith.rollups", purpose="rollup run")
#: held while migrations are applied (a concurrent run waits, then finds nothing left to do)
MIGRATIONS = AdvisoryLock("metricsmith.migrations", purpose="migration run")
