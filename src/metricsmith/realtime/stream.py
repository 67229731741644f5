"""Event-driven ingest: ``track()`` appends events to a Redis Stream; a consumer group applies them.

Per batch the consumer

1. validates every entry with the loader's rules (:func:`metricsmith.ingest.parse_objects` and
   :func:`metricsmith.ingest.judge_many`: the same decision as ``metricsmith load``, which never raises,
   so a malformed entry - invalid UTF-8, a repeated key, an impossible date - is quarantined once,
   acked, and the stream goes on);
2. under the apply lock (:func:`metricsmith.realtime.locks.apply_lock`), runs ONE Lua script
   (``lua/apply.lua``; every key it touches is passed in ``KEYS``, built by
   :func:`metricsmith.realtime.keys.apply_keys`) that, for each valid event whose event_id is not
   in the day's ``seen`` set, adds it there and applies all its metric updates (events by type,
   revenue, active users, purchase histogram, events/s rate) - atomically for the whole batch;
3. meanwhile (another thread; both steps are idempotent, so their order does not matter) writes
   the batch into Postgres in one transaction with the loader's write step
   (:func:`metricsmith.ingest.store_lines`: COPY, ids already stored skipped) and quarantines bad
   entries once (stream entry ids recorded in ``metricsmith.realtime_stream_rejects``);
4. once both are done, XACKs (and XDELs) the entries.

With ``METRICSMITH_STREAM_SHARDS=N`` there are N streams (shard = CRC-32 of the event_id,
:mod:`metricsmith.realtime.shards`); a consumer serves one shard (its stream, its consumer group,
its apply lock), :mod:`metricsmith.realtime.consumers` runs several. On a Redis Cluster step 2
also waits for a replica (``WAIT``) so that a failover after it cannot lose the batch.

A consumer killed anywhere leaves its entries pending; on restart (same name) it re-reads them,
and another consumer claims them with XAUTOCLAIM after ``claim_idle_ms``. Re-applying is harmless:
Redis skips event_ids already seen, Postgres skips event_ids already stored, the reject table
skips entries already quarantined. Delivery is at-least-once, the effect exactly once.
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import orjson
import psycopg
import redis

from metricsmith import db, rediscluster
from metricsmith.config import Settings, load_settings
from metricsmith.ingest import (
    REASONS,
    LoadSummary,
    Rejection,
    ValidEvent,
    copy_line,
    judge_many,
    parse_object,
    parse_objects,
    raw_text,
    store_lines,
)
from metricsmith.realtime.fastread import DirectConnection, pack
from metricsmith.realtime.keys import Keys, apply_keys
from metricsmith.realtime.locks import apply_lock
from metricsmith.realtime.registry import (
    ACTIVE_USERS,
    EVENTS_RATE,
    EVENTS_TOTAL,
    LABEL_SEP,
    PURCHASE_BUCKETS_CENTS,
    PURCHASE_VALUE,
    RATE_RESOLUTION,
    REVENUE_TOTAL,
    bucket_index,
)
from metricsmith.realtime.scripts import APPLY_LUA
from metricsmith.realtime.service import RATE_KEEP_BUCKETS, RealtimeMetricsService
from metricsmith.realtime.shards import ShardCountError, ShardGuard, ensure_count, shard_for_payload

GROUP = "metricsmith"
#: errors after which a batch stays pending and the consumer retries (Postgres or Redis away, failover)
RETRYABLE: tuple[type[BaseException], ...] = (psycopg.OperationalError, TimeoutError, *rediscluster.TRANSIENT)
FIELD = b"e"
PURCHASE = "purchase"

# --------------------------------------------------------------------------- producing

_clients: dict[tuple[str, str, bool], Any] = {}
_guards: dict[tuple[int, str, bool, int], ShardGuard] = {}


def _client(settings: Settings) -> Any:
    key = (rediscluster.url(settings), settings.redis_prefix, settings.redis_cluster)
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = rediscluster.client(settings)
    return client


def _producer(settings: Settings | None, client: Any) -> tuple[Settings, Any, Keys]:
    """Settings, client and key layout of a producer call, with its shard count verified
    (:class:`metricsmith.realtime.shards.ShardCountError` when it conflicts with the streams')."""
    settings = settings or load_settings()
    redis_client = client if client is not None else _client(settings)
    keys = Keys.of(settings)
    guard_key = (id(redis_client), settings.redis_prefix, keys.tagged, settings.stream_shards)
    guard = _guards.get(guard_key)
    if guard is None:
        guard = _guards[guard_key] = ShardGuard(keys, settings.stream_shards)
    guard.check(redis_client)
    return settings, redis_client, keys


def uuid7() -> str:
    """A time-ordered UUID (version 7 layout): new ids append to the raw.events primary-key btree."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def _payload(event: Mapping[str, Any] | str | bytes, now_text: str) -> tuple[str, bytes]:
    if isinstance(event, bytes):
        return "", event
    if isinstance(event, str):
        return "", event.encode()
    record = dict(event)
    if record.get("event_id") is None:
        record["event_id"] = uuid7()
    if record.get("received_at") is None:
        record["received_at"] = now_text
    try:
        return str(record["event_id"]), orjson.dumps(record, default=str)
    except TypeError:
        return str(record["event_id"]), repr(record).encode()


def track(event: Mapping[str, Any] | str | bytes, *, settings: Settings | None = None,
          client: Any = None) -> str:
    """Append one event to its stream shard; returns its event_id (generated when missing).

    The event is validated by the consumer with the loader's rules; a bad event is quarantined
    there with its reason, never dropped. ``received_at`` is stamped now when missing. The shard
    is a stable hash of the event_id (:func:`metricsmith.realtime.shards.shard_of`).
    """
    settings, redis_client, keys = _producer(settings, client)
    event_id, payload = _payload(event, datetime.now(UTC).isoformat())
    shard = shard_for_payload(event_id, payload, settings.stream_shards)
    redis_client.xadd(keys.stream_shard(shard), {FIELD: payload})
    return event_id


def track_many(events: Iterable[Mapping[str, Any] | str | bytes], *, settings: Settings | None = None,
               client: Any = None, chunk: int = 2000) -> int:
    """Append many events (pipelined, each to its shard); returns how many were appended.

    On a single Redis the XADDs are packed by hiredis and sent ``chunk`` at a time on a direct
    connection (:mod:`metricsmith.realtime.fastread`); a chunk whose connection broke is sent once
    more (an event appended twice is counted once: the consumer de-duplicates by event_id)."""
    settings, redis_client, keys = _producer(settings, client)
    shards = settings.stream_shards
    streams = [keys.stream_shard(shard) for shard in range(shards)]
    send = _pipelined(redis_client) if rediscluster.is_cluster(redis_client) else _direct_sender(redis_client)
    count = 0
    commands: list[tuple[str, str, bytes, bytes]] = []
    now_text = datetime.now(UTC).isoformat()
    for event in events:
        event_id, payload = _payload(event, now_text)
        commands.append(("XADD", streams[shard_for_payload(event_id, payload, shards)], FIELD, payload))
        if len(commands) == chunk:
            send(commands)
            count += len(commands)
            commands = []
            now_text = datetime.now(UTC).isoformat()
    if commands:
        send(commands)
        count += len(commands)
    return count


_Sender = Callable[[list[tuple[str, str, bytes, bytes]]], None]
_direct = threading.local()


def _pipelined(redis_client: Any) -> _Sender:
    def send(commands: list[tuple[str, str, bytes, bytes]]) -> None:
        pipe = redis_client.pipeline(transaction=False)
        for _, stream, name, payload in commands:
            pipe.xadd(stream, {name: payload})
        pipe.execute()
    return send


def _direct_sender(redis_client: Any) -> _Sender:
    """XADDs on this thread's direct connection to ``redis_client``'s server."""
    pool = redis_client.connection_pool
    connections: dict[int, DirectConnection] = _direct.__dict__.setdefault("connections", {})
    direct = connections.get(id(pool))
    if direct is None or direct.pool is not pool:
        direct = connections[id(pool)] = DirectConnection(pool)

    def send(commands: list[tuple[str, str, bytes, bytes]]) -> None:
        packed = [pack((command, stream, "*", name, payload)) for command, stream, name, payload in commands]
        try:
            direct.call_many(packed)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            direct.call_many(packed)  # reconnects; appended twice at worst (de-duplicated by event_id)
    return send


# --------------------------------------------------------------------------- consuming


@dataclass
class ConsumeStats:
    batches: int = 0
    entries: int = 0
    applied: int = 0  # events new to Redis (counted in the metrics)
    redis_duplicates: int = 0  # valid events Redis had seen already (re-delivery or repeated id)
    loaded: int = 0
    pg_duplicates: int = 0
    quarantined: int = 0
    claimed: int = 0
    seconds: float = 0.0
    retries: int = 0  # batches retried after Redis / PostgreSQL errors (an outage, a failover)

    def add(self, other: ConsumeStats) -> None:
        for name in ("batches", "entries", "applied", "redis_duplicates", "loaded", "pg_duplicates",
                     "quarantined", "claimed", "retries"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def render(self) -> str:
        rate = self.entries / self.seconds if self.seconds > 0 else 0.0
        return (f"entries {self.entries:,} in {self.batches:,} batches ({rate:,.0f}/s); counted in Redis "
                f"{self.applied:,} (already seen {self.redis_duplicates:,}); raw.events loaded {self.loaded:,} "
                f"(already stored {self.pg_duplicates:,}); quarantined {self.quarantined:,}; "
                f"claimed from other consumers {self.claimed:,}"
                + (f"; retried after errors {self.retries:,}" if self.retries else ""))


@dataclass
class _Batch:
    ids: list[bytes] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    rejects: list[tuple[str, str, Rejection]] = field(default_factory=list)  # entry id, raw text, why
    valid: int = 0
    now: datetime = field(default_factory=lambda: datetime.now(UTC))  # received_at of events without one


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: reading and judging a batch allocates thousands of
    short-lived containers (reply lists, parsed events) that die together when it ends, and each
    collection they would trigger scans every young object for nothing. Restores the previous state."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def raw_stream_reader(client: redis.Redis) -> redis.Redis:
    """A client on ``client``'s connection pool whose XREADGROUP replies stay RESP arrays
    (``[[stream, [[id, [field, value, ...]], ...]]]``): no dict built per entry in Python."""
    reader = redis.Redis(connection_pool=client.connection_pool)
    reader.set_response_callback("XREADGROUP", lambda reply, **_: reply)
    return reader


def stream_entries(reply: Any) -> list[tuple[bytes, Any]]:
    """The entries of a :func:`raw_stream_reader` XREADGROUP reply for one stream (RESP2 gives
    ``[[stream, entries]]``, RESP3 ``{stream: entries}``); [] for none."""
    if not reply:
        return []
    streams = list(reply.values()) if isinstance(reply, dict) else [entries for _, entries in reply]
    return list(streams[0])


def _fields(fields: Any) -> dict[bytes, bytes]:
    """An entry's fields as a dict (redis-py's, or the raw ``[field, value, ...]``; none for an
    entry deleted while pending)."""
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=True)) if fields else {}


def _entry(entry_id: bytes) -> str:
    return entry_id.decode("utf-8", "backslashreplace")


def _unjudged(exc: Exception) -> Rejection:
    return Rejection("validation_error", f"{type(exc).__name__}: {exc}"[:500])


def _parse_all(payloads: list[bytes]) -> list[dict[str, Any] | Rejection]:
    """:func:`metricsmith.ingest.parse_objects`; should it raise (a bug), each payload alone, an
    error becoming that entry's ``validation_error``."""
    try:
        return parse_objects(payloads)
    except Exception:  # noqa: BLE001 - one entry must never wedge the stream
        out: list[dict[str, Any] | Rejection] = []
        for payload in payloads:
            try:
                out.append(parse_object(payload))
            except Exception as exc:  # noqa: BLE001
                out.append(_unjudged(exc))
        return out


