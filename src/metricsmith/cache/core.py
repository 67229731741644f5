"""The two-tier cache: L1 in this process (bounded LRU with per-entry TTL) in front of L2 Redis.

Reads: L1 -> L2 -> compute (PostgreSQL). Guarantees:

* **Single computation per key**: concurrent misses in one process wait for one leader
  (single-flight); across processes a short Redis lock (``SET NX PX``) lets one compute while
  the others poll L2 for its result.
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
import fnmatch
import hashlib
import logging
import math
import random
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
import redis
from cachetools import TLRUCache

from metricsmith import db
from metricsmith.cache import serialization
from metricsmith.cache.config import CacheConfig, load_cache_config
from metricsmith.cache.stats import CacheStats, StatsSnapshot, snapshot_from_hash
from metricsmith.config import Settings, load_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
TagSource = Iterable[str] | Callable[[], Iterable[str]]

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

_FENCE_LUA = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

#: serialises the inserts into metricsmith.cache_invalidations, so ids become visible in order
FENCE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"metricsmith.cache.fence").digest()[:8], "big", signed=True)
_FENCE_TABLE = "metricsmith.cache_invalidations"

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _Entry:
    __slots__ = ("_tags", "delta", "expires_at", "payload")

    def __init__(self, payload: Any, delta: float, expires_at: float, tags: TagSource) -> None:
        self.payload = payload
        self.delta = delta
        self.expires_at = expires_at
        self._tags = tags  # resolved only when an invalidation needs them

    @property
    def tags(self) -> frozenset[str]:
        if not isinstance(self._tags, frozenset):
            self._tags = _tags(self._tags)
        return self._tags


class _Flight:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


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


def _tags(tags: TagSource) -> frozenset[str]:
    return frozenset(tags() if callable(tags) else tags)


def _identity(value: Any) -> Any:
    return value


def _utc_now() -> float:
    return time.time()


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
        self.config = config or load_cache_config()
        self.root = f"{self.settings.redis_prefix}cache:"
        self.channel = f"{self.root}invalidate"
        self._gen_key = f"{self.root}gen"
        self._stats_key = f"{self.root}stats"
        self._fence_key = f"{self.root}fence"
        self._redis_url = redis_url
        self._client: redis.Redis | None = None
        self._client_lock = threading.Lock()
        self._l1: TLRUCache[str, _Entry] = TLRUCache(
            maxsize=self.config.l1_maxsize, ttu=lambda _k, v, _now: v.expires_at, timer=_utc_now
        )
        self._l1_lock = threading.Lock()
        self._l1_epoch = 0
        self._inflight: dict[str, _Flight] = {}
        self._inflight_lock = threading.Lock()
        self._down_until = 0.0
        self._last_error: str | None = None
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._start_listener = start_listener
        self._store_script: Any = None
        self._release_script: Any = None
        self._fence_script: Any = None
        # the fence: until _fence_until (monotonic) this process trusts L1 and L2
        self._fence_lock = threading.Lock()
        self._fence_until = 0.0
        self._fence_seen: int | None = None  # highest record applied to this process's L1
        self._fence_error: str | None = None
        self._fence_retry_at = 0.0
        self._outage_warned = False
        self._pg: psycopg.Connection[Any] | None = None
        self._pg_lock = threading.Lock()
        self.stats = CacheStats()
        atexit.register(_flush_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ Redis plumbing
    def _redis(self) -> redis.Redis:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    try:
                        url = self._redis_url or db.redis_url(self.settings)
                    except Exception as exc:  # noqa: BLE001 - e.g. the embedded server cannot start
                        raise redis.ConnectionError(f"cannot resolve the Redis server: {exc}") from exc
                    client = redis.Redis.from_url(
                        url, socket_timeout=self.config.redis_timeout,
                        socket_connect_timeout=self.config.redis_timeout, retry_on_timeout=False,
                    )
                    self._store_script = client.register_script(_STORE_LUA)
                    self._release_script = client.register_script(_RELEASE_LUA)
                    self._fence_script = client.register_script(_FENCE_LUA)
                    self._client = client
        if self._start_listener and (self._listener is None or not self._listener.is_alive()):
            self._start_listener_thread()
        return self._client

    def _redis_ok(self) -> bool:
        return time.monotonic() >= self._down_until

    def _mark_down(self, exc: BaseException) -> None:
        first = self._redis_ok()
        self._down_until = time.monotonic() + self.config.retry_after
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._fence_until = 0.0  # once Redis answers again, check the fence before trusting it
        self.stats.incr("redis_errors")
        self.stats.incr("errors")
        self._drop_l1()
        if first and not self._outage_warned:  # once per outage, not once per probe
            self._outage_warned = True
            log.warning("cache: Redis unreachable (%s); serving from PostgreSQL (degraded)", self._last_error)

    def _drop_l1(self) -> None:
        with self._l1_lock:
            self._l1.clear()
            self._l1_epoch += 1

    @property
    def degraded(self) -> bool:
        return not self._redis_ok()

    def _l1_usable(self) -> bool:
        return self.config.l1_enabled and self._subscribed.is_set() and self._redis_ok()

    def full_key(self, key: str) -> str:
        return f"{self.root}v:{key}"

    def _tag_key(self, tag: str) -> str:
        return f"{self.root}tag:{tag}"

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
        loader: Callable[[Any], Any] = load or _identity
        if not self.config.enabled:
            return loader(compute())
        started = time.perf_counter()
        if time.monotonic() >= self._fence_until and not self.check_fence():
            return self._compute_direct(compute, started, loader)
        stale: _Entry | None = None
        if self._l1_usable():
            with self._l1_lock:
                entry = self._l1.get(key)
            if entry is not None:
                if not self._refresh_due(entry):
                    self.stats.incr("l1_hits")
                    self.stats.observe("l1", time.perf_counter() - started)
                    return entry.payload
                stale = entry
            else:
                self.stats.incr("l1_misses")
        if not self._redis_ok():
            return self._compute_direct(compute, started, loader)
        if stale is None:
            epoch = self._l1_epoch
            try:
                raw = self._redis().get(self.full_key(key))
            except redis.RedisError as exc:
                self._mark_down(exc)
                return self._compute_direct(compute, started, loader)
            if raw is not None:
                entry = self._decode(key, raw, tags, loader)
                if entry is not None:
                    if not self._refresh_due(entry):
                        self._l1_put(key, entry, epoch)
                        self.stats.incr("l2_hits")
                        self.stats.observe("l2", time.perf_counter() - started)
                        return entry.payload
                    stale = entry
            else:
                self.stats.incr("l2_misses")
        return self._single_flight(key, compute, ttl, _tags(tags), stale, started, loader)

    def _decode(self, key: str, raw: Any, tags: TagSource, loader: Callable[[Any], Any]) -> _Entry | None:
        try:
            payload, delta, expires_at = serialization.decode_entry(raw)
            payload = loader(payload)
        except Exception as exc:  # noqa: BLE001 - a corrupt entry is a miss, not an outage
            log.warning("cache: undecodable entry %s dropped (%s)", key, exc)
            self.stats.incr("errors")
            return None
        return _Entry(payload, delta, expires_at, tags)

    def _refresh_due(self, entry: _Entry) -> bool:
        beta = self.config.xfetch_beta
        if beta <= 0 or entry.delta <= 0:
            return False
        draw = random.random() or 1e-12
        return _utc_now() - entry.delta * beta * math.log(draw) >= entry.expires_at

    def _l1_put(self, key: str, entry: _Entry, epoch: int) -> None:
        if not self._l1_usable():
            return
        with self._l1_lock:
            if epoch == self._l1_epoch:
                self._l1[key] = entry

    def _compute_direct(self, compute: Callable[[], Any], started: float, loader: Callable[[Any], Any]) -> Any:
        value = loader(compute())
        self.stats.incr("computations")
        self.stats.observe("db", time.perf_counter() - started)
        return value

    def _single_flight(
        self, key: str, compute: Callable[[], Any], ttl: float, tags: frozenset[str],
        stale: _Entry | None, started: float, loader: Callable[[Any], Any],
    ) -> Any:
        with self._inflight_lock:
            flight = self._inflight.get(key)
            leader = flight is None
            if flight is None:
                flight = self._inflight[key] = _Flight()
        if not leader:
            if stale is not None:  # someone is already refreshing early: keep serving the value
                self.stats.incr("l1_hits" if self._l1_usable() else "l2_hits")
                return stale.payload
            self.stats.incr("stampedes_avoided")
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            self.stats.observe("db", time.perf_counter() - started)
            return flight.result
        try:
            flight.result = self._compute_and_store(key, compute, ttl, tags, stale, started, loader)
            return flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._inflight_lock:
                self._inflight.pop(key, None)
            flight.done.set()

    def _compute_and_store(
        self, key: str, compute: Callable[[], Any], ttl: float, tags: frozenset[str],
        stale: _Entry | None, started: float, loader: Callable[[Any], Any],
    ) -> Any:
        full = self.full_key(key)
        lock_key = f"{self.root}lock:{key}"
        token = secrets.token_hex(8)
        epoch = self._l1_epoch
        try:
            client = self._redis()
            pipe = client.pipeline(transaction=False)
            pipe.get(self._gen_key)
            pipe.get(full)
            pipe.set(lock_key, token, nx=True, px=self.config.lock_ms)
            gen_raw, current, locked = pipe.execute()
        except redis.RedisError as exc:
            self._mark_down(exc)
            return self._compute_direct(compute, started, loader)
        gen = gen_raw.decode() if gen_raw else "0"
        if current is not None and stale is None:
            # another leader stored it between our L2 miss and now: no need to compute
            entry = self._decode(key, current, tags, loader)
            if entry is not None:
                if locked:
                    self._release(lock_key, token)
                self._l1_put(key, entry, epoch)
                self.stats.incr("stampedes_avoided")
                self.stats.observe("l2", time.perf_counter() - started)
                return entry.payload
        if not locked:
            if stale is not None:  # another process refreshes early; the current value is still valid
                self.stats.incr("l2_hits")
                return stale.payload
            waited = self._wait_for_other_process(key, full, lock_key, tags, epoch, loader)
            if waited is not None:
                self.stats.incr("stampedes_avoided")
                self.stats.observe("l2", time.perf_counter() - started)
                return waited.payload
            if not self._redis_ok():
                return self._compute_direct(compute, started, loader)
        if stale is not None:
            self.stats.incr("early_refreshes")
        try:
            t0 = time.perf_counter()
            value = compute()
            delta = time.perf_counter() - t0
            self.stats.incr("computations")
            self.stats.observe("db", time.perf_counter() - started)
        except BaseException:
            if locked:
                self._release(lock_key, token)
            raise
        expires_at = _utc_now() + ttl
        try:
            data = serialization.encode_entry(value, delta, expires_at)
        except serialization.SerializationError:
            if locked:
                self._release(lock_key, token)
            raise
        try:
            tag_ttl_ms = int(max(ttl, self.config.ttl_closed) * 1000) + 60_000
            stored = self._store_script(
                keys=[full, self._gen_key, *(self._tag_key(t) for t in sorted(tags))],
                args=[gen, data, max(1, int(ttl * 1000)), tag_ttl_ms],
                client=self._client,
            )
            if locked:
                self._release_script(keys=[lock_key], args=[token], client=self._client)
        except redis.RedisError as exc:
            self._mark_down(exc)
            return loader(value)
        loaded = loader(value)
        if stored:
            self._l1_put(key, _Entry(loaded, delta, expires_at, tags), epoch)
        else:
            self.stats.incr("stale_writes_refused")
        return loaded

    def _wait_for_other_process(
        self, key: str, full: str, lock_key: str, tags: frozenset[str], epoch: int,
        loader: Callable[[Any], Any],
    ) -> _Entry | None:
        deadline = time.monotonic() + self.config.lock_ms / 1000
        pause = 0.002
        while time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 1.5, 0.05)
            try:
                pipe = self._redis().pipeline(transaction=False)
                pipe.get(full)
                pipe.exists(lock_key)
                raw, held = pipe.execute()
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

    def _release(self, lock_key: str, token: str) -> None:
        try:
            self._release_script(keys=[lock_key], args=[token], client=self._client)
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
        tags, patterns, keys = sorted(set(tags)), sorted(set(patterns)), sorted(set(keys))
        result = InvalidationResult(tags=tags, patterns=patterns)
        self.stats.incr("invalidations")
        fence_id, pg_error = self._record_invalidation(tags, patterns, keys)
        result.fence_id = fence_id
        self._apply_invalidation(tags, patterns, keys)
        message_id = secrets.token_hex(8)
        try:
            client = self._redis()
            current = client.get(self._fence_key) if fence_id is not None else b"0"
            result.keys_deleted = self._deliver(client, fence_id, current, (tags, patterns, keys))
            ack_key = f"{self.root}ack:{message_id}"
            message = serialization.dumps({"id": message_id, "tags": tags, "patterns": patterns, "keys": keys})
            result.processes_notified = int(client.publish(self.channel, message))
            deadline = time.monotonic() + self.config.ack_timeout
            confirmed = 0
            while True:
                confirmed = int(client.get(ack_key) or 0)
                if confirmed >= result.processes_notified or time.monotonic() >= deadline:
                    break
                time.sleep(0.002)
            result.processes_confirmed = confirmed
        except (redis.RedisError, psycopg.Error) as exc:
            if isinstance(exc, redis.RedisError):
                self._mark_down(exc)
            result.ok = False
            reason = f"Redis unreachable ({type(exc).__name__}: {exc})"
            if fence_id is None:
                result.error = (f"{reason}; PostgreSQL unreachable too ({pg_error}): "
                                "cached values may be stale until their TTL")
            else:
                # every process that still trusts its cache re-checks the fence within the lease
                time.sleep(self.config.fence_lease)
                result.error = (f"{reason}; recorded as invalidation #{fence_id} in PostgreSQL: no process "
                                "serves the old values, and the first one to reach Redis again delivers it")
            return result
        self.stats.incr("keys_invalidated", result.keys_deleted)
        return result

    def _deliver(
        self, client: redis.Redis, upto: int | None, current: bytes | str | None,
        own: tuple[Iterable[str], Iterable[str], Iterable[str]] = ((), (), ()),
    ) -> int:
        """Apply to Redis ``own`` plus every recorded invalidation this Redis has not applied
        yet (ids after its fence, up to ``upto``), in one transaction that also bumps the
        generation and moves the fence to ``upto``. A Redis without a fence (new, flushed, or
        from before the fence existed) is cleared. Returns the number of keys deleted."""
        tags, patterns, keys = set(own[0]), set(own[1]), set(own[2])
        if upto is not None:
            if current is None:
                patterns.add("*")
            elif int(current) < upto:
                for row_tags, row_patterns, row_keys in self._fence_rows(int(current), upto):
                    tags.update(row_tags)
                    patterns.update(row_patterns)
                    keys.update(row_keys)
        doomed: set[bytes] = {self.full_key(k).encode() for k in keys}
        if tags:
            pipe = client.pipeline(transaction=False)
            for tag in sorted(tags):
                pipe.smembers(self._tag_key(tag))
            for members in pipe.execute():
                doomed.update(members)
        for pattern in sorted(patterns):
            doomed.update(client.scan_iter(match=self.full_key(pattern), count=1000))
        pipe = client.pipeline(transaction=True)
        pipe.incr(self._gen_key)
        doomed_list = sorted(doomed)
        for start in range(0, len(doomed_list), 500):
            pipe.delete(*doomed_list[start : start + 500])
        tag_keys = [self._tag_key(t) for t in sorted(tags)]
        for start in range(0, len(tag_keys), 500):
            pipe.delete(*tag_keys[start : start + 500])
        if upto is not None:
            self._fence_script(keys=[self._fence_key], args=[upto], client=pipe)
        replies = pipe.execute()
        return sum(int(r) for r in replies[1 : 1 + (len(doomed_list) + 499) // 500])

    # ------------------------------------------------------------------ the fence (PostgreSQL)
    def _pg_conn(self) -> psycopg.Connection[Any]:
        if self._pg is None or self._pg.closed:
            self._pg = db.connect(self.settings, autocommit=True, connect_timeout=3,
                                  options="-c statement_timeout=3000")
        return self._pg

    def _pg_broken(self, exc: BaseException) -> None:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        if self._fence_error is None:  # info, not warning: the read that follows reports the outage itself
            log.info("cache: PostgreSQL unreachable for the invalidation fence (%s); reads bypass the cache", reason)
        self._fence_error = reason
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.close()
        self._pg = None

    def _record_invalidation(
        self, tags: list[str], patterns: list[str], keys: list[str],
    ) -> tuple[int | None, str | None]:
        """Insert the invalidation into the fence table; ``(id, None)`` or ``(None, why not)``."""
        prune_after = max(86_400.0, 2 * self.config.ttl_closed + self.config.lock_ms / 1000)
        for attempt in (1, 2):
            try:
                with self._pg_lock:
                    conn = self._pg_conn()
                    with conn.transaction():
                        conn.execute("select pg_advisory_xact_lock(%s)", (FENCE_LOCK_KEY,))
                        row = conn.execute(
                            f"insert into {_FENCE_TABLE} (prefix, tags, patterns, keys) values (%s, %s, %s, %s) "
                            "returning id", (self.root, tags, patterns, keys),
                        ).fetchone()
                        # records older than any cached value can be forgotten
                        conn.execute(f"delete from {_FENCE_TABLE} where prefix = %s and "
                                     "created_at < now() - make_interval(secs => %s)", (self.root, prune_after))
                assert row is not None
                return int(row[0]), None
            except psycopg.errors.UndefinedTable:
                if attempt == 2:
                    return None, f"{_FENCE_TABLE} does not exist"
                from metricsmith import migrate  # a database migrated before the fence existed

                migrate.upgrade(self.settings)
            except psycopg.Error as exc:
                with self._pg_lock:
                    self._pg_broken(exc)
                return None, f"{type(exc).__name__}: {exc}"
        return None, "unreachable"  # pragma: no cover

    def _fence_rows(self, after: int, upto: int | None = None) -> list[tuple[list[str], list[str], list[str]]]:
        rows = self._fence_query(after, upto)[1]
        return [(r[1], r[2], r[3]) for r in rows]

    def _fence_query(self, after: int | None, upto: int | None = None) -> tuple[int, list[Any]]:
        """``(highest id, rows after ``after``)``; with ``after=None`` only the highest id."""
        with self._pg_lock:
            try:
                conn = self._pg_conn()
                if after is None:
                    row = conn.execute(f"select coalesce(max(id), 0) from {_FENCE_TABLE} where prefix = %s",
                                       (self.root,)).fetchone()
                    return (int(row[0]) if row else 0), []
                rows = conn.execute(
                    f"select id, tags, patterns, keys from {_FENCE_TABLE} where prefix = %s and id > %s "
                    "and id <= %s order by id", (self.root, after, upto if upto is not None else 2**62),
                ).fetchall()
            except psycopg.errors.UndefinedTable:
                return 0, []  # nothing was ever recorded (the database predates the fence)
            except psycopg.Error as exc:
                self._pg_broken(exc)
                raise
        return (int(rows[-1][0]) if rows else after), rows

    def check_fence(self, renew_before: float = 0.0) -> bool:
        """Renew this process's trust in L1/L2; False (read PostgreSQL directly) when it cannot.

        Applies to L1 every invalidation recorded since the last check, and delivers to Redis
        those it has not applied. Called by a read whose lease ran out and, ahead of that, by
        the listener thread every ``fence_lease / 2`` seconds."""
        if not self._redis_ok() or time.monotonic() < self._fence_retry_at:
            return False
        with self._fence_lock:
            started = time.monotonic()
            if started < self._fence_until - renew_before:
                return True
            try:
                latest, rows = self._fence_query(self._fence_seen)
                for _id, row_tags, row_patterns, row_keys in rows:
                    self._apply_invalidation(row_tags, row_patterns, row_keys)
                self._fence_seen = latest
                client = self._redis()
                current = client.get(self._fence_key)
                if current is None or int(current) < latest:
                    deleted = self._deliver(client, latest, current)
                    log.info("cache: delivered recorded invalidations up to #%s to Redis (%s keys)", latest, deleted)
            except psycopg.Error:
                self._fence_retry_at = time.monotonic() + self.config.retry_after
                return False
            except redis.RedisError as exc:
                self._mark_down(exc)
                return False
            self._fence_error = None
            self._fence_until = started + self.config.fence_lease
            return True

    def clear(self) -> InvalidationResult:
        """Drop every cached value (all keys, every process's L1)."""
        return self.invalidate(patterns=["*"])

    def _apply_invalidation(self, tags: Iterable[str], patterns: Iterable[str], keys: Iterable[str]) -> None:
        tag_set, pattern_list, key_set = set(tags), list(patterns), set(keys)
        with self._l1_lock:
            self._l1_epoch += 1
            doomed = [
                k for k, entry in list(self._l1.items())
                if k in key_set or (entry.tags & tag_set) or any(fnmatch.fnmatchcase(k, p) for p in pattern_list)
            ]
            for k in doomed:
                self._l1.pop(k, None)

    # ------------------------------------------------------------------ listener thread
    def _start_listener_thread(self) -> None:
        with self._client_lock:
            if self._listener is not None and self._listener.is_alive():
                return
            self._stop.clear()
            self._listener = threading.Thread(target=_listen, args=(weakref.ref(self),), daemon=True,
                                              name="metricsmith-cache-invalidation")
            self._listener.start()

    def _handle_message(self, data: bytes) -> None:
        try:
            message = serialization.loads(data)
            self._apply_invalidation(message.get("tags", ()), message.get("patterns", ()), message.get("keys", ()))
        except Exception as exc:  # noqa: BLE001
            log.warning("cache: bad invalidation message dropped (%s)", exc)
            self._drop_l1()
            return
        try:
            ack_key = f"{self.root}ack:{message['id']}"
            pipe = self._redis().pipeline(transaction=False)
            pipe.incr(ack_key)
            pipe.expire(ack_key, 60)
            pipe.execute()
        except redis.RedisError as exc:
            self._mark_down(exc)

    def wait_until_listening(self, timeout: float = 5.0) -> bool:
        """Block until this process hears invalidations (L1 is used only then)."""
        try:
            self._redis()
        except redis.RedisError as exc:
            self._mark_down(exc)
            return False
        return self._subscribed.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self.flush_stats()
        if self._listener is not None:
            self._listener.join(timeout=3)
        if self._client is not None:
            self._client.close()
        with self._pg_lock:
            if self._pg is not None:
                with contextlib.suppress(Exception):
                    self._pg.close()
                self._pg = None

    # ------------------------------------------------------------------ stats and health
    def flush_stats(self) -> None:
        pending = self.stats.take_pending()
        if not pending or not self._redis_ok() or self._client is None:
            if pending:
                self.stats.restore_pending(pending)
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for name, value in pending.items():
                pipe.hincrby(self._stats_key, name, value)
            pipe.execute()
        except redis.RedisError:
            self.stats.restore_pending(pending)

    def local_stats(self) -> StatsSnapshot:
        snap = self.stats.snapshot(degraded=self.degraded)
        snap.extra = {"l1_size": len(self._l1), "l1_maxsize": self.config.l1_maxsize}
        return snap

    def fleet_stats(self) -> StatsSnapshot:
        """Statistics of every process (flushed into Redis); this process's own when Redis is down."""
        self.flush_stats()
        try:
            raw = self._redis().hgetall(self._stats_key)
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
            self._redis().delete(self._stats_key)
        except redis.RedisError as exc:
            self._mark_down(exc)

    def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "degraded", ...}``; probes Redis when the circuit allows."""
        if self._redis_ok():
            try:
                self._redis().ping()
            except redis.RedisError as exc:
                self._mark_down(exc)
        status = "degraded" if self.degraded else "ok"
        return {
            "status": status,
            "redis": "unreachable" if self.degraded else "ok",
            "l1_listening": self._subscribed.is_set(),
            "last_error": self._last_error,
            "fence_error": self._fence_error,
            "detail": ("Redis unreachable: reads go straight to PostgreSQL" if self.degraded
                       else "two tiers active"),
        }


def _listen(ref: weakref.ReferenceType[TwoTierCache]) -> None:
    """Listener loop: subscribe, purge L1 on each message, flush stats; reconnect on errors."""
    while True:
        cache = ref()
        if cache is None or cache._stop.is_set():
            return
        client = cache._client
        retry = cache.config.retry_after
        pubsub = None
        try:
            if client is None:
                raise redis.ConnectionError("no client yet")
            pubsub = client.pubsub(ignore_subscribe_messages=False)
            pubsub.subscribe(cache.channel)
            last_flush = time.monotonic()
            flush_every = cache.config.stats_flush_every
            del cache
            while True:
                message = pubsub.get_message(timeout=0.2)
                cache = ref()
                if cache is None or cache._stop.is_set():
                    return
                if message is not None:
                    if message["type"] == "subscribe":
                        cache._outage_warned = False  # Redis answers again
                        cache._drop_l1()  # anything cached before we listened might have missed a purge
                        cache._subscribed.set()
                    elif message["type"] == "message":
                        cache._handle_message(message["data"])
                if cache._subscribed.is_set():
                    cache.check_fence(renew_before=cache.config.fence_lease / 2)
                if time.monotonic() - last_flush >= flush_every:
                    cache.flush_stats()
                    last_flush = time.monotonic()
                del cache
        except (redis.RedisError, OSError, ValueError) as exc:
            cache = ref()
            if cache is None:
                return
            cache._subscribed.clear()
            cache._mark_down(exc if isinstance(exc, redis.RedisError) else redis.ConnectionError(str(exc)))
            del cache
            time.sleep(retry)
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    pubsub.close()


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
