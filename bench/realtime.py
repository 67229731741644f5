"""Realtime metrics benchmark: stream ingest, read latency vs redis-benchmark, rate estimate error.

    python bench/realtime.py [--events 200000] [--consumers 2]
    python bench/realtime.py --cluster [--events 50000]

``--cluster`` instead measures end-to-end ingest with 1, 2 and 4 stream shards (one consumer
process per shard) on a local Redis Cluster (3 masters + 3 replicas, started and stopped here)
against the single Redis with the same shard counts, in the same run.

Uses the configured servers (embedded default, or METRICSMITH_DATABASE_URL / METRICSMITH_REDIS_URL),
a throw-away database and a private Redis key prefix (deleted at the end). Prints, from one run:

1. end-to-end stream ingest: events/s from the first XADD until every entry is counted in Redis,
   stored in raw.events and acknowledged - a producer process and N consumer processes at once;
   plus each stage alone (track, one in-process consumer) for orientation; ratio to 100 K/s;
2. get_counter() p50/p99 from Python vs `redis-benchmark -t get` p50/p99 (one client, no
   pipelining) on the same server in the same run; ratio of the p99s (target <= 2);
3. rate estimate error: Poisson arrivals with an injected clock; the sliding-window estimate vs
   the exact count at 300 probe times per window (target <= 1 %).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from bisect import bisect_right
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_database, server_label  # noqa: E402
from metricsmith import db  # noqa: E402
from metricsmith.config import Settings, load_settings  # noqa: E402
from metricsmith.realtime import RealtimeMetricsService, StreamConsumer, track_many  # noqa: E402
from metricsmith.realtime.stream import GROUP, Keys, uuid7  # noqa: E402


def events(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out = []
    for _ in range(n):
        kind = rng.choices(["page_view", "click", "purchase", "signup"], [60, 25, 10, 5])[0]
        event: dict[str, Any] = {"event_id": uuid7(), "occurred_at": (now - timedelta(seconds=rng.uniform(0, 3600))
                                                                     ).isoformat(),
                                 "event_type": kind, "user_id": f"u{rng.randrange(50_000)}",
                                 "session_id": f"s{rng.randrange(200_000)}"}
        if kind == "purchase":
            event["revenue_cents"] = rng.choice([499, 999, 1999, 4999, 9999])
        out.append(event)
    return out


def _child_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "METRICSMITH_REDIS_PREFIX": settings.redis_prefix}


def _drained(settings: Settings) -> bool:
    r = db.redis_client(settings)
    keys = Keys(settings.redis_prefix)
    try:
        return r.xlen(keys.stream) == 0 and int(r.xpending(keys.stream, GROUP)["pending"]) == 0
    except Exception:  # noqa: BLE001 - group not created yet
        return False


def bench_ingest(n: int, consumers: int) -> dict[str, float]:
    base = load_settings()
    data = events(n, seed=1)
    result: dict[str, float] = {}

    # stages alone, in this process
    s1 = dataclasses.replace(base, redis_prefix=f"{base.redis_prefix}bench:{secrets.token_hex(3)}:")
    t = time.perf_counter()
    track_many(data, settings=s1)
    result["track_only"] = n / (time.perf_counter() - t)
    consumer = StreamConsumer(s1, log=lambda _: None)
    t = time.perf_counter()
    consumer.run(until_idle=True)
    result["consume_only_1"] = n / (time.perf_counter() - t)
    consumer.close()
    _cleanup(s1)

    # end to end: producer process + N consumer processes at once
    s2 = dataclasses.replace(base, redis_prefix=f"{base.redis_prefix}bench:{secrets.token_hex(3)}:")
    with db.connect() as conn:
        conn.execute("truncate raw.events")
        conn.commit()
    data2 = events(n, seed=2)
    env = _child_env(s2)
    StreamConsumer(s2, log=lambda _: None).close()  # create the group before anything is sent
    procs = [subprocess.Popen([sys.executable, "-m", "metricsmith.cli", "realtime", "consume", "--block-ms", "50"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(consumers)]
    time.sleep(2.0)  # let the consumers start (imports) before the clock starts
    t = time.perf_counter()
    track_many(data2, settings=s2)  # the producer: this process
    while not _drained(s2):
        time.sleep(0.01)
    elapsed = time.perf_counter() - t
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait()
    with db.connect() as conn:
        stored = conn.execute("select count(*) from raw.events").fetchone()
    svc = RealtimeMetricsService(s2)
    counted = sum(v for _, v in svc.series(svc.spec("metricsmith_events_total")))  # type: ignore[arg-type]
    assert stored is not None and stored[0] == n and counted == n, (stored, counted, n)
    result[f"end_to_end_{consumers}"] = n / elapsed
    _cleanup(s2)
    return result


def bench_latency(samples: int) -> dict[str, float]:
    base = load_settings()
    settings = dataclasses.replace(base, redis_prefix=f"{base.redis_prefix}bench:{secrets.token_hex(3)}:")
    svc = RealtimeMetricsService(settings)
    svc.declare_counter("api:calls", "bench")
    svc.increment_counter("api:calls", 12345)
    for _ in range(2000):
        svc.get_counter("api:calls")
    timings = []
    for _ in range(samples):
        t = time.perf_counter_ns()
        svc.get_counter("api:calls")
        timings.append(time.perf_counter_ns() - t)
    timings.sort()
    out = {"py_p50_us": timings[len(timings) // 2] / 1000, "py_p99_us": timings[int(len(timings) * 0.99)] / 1000}
    tool = shutil.which("redis-benchmark")
    if tool is None:
        print("redis-benchmark not found (Debian: apt-get install redis-tools); skipping the comparison")
        _cleanup(settings)
        return out
    url = urlsplit(db.redis_url(settings))
    key = f"{settings.redis_prefix}rb"
    db.redis_client(settings).set(key, "12345")
    proc = subprocess.run([tool, "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379), "-c", "1",
                           "-n", str(samples), "-P", "1", "--csv", "GET", key], capture_output=True, text=True,
                          check=True)
    header, row = [line for line in proc.stdout.splitlines() if line.strip()][-2:]
    fields = dict(zip([h.strip('"') for h in header.split(",")], [v.strip('"') for v in row.split(",")],
                      strict=True))
    out["rb_p50_us"] = float(fields["p50_latency_ms"]) * 1000
    out["rb_p99_us"] = float(fields["p99_latency_ms"]) * 1000
    _cleanup(settings)
    return out


def bench_rate() -> dict[int, float]:
    base = load_settings()
    settings = dataclasses.replace(base, redis_prefix=f"{base.redis_prefix}bench:{secrets.token_hex(3)}:")
    clock = [1_800_000_000.0]
    svc = RealtimeMetricsService(settings, clock=lambda: clock[0])
    svc.declare_rate("bench_rate", "bench", windows=(60, 300, 3600))
    rng = random.Random(3)
    marks: list[float] = []
    errors: dict[int, list[float]] = {60: [], 300: [], 3600: []}
    end = clock[0] + 2 * 3600
    next_probe = clock[0] + 3600  # probe once every window is full
    while clock[0] < end:
        clock[0] += rng.expovariate(25)  # ~25 events/s, bursty sizes
        n = rng.choice([1, 1, 1, 2, 5])
        svc.mark("bench_rate", n)
        marks.extend([clock[0]] * n)
        if clock[0] >= next_probe:
            next_probe += 24
            for window in errors:
                lo = clock[0] - window
                exact = bisect_right(marks, clock[0]) - bisect_right(marks, lo)  # marks are in time order
                errors[window].append(abs(svc.get_rate_count("bench_rate", window) - exact) / exact)
    _cleanup(settings)
    return {w: max(v) * 100 for w, v in errors.items()} | {-w: statistics.mean(v) * 100 for w, v in errors.items()}


def _e2e_sharded(settings: Settings, n: int, seed: int) -> float:
    """events/s end to end with one consumer process per shard (``consume --shards k``)."""
    from metricsmith import rediscluster
    from metricsmith.realtime.stream import StreamConsumer as Consumer

    with db.connect() as conn:
        conn.execute("truncate raw.events")
        conn.commit()
    data = events(n, seed=seed)
    env = {**_child_env(settings), "METRICSMITH_STREAM_SHARDS": str(settings.stream_shards),
           "METRICSMITH_REDIS_URL": settings.redis_url or "", "METRICSMITH_REDIS_CLUSTER": str(int(settings.redis_cluster))}
    for shard in range(settings.stream_shards):
        Consumer(settings, shard=shard, log=lambda _: None).close()
    procs = [subprocess.Popen([sys.executable, "-m", "metricsmith.cli", "realtime", "consume", "--block-ms", "50",
                               "--shards", str(shard)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for shard in range(settings.stream_shards)]
    time.sleep(2.5)
    r = rediscluster.client(settings)
    keys = Keys.of(settings)
    t = time.perf_counter()
    track_many(data, settings=settings)
    while any(r.xlen(keys.stream_shard(s)) for s in range(settings.stream_shards)):
        time.sleep(0.01)
    elapsed = time.perf_counter() - t
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait()
    with db.connect() as conn:
        stored = conn.execute("select count(*) from raw.events").fetchone()
    assert stored is not None and stored[0] == n, (stored, n)
    r.close()
    return n / elapsed


def bench_cluster(n: int) -> None:
    import tempfile

    from metricsmith.rediscluster.local import LocalCluster, free_base_port

    base = load_settings()
    local = LocalCluster(base, root=Path(tempfile.mkdtemp(prefix="ms-bench-cluster-")))
    local.up(free_base_port(24_000))
    try:
        rows = []
        for shards in (1, 2, 4):
            single = dataclasses.replace(base, redis_prefix=f"{base.redis_prefix}bench:{secrets.token_hex(3)}:",
                                         stream_shards=shards)
            on_cluster = dataclasses.replace(single, redis_prefix=f"{base.redis_prefix}bench:{secrets.token_hex(3)}:",
                                             redis_url=local.url(), redis_cluster=True)
            rows.append((shards, _e2e_sharded(single, n, seed=shards), _e2e_sharded(on_cluster, n, seed=10 + shards)))
            _cleanup(single)
    finally:
        local.down()
    one_single, one_cluster = rows[0][1], rows[0][2]
    print(f"end-to-end ingest, {n:,} events, one consumer process per shard, {os.cpu_count()} cores:")
    for shards, single_rate, cluster_rate in rows:
        print(f"  {shards} shard(s): single Redis {single_rate:>9,.0f} ev/s ({single_rate / one_single:.2f}x)   "
              f"cluster {cluster_rate:>9,.0f} ev/s ({cluster_rate / one_cluster:.2f}x)   "
              f"cluster/single {cluster_rate / single_rate:.2f}")


def _cleanup(settings: Settings) -> None:
    r = db.redis_client(settings)
    keys = list(r.scan_iter(match=settings.redis_prefix + "*", count=1000))
    for start in range(0, len(keys), 500):
        r.delete(*keys[start:start + 500])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--cluster", action="store_true",
                        help="1, 2, 4 shards on a local Redis Cluster vs the single Redis (same run)")
    args = parser.parse_args()
    if args.cluster:
        with bench_database("bench_realtime_cluster"):
            bench_cluster(args.events)
        return
    print(f"server: {server_label()} postgres, redis {db.redis_client().info('server')['redis_version']}")
    with bench_database("bench_realtime"):
        ingest = bench_ingest(args.events, args.consumers)
    e2e = ingest[f"end_to_end_{args.consumers}"]
    print(f"1. stream ingest, {args.events:,} events: end to end ({args.consumers} consumer processes + producer) "
          f"{e2e:,.0f} events/s = {e2e / 100_000:.2f}x the 100 K/s target")
    print(f"   stages alone: track {ingest['track_only']:,.0f}/s; one consumer {ingest['consume_only_1']:,.0f}/s")
    lat = bench_latency(args.samples)
    line = f"2. get_counter p50 {lat['py_p50_us']:.0f} us, p99 {lat['py_p99_us']:.0f} us"
    if "rb_p99_us" in lat:
        line += (f"; redis-benchmark GET p50 {lat['rb_p50_us']:.0f} us, p99 {lat['rb_p99_us']:.0f} us; "
                 f"p99 ratio {lat['py_p99_us'] / lat['rb_p99_us']:.2f} (target <= 2)")
    print(line)
    rate = bench_rate()
    print("3. rate estimate error vs exact count (Poisson ~25 ev/s x bursts, 150 probes): "
          + "; ".join(f"{w} s window max {rate[w]:.3f} % mean {rate[-w]:.3f} %" for w in (60, 300, 3600))
          + " (target <= 1 %)")


if __name__ == "__main__":
    main()
