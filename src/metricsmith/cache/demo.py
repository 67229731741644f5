"""The cache's `metricsmith demo` step: a cold read, a warm read and the statistics."""

from __future__ import annotations

import time
from datetime import date, timedelta


def _last_day() -> date | None:
    """The newest day of the daily mart, None before it is built."""
    from psycopg import sql

    from metricsmith import db, grains
    from metricsmith.core.schema import marts_schema

    g = grains.day()
    with db.connect(autocommit=True) as conn:
        exists = conn.execute("select to_regclass(format('%%I.%%I', %s::text, %s::text)) is not null",
                              (marts_schema(), g.model)).fetchone()
        if not (exists and exists[0]):
            return None
        row = conn.execute(sql.SQL("select max({}) from {}").format(
            sql.Identifier(g.start_column), sql.Identifier(marts_schema(), g.model))).fetchone()
    return row[0] if row else None


def step_cache() -> None:
    from metricsmith.cache import get_cache
    from metricsmith.core.schema import marts_schema
    from metricsmith.query import MetricsQueryService

    end = _last_day()
    if end is None:
        print(f"skipped: the daily mart in {marts_schema()} is not built yet (run the rollups step first)")
        return
    cache = get_cache()
    cache.wait_until_listening()
    start = end - timedelta(days=29)
    cache.invalidate(keys=[f"daily:{start}:{end}"])  # a cold read every time the demo runs
    with MetricsQueryService(cache=cache) as svc:
        before = cache.local_stats().counters
        t0 = time.perf_counter()
        rows = svc.get_daily_metrics(start, end)
        cold = time.perf_counter() - t0
        timings = []
        for _ in range(1000):
            t0 = time.perf_counter()
            svc.get_daily_metrics(start, end)
            timings.append(time.perf_counter() - t0)
        warm = sorted(timings)[len(timings) // 2]
        after = cache.local_stats().counters
    total = sum(r.revenue_cents for r in rows)
    print(f"daily metrics {start} .. {end}: {len(rows)} rows, revenue {total / 100:,.2f} ({total:,} cents)")
    print(f"  cold read (PostgreSQL, then stored in Redis + L1): {cold * 1e3:8.2f} ms")
    print(f"  warm read (L1, this process), median of 1000:      {warm * 1e6:8.1f} us  ({cold / warm:,.0f}x faster)")
    print(f"  this step: {after['computations'] - before['computations']} computation(s), "
          f"{after['l1_hits'] - before['l1_hits']} L1 hit(s)")
    snap = cache.fleet_stats()
    rate = snap.overall_hit_rate
    print(f"  cache stats (all processes): hit rate {'-' if rate is None else f'{rate * 100:.1f} %'}, "
          f"{snap.counters['computations']:,} computations, {snap.counters['stampedes_avoided']:,} stampedes avoided, "
          f"status {cache.health()['status']}  (more: `metricsmith cache stats`)")
