"""Direct realtime metrics API on Redis: counters, gauges, histograms, sliding-window rates.

Usage::

    svc = RealtimeMetricsService()
    svc.declare_counter("api:calls", "API calls")
    svc.increment_counter("api:calls", 1)
    svc.get_counter("api:calls")            # -> 1

Storage (every key under ``settings.redis_prefix + "rt:"``; the layout is
:mod:`metricsmith.realtime.keys`, the Lua scripts ``lua/*.lua``): a counter or gauge is one hash per
metric (field = label values); a histogram one hash per label set (per-bucket counts, ``sum``,
``count``; cumulative on read); a rate one hash per window and label set whose fields are
time buckets of ``window / 600`` seconds. The clock is injectable (``clock=``) and is passed to
Redis, so rate windows slide exactly as the caller's clock says.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from metricsmith import rediscluster
from metricsmith.config import Settings, load_settings
from metricsmith.realtime.fastread import DirectReader
from metricsmith.realtime.keys import Keys
from metricsmith.realtime.registry import (
    BUILTINS,
    RATE_RESOLUTION,
    MetricSpec,
    MetricType,
    RealtimeMetricError,
    Registry,
    as_number,
    bucket_index,
    check_type,
    tidy,
)
from metricsmith.realtime.scripts import MARK_LUA

Labels = Mapping[str, Any] | None

#: rate buckets kept per hash (the window's buckets plus two, so the oldest can be interpolated)
RATE_KEEP_BUCKETS = RATE_RESOLUTION + 2

@dataclass(frozen=True)
class HistogramValue:
    buckets: tuple[float, ...]
    cumulative: tuple[int, ...]  # one per bucket plus +Inf
    sum: float
    count: int

    def quantile(self, q: float) -> float:
        """Estimate like Prometheus' histogram_quantile: linear inside the bucket holding rank q*count."""
        if not 0 <= q <= 1:
            raise RealtimeMetricError(f"quantile must be within 0..1, got {q}")
        if self.count == 0:
            return math.nan
        rank = q * self.count
        previous_bound, previous_count = 0.0, 0
        for index, bound in enumerate(self.buckets):
            count = self.cumulative[index]
            if count >= rank and count > 0:
                in_bucket = count - previous_count
                if in_bucket == 0:
                    return bound
                return previous_bound + (bound - previous_bound) * (rank - previous_count) / in_bucket
            previous_bound, previous_count = bound, count
        return self.buckets[-1] if self.buckets else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {"buckets": list(self.buckets), "cumulative": list(self.cumulative), "sum": tidy(self.sum),
                "count": self.count}


def rate_estimate(buckets: Mapping[bytes | str, bytes | str | int], window: int, now: float) -> float:
    """Events in ``(now - window, now]`` from the bucket hash; the oldest bucket is interpolated."""
    width = window / RATE_RESOLUTION
    current = math.floor(now / width)
    start = now - window
    first = math.floor(start / width)
    total = 0.0
    for field, raw in buckets.items():
        idx = int(field)
        if first < idx <= current:
            total += int(raw)
        elif idx == first:
            total += int(raw) * (((first + 1) * width - start) / width)
    return total


