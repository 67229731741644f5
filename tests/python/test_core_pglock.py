"""core.pglock: the one advisory lock (real PostgreSQL; two sessions compete for it)."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import psycopg
import pytest

from metricsmith import migrate, rollups
from metricsmith.core import pglock
from metricsmith.errors import UserFacingError


def _pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def test_keys_derive_from_names_and_every_user_shares_them() -> None:
    # independent derivation: the first 8 bytes (signed) of BLAKE2b over the name
    expected = int.from_bytes(hashlib.blake2b(b"metricsmith.job:weekly-rollup", digest_size=8).digest(), "big",
                              signed=True)
    assert pglock.job_lock("weekly-rollup").key == expected  # the job keys are the ones used so far
    assert pglock.AdvisoryLock("x").key == pglock.lock_key("x")
    assert pglock.ROLLUPS.key == rollups.ROLLUP_LOCK_KEY  # rollups CLI and the jobs: one lock
    assert pglock.MIGRATIONS.key == migrate.MIGRATION_LOCK_KEY
    assert len({pglock.ROLLUPS.key, pglock.MIGRATIONS.key, pglock.job_lock("backfill").key}) == 3


def test_try_once_and_busy_error_names_lock_and_holder(test_database: str) -> None:
    lock = pglock.AdvisoryLock("metricsmith.test:busy", purpose="test run")
    with psycopg.connect(test_database, autocommit=True) as a, psycopg.connect(test_database, autocommit=True) as b:
        assert lock.acquire(a, 0)
        assert lock.holder_pid(b) == _pid(a)
        started = time.monotonic()
        assert not lock.acquire(b, 0)  # try once: no waiting
        assert time.monotonic() - started < 1.0
        with pytest.raises(pglock.LockBusy) as caught:
            lock.acquire_or_raise(b, 0.5)
        assert isinstance(caught.value, UserFacingError)  # the CLI prints it as one line
        message = str(caught.value)
        assert "another test run" in message and "'metricsmith.test:busy'" in message
        assert f"held by backend pid {_pid(a)}" in message and "waited 0 s" in message
        assert caught.value.holder_pid == _pid(a) and "\n" not in message
        lock.release(a)
        assert lock.holder_pid(b) is None
        with lock.held(b, 0):
            assert lock.holder_pid(a) == _pid(b)
        assert lock.holder_pid(a) is None


def test_bounded_wait_blocks_then_gets_the_lock_and_leaves_no_timeout(test_database: str) -> None:
    lock = pglock.AdvisoryLock("metricsmith.test:wait")
    with psycopg.connect(test_database, autocommit=True) as a, psycopg.connect(test_database, autocommit=True) as b:
        before = b.execute("select current_setting('lock_timeout')").fetchone()
        assert lock.acquire(a, 0)
        started = time.monotonic()
        assert not lock.acquire(b, 1.0)  # waits the whole second, then gives up
        assert 0.9 <= time.monotonic() - started < 5.0
        threading.Timer(1.0, lambda: lock.release(a)).start()
        started = time.monotonic()
        assert lock.acquire(b, 30)  # blocks until the holder lets go
        assert 0.9 <= time.monotonic() - started < 10.0
        assert lock.holder_pid(a) == _pid(b)
        # the wait's lock_timeout does not stay on the connection (the jobs run other statements on it)
        assert b.execute("select current_setting('lock_timeout')").fetchone() == before
        lock.release(b)


def test_unbounded_wait_and_lost_connection_releases(test_database: str) -> None:
    lock = pglock.AdvisoryLock("metricsmith.test:forever")
    with psycopg.connect(test_database, autocommit=True) as b:
        a = psycopg.connect(test_database, autocommit=True)
        assert lock.acquire(a, None)
        threading.Timer(1.0, a.close).start()  # the holder's session ends: PostgreSQL releases the lock
        started = time.monotonic()
        assert lock.acquire(b, None)
        assert time.monotonic() - started >= 0.9
        lock.release(a)  # releasing on a closed connection is a no-op, never an error
        lock.release(b)


def test_rollup_run_refused_with_the_holder(empty_events: psycopg.Connection[Any], test_database: str) -> None:
    other = psycopg.connect(test_database, autocommit=True)
    try:
        pglock.ROLLUPS.acquire_or_raise(other, 0)
        with pytest.raises(pglock.LockBusy, match=rf"another rollup run .*backend pid {_pid(other)}"):
            rollups.run_rollups(timezone="UTC", quiet=True, lock_wait_seconds=1)
    finally:
        other.close()
