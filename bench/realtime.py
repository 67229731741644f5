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

import orjson  # noqa: E402

from _common import bench_database, server_label  # noqa: E402
from _cpu import CpuMeter, ceiling, render  # noqa: E402
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


def bench_ingest(n: int, consumers: int, database: str, batch_size: int = 5000) -> dict[str, Any]:
    base = load_settings()
    data = events(n, seed=1)
    result: dict[str, Any] = {}

    # stages alone, in this process
    s1 = dataclasses.replace(base, redis_prefix=f"{base.redis_prefix}bench:{secrets.token_hex(3)}:")
    t = time.perf_counter()
    track_many(data, settings=s1)
    result["track_only"] = n / (time.perf_counter() - t)
    consumer = StreamConsumer(s1, log=lambda _: None, batch_size=batch_size)
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
    procs = [subprocess.Popen([sys.executable, "-m", "metricsmith.cli", "realtime", "consume", "--block-ms", "50",
                               "--batch-size", str(batch_size)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(consumers)]
    time.sleep(2.0)  # let the consumers start (imports) before the clock starts
    meter = CpuMeter(db.redis_client(s2), database, [p.pid for p in procs])
    meter.start()
    t = time.perf_counter()
    track_many(data2, settings=s2)  # the producer: this process
    while not _drained(s2):
        time.sleep(0.01)
    elapsed = time.perf_counter() - t
    meter.stop()
    result["cpu"] = meter.per_event_us(n)
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


def bench_floors(n: int, database: str) -> dict[str, dict[str, float]]:
    """What the primitives alone cost on this machine, each measured alone: the Redis stream
    (XADD as track_many sends them, then XREADGROUP + XACK + XDEL in batches of 5000 as the
    consumer does; no validation, no Lua, no Postgres) and PostgreSQL COPY of the same events'
    lines into raw.events (nothing else)."""
    from metricsmith.ingest import EVENT_COLUMNS, fast_lines
    from metricsmith.realtime.stream import raw_stream_reader, stream_entries

    base = load_settings()
    settings = dataclasses.replace(base, redis_prefix=f"{base.redis_prefix}bench:{secrets.token_hex(3)}:")
    r = db.redis_client(settings)
    data = events(n, seed=4)
    payloads = [orjson.dumps(e) for e in data]
    stream = Keys.of(settings).stream_shard(0)
    out: dict[str, dict[str, float]] = {}
    meter = CpuMeter(r, database)
    meter.start()
    track_many(payloads, settings=settings)  # bytes: sent as they are
    r.xgroup_create(stream, "floor", id="0")
    pipe = r.pipeline(transaction=False)
    reader: Any = raw_stream_reader(r)
    while entries := stream_entries(reader.xreadgroup("floor", "c", {stream: ">"}, count=5000)):
        ids = [entry[0] for entry in entries]
        pipe.xack(stream, "floor", *ids)
        pipe.xdel(stream, *ids)
        pipe.execute()
    meter.stop()
    out["redis_stream"] = {"rate": n / meter.wall, **meter.per_event_us(n)}
    # the consumer's validation alone (this process) and its Lua apply alone (Redis), same batches
    consumer = StreamConsumer(settings, log=lambda _: None)
    entries = [(f"{i}-0".encode(), [b"e", payload]) for i, payload in enumerate(payloads)]
    meter = CpuMeter(r, database)
    meter.start()
    batches = [consumer.prepare(entries[i:i + 5000], datetime.now(UTC)) for i in range(0, n, 5000)]
    meter.stop()
    out["validation"] = {"rate": n / meter.wall, "producer": meter.per_event_us(n)["producer"]}
    meter = CpuMeter(r, database)
    meter.start()
    for batch in batches:
        consumer.apply_redis(batch)
    meter.stop()
    out["lua"] = {"rate": n / meter.wall, **meter.per_event_us(n)}
    consumer.close()
    now = datetime.now(UTC)
    rows = [line for _, line in filter(None, fast_lines([orjson.loads(p) for p in payloads], now, now.isoformat()))]
    with db.connect() as conn:
        conn.execute("truncate raw.events")
        conn.commit()
        meter = CpuMeter(r, database)
        meter.start()
        for start in range(0, len(rows), 5000):  # 5000 events a COPY, as the consumer
            with conn.transaction(), conn.cursor().copy(f"copy raw.events ({', '.join(EVENT_COLUMNS)}) from stdin") \
                    as copy:
                copy.write("".join(rows[start:start + 5000]))
        meter.stop()
        conn.execute("truncate raw.events")
        conn.commit()
    out["copy"] = {"rate": n / meter.wall, **meter.per_event_us(n)}
    _cleanup(settings)
    return out


def _percentiles(timings_ns: list[int]) -> tuple[float, float]:
    timings = sorted(timings_ns)
    return timings[len(timings) // 2] / 1000, timings[int(len(timings) * 0.99)] / 1000


def _redis_benchmark(tool: str, settings: Settings, key: str, samples: int) -> tuple[float, float]:
    """p50, p99 (us) of ``redis-benchmark -c 1 -P 1 GET key`` (one client, no pipelining)."""
    url = urlsplit(db.redis_url(settings))
    target = ["-s", url.path] if url.scheme == "unix" else ["-h", url.hostname or "127.0.0.1", "-p",
                                                            str(url.port or 6379)]
    proc = subprocess.run([tool, *target, "-c", "1", "-n", str(samples), "-P", "1", "--csv", "GET", key],
                          capture_output=True, text=True, check=True)
    header, row = [line for line in proc.stdout.splitlines() if line.strip()][-2:]
    fields = dict(zip([h.strip('"') for h in header.split(",")], [v.strip('"') for v in row.split(",")],
                      strict=True))
    return float(fields["p50_latency_ms"]) * 1000, float(fields["p99_latency_ms"]) * 1000


def bench_latency(samples: int, rounds: int = 10) -> dict[str, float]:
    """get_counter() vs redis-benchmark GET, interleaved: ``rounds`` rounds of samples/rounds
    each, Python then redis-benchmark, so both see the same machine moment; the p99 ratio is the
    median of the rounds' ratios (the p50/p99 figures: medians of the rounds')."""
    base = load_settings()
    settings = dataclasses.replace(base, redis_prefix=f"{base.redis_prefix}bench:{secrets.token_hex(3)}:")
    svc = RealtimeMetricsService(settings)
    svc.declare_counter("api:calls", "bench")
    svc.increment_counter("api:calls", 12345)
    for _ in range(2000):
        svc.get_counter("api:calls")
    tool = shutil.which("redis-benchmark")
    key = f"{settings.redis_prefix}rb"
    db.redis_client(settings).set(key, "12345")
    per_round = max(1000, samples // rounds)
    py: list[tuple[float, float]] = []
    rb: list[tuple[float, float]] = []
    get_counter, clock = svc.get_counter, time.perf_counter_ns
    for _ in range(rounds):
        timings = []
        for _ in range(per_round):
            t = clock()
            get_counter("api:calls")
            timings.append(clock() - t)
        py.append(_percentiles(timings))
        if tool is not None:
            rb.append(_redis_benchmark(tool, settings, key, per_round))
    out = {"py_p50_us": statistics.median(p for p, _ in py), "py_p99_us": statistics.median(p for _, p in py)}
    if tool is None:
        print("redis-benchmark not found (Debian: apt-get install redis-tools); skipping the comparison")
    else:
        out |= {"rb_p50_us": statistics.median(p for p, _ in rb), "rb_p99_us": statistics.median(p for _, p in rb),
                "p99_ratio": statistics.median(a[1] / b[1] for a, b in zip(py, rb, strict=True))}
    svc.close()
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


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=5000, help="consumer batch size (XREADGROUP COUNT)")
    parser.add_argument("--no-floors", action="store_true", help="skip the Redis-stream-alone and COPY-alone floors")
    parser.add_argument("--no-rate", action="store_true", help="skip 3. (the rate estimate error)")
    parser.add_argument("--cluster", action="store_true",
                        help="1, 2, 4 shards on a local Redis Cluster vs the single Redis (same run)")
    args = parser.parse_args()
    if args.cluster:
        with bench_database("bench_realtime_cluster"):
            bench_cluster(args.events)
        return
    print(f"server: {server_label()} postgres, redis {db.redis_client().info('server')['redis_version']}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start")
    with bench_database("bench_realtime") as url:
        database = urlsplit(url).path.lstrip("/")
        ingest = bench_ingest(args.events, args.consumers, database, args.batch_size)
        floors = {} if args.no_floors else bench_floors(args.events, database)
    e2e = ingest[f"end_to_end_{args.consumers}"]
    one = ingest["consume_only_1"]
    print(f"1. stream ingest, {args.events:,} events: end to end ({args.consumers} consumer processes + producer) "
          f"{e2e:,.0f} events/s = {e2e / 100_000:.2f}x the 100 K/s target")
    print(f"   stages alone: track {ingest['track_only']:,.0f}/s; one consumer {one:,.0f}/s")
    print(f"   CPU of the end-to-end run: {render(ingest['cpu'])}")
    for name, what in (("redis_stream", "the Redis stream (XADD, XREADGROUP, XACK+XDEL; nothing else)"),
                       ("validation", "the consumer's validation (judge_many; this process)"),
                       ("lua", "the consumer's Lua apply (lua/apply.lua, batches of 5000)"),
                       ("copy", "PostgreSQL COPY (the same events' lines into raw.events)")):
        if name in floors:
            figures = dict(floors[name])
            speed = figures.pop("rate")
            print(f"   part alone, {what}: {speed:,.0f} events/s; {render(figures)}")
    if floors:
        parts = sum(sum(v for k, v in figures.items() if k != "rate") for figures in floors.values())
        print(f"   the parts alone add up to {parts:.1f} CPU-us/event: at most {ceiling(parts):,.0f} events/s "
              f"on {os.cpu_count()} cores, before any coordination")
    lat = bench_latency(args.samples)
    line = f"2. get_counter p50 {lat['py_p50_us']:.0f} us, p99 {lat['py_p99_us']:.0f} us"
    if "rb_p99_us" in lat:
        line += (f"; redis-benchmark GET p50 {lat['rb_p50_us']:.0f} us, p99 {lat['rb_p99_us']:.0f} us "
                 f"(medians of 10 interleaved rounds)")
    print(line)
    print(f"P3  end to end {e2e:,.0f} events/s = {e2e / 100_000:.2f}x 100 K/s ({_verdict(e2e >= 100_000)}); "
          f"one consumer {one:,.0f}/s = {one / 70_000:.2f}x 70 K/s ({_verdict(one >= 70_000)})")
    if "p99_ratio" in lat:
        print(f"P4  get_counter p99 / redis-benchmark GET p99 = {lat['p99_ratio']:.2f} (target <= 1.5: "
              f"{_verdict(lat['p99_ratio'] <= 1.5)})")
    if args.no_rate:
        return
    rate = bench_rate()
    print("3. rate estimate error vs exact count (Poisson ~25 ev/s x bursts, 150 probes): "
          + "; ".join(f"{w} s window max {rate[w]:.3f} % mean {rate[-w]:.3f} %" for w in (60, 300, 3600))
          + " (target <= 1 %)")


if __name__ == "__main__":
    main()
