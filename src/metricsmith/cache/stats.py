"""Cache statistics: counters and latency histograms per tier, local and across processes.

Each process counts in memory (cheap: a few integer additions under a lock) and flushes the
deltas to one Redis hash every ``stats_flush_every`` seconds, so ``metricsmith cache stats``
shows the whole fleet. Latencies go into fixed log-spaced buckets (Prometheus histogram
style); percentiles are interpolated inside a bucket.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Upper bounds (seconds) of the latency buckets: 1 µs .. 10 s, about 4 per decade.
LATENCY_BUCKETS: tuple[float, ...] = tuple(
    round(m * 10.0**e, 9) for e in range(-6, 1) for m in (1.0, 1.8, 3.2, 5.6)
) + (10.0,)

TIERS = ("l1", "l2", "db")
COUNTERS = (
    "l1_hits", "l1_misses", "l2_hits", "l2_misses", "computations", "stampedes_avoided",
    "early_refreshes", "errors", "redis_errors", "invalidations", "keys_invalidated", "stale_writes_refused",
)


def _bucket_index(seconds: float) -> int:
    return bisect.bisect_left(LATENCY_BUCKETS, seconds)


def percentile_from_buckets(counts: list[int], q: float) -> float | None:
    """Estimated ``q`` quantile (0..1) of a histogram; None when empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            low = LATENCY_BUCKETS[index - 1] if index > 0 else 0.0
            high = LATENCY_BUCKETS[index] if index < len(LATENCY_BUCKETS) else LATENCY_BUCKETS[-1] * 2
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return LATENCY_BUCKETS[-1]


@dataclass
class StatsSnapshot:
    counters: dict[str, int]
    latency: dict[str, list[int]]
    degraded: bool = False
    scope: str = "process"
    extra: dict[str, Any] = field(default_factory=dict)
    latency_sum_us: dict[str, int] = field(default_factory=dict)

    def hit_rate(self, tier: str) -> float | None:
        hits, misses = self.counters.get(f"{tier}_hits", 0), self.counters.get(f"{tier}_misses", 0)
        return hits / (hits + misses) if hits + misses else None

    @property
    def overall_hit_rate(self) -> float | None:
        """Share of reads answered without computing (L1 or L2 hit)."""
        served = self.counters.get("l1_hits", 0) + self.counters.get("l2_hits", 0)
        reads = served + self.counters.get("l2_misses", 0)
        return served / reads if reads else None

    def percentile(self, tier: str, q: float) -> float | None:
        return percentile_from_buckets(self.latency.get(tier, []), q)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scope": self.scope, "degraded": self.degraded, **self.counters}
        out["hit_rate"] = {t: self.hit_rate(t) for t in ("l1", "l2")}
        out["hit_rate"]["overall"] = self.overall_hit_rate
        out["latency_seconds"] = {
            tier: {f"p{int(q * 100)}": self.percentile(tier, q) for q in (0.5, 0.95, 0.99)}
            | {"count": sum(self.latency.get(tier, []))}
            for tier in TIERS
        }
        out.update(self.extra)
        return out