class RealtimeMetricsService:
    """Realtime metrics on Redis. ``clock`` returns epoch seconds (injectable for tests)."""

    def __init__(self, settings: Settings | None = None, *, client: Any = None,
                 clock: Callable[[], float] = time.time, declare_builtins: bool = True) -> None:
        self.settings = settings or load_settings()
        # redis-py's stubs type replies as bytes | str; this client never decodes, so treat replies as Any
        self.redis: Any = client if client is not None else rediscluster.client(self.settings)
        self.clock = clock
        self.keys = Keys.of(self.settings)
        self._direct_reads = not rediscluster.is_cluster(self.redis)
        self.registry = Registry()
        self._mark = self.redis.register_script(MARK_LUA)
        self._read_lock = threading.Lock()
        self._reader: DirectReader | None = None
        self._plain: dict[tuple[str, MetricType], tuple[str, str]] = {}
        if declare_builtins:
            for spec in BUILTINS:
                self.declare(spec)

    def close(self) -> None:
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # ------------------------------------------------------------------ declaring

    def declare(self, spec: MetricSpec) -> MetricSpec:
        """Declare a metric (idempotent; a different declaration under the same name is an error)."""
        local = self.registry.get(spec.name)
        if local == spec:
            return spec
        if not self.redis.hsetnx(self.keys.registry, spec.name, spec.to_json()):
            stored = self.redis.hget(self.keys.registry, spec.name)
            if stored is not None:
                self.registry.add(MetricSpec.from_json(stored))
        self.redis.set(self.keys.alive, "1")
        return self.registry.add(spec)

    def declare_counter(self, name: str, help: str = "", labels: Sequence[str] = ()) -> MetricSpec:
        return self.declare(MetricSpec(name, MetricType.COUNTER, help, tuple(labels)))

    def declare_gauge(self, name: str, help: str = "", labels: Sequence[str] = ()) -> MetricSpec:
        return self.declare(MetricSpec(name, MetricType.GAUGE, help, tuple(labels)))

    def declare_histogram(self, name: str, help: str = "", labels: Sequence[str] = (),
                          buckets: Sequence[float] = ()) -> MetricSpec:
        return self.declare(MetricSpec(name, MetricType.HISTOGRAM, help, tuple(labels),
                                       buckets=tuple(float(b) for b in buckets)))

    def declare_rate(self, name: str, help: str = "", labels: Sequence[str] = (),
                     windows: Sequence[int] = ()) -> MetricSpec:
        return self.declare(MetricSpec(name, MetricType.RATE, help, tuple(labels), windows=tuple(windows)))

    def spec(self, name: str) -> MetricSpec | None:
        spec = self.registry.get(name)
        if spec is None:
            stored = self.redis.hget(self.keys.registry, name)
            if stored is not None:
                spec = self.registry.add(MetricSpec.from_json(stored))
        return spec

    def specs(self) -> list[MetricSpec]:
        """Every declared metric (this process's and those other processes stored in Redis)."""
        for name, text in self.redis.hgetall(self.keys.registry).items():
            if self.registry.get(name.decode()) is None:
                self.registry.add(MetricSpec.from_json(text))
        return list(self.registry)

    # ------------------------------------------------------------------ writes

    def increment_counter(self, name: str, amount: float = 1, labels: Labels = None) -> int | float:
        spec = check_type(self.spec(name), name, MetricType.COUNTER, "increment_counter")
        value = as_number(name, amount)
        if value < 0:
            raise RealtimeMetricError(f"{name} is a counter (monotonic): increment must be >= 0, got {amount}")
        return tidy(float(self.redis.hincrbyfloat(self.keys.counter(name), spec.label_key(labels), value)))

    def set_gauge(self, name: str, value: float, labels: Labels = None) -> None:
        spec = check_type(self.spec(name), name, MetricType.GAUGE, "set_gauge")
        self.redis.hset(self.keys.gauge(name), spec.label_key(labels), repr(as_number(name, value)))

    def inc_gauge(self, name: str, amount: float = 1, labels: Labels = None) -> int | float:
        spec = check_type(self.spec(name), name, MetricType.GAUGE, "inc_gauge")
        return tidy(float(self.redis.hincrbyfloat(self.keys.gauge(name), spec.label_key(labels),
                                                  as_number(name, amount))))

    def dec_gauge(self, name: str, amount: float = 1, labels: Labels = None) -> int | float:
        return self.inc_gauge(name, -as_number(name, amount), labels)

    def observe_histogram(self, name: str, value: float, labels: Labels = None) -> None:
        spec = check_type(self.spec(name), name, MetricType.HISTOGRAM, "observe_histogram")
        number = as_number(name, value)
        label_key = spec.label_key(labels)
        key = self.keys.histogram(name, label_key)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(key, str(bucket_index(spec.buckets, number)), 1)
        pipe.hincrbyfloat(key, "sum", number)
        pipe.hincrby(key, "count", 1)
        pipe.sadd(self.keys.histogram_index(name), label_key)
        pipe.execute()

    def mark(self, name: str, count: int = 1, labels: Labels = None) -> None:
        """Record ``count`` events now for a RATE metric (every declared window)."""
        spec = check_type(self.spec(name), name, MetricType.RATE, "mark")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise RealtimeMetricError(f"{name}: mark() takes a whole count >= 0, got {count!r}")
        label_key = spec.label_key(labels)
        keys = [self.keys.rate(name, w, label_key) for w in spec.windows]
        self.redis.sadd(self.keys.rate_index(name), label_key)
        self._mark(keys=keys, args=[repr(float(self.clock())), count, RATE_KEEP_BUCKETS,
                                *[w / RATE_RESOLUTION for w in spec.windows]])

    # ------------------------------------------------------------------ reads

    def _hget(self, key: str, field: str) -> bytes | None:
        """HGET on a dedicated connection (the hot read path, :mod:`metricsmith.realtime.fastread`);
        on a cluster through the client (it routes the key to its master)."""
        if not self._direct_reads:
            routed: bytes | None = self.redis.hget(key, field)
            return routed
        with self._read_lock:
            try:
                if self._reader is None:
                    self._reader = DirectReader(self.redis.connection_pool)
                return self._reader.hget(key, field)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass  # the reader closed its connection; it reconnects on the next call
        result: bytes | None = self.redis.hget(key, field)  # once more through the pool (reconnects)
        return result

    def _where(self, spec: MetricSpec, labels: Labels) -> tuple[str, str]:
        """(hash key, field) of a counter's or gauge's series; kept for label-less reads (the hot
        path: no key or label formatting per call). Bad labels raise every time (never kept)."""
        if labels:
            key = self.keys.counter(spec.name) if spec.type is MetricType.COUNTER else self.keys.gauge(spec.name)
            return key, spec.label_key(labels)
        where = self._plain.get((spec.name, spec.type))
        if where is None:
            key = self.keys.counter(spec.name) if spec.type is MetricType.COUNTER else self.keys.gauge(spec.name)
            where = self._plain[(spec.name, spec.type)] = (key, spec.label_key(None))
        return where

    def get_counter(self, name: str, labels: Labels = None) -> int | float:
        spec = check_type(self.spec(name), name, MetricType.COUNTER, "get_counter")
        raw = self._hget(*self._where(spec, labels))
        return 0 if raw is None else tidy(float(raw))

    def get_gauge(self, name: str, labels: Labels = None) -> int | float | None:
        """The gauge value, or None when it was never set."""
        spec = check_type(self.spec(name), name, MetricType.GAUGE, "get_gauge")
        raw = self._hget(*self._where(spec, labels))
        return None if raw is None else tidy(float(raw))

    def get_histogram(self, name: str, labels: Labels = None) -> HistogramValue:
        spec = check_type(self.spec(name), name, MetricType.HISTOGRAM, "get_histogram")
        raw = self.redis.hgetall(self.keys.histogram(name, spec.label_key(labels)))
        return histogram_from_hash(spec, raw)

    def get_rate(self, name: str, window: int = 60, labels: Labels = None) -> float:
        """Events per second over the last ``window`` seconds (a declared window)."""
        return self.get_rate_count(name, window, labels) / window

    def get_rate_count(self, name: str, window: int = 60, labels: Labels = None) -> float:
        """Estimated number of events in the last ``window`` seconds."""
        spec = check_type(self.spec(name), name, MetricType.RATE, "get_rate")
        if window not in spec.windows:
            raise RealtimeMetricError(f"{name} keeps windows {list(spec.windows)} seconds; {window} is not one")
        raw = self.redis.hgetall(self.keys.rate(name, window, spec.label_key(labels)))
        return rate_estimate(raw, window, self.clock())

    # ------------------------------------------------------------------ enumeration

    def series(self, spec: MetricSpec) -> Iterator[tuple[dict[str, str], Any]]:
        """Every label set of a metric with its current value (number, HistogramValue or {window: rate})."""
        if spec.type in (MetricType.COUNTER, MetricType.GAUGE):
            key = self.keys.counter(spec.name) if spec.type is MetricType.COUNTER else self.keys.gauge(spec.name)
            for field, raw in sorted(self.redis.hgetall(key).items()):
                yield spec.labels_of(field.decode()), tidy(float(raw))
        elif spec.type is MetricType.HISTOGRAM:
            for member in sorted(self.redis.smembers(self.keys.histogram_index(spec.name))):
                label_key = member.decode()
                raw = self.redis.hgetall(self.keys.histogram(spec.name, label_key))
                if raw:
                    yield spec.labels_of(label_key), histogram_from_hash(spec, raw)
        else:
            now = self.clock()
            for member in sorted(self.redis.smembers(self.keys.rate_index(spec.name))):
                label_key = member.decode()
                rates = {w: rate_estimate(self.redis.hgetall(self.keys.rate(spec.name, w, label_key)), w, now) / w
                         for w in spec.windows}
                yield spec.labels_of(label_key), rates


def histogram_from_hash(spec: MetricSpec, raw: Mapping[bytes, bytes]) -> HistogramValue:
    counts = [int(float(raw.get(str(i).encode(), 0))) for i in range(len(spec.buckets) + 1)]
    cumulative, running = [], 0
    for count in counts:
        running += count
        cumulative.append(running)
    return HistogramValue(spec.buckets, tuple(cumulative), float(raw.get(b"sum", 0)),
                          int(float(raw.get(b"count", 0))))
