"""The fence lease: how long this process may trust its L1 and Redis without asking PostgreSQL.

A check reads the fence records written since the last one (applied to L1), compares Redis's
fence with the latest record (records Redis lacks are delivered to it by this process), and
then trusts both tiers for ``fence_lease`` seconds from the moment the check started. A Redis
error (the circuit trips) ends the lease, so a recovered Redis is checked before it is read.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import redis

from metricsmith.cache.bus import InvalidationBus
from metricsmith.cache.circuit import Circuit
from metricsmith.cache.config import CacheConfig
from metricsmith.cache.fence import FenceLog
from metricsmith.cache.l1 import L1

log = logging.getLogger(__name__)


class FenceLease:
    def __init__(self, fence: FenceLog, bus: InvalidationBus, l1: L1, circuit: Circuit, config: CacheConfig) -> None:
        self._fence, self._bus, self._l1, self._circuit, self._config = fence, bus, l1, circuit, config
        self._lock = threading.Lock()
        #: until then (monotonic) this process trusts L1 and L2
        self.until = 0.0
        self._seen: int | None = None  # highest record applied to this process's L1
        self._retry_at = 0.0  # PostgreSQL failed: no new check before then

    @property
    def valid(self) -> bool:
        return time.monotonic() < self.until

    def expire(self) -> None:
        self.until = 0.0

    def renew(self, renew_before: float = 0.0) -> bool:
        """Check the fence unless the lease runs longer than ``renew_before``; False when it
        cannot be checked (Redis or PostgreSQL unreachable: read PostgreSQL directly)."""
        if not self._circuit.closed or time.monotonic() < self._retry_at:
            return False
        with self._lock:
            started = time.monotonic()
            if started < self.until - renew_before:
                return True
            try:
                latest, rows = self._fence.since(self._seen)
                for _id, row_tags, row_patterns, row_keys in rows:
                    self._l1.purge(row_tags, row_patterns, row_keys)
                self._seen = latest
                current = self._bus.fence_position()
                if current is None or int(current) < latest:
                    deleted = self._bus.deliver(latest, current)
                    log.info("cache: delivered recorded invalidations up to #%s to Redis (%s keys)", latest, deleted)
            except psycopg.Error:
                self._retry_at = time.monotonic() + self._config.retry_after
                return False
            except redis.RedisError as exc:
                self._circuit.trip(exc)
                return False
            self._fence.error = None
            self.until = started + self._config.fence_lease
            return True