class CacheStats:
    """Thread-safe counters of one process, with deltas not yet flushed to Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._latency = {tier: [0] * (len(LATENCY_BUCKETS) + 1) for tier in TIERS}
        self._sum_us = dict.fromkeys(TIERS, 0)
        self._pending: dict[str, int] = {}

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + amount
            self._pending[name] = self._pending.get(name, 0) + amount

    def observe(self, tier: str, seconds: float) -> None:
        index = _bucket_index(seconds)
        with self._lock:
            self._latency[tier][index] += 1
            key = f"lat:{tier}:{index}"
            self._pending[key] = self._pending.get(key, 0) + 1
            micros = int(seconds * 1e6)
            self._sum_us[tier] += micros
            key = f"latsum:{tier}"
            self._pending[key] = self._pending.get(key, 0) + micros

    def take_pending(self) -> dict[str, int]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def restore_pending(self, pending: Mapping[str, int]) -> None:
        with self._lock:
            for key, value in pending.items():
                self._pending[key] = self._pending.get(key, 0) + value

    def snapshot(self, degraded: bool = False) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(dict(self._counters), {t: list(v) for t, v in self._latency.items()}, degraded,
                                 latency_sum_us=dict(self._sum_us))

    def reset(self) -> None:
        with self._lock:
            self._counters = dict.fromkeys(COUNTERS, 0)
            self._latency = {tier: [0] * (len(LATENCY_BUCKETS) + 1) for tier in TIERS}
            self._sum_us = dict.fromkeys(TIERS, 0)
            self._pending = {}


def snapshot_from_hash(raw: Mapping[bytes | str, bytes | str], degraded: bool = False) -> StatsSnapshot:
    """Rebuild a fleet-wide snapshot from the Redis stats hash."""
    counters = dict.fromkeys(COUNTERS, 0)
    latency = {tier: [0] * (len(LATENCY_BUCKETS) + 1) for tier in TIERS}
    sums = dict.fromkeys(TIERS, 0)
    for key_raw, value_raw in raw.items():
        key = key_raw.decode() if isinstance(key_raw, bytes) else key_raw
        value = int(value_raw)
        if key.startswith("latsum:"):
            sums[key.split(":", 1)[1]] = value
        elif key.startswith("lat:"):
            _, tier, index = key.split(":")
            if tier in latency and 0 <= int(index) < len(latency[tier]):
                latency[tier][int(index)] += value
        else:
            counters[key] = value
    return StatsSnapshot(counters, latency, degraded, scope="all processes", latency_sum_us=sums)


def prometheus_families(snapshot: StatsSnapshot, namespace: str = "metricsmith_cache") -> list[dict[str, Any]]:
    """The statistics as metric families (name, type, help, samples) for a Prometheus exposition.

    Each sample is ``(name, labels, value)``; :func:`render_prometheus` prints the text format.
    """
    c = snapshot.counters
    families: list[dict[str, Any]] = [
        {"name": f"{namespace}_requests_total", "type": "counter",
         "help": "Cache lookups per tier and result.",
         "samples": [(f"{namespace}_requests_total", {"tier": tier, "result": result}, c.get(f"{tier}_{result}", 0))
                     for tier in ("l1", "l2") for result in ("hits", "misses")]},
    ]
    for name, help_text in (
        ("computations", "Values computed from PostgreSQL."),
        ("stampedes_avoided", "Concurrent misses that waited for another computation instead of computing."),
        ("early_refreshes", "Values recomputed early by the XFetch rule before they expired."),
        ("errors", "Errors while reading or writing the cache (the read still succeeded)."),
        ("invalidations", "Invalidation requests handled."),
    ):
        families.append({"name": f"{namespace}_{name}_total", "type": "counter", "help": help_text,
                         "samples": [(f"{namespace}_{name}_total", {}, c.get(name, 0))]})
    families.append({"name": f"{namespace}_degraded", "type": "gauge",
                     "help": "1 while Redis is unreachable and reads go straight to PostgreSQL.",
                     "samples": [(f"{namespace}_degraded", {}, int(snapshot.degraded))]})
    samples: list[tuple[str, dict[str, str], float]] = []
    for tier in TIERS:
        counts = snapshot.latency.get(tier, [])
        cumulative = 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=False):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            samples.append((f"{namespace}_latency_seconds_bucket", {"tier": tier, "le": le}, cumulative))
        samples.append((f"{namespace}_latency_seconds_sum", {"tier": tier},
                        snapshot.latency_sum_us.get(tier, 0) / 1e6))
        samples.append((f"{namespace}_latency_seconds_count", {"tier": tier}, cumulative))
    families.append({"name": f"{namespace}_latency_seconds", "type": "histogram",
                     "help": "Latency of cache reads answered by each tier (db = computed).", "samples": samples})
    return families


def render_prometheus(families: Iterable[Mapping[str, Any]]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family['name']} {family['help']}")
        lines.append(f"# TYPE {family['name']} {family['type']}")
        for name, labels, value in family["samples"]:
            label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")
    return "\n".join(lines) + "\n"
