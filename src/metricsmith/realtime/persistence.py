"""Snapshots of the realtime metrics to Postgres, and restore when Redis comes back empty.

``snapshot()`` writes every series of every declared metric to
``metricsmith.realtime_metrics_cache`` under one ``snapshot_id`` / ``as_of`` (and prunes per-day
series older than the retention from Redis, and snapshots older than ``keep_days``).

``restore()`` runs when Redis has lost its data (the ``rt:alive`` marker is gone, or ``force``):
declarations and the directly-written metrics (API counters, gauges, histograms, drift) come
from the latest snapshot; the event-derived per-day metrics of the days in the snapshot (within
the retention) are rebuilt from the snapshot's day plus every event that reached ``raw.events``
since - i.e. recomputed from ``raw.events`` for those days, which is exact (a snapshot value
plus "events received after as_of" would miscount events that were in flight at as_of).
Rates are windows over the last hour at most and restart empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from metricsmith import db
from metricsmith.config import Settings, load_settings
from metricsmith.realtime.locks import every_apply_lock
from metricsmith.realtime.reconcile import apply_truth, day_truth
from metricsmith.realtime.registry import EVENT_DERIVED, LABEL_SEP, MetricSpec, MetricType
from metricsmith.realtime.service import HistogramValue, RealtimeMetricsService
from metricsmith.realtime.shards import stored_count

_EVENT_DERIVED = {spec.name for spec in EVENT_DERIVED}


@dataclass
class SnapshotResult:
    snapshot_id: int
    as_of: datetime
    rows: int
    pruned_series: int

    def render(self) -> str:
        return (f"snapshot {self.snapshot_id} at {self.as_of.isoformat(timespec='seconds')}: {self.rows} series "
                f"-> metricsmith.realtime_metrics_cache; pruned {self.pruned_series} expired day series from Redis")


@dataclass
class RestoreResult:
    restored: bool
    snapshot_id: int | None
    series: int
    days: list[date]
    message: str

    def render(self) -> str:
        return self.message


def prune_days(service: RealtimeMetricsService, retention_days: int) -> int:
    """Drop per-day series of built-in metrics older than the retention (they stay in the snapshots)."""
    oldest = (datetime.now(service.settings.tz).date() - timedelta(days=retention_days - 1)).isoformat()
    r, keys, removed = service.redis, service.keys, 0
    for spec in EVENT_DERIVED:
        if spec.type is MetricType.HISTOGRAM:
            for member in r.smembers(keys.histogram_index(spec.name)):
                if member.decode() < oldest:
                    r.delete(keys.histogram(spec.name, member.decode()))
                    r.srem(keys.histogram_index(spec.name), member)
                    removed += 1
            continue
        key = keys.counter(spec.name) if spec.type is MetricType.COUNTER else keys.gauge(spec.name)
        old = [f for f in r.hkeys(key) if f.decode().split(LABEL_SEP, 1)[0] < oldest]
        if old:
            removed += r.hdel(key, *old)
    return removed


def _row(spec: MetricSpec, labels: dict[str, str], value: Any) -> tuple[Any, ...]:
    detail: dict[str, Any] = {"spec": spec.to_json()}
    number: float | None
    if isinstance(value, HistogramValue):
        detail.update(value.as_dict())
        number = float(value.count)
    elif isinstance(value, dict):
        detail["rates"] = {str(w): v for w, v in value.items()}
        number = None
    else:
        number = float(value)
    return (spec.name, Jsonb(labels), str(spec.type), number, Jsonb(detail), list(spec.windows) or None)


def snapshot(settings: Settings | None = None, *, service: RealtimeMetricsService | None = None,
             retention_days: int = 3, keep_days: int = 7) -> SnapshotResult:
    settings = settings or load_settings()
    svc = service or RealtimeMetricsService(settings)
    pruned = prune_days(svc, retention_days)
    rows = [_row(spec, labels, value) for spec in svc.specs() for labels, value in svc.series(spec)]
    as_of = datetime.now(UTC)
    with db.connect(settings, autocommit=True) as conn, conn.transaction():
        row = conn.execute("select nextval('metricsmith.realtime_snapshot_seq')").fetchone()
        assert row is not None
        snapshot_id = int(row[0])
        with conn.cursor() as cur:
            cur.executemany(
                "insert into metricsmith.realtime_metrics_cache (snapshot_id, metric, labels, metric_type, value, "
                "value_detail, window_seconds, as_of) values (%s, %s, %s, %s, %s, %s, %s, %s)",
                [(snapshot_id, *r[:6], as_of) for r in rows])
        conn.execute("delete from metricsmith.realtime_metrics_cache where as_of < %s",
                     (as_of - timedelta(days=keep_days),))
    return SnapshotResult(snapshot_id, as_of, len(rows), pruned)


def redis_is_empty(service: RealtimeMetricsService) -> bool:
    return not service.redis.exists(service.keys.alive, service.keys.registry)


def restore(settings: Settings | None = None, *, service: RealtimeMetricsService | None = None,
            force: bool = False, retention_days: int = 3) -> RestoreResult:
    """Refill an emptied Redis from the latest snapshot plus raw.events (see module docstring)."""
    settings = settings or load_settings()
    probe = service or RealtimeMetricsService(settings, declare_builtins=False)
    if not force and not redis_is_empty(probe):
        return RestoreResult(False, None, 0, [], "Redis holds realtime data; nothing to restore (use --force)")
    svc = service or RealtimeMetricsService(settings)
    r, keys = svc.redis, svc.keys
    today = datetime.now(settings.tz).date()
    oldest = today - timedelta(days=retention_days - 1)
    shards = max(stored_count(r, keys), settings.stream_shards)
    with every_apply_lock(r, keys, shards), db.connect(settings, autocommit=True) as conn:
        conn.execute("set time zone 'UTC'")
        latest = conn.execute("select max(snapshot_id) from metricsmith.realtime_metrics_cache").fetchone()
        snapshot_id = latest[0] if latest else None
        series = 0
        days: set[date] = {today}
        if snapshot_id is not None:
            for _metric, labels, _kind, value, detail in conn.execute(
                    "select metric, labels, metric_type, value, value_detail from metricsmith.realtime_metrics_cache "
                    "where snapshot_id = %s order by metric", (snapshot_id,)).fetchall():
                spec = svc.declare(MetricSpec.from_json(detail["spec"]))
                if spec.name in _EVENT_DERIVED:
                    day = date.fromisoformat(labels["day"])
                    if day >= oldest:
                        days.add(day)
                    continue
                series += _restore_series(svc, spec, labels, value, detail)
        for day in sorted(days):
            apply_truth(svc, day_truth(conn, day, settings), retention_days * 86_400)
    r.set(keys.alive, "1")
    message = (f"restored {series} series from snapshot {snapshot_id} and recomputed "
               f"{len(days)} day(s) of event metrics from raw.events ({', '.join(d.isoformat() for d in sorted(days))})"
               if snapshot_id is not None else
               f"no snapshot yet; recomputed {len(days)} day(s) of event metrics from raw.events")
    return RestoreResult(True, snapshot_id, series, sorted(days), message)


def _restore_series(svc: RealtimeMetricsService, spec: MetricSpec, labels: dict[str, str], value: float | None,
                    detail: dict[str, Any]) -> int:
    r, keys = svc.redis, svc.keys
    label_key = spec.label_key(labels)
    if spec.type is MetricType.COUNTER and value is not None:
        r.hset(keys.counter(spec.name), label_key, repr(float(value)))
    elif spec.type is MetricType.GAUGE and value is not None:
        r.hset(keys.gauge(spec.name), label_key, repr(float(value)))
    elif spec.type is MetricType.HISTOGRAM:
        cumulative = detail["cumulative"]
        mapping: dict[str, Any] = {"sum": detail["sum"], "count": detail["count"]}
        previous = 0
        for index, total in enumerate(cumulative):
            mapping[str(index)] = total - previous
            previous = total
        r.hset(keys.histogram(spec.name, label_key), mapping=mapping)
        r.sadd(keys.histogram_index(spec.name), label_key)
    else:
        return 0  # rates restart empty
    return 1
