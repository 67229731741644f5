"""The realtime apply lock: redis-py's own :class:`redis.lock.Lock` (SET NX PX + token compare-and-delete).

Each stream shard has one (:meth:`metricsmith.realtime.keys.Keys.shard_lock`; shard 0's is
:attr:`~metricsmith.realtime.keys.Keys.lock`): a consumer of the shard holds it around each batch
(Redis apply + Postgres write), so consumers of different shards apply in parallel.
Reconciliation and restore hold every shard's (:func:`every_apply_lock`, taken in shard order so
two of them never deadlock) so that Redis and Postgres are compared on a batch boundary of every
shard. Its TTL bounds how long a killed holder blocks the others.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import Any

from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from metricsmith.realtime.keys import Keys


@contextlib.contextmanager
def redis_lock(client: Any, name: str, *, ttl_ms: int, wait_s: float, sleep_s: float = 0.01,
               what: str = "the lock") -> Iterator[Lock]:
    """Hold the Redis lock ``name`` for the ``with`` block; ``TimeoutError`` when it is not free within ``wait_s``.

    The lock expires ``ttl_ms`` after it was taken even if its holder is still running (a killed
    holder must not block the others for ever); releasing an expired lock is then a no-op - it never
    deletes a lock someone else took since (the token is compared). Not realtime-specific: a
    candidate for the shared core.
    """
    lock = Lock(client, name, timeout=ttl_ms / 1000, sleep=sleep_s, blocking=True, blocking_timeout=wait_s,
                thread_local=False)
    if not lock.acquire(token=secrets.token_hex(8)):
        raise TimeoutError(f"{what} {name} is busy (not free within {wait_s:g} s)")
    try:
        yield lock
    finally:
        with contextlib.suppress(LockNotOwnedError):  # expired (TTL) and possibly taken by another holder
            lock.release()


def apply_lock(client: Any, keys: Keys, *, shard: int = 0, ttl_ms: int = 60_000, wait_s: float = 60.0,
               sleep_s: float = 0.01) -> contextlib.AbstractContextManager[Lock]:
    """The realtime apply lock of one stream shard (:meth:`Keys.shard_lock`), as :func:`redis_lock`."""
    return redis_lock(client, keys.shard_lock(shard), ttl_ms=ttl_ms, wait_s=wait_s, sleep_s=sleep_s,
                      what="the realtime apply lock")


@contextlib.contextmanager
def every_apply_lock(client: Any, keys: Keys, shards: int, *, ttl_ms: int = 60_000,
                     wait_s: float = 60.0) -> Iterator[None]:
    """The apply locks of shards ``0..shards-1``, taken in order, held together for the block."""
    with contextlib.ExitStack() as stack:
        for shard in range(shards):
            stack.enter_context(apply_lock(client, keys, shard=shard, ttl_ms=ttl_ms, wait_s=wait_s))
        yield
