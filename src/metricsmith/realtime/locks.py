"""The realtime apply lock: redis-py's own :class:`redis.lock.Lock` (SET NX PX + token compare-and-delete).

The stream consumer holds it around each batch (Redis apply + Postgres write); reconciliation and
restore hold it so that Redis and Postgres are compared on a batch boundary. Its key is
:attr:`metricsmith.realtime.keys.Keys.lock`; its TTL bounds how long a killed holder blocks the others.
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
def apply_lock(client: Any, keys: Keys, *, ttl_ms: int = 60_000, wait_s: float = 60.0,
               sleep_s: float = 0.01) -> Iterator[Lock]:
    """Hold the apply lock for the ``with`` block; ``TimeoutError`` when it is not free within ``wait_s``.

    The lock expires ``ttl_ms`` after it was taken even if its holder is still running (a killed
    holder must not block the others for ever); releasing an expired lock is then a no-op - it never
    deletes a lock someone else took since (the token is compared).
    """
    lock = Lock(client, keys.lock, timeout=ttl_ms / 1000, sleep=sleep_s, blocking=True, blocking_timeout=wait_s,
                thread_local=False)
    if not lock.acquire(token=secrets.token_hex(8)):
        raise TimeoutError(f"the realtime apply lock {keys.lock} is busy (not free within {wait_s:g} s)")
    try:
        yield lock
    finally:
        with contextlib.suppress(LockNotOwnedError):  # expired (TTL) and possibly taken by another holder
            lock.release()
