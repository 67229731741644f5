"""The invalidation fence: a Redis that hangs during an invalidation (SIGSTOP on a real
redis-server), then recovers, never makes a reader serve values older than the rebuild - not
a long-running process with the old value in L1, not a new CLI process reading Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from _cache_marts import Marts
from test_cache import _free_port, _start_redis

from metricsmith.cache import CacheConfig, TwoTierCache, load_cache_config
from metricsmith.cache.invalidation import invalidate_periods
from metricsmith.query import MetricsQueryService

START, END = date(2024, 3, 4), date(2024, 3, 10)
TODAY = date(2024, 12, 18)

# A long-running reader: its own cache (L1 + the throwaway Redis); one line per "read".
READER = textwrap.dedent(
    """
    import sys
    from datetime import date
    from metricsmith.cache import CacheConfig, TwoTierCache, load_cache_config
    from metricsmith.query import MetricsQueryService

    schema, url, start, end = sys.argv[1:5]
    config = CacheConfig(**{**load_cache_config().__dict__, "retry_after": 0.3})
    cache = TwoTierCache(config=config, redis_url=url)
    assert cache.wait_until_listening(10)
    svc = MetricsQueryService(cache=cache, schema=schema, today=date(2024, 12, 18))
    print("ready", flush=True)
    for line in sys.stdin:
        rows = svc.get_daily_metrics(date.fromisoformat(start), date.fromisoformat(end))
        print(" ".join(str(r.revenue_cents) for r in rows), cache.local_stats().counters["l1_hits"], flush=True)
    """
)


@pytest.fixture(scope="module")
def marts(test_database: str) -> Iterator[Marts]:
    with psycopg.connect(test_database, autocommit=True) as conn:
        m = Marts(conn, date(2024, 1, 1), date(2024, 6, 30), seed=11)
        yield m
        m.drop()


def _sql_revenue(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    """The marts, read directly (the independent computation)."""
    rows = conn.execute(f"select revenue_cents from {schema}.daily_metrics where metric_date between %s and %s "
                        "order by metric_date", (START, END)).fetchall()
    return [int(r[0]) for r in rows]


def _cli_revenue(schema: str, redis_url: str) -> list[int]:
    env = {**os.environ, "METRICSMITH_REDIS_URL": redis_url}
    out = subprocess.run(
        [sys.executable, "-m", "metricsmith.cli", "query", "daily", "--start", START.isoformat(),
         "--end", END.isoformat(), "--schema", schema, "--format", "json"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    return [int(r["revenue_cents"]) for r in json.loads(out.stdout)]


def test_redis_hung_during_invalidation_then_recovered_serves_post_run_numbers(
    marts: Marts, conn: psycopg.Connection[Any], tmp_path: Path,
) -> None:
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_proc = _start_redis(port, tmp_path)
    reader = subprocess.Popen([sys.executable, "-c", READER, marts.schema, url, START.isoformat(), END.isoformat()],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert reader.stdin is not None and reader.stdout is not None

    def ask() -> tuple[list[int], int]:
        reader.stdin.write("read\n")  # type: ignore[union-attr]
        reader.stdin.flush()  # type: ignore[union-attr]
        *values, hits = reader.stdout.readline().split()  # type: ignore[union-attr]
        return [int(v) for v in values], int(hits)

    config = CacheConfig(**{**load_cache_config().__dict__, "retry_after": 0.3, "redis_timeout": 0.3})
    cache = TwoTierCache(config=config, redis_url=url)
    stopped = False
    try:
        assert reader.stdout.readline().strip() == "ready"
        assert cache.wait_until_listening(10)
        before = _sql_revenue(conn, marts.schema)
        with MetricsQueryService(cache=cache, schema=marts.schema, today=TODAY) as svc:
            assert [r.revenue_cents for r in svc.get_daily_metrics(START, END)] == before  # now in Redis
        assert ask() == (before, 0)
        assert ask() == (before, 1)                      # the reader's L1 holds it
        assert _cli_revenue(marts.schema, url) == before  # a new process: a Redis hit

        # the rollup: the marts change, then Redis hangs while the run invalidates
        marts.set_day(START + timedelta(days=2), revenue_cents=marts.daily[START + timedelta(days=2)]["revenue_cents"]
                      + 12_345)
        after = _sql_revenue(conn, marts.schema)
        assert after != before
        os.kill(redis_proc.pid, signal.SIGSTOP)
        stopped = True
        t0 = time.monotonic()
        result = invalidate_periods(days=[START + timedelta(days=2)], cache=cache)
        assert not result.ok and result.fenced, result.render()
        assert "recorded as invalidation" in result.render()
        assert time.monotonic() - t0 >= config.fence_lease

        # while Redis hangs, the long-running reader already serves the new numbers (from PostgreSQL)
        assert ask()[0] == after

        # Redis recovers, with the old value still stored in it
        os.kill(redis_proc.pid, signal.SIGCONT)
        stopped = False
        raw = TwoTierCache(config=config, redis_url=url, start_listener=False)._redis()
        for _ in range(3):
            assert ask()[0] == after                     # the long-running process
        assert _cli_revenue(marts.schema, url) == after  # a new CLI process
        assert _cli_revenue(marts.schema, url) == after
        # the record was delivered: Redis holds the fence and the old value is gone for good
        with psycopg.connect(os.environ["METRICSMITH_DATABASE_URL"], autocommit=True) as pg:
            latest = pg.execute("select max(id) from metricsmith.cache_invalidations where prefix = %s",
                                (cache.root,)).fetchone()
        assert latest is not None and int(raw.get(f"{cache.root}fence") or 0) >= int(latest[0])
        values, hits = ask()
        assert values == after and hits >= 1            # and L1 is in use again
    finally:
        if stopped:
            os.kill(redis_proc.pid, signal.SIGCONT)
        reader.stdin.close()
        reader.wait(timeout=30)
        cache.close()
        redis_proc.kill()
        redis_proc.wait()


def test_a_redis_that_lost_its_fence_is_cleared(marts: Marts, tmp_path: Path) -> None:
    """A Redis that never heard of the fence (flushed, or filled before it existed) cannot be
    trusted key by key: the first process that checks clears the cache's values in it."""
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    proc = _start_redis(port, tmp_path)
    try:
        cache = TwoTierCache(redis_url=url)
        assert cache.wait_until_listening(10)
        cache.invalidate(keys=["warmup"])               # the fence exists from here on
        raw = cache._redis()
        raw.set(cache.full_key("stale"), b"not a valid entry")
        raw.delete(f"{cache.root}fence")
        cache._fence_until = 0.0
        assert cache.get_or_compute("fresh", lambda: 7, ttl=60) == 7
        assert not raw.exists(cache.full_key("stale"))
        assert raw.get(f"{cache.root}fence") is not None
        cache.close()
    finally:
        proc.kill()
        proc.wait()
