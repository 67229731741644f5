"""The invalidation bus: deliver an invalidation to Redis and to every process's L1.

* :meth:`InvalidationBus.invalidate` is one invalidation end to end: the fence record in
  PostgreSQL first, then this process's L1, Redis, and every other process's L1.
* :meth:`InvalidationBus.deliver` applies invalidations to Redis in one transaction: ``INCR``
  the generation (a computation that started before it cannot store its result), ``DEL`` the
  tagged / matching keys, and move the fence (never backwards) past the records delivered.
* :meth:`InvalidationBus.broadcast` publishes the purge on the channel and waits until every
  subscriber confirmed (``INCR`` of an ack counter), up to ``ack_timeout``.
* :class:`Listener` is each process's subscriber thread: it purges L1 on each message, renews
  the fence lease every ``fence_lease / 2`` and flushes the statistics.

On a Redis Cluster the channel is a sharded one (``SPUBLISH`` / ``SSUBSCRIBE``, Redis 7): it
lives in the cache's hash slot (:mod:`metricsmith.cache.keys`), so the message, the ack counters
and the generation are all on the master of that slot, every process subscribes there, and
``SPUBLISH`` returns how many processes must confirm - the ack protocol is unchanged. During a
failover the subscription breaks: the listener reports the error (the circuit opens, L1 is
emptied, the fence lease ends), re-subscribes on the new master, and the fence in PostgreSQL
delivers whatever was invalidated meanwhile - the generation guard keeps refusing stale stores.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
import redis

from metricsmith.cache import serialization
from metricsmith.cache.circuit import Circuit
from metricsmith.cache.config import CacheConfig
from metricsmith.cache.fence import FenceLog
from metricsmith.cache.l1 import L1
from metricsmith.cache.l2 import L2
from metricsmith.cache.stats import CacheStats

log = logging.getLogger(__name__)

_FENCE_LUA = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

Invalidation = tuple[Iterable[str], Iterable[str], Iterable[str]]  # tags, patterns, keys


@dataclass
class InvalidationResult:
    """What one invalidation did."""

    keys_deleted: int = 0
    tags: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    processes_notified: int = 0
    processes_confirmed: int = 0
    ok: bool = True
    error: str | None = None
    #: id of the record in metricsmith.cache_invalidations (None when PostgreSQL was unreachable)
    fence_id: int | None = None

    @property
    def fenced(self) -> bool:
        """True when the invalidation holds although Redis did not get it (recorded in PostgreSQL)."""
        return self.fence_id is not None

    def render(self) -> str:
        if not self.ok:
            return f"invalidation {'pending' if self.fenced else 'FAILED'}: {self.error}"
        what = ", ".join([*self.patterns, *(sorted(self.tags)[:6])]) or "nothing"
        more = f" (+{len(self.tags) - 6} tags)" if len(self.tags) > 6 else ""
        return (f"invalidated {self.keys_deleted} key(s) for {what}{more}; "
                f"L1 purged in {self.processes_confirmed}/{self.processes_notified} process(es)")


class InvalidationBus:
    """Invalidations end to end. :meth:`invalidate` never raises; the lower-level methods raise
    :class:`redis.RedisError` (and :class:`psycopg.Error` when the fence records cannot be read)."""

    def __init__(self, l2: L2, l1: L1, fence: FenceLog, circuit: Circuit, stats: CacheStats,
                 config: CacheConfig) -> None:
        self._l2, self._l1, self._fence, self._circuit, self._stats = l2, l1, fence, circuit, stats
        self._keys = l2.keys
        self._config = config
        self._fence_script: Any = None

    def invalidate(self, tags: list[str], patterns: list[str], keys: list[str]) -> InvalidationResult:
        """Record in the fence, purge this L1, deliver to Redis, purge every listening L1 and
        wait for the acks. Never raises on a Redis error: the result says ``ok=False`` and
        whether the invalidation is fenced (then it waits ``fence_lease`` before returning)."""
        result = InvalidationResult(tags=tags, patterns=patterns)
        self._stats.incr("invalidations")
        fence_id, pg_error = self._fence.record(tags, patterns, keys)
        result.fence_id = fence_id
        self._l1.purge(tags, patterns, keys)
        try:
            current = self.fence_position() if fence_id is not None else b"0"
            result.keys_deleted = self.deliver(fence_id, current, (tags, patterns, keys))
            result.processes_notified, result.processes_confirmed = self.broadcast(tags, patterns, keys)
        except (redis.RedisError, psycopg.Error) as exc:
            if isinstance(exc, redis.RedisError):
                self._circuit.trip(exc)
            result.ok = False
            reason = f"Redis unreachable ({type(exc).__name__}: {exc})"
            if fence_id is None:
                result.error = (f"{reason}; PostgreSQL unreachable too ({pg_error}): "
                                "cached values may be stale until their TTL")
            else:
                # every process that still trusts its cache re-checks the fence within the lease
                time.sleep(self._config.fence_lease)
                result.error = (f"{reason}; recorded as invalidation #{fence_id} in PostgreSQL: no process "
                                "serves the old values, and the first one to reach Redis again delivers it")
            return result
        self._stats.incr("keys_invalidated", result.keys_deleted)
        return result

    def fence_position(self) -> Any:
        """The highest fence record this Redis applied (None: a Redis without a fence)."""
        return self._l2.client().get(self._keys.fence)

    def deliver(self, upto: int | None, current: bytes | str | None, own: Invalidation = ((), (), ())) -> int:
        """Apply to Redis ``own`` plus every recorded invalidation this Redis has not applied
        yet (ids after its fence ``current``, up to ``upto``), in one transaction that also bumps
        the generation and moves the fence to ``upto``. A Redis without a fence (new, flushed, or
        from before the fence existed) is cleared. Returns the number of keys deleted."""
        tags, patterns, keys = self._pending(upto, current, own)
        client = self._l2.client()
        if self._fence_script is None:
            self._fence_script = client.register_script(_FENCE_LUA)
        doomed: set[bytes] = {self._keys.value(k).encode() for k in keys}
        if tags:
            pipe = client.pipeline(transaction=False)
            for tag in sorted(tags):
                pipe.smembers(self._keys.tag(tag))
            for members in pipe.execute():
                doomed.update(members)
        for pattern in sorted(patterns):
            doomed.update(client.scan_iter(match=self._keys.value(pattern), count=1000))
        # on a cluster, the MULTI/EXEC (with the fence script) goes straight to the master of the
        # cache's slot: every key in it shares that slot, and redis-py's cluster pipeline runs no scripts
        tx = client.get_redis_connection(client.get_node_from_key(self._keys.gen)) if self._l2.cluster else client
        pipe = tx.pipeline(transaction=True)
        pipe.incr(self._keys.gen)
        doomed_list = sorted(doomed)
        for start in range(0, len(doomed_list), 500):
            pipe.delete(*doomed_list[start : start + 500])
        tag_keys = [self._keys.tag(t) for t in sorted(tags)]
        for start in range(0, len(tag_keys), 500):
            pipe.delete(*tag_keys[start : start + 500])
        if upto is not None:
            self._fence_script(keys=[self._keys.fence], args=[upto], client=pipe)
        replies = pipe.execute()
        return sum(int(r) for r in replies[1 : 1 + (len(doomed_list) + 499) // 500])

    def _pending(
        self, upto: int | None, current: bytes | str | None, own: Invalidation,
    ) -> tuple[set[str], set[str], set[str]]:
        """``own`` plus the fence records after ``current`` up to ``upto`` (all: no fence)."""
        tags, patterns, keys = set(own[0]), set(own[1]), set(own[2])
        if upto is not None:
            if current is None:
                patterns.add("*")
            elif int(current) < upto:
                for row_tags, row_patterns, row_keys in self._fence.records(int(current), upto):
                    tags.update(row_tags)
                    patterns.update(row_patterns)
                    keys.update(row_keys)
        return tags, patterns, keys

    def broadcast(self, tags: list[str], patterns: list[str], keys: list[str]) -> tuple[int, int]:
        """Publish an L1 purge; ``(processes notified, processes that confirmed in time)``."""
        client = self._l2.client()
        message_id = secrets.token_hex(8)
        ack_key = self._keys.ack(message_id)
        message = serialization.dumps({"id": message_id, "tags": tags, "patterns": patterns, "keys": keys})
        publish = client.spublish if self._l2.cluster else client.publish
        notified = int(publish(self._keys.channel, message))
        deadline = time.monotonic() + self._config.ack_timeout
        while True:
            confirmed = int(client.get(ack_key) or 0)
            if confirmed >= notified or time.monotonic() >= deadline:
                return notified, confirmed
            time.sleep(0.002)

    def receive(self, data: bytes) -> None:
        """One purge message heard by this process: purge L1, then confirm (``INCR`` the ack
        counter the invalidating process waits for). A message it cannot read empties L1."""
        try:
            message = serialization.loads(data)
            self._l1.purge(message.get("tags", ()), message.get("patterns", ()), message.get("keys", ()))
        except Exception as exc:  # noqa: BLE001
            log.warning("cache: bad invalidation message dropped (%s)", exc)
            self._l1.clear()
            return
        try:
            ack_key = self._keys.ack(message["id"])
            pipe = self._l2.client().pipeline(transaction=False)
            pipe.incr(ack_key)
            pipe.expire(ack_key, 60)
            pipe.execute()
        except redis.RedisError as exc:
            self._circuit.trip(exc)


class ListenerHost(Protocol):
    """What the listener thread calls back into (the cache), through a weak reference."""

    def listener_client(self) -> Any: ...
    def on_subscribed(self) -> None: ...
    def on_message(self, data: bytes) -> None: ...
    def on_listener_error(self, exc: redis.RedisError) -> None: ...
    def check_fence(self, renew_before: float = 0.0) -> bool: ...
    def flush_stats(self) -> None: ...


class Listener:
    """The subscriber thread of one process (a daemon; it ends when its host is collected)."""

    def __init__(self, channel: str, config: CacheConfig, *, sharded: bool = False) -> None:
        self._channel, self._config, self._sharded = channel, config, sharded
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: set while subscribed (L1 is used only then); ``stop`` ends the thread
        self.subscribed, self.stop = threading.Event(), threading.Event()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def ensure_running(self, host: ListenerHost) -> None:
        if self.alive:
            return
        with self._start_lock:
            if self.alive:
                return
            self.stop.clear()
            self._thread = threading.Thread(target=self._run, args=(weakref.ref(host),), daemon=True,
                                            name="metricsmith-cache-invalidation")
            self._thread.start()

    def close(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def _run(self, ref: weakref.ReferenceType[ListenerHost]) -> None:
        """Subscribe, purge L1 on each message, renew the fence, flush stats; reconnect on errors."""
        while not self.stop.is_set():
            host = ref()
            if host is None:
                return
            client = host.listener_client()
            del host
            pubsub = None
            try:
                if client is None:
                    raise redis.ConnectionError("no client yet")
                pubsub = client.pubsub(ignore_subscribe_messages=False)
                if self._sharded:
                    pubsub.ssubscribe(self._channel)
                else:
                    pubsub.subscribe(self._channel)
                self._serve(ref, pubsub)
                return
            except (redis.RedisError, OSError, ValueError) as exc:
                host = ref()
                if host is None:
                    return
                self.subscribed.clear()
                host.on_listener_error(exc if isinstance(exc, redis.RedisError) else redis.ConnectionError(str(exc)))
                del host
                time.sleep(self._config.retry_after)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def _serve(self, ref: weakref.ReferenceType[ListenerHost], pubsub: Any) -> None:
        last_flush = time.monotonic()
        while True:
            message = pubsub.get_sharded_message(timeout=0.2) if self._sharded else pubsub.get_message(timeout=0.2)
            host = ref()
            if host is None or self.stop.is_set():
                return
            if message is not None:
                kind = message["type"]
                if kind in ("subscribe", "ssubscribe"):
                    host.on_subscribed()
                    self.subscribed.set()
                elif kind in ("message", "smessage"):
                    host.on_message(message["data"])
            if self.subscribed.is_set():
                host.check_fence(renew_before=self._config.fence_lease / 2)
            if time.monotonic() - last_flush >= self._config.stats_flush_every:
                host.flush_stats()
                last_flush = time.monotonic()
            del host