class StreamConsumer:
    """One member of the consumer group. See the module docstring for the guarantees."""

    def __init__(self, settings: Settings | None = None, *, name: str | None = None, group: str = GROUP,
                 batch_size: int = 5000, block_ms: int = 1000, claim_idle_ms: int = 30_000,
                 lock_ttl_ms: int = 10_000, retention_days: int = 3, clock: Callable[[], float] = time.time,
                 log: Callable[[str], None] | None = None, shard: int = 0, retry_cap_s: float = 30.0) -> None:
        self.settings = settings or load_settings()
        if not 0 <= shard < self.settings.stream_shards:
            raise ShardCountError(f"shard {shard} does not exist: METRICSMITH_STREAM_SHARDS is "
                                  f"{self.settings.stream_shards} (shards 0-{self.settings.stream_shards - 1})")
        self.redis: Any = rediscluster.client(self.settings, socket_timeout=max(30, block_ms / 1000 + 10))
        self.keys = Keys.of(self.settings)
        self.shard = shard
        self.retry_cap_s = retry_cap_s
        self.stream = self.keys.stream_shard(shard)
        self.cluster = rediscluster.is_cluster(self.redis)
        self._reader: Any = self.redis if self.cluster else raw_stream_reader(self.redis)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.group = group
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.lock_ttl_ms = lock_ttl_ms
        self.ttl_seconds = retention_days * 86_400
        self.clock = clock
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.tz = self.settings.tz
        self.service = RealtimeMetricsService(self.settings, client=self.redis, clock=clock)
        self._apply = self.redis.register_script(APPLY_LUA)
        self._day_cache: dict[str, str] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self._redis_side: ThreadPoolExecutor | None = None  # runs step 2 while step 3 runs here
        self._stop = False
        self._unreplicated_warned = False
        self._alone_until: dict[str, float] = {}
        ensure_count(self.redis, self.keys, self.settings.stream_shards)
        self.ensure_group()

    # ------------------------------------------------------------------ setup

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.settings, autocommit=True)
            self._conn.execute("set time zone 'UTC'")
        return self._conn

    def close(self) -> None:
        if self._redis_side is not None:
            self._redis_side.shutdown(wait=True)
            self._redis_side = None
        if self._conn is not None:
            self._conn.close()
        self.redis.close()

    def stop(self, *_: Any) -> None:
        self._stop = True

    # ------------------------------------------------------------------ loop

    def run(self, *, until_idle: bool = False, max_entries: int | None = None,
            progress: Callable[[ConsumeStats], None] | None = None, max_retries: int | None = None) -> ConsumeStats:
        """Consume until stopped (SIGTERM/SIGINT), or until the stream is drained with ``until_idle``.

        Postgres or Redis unreachable: the batch stays pending, the consumer waits (exponential
        backoff up to ``retry_cap_s``, 30 s) and resumes with its own pending entries. ``max_retries`` (default:
        unlimited, 5 with ``until_idle``) bounds consecutive failures before the error is raised.
        """
        limit = max_retries if max_retries is not None else (5 if until_idle else None)
        total = ConsumeStats()
        failures = 0
        progressed = 0  # batches done when the last failure happened
        while True:
            try:
                stats = self._run(until_idle=until_idle, max_entries=max_entries, progress=progress, total=total)
                return stats
            except RETRYABLE as exc:
                failures = 1 if total.batches > progressed else failures + 1  # consecutive failures only
                progressed = total.batches
                total.retries += 1
                rediscluster.refresh(self.redis)
                if limit is not None and failures > limit:
                    raise
                delay = min(self.retry_cap_s, 0.5 * 2 ** (failures - 1))
                self.log(f"realtime consumer {self.name}: {type(exc).__name__}: {str(exc).strip()}; "
                         f"retrying in {delay:.1f} s (the batch stays pending)")
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                self._conn = None
                time.sleep(delay)
                if self._stop:
                    return total

    def _process_own_pending(self, total: ConsumeStats) -> None:
        """1. our own pending entries (a restart under the same name after a crash)."""
        while not self._stop:
            entries = self._read("0")
            if not entries:
                return
            total.add(self.process(entries))

    def _run(self, *, until_idle: bool, max_entries: int | None, progress: Callable[[ConsumeStats], None] | None,
             total: ConsumeStats) -> ConsumeStats:
        started = time.perf_counter() - total.seconds
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ms-realtime")
        try:
            self._process_own_pending(total)
            claim_cursor = "0-0"
            last_claim = 0.0
            pending: Future[ConsumeStats] | None = None
            while not self._stop and (max_entries is None or total.entries < max_entries):
                # 2. entries other consumers left pending too long
                if pending is None and time.monotonic() - last_claim >= min(5.0, self.claim_idle_ms / 2000):
                    claim_cursor, claimed = self._claim(claim_cursor)
                    last_claim = time.monotonic()
                    if claimed:
                        stats = self.process(claimed)
                        stats.claimed = len(claimed)
                        total.add(stats)
                        continue
                # 3. new entries: batch n+1 is read and validated here while a writer thread
                #    applies batch n (Redis, Postgres, XACK) - two stages on two cores
                entries = self._read(">", block=not until_idle and pending is None)
                if entries:
                    batch = self.prepare(entries, datetime.now(UTC))
                    if pending is not None:
                        total.add(pending.result())
                    pending = writer.submit(self.commit, batch)
                    if progress is not None:
                        total.seconds = time.perf_counter() - started
                        progress(total)
                    continue
                if pending is not None:
                    total.add(pending.result())
                    pending = None
                    continue
                if until_idle:
                    if self._pending_count() == 0:
                        break
                    time.sleep(min(0.2, self.claim_idle_ms / 1000))
                    last_claim = 0.0
            if pending is not None:
                total.add(pending.result())
        finally:
            writer.shutdown(wait=True)
            total.seconds = time.perf_counter() - started
        return total

    def _read(self, start: str, *, block: bool = False) -> list[tuple[bytes, Any]]:
        try:
            with gc_paused():
                reply = self._reader.xreadgroup(self.group, self.name, {self.stream: start}, count=self.batch_size,
                                                block=self.block_ms if block else None)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.log("realtime: the stream or its consumer group is gone (Redis emptied?); recreating it")
            self.ensure_group()
            return []
        return stream_entries(reply)

    def _claim(self, cursor: str) -> tuple[str, list[tuple[bytes, dict[bytes, bytes]]]]:
        reply = self.redis.xautoclaim(self.stream, self.group, self.name, self.claim_idle_ms,
                                      start_id=cursor, count=self.batch_size)
        next_cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        entries = []
        gone = []
        for entry in reply[1]:
            if entry is None:
                continue
            entry_id, fields = entry
            if fields:
                entries.append((entry_id, fields))
            else:  # deleted from the stream while pending (Redis 6.2 shape)
                gone.append(entry_id)
        if gone:
            self.redis.xack(self.stream, self.group, *gone)
        if next_cursor == "0-0":  # a full pass over the pending list: forget long-dead, empty consumers
            self._forget_dead_consumers()
        return next_cursor, entries

    def _forget_dead_consumers(self, idle_ms: int = 3_600_000) -> None:
        for info in self.redis.xinfo_consumers(self.stream, self.group):
            name = info["name"].decode() if isinstance(info["name"], bytes) else str(info["name"])
            if name != self.name and int(info["pending"]) == 0 and int(info["idle"]) > idle_ms:
                self.redis.xgroup_delconsumer(self.stream, self.group, name)

    def _pending_count(self) -> int:
        info = self.redis.xpending(self.stream, self.group)
        return int(info["pending"])

    # ------------------------------------------------------------------ one batch

    def _day(self, occurred_text: str) -> str:
        # all UTC offsets are whole minutes: the minute plus the offset decides the local day
        zone = "Z" if occurred_text[-1] in "Zz" else occurred_text[-6:]
        key = occurred_text[:16] + zone
        day = self._day_cache.get(key)
        if day is None:
            if len(self._day_cache) > 200_000:
                self._day_cache.clear()
            parsed = datetime.fromisoformat(occurred_text.replace("z", "Z").replace("Z", "+00:00"))
            day = self._day_cache[key] = parsed.astimezone(self.tz).date().isoformat()
        return day

    def prepare(self, entries: list[tuple[bytes, Any]], now: datetime) -> _Batch:
        """Step 1 for a batch: the loader's decision for every entry (:func:`metricsmith.ingest.judge_many`,
        the batch form of :func:`metricsmith.ingest.judge`), never raising."""
        with gc_paused():
            return self._prepare(entries, now)

    def _prepare(self, entries: list[tuple[bytes, Any]], now: datetime) -> _Batch:
        batch = _Batch(now=now)
        now_text = now.isoformat()
        payloads = [fields[1] if type(fields) is list and len(fields) == 2 and fields[0] == FIELD
                    else _fields(fields).get(FIELD) for _, fields in entries]
        records = _parse_all([b"" if payload is None else payload for payload in payloads])
        results = judge_many(records, now, now_text)
        seen: set[str] = set()
        for (entry_id, fields), payload, record, result in zip(entries, payloads, records, results, strict=True):
            batch.ids.append(entry_id)
            if payload is None:
                batch.rejects.append((_entry(entry_id), repr(_fields(fields)), Rejection(
                    "invalid_json", "stream entry has no 'e' field")))
            elif isinstance(result, Rejection):
                batch.rejects.append((_entry(entry_id), raw_text(payload), result))
            else:
                try:
                    self._add(batch, seen, record, result)
                except Exception as exc:  # noqa: BLE001 - one entry must never wedge the stream
                    batch.rejects.append((_entry(entry_id), raw_text(payload), _unjudged(exc)))
        return batch

    def _add(self, batch: _Batch, seen: set[str], record: Any, result: tuple[str, str] | ValidEvent) -> None:
        """A valid event: its Lua arguments, and its COPY line unless the batch had its id already."""
        if isinstance(result, tuple):  # the fast path accepted the record as it is
            event_id, line = result
            day = self._day(record["occurred_at"])
            event_type = record["event_type"]
            user = record.get("user_id") or ""
            revenue = record.get("revenue_cents") or 0
        else:
            event_id, line = result.event_id, copy_line(result.row(batch.now))
            day = result.occurred_at.astimezone(self.tz).date().isoformat()
            event_type, user, revenue = result.event_type, result.user_id or "", result.revenue_cents
        bucket = str(bucket_index(PURCHASE_BUCKETS_CENTS, revenue)) if event_type == PURCHASE else ""
        batch.valid += 1
        batch.args.extend((event_id, day, event_type, user, revenue, bucket))
        if event_id not in seen:
            seen.add(event_id)
            batch.lines.append(line)

    def process(self, entries: list[tuple[bytes, Any]]) -> ConsumeStats:
        """Apply one batch: Redis (atomic, de-duplicated), Postgres, then XACK. Safe to repeat."""
        return self.commit(self.prepare(entries, datetime.now(UTC)))

    def commit(self, batch: _Batch) -> ConsumeStats:
        """Steps 2-4 for a prepared batch."""
        stats = ConsumeStats(batches=1, entries=len(batch.ids))
        with apply_lock(self.redis, self.keys, shard=self.shard, ttl_ms=self.lock_ttl_ms, sleep_s=0.005,
                        wait_s=max(60.0, self.lock_ttl_ms / 1000 * 3)):
            # Redis and PostgreSQL each apply the batch idempotently (seen set / primary key), so
            # they work at the same time; the entries are acknowledged only once both are done
            if self._redis_side is None:
                self._redis_side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ms-realtime-redis")
            applied = self._redis_side.submit(self.apply_redis, batch)
            try:
                _fault_pause()
                summary = self._store(batch)
            finally:
                new = applied.result()  # never leave the lock with the script still running
            _fault_pause()
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.stream, self.group, *batch.ids)
        pipe.xdel(self.stream, *batch.ids)
        pipe.execute()
        stats.applied = new
        stats.redis_duplicates = batch.valid - new
        stats.loaded = summary.loaded
        stats.pg_duplicates = batch.valid - summary.loaded
        stats.quarantined = summary.quarantined
        return stats

    def apply_redis(self, batch: _Batch, *, into: Keys | None = None) -> int:
        """Step 2 alone: ``lua/apply.lua``; returns how many events were new to Redis.

        ``into``: another key namespace (default: this consumer's); the script touches only the
        keys it is given."""
        if not batch.args:
            return 0
        windows = list(EVENTS_RATE.windows)
        days = list(dict.fromkeys(batch.args[1::6]))
        keys = apply_keys(into or self.keys, events_total=EVENTS_TOTAL.name, revenue_total=REVENUE_TOTAL.name,
                          active_users=ACTIVE_USERS.name, purchase_value=PURCHASE_VALUE.name,
                          events_rate=EVENTS_RATE.name, windows=windows, days=days)
        args = [self.ttl_seconds, repr(float(self.clock())), LABEL_SEP, RATE_KEEP_BUCKETS, len(windows),
                orjson.dumps(batch.args), *[w / RATE_RESOLUTION for w in windows], *days]
        if not self.cluster:
            return int(self._apply(keys=keys, args=args))
        return self._apply_replicated(keys, args)

    def _apply_replicated(self, keys: list[str], args: list[Any], timeout_ms: int = 2000) -> int:
        """On a cluster: the script and ``WAIT 1`` on ONE connection to the master of the metric
        state's slot (WAIT counts that connection's writes), so a failover after the batch was
        confirmed cannot lose it. Raises ``redis.TimeoutError`` (the batch stays pending and is
        retried: re-applying is harmless) when that master has replicas and none confirmed; a master
        without a replica left is logged once and trusted. A dead or moved master refreshes the
        slot map and raises ``redis.ConnectionError`` (retried too)."""
        node = self.redis.get_node_from_key(keys[0])
        pipe = self.redis.get_redis_connection(node).pipeline(transaction=False)
        self._apply(keys=keys, args=args, client=pipe)
        alone = self._alone_until.get(node.name, 0.0) > time.monotonic()  # no replica to wait for
        pipe.execute_command("WAIT", 0 if alone else 1, 0 if alone else timeout_ms)
        try:
            new, acked = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            rediscluster.refresh(self.redis)
            if isinstance(exc, redis.ResponseError) and not str(exc).startswith(("MOVED", "ASK", "CLUSTERDOWN",
                                                                                    "TRYAGAIN", "READONLY")):
                raise
            raise redis.ConnectionError(f"the master of the metric state ({node.name}) is gone: {exc}") from exc
        if alone:
            return int(new)
        if int(acked) < 1:
            replicas = int(self.redis.get_redis_connection(node).info("replication").get("connected_slaves", 0))
            if replicas > 0:
                raise redis.TimeoutError(f"no replica of {node.name} confirmed the batch within {timeout_ms} ms")
            self._alone_until[node.name] = time.monotonic() + 10.0  # look for a replica again in 10 s
            if not self._unreplicated_warned:
                self._unreplicated_warned = True
                self.log(f"realtime consumer {self.name}: the master {node.name} has no replica connected; "
                         "applying without replication (losing it too could lose metric updates; "
                         "`metricsmith realtime reconcile` repairs them from raw.events)")
        else:
            self._unreplicated_warned = False
        return int(new)

    def _store(self, batch: _Batch) -> LoadSummary:
        conn = self.conn
        with conn.transaction():
            rejects: list[tuple[Any, ...]] = []
            if batch.rejects:
                fresh = {row[0] for row in conn.execute(
                    "insert into metricsmith.realtime_stream_rejects (stream, entry_id) "
                    "select %s, unnest(%s::text[]) on conflict do nothing returning entry_id",
                    (self.stream, [entry for entry, _, _ in batch.rejects])).fetchall()}
                rejects = [("stream", None, why.reason, f"{why.detail} (stream entry {entry})", raw)
                           for entry, raw, why in batch.rejects if entry in fresh]
            return store_lines(conn, batch.lines, rejects)


def _fault_pause() -> None:
    """Test hook: ``METRICSMITH_REALTIME_FAULT_PAUSE_MS`` widens the windows between the steps of a
    batch so that a test's random SIGKILLs land between them (unset in normal use)."""
    pause = os.environ.get("METRICSMITH_REALTIME_FAULT_PAUSE_MS")
    if pause:
        time.sleep(int(pause) / 1000 * secrets.randbelow(100) / 100)


class Stoppable(Protocol):
    def stop(self, *_: Any) -> None: ...


def install_signal_handlers(consumer: Stoppable) -> None:
    signal.signal(signal.SIGTERM, consumer.stop)
    signal.signal(signal.SIGINT, consumer.stop)


def day_bounds(day: date, settings: Settings) -> tuple[datetime, datetime]:
    """[start, end) of a reporting-time-zone day as aware datetimes."""
    tz = settings.tz
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    nxt = day + timedelta(days=1)
    return start, datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)


__all__ = ["REASONS", "ConsumeStats", "Keys", "StreamConsumer", "track", "track_many"]
