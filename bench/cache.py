"""Metric cache: hit latency per tier and hit rate on a Zipf dashboard workload, vs PostgreSQL.

    python bench/cache.py [--days 400 --events-per-day 1500 --requests 50000 --zipf 1.1]

In a fresh database on the configured server: generated events, the real dbt marts
(daily / weekly / monthly), then, in one run:
  L1 hit     -- MetricsQueryService read of a warm key (typed rows returned), same process
  L2 hit     -- the same reads with L1 switched off (one Redis GET + decode + typed rows)
  PostgreSQL -- the same reads with the cache off (one indexed SELECT + typed rows)
  workload   -- a Zipf-distributed mix of ~500 distinct closed-period dashboard queries
                (7/30/90-day windows, 4/12/26-week summaries, 3/6/12-month ranges, year summaries),
                cold cache, read through the two tiers; the same request sequence (a sample)
                read straight from PostgreSQL.
Targets: L1 p50 <= 20 us, L2 p99 <= 1 ms, closed-period hit rate >= 99 %.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_database, server_label  # noqa: E402

os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def us(seconds: float) -> str:
    return f"{seconds * 1e6:9.1f} us"


def build_workload(svc: Any, today: date) -> list[tuple[str, Callable[[], Any]]]:
    from metricsmith import grains

    week_start, month_start = grains.get("week").start_of, grains.get("month").start_of
    last_closed_day = today - timedelta(days=1)
    last_closed_week = grains.get("week").start_of(today) - timedelta(days=1)
    last_closed_month = grains.get("month").start_of(today) - timedelta(days=1)
    queries: list[tuple[str, Callable[[], Any]]] = []
    for back in range(120):
        end = last_closed_day - timedelta(days=back)
        for width in (7, 30, 90):
            start = end - timedelta(days=width - 1)
            queries.append((f"daily {start}..{end}", lambda s=start, e=end: svc.get_daily_metrics(s, e)))
    for back in range(30):
        end = last_closed_week - timedelta(weeks=back)
        for weeks in (4, 12, 26):
            start = week_start(end) - timedelta(weeks=weeks - 1)
            queries.append((f"weekly {start}..{end}",
                            lambda s=start, e=end: svc.get_weekly_metrics_summary(s, e)))
    for back in range(10):
        end = month_start(last_closed_month) - timedelta(days=1) if back else last_closed_month
        for _ in range(back - 1 if back > 1 else 0):
            end = month_start(end) - timedelta(days=1)
        for months in (3, 6, 12):
            first = month_start(end)
            for _ in range(months - 1):
                first = month_start(first - timedelta(days=1))
            queries.append((f"monthly {first}..{end}", lambda s=first, e=end: svc.get_monthly_metrics(s, e)))
    for year in (today.year - 1, today.year - 2):
        queries.append((f"monthly summary {year}", lambda y=year: svc.get_monthly_metrics_summary(y)))
    return queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=400)
    parser.add_argument("--events-per-day", type=int, default=1500)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--direct-sample", type=int, default=3000, help="requests of the workload read from PostgreSQL")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of query popularity")
    parser.add_argument("--hits", type=int, default=20_000, help="reads per latency measurement")
    args = parser.parse_args()

    label = server_label()
    prefix = f"msbench:cache:{secrets.token_hex(3)}:"
    os.environ["METRICSMITH_REDIS_PREFIX"] = prefix
    with bench_database("msbench_cache") as url:
        os.environ["DBT_TARGET_PATH"] = f"/tmp/msbench_cache_{os.getpid()}/target"
        os.environ["DBT_LOG_PATH"] = f"/tmp/msbench_cache_{os.getpid()}/logs"
        from metricsmith import db, generator
        from metricsmith.cache import CacheConfig, TwoTierCache, load_cache_config
        from metricsmith.core.dbt import invoke
        from metricsmith.query import MetricsQueryService

        today = date.today()
        start = today - timedelta(days=args.days)
        gen = generator.generate_to_db(days=args.days, events_per_day=args.events_per_day, seed=5, start=start)
        t0 = time.perf_counter()
        run = invoke(["run", "--select", "+daily_metrics", "+weekly_metrics", "+monthly_metrics", "+quarterly_metrics"])
        if not run.success:
            sys.exit(f"dbt run of the marts failed: {run.failures}")
        print(f"server: {label}  redis: {db.redis_url()}  events: {gen.events:,} over {args.days} days"
              f"  (marts built in {time.perf_counter() - t0:.1f} s)")

        base = load_cache_config()
        cache = TwoTierCache(config=base)
        l2_only = TwoTierCache(config=CacheConfig(**{**base.__dict__, "l1_enabled": False}))
        assert cache.wait_until_listening() and l2_only.wait_until_listening()
        svc = MetricsQueryService(cache=cache)
        svc_l2 = MetricsQueryService(cache=l2_only)
        direct = MetricsQueryService(use_cache=False)
        try:
            # ---- per-tier latency on one typical dashboard query (30 closed days)
            end = today - timedelta(days=1)
            first = end - timedelta(days=29)
            assert svc.get_daily_metrics(first, end) == direct.get_daily_metrics(first, end)
            svc.get_daily_metrics(first, end)
            l1 = timed(lambda: svc.get_daily_metrics(first, end), args.hits)
            l2 = timed(lambda: svc_l2.get_daily_metrics(first, end), args.hits // 4)
            pg = timed(lambda: direct.get_daily_metrics(first, end), max(500, args.hits // 20))
            raw_l1 = timed(lambda: cache.get_or_compute("bench:raw", lambda: [1, 2, 3], ttl=3600), args.hits)
            print("\n30-day daily query (30 typed rows)     p50          p99")
            print(f"  L1 hit                        {us(pct(l1, .5))}  {us(pct(l1, .99))}")
            print(f"  L2 hit (Redis)                {us(pct(l2, .5))}  {us(pct(l2, .99))}")
            print(f"  PostgreSQL directly           {us(pct(pg, .5))}  {us(pct(pg, .99))}")
            print(f"  (bare cache.get_or_compute L1 hit: p50 {us(pct(raw_l1, .5)).strip()})")
            print(f"  PostgreSQL / L1 at p50: {pct(pg, .5) / pct(l1, .5):,.0f}x   "
                  f"PostgreSQL / L2 at p50: {pct(pg, .5) / pct(l2, .5):,.1f}x")

            # ---- Zipf workload of closed-period dashboard queries, cold cache
            cache.clear()
            cache.reset_stats()
            queries = build_workload(svc, today)
            rng = np.random.default_rng(17)
            order = rng.permutation(len(queries))  # popularity rank -> query
            weights = 1.0 / np.arange(1, len(queries) + 1) ** args.zipf
            draws = rng.choice(len(queries), size=args.requests, p=weights / weights.sum())
            sequence = [int(order[d]) for d in draws]
            lat = []
            t_all = time.perf_counter()
            for index in sequence:
                t0 = time.perf_counter()
                queries[index][1]()
                lat.append(time.perf_counter() - t0)
            cached_total = time.perf_counter() - t_all
            snap = cache.local_stats()
            computed = snap.counters["computations"]
            hit_rate = 1 - computed / len(sequence)
            # the same request sequence (first N) straight from PostgreSQL
            direct_queries = build_workload(direct, today)
            sample = sequence[: args.direct_sample]
            t_all = time.perf_counter()
            direct_lat = []
            for index in sample:
                t0 = time.perf_counter()
                direct_queries[index][1]()
                direct_lat.append(time.perf_counter() - t0)
            direct_total = time.perf_counter() - t_all
            distinct = len(set(sequence))
            print(f"\nZipf workload: {len(sequence):,} requests (s={args.zipf}) over {len(queries)} closed-period "
                  f"queries, {distinct} distinct requested, cold start")
            print(f"  hit rate                      {hit_rate * 100:.2f} %   ({computed} computations, each the first read of a key; "
                  f"L1 {snap.counters['l1_hits']:,} / L2 {snap.counters['l2_hits']:,} hits)")
            print(f"  mean latency cached           {us(statistics.fmean(lat))}   p50 {us(pct(lat, .5))}"
                  f"   p99 {us(pct(lat, .99))}")
            print(f"  mean latency PostgreSQL       {us(statistics.fmean(direct_lat))}   p50 {us(pct(direct_lat, .5))}"
                  f"   p99 {us(pct(direct_lat, .99))}   ({len(sample):,} requests)")
            per_req_direct = direct_total / len(sample)
            per_req_cached = cached_total / len(sequence)
            print(f"  throughput ratio cached / PostgreSQL: {per_req_direct / per_req_cached:,.0f}x")

            print("\ntargets: L1 p50 <= 20 us: " + ("met" if pct(l1, .5) <= 20e-6 else "MISSED")
                  + f" ({pct(l1, .5) * 1e6:.1f} us);  L2 p99 <= 1 ms: "
                  + ("met" if pct(l2, .99) <= 1e-3 else "MISSED") + f" ({pct(l2, .99) * 1e3:.3f} ms);  "
                  + "hit rate >= 99 %: " + ("met" if hit_rate >= 0.99 else "MISSED") + f" ({hit_rate * 100:.2f} %)")
        finally:
            svc.close()
            svc_l2.close()
            direct.close()
            cache.clear()
            cache.reset_stats()
            client = db.redis_client()
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
            cache.close()
            l2_only.close()
        del url


if __name__ == "__main__":
    main()
