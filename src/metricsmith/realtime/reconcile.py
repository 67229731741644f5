"""Reconciliation: recompute the event-derived realtime metrics from ``raw.events`` and correct Redis.

For each reporting-time-zone day asked for (default: today), under the apply lock of every
stream shard (so Redis and Postgres are compared on a batch boundary of each), it computes from ``raw.events``:
events by type, revenue, distinct users, the purchase value histogram; compares with Redis;
sets every differing series to the expected value; records each correction in
``metricsmith.realtime_corrections``; and publishes the drift as the gauge
``metricsmith_realtime_drift{metric,day}`` plus ``metricsmith_realtime_corrections_total``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from metricsmith import db
from metricsmith.config import Settings, load_settings
from metricsmith.realtime.locks import every_apply_lock
from metricsmith.realtime.registry import (
    ACTIVE_USERS,
    CORRECTIONS,
    DRIFT,
    EVENTS_TOTAL,
    LABEL_SEP,
    PURCHASE_BUCKETS_CENTS,
    PURCHASE_VALUE,
    REVENUE_TOTAL,
)
from metricsmith.realtime.service import RealtimeMetricsService
from metricsmith.realtime.shards import stored_count
from metricsmith.realtime.stream import PURCHASE, day_bounds


@dataclass
class DayTruth:
    day: date
    events_by_type: dict[str, int]
    revenue_cents: int
    users: list[str]
    purchase_buckets: list[int]  # per bucket (not cumulative), +Inf last
    purchase_sum: int
    purchase_count: int


@dataclass(frozen=True)
class Correction:
    metric: str
    labels: dict[str, str]
    expected: float
    observed: float

    @property
    def drift(self) -> float:
        return self.expected - self.observed


@dataclass
class ReconcileReport:
    run_id: str
    days: list[date]
    corrections: list[Correction] = field(default_factory=list)
    checked: int = 0

    def render(self) -> str:
        lines = [f"reconciliation {self.run_id}: days {', '.join(d.isoformat() for d in self.days)}; "
                 f"{self.checked} series checked, {len(self.corrections)} corrected"]
        for c in self.corrections:
            labels = ",".join(f"{k}={v}" for k, v in c.labels.items())
            lines.append(f"  {c.metric}{{{labels}}}: expected {_num(c.expected)}, observed {_num(c.observed)}, "
                         f"drift {'+' if c.drift > 0 else ''}{_num(c.drift)}")
        return "\n".join(lines)


def _num(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.6g}"


def _bucket_case() -> str:
    parts = [f"when revenue_cents <= {int(b)} then {i}" for i, b in enumerate(PURCHASE_BUCKETS_CENTS)]
    return f"case {' '.join(parts)} else {len(PURCHASE_BUCKETS_CENTS)} end"


def day_truth(conn: psycopg.Connection[Any], day: date, settings: Settings) -> DayTruth:
    """The event-derived metrics of one day, computed from raw.events."""
    start, end = day_bounds(day, settings)
    window = (start, end)
    by_type = {row[0]: int(row[1]) for row in conn.execute(
        "select event_type, count(*) from raw.events where occurred_at >= %s and occurred_at < %s "
        "group by event_type", window).fetchall()}
    revenue = conn.execute("select coalesce(sum(revenue_cents), 0) from raw.events "
                           "where occurred_at >= %s and occurred_at < %s", window).fetchone()
    users = [row[0] for row in conn.execute(
        "select distinct user_id from raw.events where occurred_at >= %s and occurred_at < %s "
        "and user_id is not null", window).fetchall()]
    buckets = [0] * (len(PURCHASE_BUCKETS_CENTS) + 1)
    total, count = 0, 0
    for idx, n, amount in conn.execute(
            f"select {_bucket_case()} as idx, count(*), coalesce(sum(revenue_cents), 0) from raw.events "  # noqa: S608
            "where occurred_at >= %s and occurred_at < %s and event_type = %s group by 1",
            (start, end, PURCHASE)).fetchall():
        buckets[int(idx)] = int(n)
        total += int(amount)
        count += int(n)
    return DayTruth(day, by_type, int(revenue[0]) if revenue else 0, users, buckets, total, count)


def _fix_events_by_type(service: RealtimeMetricsService, truth: DayTruth, pipe: Any,
                        fixes: list[Correction]) -> int:
    r, day = service.redis, truth.day.isoformat()
    counter_key = service.keys.counter(EVENTS_TOTAL.name)
    observed_types: dict[str, float] = {}
    for fld, raw in r.hgetall(counter_key).items():
        text = fld.decode()
        if text.startswith(day + LABEL_SEP):
            observed_types[text.split(LABEL_SEP, 1)[1]] = float(raw)
    types = sorted(set(observed_types) | set(truth.events_by_type))
    for event_type in types:
        expected, observed = truth.events_by_type.get(event_type, 0), observed_types.get(event_type, 0.0)
        if expected != observed:
            fixes.append(Correction(EVENTS_TOTAL.name, {"day": day, "event_type": event_type}, expected, observed))
            if expected:
                pipe.hset(counter_key, day + LABEL_SEP + event_type, expected)
            else:
                pipe.hdel(counter_key, day + LABEL_SEP + event_type)
    return len(types)


def _fix_revenue(service: RealtimeMetricsService, truth: DayTruth, pipe: Any, fixes: list[Correction]) -> int:
    day, key = truth.day.isoformat(), service.keys.counter(REVENUE_TOTAL.name)
    raw_rev = service.redis.hget(key, day)
    observed_rev = float(raw_rev) if raw_rev is not None else 0.0
    if observed_rev != truth.revenue_cents:
        fixes.append(Correction(REVENUE_TOTAL.name, {"day": day}, truth.revenue_cents, observed_rev))
        pipe.hset(key, day, truth.revenue_cents)
    return 1


def _fix_users(service: RealtimeMetricsService, truth: DayTruth, ttl_seconds: int, pipe: Any,
               fixes: list[Correction]) -> int:
    """The active-users set is rebuilt when the count or the members differ."""
    r, keys, day = service.redis, service.keys, truth.day.isoformat()
    users_key = keys.users(day)
    raw_users = r.hget(keys.gauge(ACTIVE_USERS.name), day)
    observed_users = float(raw_users) if raw_users is not None else 0.0
    if observed_users == len(truth.users) and r.scard(users_key) == len(truth.users):
        return 1
    if observed_users != len(truth.users):
        fixes.append(Correction(ACTIVE_USERS.name, {"day": day}, len(truth.users), observed_users))
    pipe.delete(users_key)
    for start in range(0, len(truth.users), 10_000):
        pipe.sadd(users_key, *truth.users[start:start + 10_000])
    if truth.users:
        pipe.expire(users_key, ttl_seconds)
        pipe.hset(keys.gauge(ACTIVE_USERS.name), day, len(truth.users))
    else:
        pipe.hdel(keys.gauge(ACTIVE_USERS.name), day)
    return 1


def _fix_purchases(service: RealtimeMetricsService, truth: DayTruth, pipe: Any, fixes: list[Correction]) -> int:
    keys, day = service.keys, truth.day.isoformat()
    hist_key = keys.histogram(PURCHASE_VALUE.name, day)
    raw_hist = {k.decode(): float(v) for k, v in service.redis.hgetall(hist_key).items()}
    expected_hist = {str(i): n for i, n in enumerate(truth.purchase_buckets) if n}
    expected_hist.update({"sum": truth.purchase_sum, "count": truth.purchase_count})
    if not truth.purchase_count:
        expected_hist = {}
    if raw_hist != {k: float(v) for k, v in expected_hist.items()}:
        fixes.append(Correction(PURCHASE_VALUE.name + "_count", {"day": day}, truth.purchase_count,
                                raw_hist.get("count", 0.0)))
        pipe.delete(hist_key)
        if expected_hist:
            pipe.hset(hist_key, mapping=expected_hist)
            pipe.sadd(keys.histogram_index(PURCHASE_VALUE.name), day)
        else:
            pipe.srem(keys.histogram_index(PURCHASE_VALUE.name), day)
    return 1


def apply_truth(service: RealtimeMetricsService, truth: DayTruth, ttl_seconds: int,
                corrections: list[Correction] | None = None) -> int:
    """Make Redis hold ``truth`` for its day; append what differed to ``corrections``. Returns series checked."""
    fixes = corrections if corrections is not None else []
    pipe = service.redis.pipeline(transaction=True)
    checked = _fix_events_by_type(service, truth, pipe, fixes)
    checked += _fix_revenue(service, truth, pipe, fixes)
    checked += _fix_users(service, truth, ttl_seconds, pipe, fixes)
    checked += _fix_purchases(service, truth, pipe, fixes)
    pipe.execute()
    return checked


def reconcile(days: Iterable[date] | None = None, *, settings: Settings | None = None,
              service: RealtimeMetricsService | None = None, retention_days: int = 3,
              lock_wait_s: float = 60.0) -> ReconcileReport:
    """Recompute ``days`` (default: today in the reporting time zone) from raw.events and correct Redis."""
    settings = settings or load_settings()
    svc = service or RealtimeMetricsService(settings)
    wanted = sorted(set(days)) if days is not None else [datetime.now(settings.tz).date()]
    report = ReconcileReport(str(uuid.uuid4()), wanted)
    shards = max(stored_count(svc.redis, svc.keys), settings.stream_shards)
    with every_apply_lock(svc.redis, svc.keys, shards, wait_s=lock_wait_s), \
            db.connect(settings, autocommit=True) as conn:
        conn.execute("set time zone 'UTC'")
        for day in wanted:
            before = len(report.corrections)
            report.checked += apply_truth(svc, day_truth(conn, day, settings), retention_days * 86_400,
                                          report.corrections)
            by_metric: dict[str, float] = {}
            for c in report.corrections[before:]:
                by_metric[c.metric] = by_metric.get(c.metric, 0.0) + c.drift
            for metric in (EVENTS_TOTAL.name, REVENUE_TOTAL.name, ACTIVE_USERS.name,
                           PURCHASE_VALUE.name + "_count"):
                svc.set_gauge(DRIFT.name, by_metric.get(metric, 0.0), {"metric": metric, "day": day.isoformat()})
        if report.corrections:
            with conn.cursor() as cur:
                cur.executemany(
                    "insert into metricsmith.realtime_corrections (run_id, metric, labels, expected, observed, "
                    "drift) values (%s, %s, %s, %s, %s, %s)",
                    [(report.run_id, c.metric, Jsonb(c.labels), c.expected, c.observed, c.drift)
                     for c in report.corrections])
    for c in report.corrections:
        svc.increment_counter(CORRECTIONS.name, 1, {"metric": c.metric})
    return report
