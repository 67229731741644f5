"""L2: the values in Redis, shared by every process, and the cross-process compute lock.

A value is stored only if the generation did not move since the computation started
(compare-and-set in Lua), and is registered in the tag sets it belongs to. The compute lock is
redis-py's own :class:`redis.lock.Lock` (``SET NX PX`` with a random token, compare-and-delete
on release).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.lock import Lock

from metricsmith import rediscluster
from metricsmith.cache.config import CacheConfig
from metricsmith.cache.keys import CacheKeys
from metricsmith.config import Settings

_STORE_LUA = """
local gen = redis.call('GET', KEYS[2]) or '0'
if gen ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
end
return 1
"""


class L2:
    """The Redis tier. Every method may raise :class:`redis.RedisError`; the caller trips the circuit.

    ``on_connect`` runs on each :meth:`client` call (the cache starts its listener thread there).
    """

    def __init__(
        self, keys: CacheKeys, settings: Settings, config: CacheConfig, *,
        redis_url: str | None = None, on_connect: Callable[[], None] = lambda: None,
    ) -> None:
        self.keys = keys
        self._settings = settings
        self._config = config
        self._redis_url = redis_url
        self._on_connect = on_connect
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._store_script: Any = None

    @property
    def connected(self) -> Any:
        """The client if one was made, without connecting."""
        return self._client

    @property
    def cluster(self) -> bool:
        """True when the keys are hash-tagged for a Redis Cluster (the bus then uses sharded pub/sub)."""
        return self.keys.tagged

    def client(self) -> Any:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    try:
                        url = self._redis_url or rediscluster.url(self._settings)
                    except Exception as exc:  # noqa: BLE001 - e.g. the embedded server cannot start
                        raise redis.ConnectionError(f"cannot resolve the Redis server: {exc}") from exc
                    try:
                        client = rediscluster.client(
                            self._settings, redis_url=url, cluster=self.cluster,
                            socket_timeout=self._config.redis_timeout,
                            socket_connect_timeout=self._config.redis_timeout, retry_on_timeout=False,
                        )
                    except rediscluster.TRANSIENT:
                        raise
                    except Exception as exc:  # noqa: BLE001 - no cluster node answers: the circuit opens
                        raise redis.ConnectionError(f"cannot reach the Redis Cluster: {exc}") from exc
                    self._store_script = client.register_script(_STORE_LUA)
                    self._client = client
        self._on_connect()
        return self._client

    def get(self, key: str) -> Any:
        """The stored value of ``key`` (None on a miss)."""
        return self.client().get(self.keys.value(key))

    def read_for_compute(self, key: str) -> tuple[str, bytes | None]:
        """``(generation, current value)`` in one round trip, before computing ``key``."""
        pipe = self.client().pipeline(transaction=False)
        pipe.get(self.keys.gen)
        pipe.get(self.keys.value(key))
        gen_raw, current = pipe.execute()
        return (gen_raw.decode() if gen_raw else "0"), current

    def poll(self, key: str, lock: Lock) -> tuple[bytes | None, bool]:
        """``(value, whether the lock is still held)`` while another process computes ``key``."""
        pipe = self.client().pipeline(transaction=False)
        pipe.get(self.keys.value(key))
        pipe.exists(lock.name)
        raw, held = pipe.execute()
        return raw, bool(held)

    def store(self, key: str, gen: str, data: bytes, ttl: float, tags: Iterable[str]) -> bool:
        """Store unless the generation moved away from ``gen``; False when refused."""
        tag_ttl_ms = int(max(ttl, self._config.ttl_closed) * 1000) + 60_000
        stored = self._store_script(
            keys=[self.keys.value(key), self.keys.gen, *(self.keys.tag(t) for t in sorted(tags))],
            args=[gen, data, max(1, int(ttl * 1000)), tag_ttl_ms],
            client=self.client(),
        )
        return bool(stored)

    def lock(self, key: str) -> Lock:
        """The cross-process compute lock of ``key`` (not acquired yet), held at most ``lock_ms``."""
        return Lock(self.client(), self.keys.lock(key), timeout=self._config.lock_ms / 1000,
                    blocking=False, thread_local=False)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
