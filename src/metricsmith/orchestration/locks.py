"""Postgres advisory locks: one run of a job at a time per database, bounded waiting."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import psycopg


def job_lock_key(job_name: str) -> int:
    """A stable signed 64-bit key for ``job_name`` (namespaced, so it cannot meet other locks)."""
    digest = hashlib.blake2b(f"metricsmith.job:{job_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def try_lock(conn: psycopg.Connection[Any], key: int, wait_seconds: float, poll_seconds: float = 0.25) -> bool:
    """Take the session advisory lock ``key``, waiting at most ``wait_seconds``; False if still held."""
    deadline = time.monotonic() + max(0.0, wait_seconds)
    while True:
        row = conn.execute("select pg_try_advisory_lock(%s)", (key,)).fetchone()
        if row and row[0]:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))


def unlock(conn: psycopg.Connection[Any], key: int) -> None:
    if not conn.closed:
        conn.execute("select pg_advisory_unlock(%s)", (key,))


def holder_pid(conn: psycopg.Connection[Any], key: int) -> int | None:
    """The backend pid holding advisory lock ``key`` (for the 'another run is working' message)."""
    hi, lo = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    row = conn.execute(
        "select pid from pg_locks where locktype = 'advisory' and granted and database = "
        "(select oid from pg_database where datname = current_database()) "
        "and classid::bigint = %s and objid::bigint = %s and objsubid = 1 limit 1",
        (hi, lo),
    ).fetchone()
    return int(row[0]) if row else None
