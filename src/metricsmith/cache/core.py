"""The two-tier cache: L1 in this process (bounded LRU with per-entry TTL) in front of L2 Redis.

:class:`TwoTierCache` only composes the parts; each lives in its own module:

==================  =================================================================
``keys``            the Redis key layout (every name under ``<prefix>cache:``)
``entry``           a cached value (payload, compute time, expiry, tags) and XFetch
``l1``              this process's LRU with per-entry TTL and the purge epoch
``l2``              Redis values, the generation compare-and-set, the compute lock
``singleflight``    one computation per key inside this process
``circuit``         the Redis circuit breaker (fail-open)
``fence``           the PostgreSQL record of every invalidation
``bus``             one invalidation end to end: fence record, Redis, every L1 (pub/sub + acks)
``lease``           how long this process trusts L1 and Redis before re-checking the fence
``stats``           counters and latency histograms, local and fleet-wide
==================  =================================================================

Reads: L1 -> L2 -> compute (PostgreSQL). Guarantees:

* **Single computation per key**: concurrent misses in one process wait for one leader
  (single-flight); across processes a short Redis lock (redis-py's ``Lock``) lets one compute
  while the others poll L2 for its result.
* **Early refresh** (XFetch, Vattani et al.): a hit recomputes with probability rising as the
  expiry nears, weighted by how long the value took to compute, so hot keys never expire under
  load. Only one caller refreshes; the others keep getting the current value.
* **No stale value after an invalidation**: invalidation bumps a generation counter in Redis
  before deleting keys; a computation that started before it refuses to store its result
  (compare-and-set in Lua). A pub/sub broadcast purges every process's L1, and ``invalidate``
  waits until every live subscriber confirmed (ack counter) before it returns.
* **Fenced in PostgreSQL**: every invalidation is first recorded in
  ``metricsmith.cache_invalidations`` (the database the rebuild wrote to); each Redis server
  keeps in ``<prefix>cache:fence`` the highest record it has applied. A process trusts its L1
  and Redis only for ``fence_lease`` seconds after checking that no record is missing from
  Redis (it applies new records to its L1 and delivers missing ones to Redis itself), so an
  invalidation that could not reach Redis (a hang, an outage) is retried by the first process
  that reaches Redis again, and no reader serves a value older than the last rebuild.
* **Fail-open**: any Redis error opens a circuit for ``retry_after`` seconds: reads go straight
  to PostgreSQL, L1 is bypassed and emptied (it can no longer hear invalidations), nothing raises
  to the caller, and :meth:`TwoTierCache.health` reports ``degraded``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from metricsmith import rediscluster
from metricsmith.cache import serialization
from metricsmith.cache.bus import InvalidationBus, InvalidationResult, Listener
from metricsmith.cache.circuit import Circuit
from metricsmith.cache.config import CacheConfig, load_cache_config
from metricsmith.cache.entry import Entry, TagSource, resolve_tags, utc_now
from metricsmith.cache.fence import FenceLog
from metricsmith.cache.keys import CacheKeys
from metricsmith.cache.l1 import L1
from metricsmith.cache.l2 import L2
from metricsmith.cache.lease import FenceLease
from metricsmith.cache.singleflight import SingleFlight
from metricsmith.cache.stats import CacheStats, StatsSnapshot, prometheus_families, snapshot_from_hash
from metricsmith.config import Settings, load_settings

__all__ = ["InvalidationResult", "TwoTierCache", "cache_metric_families", "get_cache"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Loader = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class _Miss:
    """A read that found no fresh value: what computing and storing it needs. ``stale`` is the
    value found when it is only due for an early refresh (served while another refreshes)."""

    key: str
    compute: Callable[[], Any]
    ttl: float
    tags: frozenset[str]
    loader: Loader
    started: float
    stale: Entry | None = None


def _weakly(owner: object, method: str) -> Callable[[], None]:
    """``owner.method()`` through a weak reference (a no-op once ``owner`` is gone)."""
    ref = weakref.ref(owner)

    def call() -> None:
        target = ref()
        if target is not None:
            getattr(target, method)()

    return call


class TwoTierCache:
    """L1 (this process) + L2 (Redis) cache; see the module docstring for the guarantees."""

    def __init__(
        self,
        settings: Settings | None = None,
        config: CacheConfig | None = None,
        *,
        redis_url: str | None = None,
        start_listener: bool = True,
    ) -> None:
        self.settings = settings or load_settings()
        self.config = cfg = config or load_cache_config()
        # an explicit URL decides by its scheme; otherwise the settings say whether Redis is a cluster
        tagged = rediscluster.is_cluster_url(redis_url) if redis_url else self.settings.redis_cluster
        self.keys = CacheKeys(self.settings.redis_prefix, tagged=tagged)
        self.root = self.keys.root
        self.channel = self.keys.channel
        self.stats = CacheStats()
        self.l1 = L1(cfg.l1_maxsize)
        # the parts call back through weak references, so a dropped cache is freed (and its
        # listener thread ends) at once, as without the parts
        self.l2 = L2(self.keys, self.settings, cfg, redis_url=redis_url, on_connect=_weakly(self, "_ensure_listening"))
        self.circuit = Circuit(cfg.retry_after, on_trip=_weakly(self, "_on_redis_error"))
        self.flights = SingleFlight()
        self.fence = FenceLog(self.settings, self.root,
                              prune_after=max(86_400.0, 2 * cfg.ttl_closed + cfg.lock_ms / 1000))
        self.bus = InvalidationBus(self.l2, self.l1, self.fence, self.circuit, self.stats, cfg)
        self.lease = FenceLease(self.fence, self.bus, self.l1, self.circuit, cfg)
        self.listener = Listener(self.channel, cfg, sharded=tagged)
        self._start_listener = start_listener
        atexit.register(_flush_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ composition
    def _redis(self) -> Any:
        """The Redis client (connecting, and starting the listener, on first use)."""
        return self.l2.client()

    def _ensure_listening(self) -> None:
        if self._start_listener:
            self.listener.ensure_running(self)

    def _on_redis_error(self) -> None:
        self.lease.expire()  # once Redis answers again, check the fence before trusting it
        rediscluster.refresh(self.l2.connected)  # a cluster: find a replaced master
        self.stats.incr("redis_errors")
        self.stats.incr("errors")
        self.l1.clear()

    def _mark_down(self, exc: BaseException) -> None:
        self.circuit.trip(exc)

    @property
    def degraded(self) -> bool:
        return not self.circuit.closed

    def _l1_usable(self) -> bool:
        return self.config.l1_enabled and self.listener.subscribed.is_set() and self.circuit.closed

    def full_key(self, key: str) -> str:
        return self.keys.value(key)

    # ------------------------------------------------------------------ reads
    def get_or_compute(
        self,
        key: str,
        compute: Callable[[], Any],
        *,
        ttl: float,
        tags: TagSource = (),
        load: Callable[[Any], T] | None = None,
    ) -> T:
        """The cached value of ``key``, computing (and storing) it with ``compute`` on a miss.

        ``compute`` must return a value the serializer understands (lists, dicts, numbers,
        strings, dates, decimals). ``load`` turns that stored form into what callers get (e.g.
        typed rows); L1 keeps the loaded value, so an L1 hit costs no conversion - make it
        immutable (tuples, frozen dataclasses). Errors of ``compute`` reach the caller; Redis
        errors never do. ``tags`` may be a callable: it is then only evaluated on a miss.
        """
        loader: Loader = load or _identity
        if not self.config.enabled:
            return loader(compute())
        started = time.perf_counter()
        if not self.lease.valid and not self.lease.renew():
            return self._compute_direct(compute, started, loader)
        stale: Entry | None = None
        if self._l1_usable():
            entry = self.l1.get(key)
            if entry is not None:
                if not entry.refresh_due(self.config.xfetch_beta):
                    self.stats.incr("l1_hits")
                    self.stats.observe("l1", time.perf_counter() - started)
                    return entry.payload
                stale = entry
            else:
                self.stats.incr("l1_misses")
        if not self.circuit.closed:
            return self._compute_direct(compute, started, loader)
        if stale is None:
            epoch = self.l1.epoch
            try:
                raw = self.l2.get(key)
            except redis.RedisError as exc:
                self._mark_down(exc)
                return self._compute_direct(compute, started, loader)
            if raw is None:
                self.stats.incr("l2_misses")
            elif (entry := self._decode(key, raw, tags, loader)) is not None:
                if not entry.refresh_due(self.config.xfetch_beta):
                    self._l1_put(key, entry, epoch)
                    self.stats.incr("l2_hits")
                    self.stats.observe("l2", time.perf_counter() - started)
                    return entry.payload
                stale = entry
        return self._single_flight(_Miss(key, compute, ttl, resolve_tags(tags), loader, started, stale))

    def _decode(self, key: str, raw: Any, tags: TagSource, loader: Loader) -> Entry | None:
        try:
            payload, delta, expires_at = serialization.decode_entry(raw)
            payload = loader(payload)
        except Exception as exc:  # noqa: BLE001 - a corrupt entry is a miss, not an outage
            log.warning("cache: undecodable entry %s dropped (%s)", key, exc)
            self.stats.incr("errors")
            return None
        return Entry(payload, delta, expires_at, tags)

    def _l1_put(self, key: str, entry: Entry, epoch: int) -> None:
        if self._l1_usable():
            self.l1.put(key, entry, epoch)

    def _compute_direct(self, compute: Callable[[], Any], started: float, loader: Loader) -> Any:
        value = loader(compute())
        self.stats.incr("computations")
        self.stats.observe("db", time.perf_counter() - started)
        return value

    def _single_flight(self, miss: _Miss) -> Any:
        flight, leader = self.flights.join(miss.key)
        if leader:
            return self.flights.lead(miss.key, flight, lambda: self._compute_and_store(miss))
        if miss.stale is not None:  # someone is already refreshing early: keep serving the value
            self.stats.incr("l1_hits" if self._l1_usable() else "l2_hits")
            return miss.stale.payload
        self.stats.incr("stampedes_avoided")
        result = flight.wait()
        self.stats.observe("db", time.perf_counter() - miss.started)
        return result

    def _compute_and_store(self, miss: _Miss) -> Any:
        key, tags, stale, started, loader = miss.key, miss.tags, miss.stale, miss.started, miss.loader
        epoch = self.l1.epoch
        try:
            # lock first, then read: a leader stores before it releases, so whoever gets the
            # lock after it finds the value and does not compute it a second time
            lock = self.l2.lock(key)
            locked = lock.acquire()
            gen, current = self.l2.read_for_compute(key)
        except redis.RedisError as exc:
            self._mark_down(exc)
            return self._compute_direct(miss.compute, started, loader)
        if current is not None and stale is None:
            # another leader stored it between our L2 miss and now: no need to compute
            entry = self._decode(key, current, tags, loader)
            if entry is not None:
                if locked:
                    self._release(lock)
                self._l1_put(key, entry, epoch)
                self.stats.incr("stampedes_avoided")
                self.stats.observe("l2", time.perf_counter() - started)
                return entry.payload
        if not locked:
            if stale is not None:  # another process refreshes early; the current value is still valid
                self.stats.incr("l2_hits")
                return stale.payload
            waited = self._wait_for_other_process(key, lock, tags, epoch, loader)
            if waited is not None:
                self.stats.incr("stampedes_avoided")
                self.stats.observe("l2", time.perf_counter() - started)
                return waited.payload
            if not self.circuit.closed:
                return self._compute_direct(miss.compute, started, loader)
        if stale is not None:
            self.stats.incr("early_refreshes")
        return self._compute_then_store(miss, gen, lock if locked else None, epoch)

    def _compute_then_store(self, miss: _Miss, gen: str, lock: Lock | None, epoch: int) -> Any:
        """Compute, then store under the generation read before (released ``lock`` after)."""
        key, tags, loader = miss.key, miss.tags, miss.loader
        try:
            t0 = time.perf_counter()
            value = miss.compute()
            delta = time.perf_counter() - t0
            self.stats.incr("computations")
            self.stats.observe("db", time.perf_counter() - miss.started)
            expires_at = utc_now() + miss.ttl
            data = serialization.encode_entry(value, delta, expires_at)
        except BaseException:
            if lock is not None:
                self._release(lock)
            raise
        try:
            stored = self.l2.store(key, gen, data, miss.ttl, tags)
        except redis.RedisError as exc:
            self._mark_down(exc)
            return loader(value)
        if lock is not None:
            self._release(lock)
        loaded = loader(value)
        if stored:
            self._l1_put(key, Entry(loaded, delta, expires_at, tags), epoch)
        else:
            self.stats.incr("stale_writes_refused")
        return loaded

    def _wait_for_other_process(
        self, key: str, lock: Lock, tags: frozenset[str], epoch: int, loader: Loader,
    ) -> Entry | None:
        deadline = time.monotonic() + self.config.lock_ms / 1000
        pause = 0.002
        while time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 1.5, 0.05)
            try:
                raw, held = self.l2.poll(key, lock)
            except redis.RedisError as exc:
                self._mark_down(exc)
                return None
            if raw is not None:
                entry = self._decode(key, raw, tags, loader)
                if entry is not None:
                    self._l1_put(key, entry, epoch)
                return entry
            if not held:
                return None
        return None

    def _release(self, lock: Lock) -> None:
        try:
            lock.release()
        except LockError:
            pass  # it expired (held longer than lock_ms) and maybe someone else holds it now
        except redis.RedisError as exc:
            self._mark_down(exc)

    # ------------------------------------------------------------------ invalidation
    def invalidate(
        self,
        *,
        tags: Iterable[str] = (),
        patterns: Iterable[str] = (),
        keys: Iterable[str] = (),
    ) -> InvalidationResult:
        """Drop entries by tag (``week:2024-01-01``), key glob (``daily:*``) or exact key.

        First records the invalidation in PostgreSQL (the fence), then reaches L2 and the L1 of
        every process listening, and waits (``ack_timeout``) until each one confirmed. When
        Redis does not answer, the record stays undelivered: every process stops trusting its
        cache within ``fence_lease`` seconds (this call waits that long before returning), and
        the first one that reaches Redis again delivers it. Never raises on a Redis error: the
        result says ``ok=False`` and whether the invalidation is fenced.
        """
        return self.bus.invalidate(sorted(set(tags)), sorted(set(patterns)), sorted(set(keys)))

    def check_fence(self, renew_before: float = 0.0) -> bool:
        """Renew this process's trust in L1/L2; False (read PostgreSQL directly) when it cannot.

        Applies to L1 every invalidation recorded since the last check, and delivers to Redis
        those it has not applied. Called by a read whose lease ran out and, ahead of that, by
        the listener thread every ``fence_lease / 2`` seconds."""
        return self.lease.renew(renew_before)

    @property
    def _fence_until(self) -> float:
        return self.lease.until

    @_fence_until.setter
    def _fence_until(self, value: float) -> None:
        self.lease.until = value

    def clear(self) -> InvalidationResult:
        """Drop every cached value (all keys, every process's L1)."""
        return self.invalidate(patterns=["*"])

    # ------------------------------------------------------------------ listener callbacks
    def listener_client(self) -> Any:
        return self.l2.connected

    def on_subscribed(self) -> None:
        self.circuit.recovered()  # Redis answers again
        self.l1.clear()  # anything cached before we listened might have missed a purge

    def on_message(self, data: bytes) -> None:
        self.bus.receive(data)

    def on_listener_error(self, exc: redis.RedisError) -> None:
        self._mark_down(exc)

    def wait_until_listening(self, timeout: float = 5.0) -> bool:
        """Block until this process hears invalidations (L1 is used only then)."""
        try:
            self._redis()
        except redis.RedisError as exc:
            self._mark_down(exc)
            return False
        return self.listener.subscribed.wait(timeout)

    def close(self) -> None:
        self.listener.stop.set()
        self.flush_stats()
        self.listener.close()
        self.l2.close()
        self.fence.close()

    # ------------------------------------------------------------------ stats and health
    def flush_stats(self) -> None:
        pending = self.stats.take_pending()
        client = self.l2.connected
        if not pending or not self.circuit.closed or client is None:
            if pending:
                self.stats.restore_pending(pending)
            return
        try:
            pipe = client.pipeline(transaction=False)
            for name, value in pending.items():
                pipe.hincrby(self.keys.stats, name, value)
            pipe.execute()
        except redis.RedisError:
            self.stats.restore_pending(pending)

    def local_stats(self) -> StatsSnapshot:
        snap = self.stats.snapshot(degraded=self.degraded)
        snap.extra = {"l1_size": len(self.l1), "l1_maxsize": self.config.l1_maxsize}
        return snap

    def fleet_stats(self) -> StatsSnapshot:
        """Statistics of every process (flushed into Redis); this process's own when Redis is down."""
        self.flush_stats()
        try:
            raw = self._redis().hgetall(self.keys.stats)
        except redis.RedisError as exc:
            self._mark_down(exc)
            return self.local_stats()
        snap = snapshot_from_hash(raw, degraded=self.degraded)
        with contextlib.suppress(redis.RedisError):
            snap.extra = {"l2_keys": sum(1 for _ in self._redis().scan_iter(match=self.full_key("*"), count=1000))}
        return snap

    def reset_stats(self) -> None:
        self.stats.reset()
        try:
            self._redis().delete(self.keys.stats)
        except redis.RedisError as exc:
            self._mark_down(exc)

    def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "degraded", ...}``; probes Redis when the circuit allows."""
        if self.circuit.closed:
            try:
                if self.keys.tagged:  # the master of the cache's slot (a dead node may linger in the node list)
                    self._redis().exists(self.keys.gen)
                else:
                    self._redis().ping()
            except redis.RedisError as exc:
                self._mark_down(exc)
        status = "degraded" if self.degraded else "ok"
        return {
            "status": status,
            "redis": "unreachable" if self.degraded else "ok",
            "redis_mode": "cluster" if self.keys.tagged else "standalone",
            **self._cluster_health(),
            "l1_listening": self.listener.subscribed.is_set(),
            "last_error": self.circuit.last_error,
            "fence_error": self.fence.error,
            "detail": ("Redis unreachable: reads go straight to PostgreSQL" if self.degraded
                       else "two tiers active"),
        }


    def _cluster_health(self) -> dict[str, Any]:
        """On a cluster: ``{"cluster": {state, masters, masters_failed, replicas, epoch}}`` as the
        nodes see it (a failed master shows until it is forgotten), or the error of asking."""
        client = self.l2.connected
        if not self.keys.tagged or client is None:
            return {}
        try:
            return {"cluster": rediscluster.describe(client)}
        except (redis.RedisError, OSError) as exc:
            return {"cluster": {"state": "unknown", "error": f"{type(exc).__name__}: {exc}"}}


def _flush_at_exit(ref: weakref.ReferenceType[TwoTierCache]) -> None:
    cache = ref()
    if cache is not None:
        with contextlib.suppress(Exception):
            cache.flush_stats()


_DEFAULT: TwoTierCache | None = None
_DEFAULT_LOCK = threading.Lock()


def get_cache() -> TwoTierCache:
    """The process-wide cache for the current settings (recreated when the Redis prefix/URL changes)."""
    global _DEFAULT
    settings = load_settings()
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT.settings != settings:
            if _DEFAULT is not None:
                _DEFAULT.close()
            _DEFAULT = TwoTierCache(settings)
        return _DEFAULT


def cache_metric_families(namespace: str = "metricsmith_cache") -> list[dict[str, Any]]:
    """Fleet-wide cache statistics as metric families, for another exposition (e.g. realtime's /metrics).

    Never raises: when Redis is down the families carry this process's numbers and degraded=1.
    """
    return prometheus_families(get_cache().fleet_stats(), namespace)
