"""Realtime metrics and the cache on a real local Redis Cluster (3 masters + 3 replicas).

One cluster is started for the module from the machine's ``redis-server`` (skipped, with the
reason, only when there is no Redis >= 7 binary) and stopped at the end. Every test runs the
real code paths on it: a script, transaction or multi-key command that spans two slots raises
CROSSSLOT (server) or "keys ... don't hash to the same slot" (client) and fails the test. The
failover test kills a master and is last (the cluster then has one replica fewer).
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from _realtime_events import BAD_EVENTS, expected_from, make_events, private_settings
from redis.cluster import key_slot

from metricsmith import rediscluster
from metricsmith.cache import CacheConfig, TwoTierCache, load_cache_config
from metricsmith.cache.keys import CacheKeys
from metricsmith.config import ConfigError, Settings, load_settings
from metricsmith.realtime import RealtimeMetricsService, StreamConsumer, track_many
from metricsmith.realtime.consumers import ShardedConsumer
from metricsmith.realtime.keys import Keys, apply_keys
from metricsmith.realtime.persistence import restore, snapshot
from metricsmith.realtime.reconcile import reconcile
from metricsmith.realtime.registry import (
    ACTIVE_USERS,
    EVENTS_RATE,
    EVENTS_TOTAL,
    PURCHASE_VALUE,
    REVENUE_TOTAL,
)
from metricsmith.realtime.shards import ShardCountError, event_id_of, parse_shards, shard_of
from metricsmith.realtime.stream import GROUP, track
from metricsmith.rediscluster.local import LocalCluster, free_base_port, server_binary


@dataclasses.dataclass
class Cluster:
    local: LocalCluster
    url: str

    def settings(self, shards: int = 1) -> Settings:
        return dataclasses.replace(private_settings(), redis_url=self.url, redis_cluster=True, stream_shards=shards)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    try:
        server_binary()
    except Exception as exc:  # noqa: BLE001 - the reason is the skip message
        pytest.skip(f"no Redis >= 7 server binary for a local cluster: {exc}")
    local = LocalCluster(load_settings(), root=tmp_path_factory.mktemp("redis-cluster"), node_timeout_ms=1500)
    local.up(free_base_port(21_000 + random.randrange(0, 300) * 6))
    try:
        yield Cluster(local, local.url())
    finally:
        local.down()


def _slot(key: str) -> int:
    return int(key_slot(key.encode()))


# --------------------------------------------------------------------------- settings (no cluster)


def test_cluster_settings_and_bad_values() -> None:
    s = load_settings({"METRICSMITH_REDIS_URL": "redis+cluster://127.0.0.1:7101,127.0.0.1:7102",
                       "METRICSMITH_STREAM_SHARDS": "4"})
    assert s.redis_cluster and s.stream_shards == 4
    assert load_settings({"METRICSMITH_REDIS_URL": "redis://h:1/0", "METRICSMITH_REDIS_CLUSTER": "1"}).redis_cluster
    assert not load_settings({"METRICSMITH_REDIS_URL": "redis://h:1/0"}).redis_cluster
    for env, message in [
        ({"METRICSMITH_REDIS_URL": "redis+cluster://127.0.0.1"}, "is not host:port"),
        ({"METRICSMITH_REDIS_URL": "redis+cluster://"}, "names no node"),
        ({"METRICSMITH_REDIS_URL": "redis+cluster://h:99999"}, "is not host:port"),
        ({"METRICSMITH_REDIS_CLUSTER": "maybe"}, "use 1 or 0"),
        ({"METRICSMITH_REDIS_URL": "unix:///tmp/r.sock", "METRICSMITH_REDIS_CLUSTER": "1"}, "not a unix socket"),
        ({"METRICSMITH_STREAM_SHARDS": "0"}, "use 1 to 256"),
        ({"METRICSMITH_STREAM_SHARDS": "four"}, "is not a whole number"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_settings(env)
    assert parse_shards("0-3", 4) == [0, 1, 2, 3] and parse_shards("2,0", 4) == [0, 2]
    for text, message in [("0-4", "shard.s. 4 do not exist"), ("3-1", "goes upwards"), ("x", "use shard numbers"),
                          ("", "names no shard")]:
        with pytest.raises(ValueError, match=message):
            parse_shards(text, 4)


def test_cluster_without_a_url_needs_the_local_cluster(tmp_path: Path) -> None:
    settings = load_settings({"METRICSMITH_REDIS_CLUSTER": "1", "METRICSMITH_HOME": str(tmp_path)})
    with pytest.raises(Exception, match="redis-cluster up"):
        rediscluster.url(settings)


def test_tagged_layout_puts_each_script_in_one_slot() -> None:
    keys = Keys("p:", tagged=True)
    given = apply_keys(keys, events_total=EVENTS_TOTAL.name, revenue_total=REVENUE_TOTAL.name,
                       active_users=ACTIVE_USERS.name, purchase_value=PURCHASE_VALUE.name,
                       events_rate=EVENTS_RATE.name, windows=EVENTS_RATE.windows, days=["2026-01-01", "2026-01-02"])
    state = {_slot(k) for k in [*given, keys.registry, keys.alive, keys.shards, keys.histogram("m", "a"),
                                  keys.histogram_index("m"), keys.rate("m", 60, "x"), keys.rate_index("m")]}
    assert len(state) == 1
    shard_slots = {_slot(keys.stream_shard(s)) for s in range(4)}
    assert len(shard_slots) == 4 and all(_slot(keys.shard_lock(s)) == _slot(keys.stream_shard(s)) for s in range(4))
    cache = CacheKeys("p:", tagged=True)
    assert len({_slot(k) for k in (cache.value("a"), cache.value("b:c"), cache.tag("day:x"), cache.gen, cache.fence,
                                   cache.stats, cache.lock("a"), cache.ack("1"), cache.channel)}) == 1
    # standalone names unchanged
    assert Keys("p:").stream == "p:rt:stream" and CacheKeys("p:").gen == "p:cache:gen"


# --------------------------------------------------------------------------- realtime on the cluster


def test_every_realtime_path_runs_in_one_slot_per_command(cluster: Cluster, empty_events: psycopg.Connection[Any]) -> None:
    settings = cluster.settings(shards=4)
    svc = RealtimeMetricsService(settings)
    assert rediscluster.is_cluster(svc.redis)
    svc.declare_counter("api:calls", labels=("code",))
    assert svc.increment_counter("api:calls", 2, {"code": "200"}) == 2
    svc.declare_gauge("q")
    svc.set_gauge("q", 5)
    assert svc.inc_gauge("q", 2) == 7
    svc.declare_histogram("lat", buckets=(1, 10))
    svc.observe_histogram("lat", 3)  # MULTI/EXEC of h: and hidx:
    svc.declare_rate("logins", windows=(60, 300))
    svc.mark("logins", 3)  # mark.lua
    assert svc.get_counter("api:calls", {"code": "200"}) == 2 and svc.get_histogram("lat").count == 1
    assert svc.get_rate_count("logins", 60) == 3
    events = make_events(1500, seed=71)
    track_many(events + events[:100], settings=settings)
    consumer = ShardedConsumer(settings, shards=[0, 1, 2, 3], log=lambda _: None, batch_size=300)
    try:
        stats = consumer.run(until_idle=True)
    finally:
        consumer.close()
    assert stats.applied == len(events) and stats.redis_duplicates == 100
    from test_realtime_stream import assert_matches

    assert_matches(svc, expected_from(events, settings.timezone), empty_events)
    report = reconcile(settings=settings, service=svc, days=[datetime.now(settings.tz).date()])
    assert report.corrections == []
    snapshot(settings, service=svc)
    before = {(lb["day"], lb["event_type"]): v for lb, v in svc.series(EVENTS_TOTAL)}
    for key in svc.redis.scan_iter(match=svc.keys.base + "*", count=1000):  # Redis "loses its data"
        svc.redis.delete(key)
    assert restore(settings).restored
    assert {(lb["day"], lb["event_type"]): v for lb, v in svc.series(EVENTS_TOTAL)} == before
    svc.close()


def test_events_keep_their_shard_and_stay_exact_across_shards(cluster: Cluster,
                                                                empty_events: psycopg.Connection[Any]) -> None:
    settings = cluster.settings(shards=4)
    events = make_events(2000, seed=72)
    resent = random.Random(3).sample(events, 300)
    track_many(events, settings=settings)
    for event in resent[:20]:
        track(event, settings=settings)
    track_many(resent[20:] + [bad for bad, _ in BAD_EVENTS], settings=settings)
    svc = RealtimeMetricsService(settings)
    # every event_id is in exactly its shard, its copies too
    by_shard: dict[int, Counter[str]] = {}
    for shard in range(4):
        ids: Counter[str] = Counter()
        for _id, fields in svc.redis.xrange(svc.keys.stream_shard(shard)):
            ids[event_id_of(fields[b"e"])] += 1
        by_shard[shard] = ids
    for event in events:
        home = shard_of(event["event_id"], 4)
        assert by_shard[home][event["event_id"]] >= 1
        assert all(event["event_id"] not in by_shard[s] for s in range(4) if s != home)
    assert all(by_shard[s] for s in range(4))  # all four shards got events
    stats = ShardedConsumer(settings, shards=parse_shards("0-3", 4), log=lambda _: None).run(until_idle=True)
    assert stats.applied == len(events) and stats.redis_duplicates == len(resent)
    assert stats.quarantined == len(BAD_EVENTS)
    from test_realtime_stream import assert_matches

    assert_matches(svc, expected_from(events, settings.timezone), empty_events)
    svc.close()


def test_changing_the_shard_count_is_refused_while_entries_are_pending(cluster: Cluster,
                                                                        empty_events: psycopg.Connection[Any]) -> None:
    settings = cluster.settings(shards=2)
    events = make_events(200, seed=73)
    track_many(events, settings=settings)
    consumer = StreamConsumer(settings, shard=1, log=lambda _: None, batch_size=10)
    consumer._read(">")  # ten entries now pending in shard 1, the rest unread
    four = dataclasses.replace(settings, stream_shards=4)
    with pytest.raises(ShardCountError, match=r"split in 2 shard\(s\).*shard 1: [\d,]+ entries \(10 pending\).*"
                                              r"METRICSMITH_STREAM_SHARDS=2 metricsmith realtime consume --shards 0-1 "
                                              r"--until-idle"):
        track_many(events[:1], settings=four)
    with pytest.raises(ShardCountError, match="still hold entries"):
        StreamConsumer(four, log=lambda _: None)
    with pytest.raises(ShardCountError, match="shard 2 does not exist"):
        StreamConsumer(settings, shard=2, log=lambda _: None)
    consumer.close()
    ShardedConsumer(settings, shards=[0, 1], log=lambda _: None).run(until_idle=True)  # drained
    assert track_many(events[:5], settings=four) == 5  # now allowed: the streams were empty
    assert int(RealtimeMetricsService(four).redis.get(consumer.keys.shards)) == 4
    ShardedConsumer(four, shards=[0, 1, 2, 3], log=lambda _: None).run(until_idle=True)
    assert empty_events.execute("select count(*) from raw.events").fetchone() == (len(events),)


def _cli_consumer(env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "metricsmith.cli", "realtime", "consume", "--batch-size", "100",
         "--claim-idle-ms", "400", "--lock-ttl-ms", "600", "--block-ms", "100", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _cluster_env(cluster: Cluster, settings: Settings) -> dict[str, str]:
    return {**os.environ, "METRICSMITH_REDIS_URL": cluster.url, "METRICSMITH_REDIS_PREFIX": settings.redis_prefix,
            "METRICSMITH_STREAM_SHARDS": str(settings.stream_shards)}


def test_sigkilled_consumers_on_4_shards_lose_nothing_and_count_nothing_twice(
        cluster: Cluster, empty_events: psycopg.Connection[Any]) -> None:
    settings = cluster.settings(shards=4)
    rng = random.Random(74)
    events = make_events(6000, seed=75)
    stream_input: list[Any] = events + rng.sample(events, 300) + [bad for bad, _ in BAD_EVENTS]
    rng.shuffle(stream_input)
    track_many(stream_input, settings=settings)
    env = {**_cluster_env(cluster, settings), "METRICSMITH_REALTIME_FAULT_PAUSE_MS": "120"}
    kills, exited = 0, []
    # a fixed number of rounds of 2 consumers (4 shards each), SIGKILLed at a random moment; one that
    # ended by itself first is recorded for the failure message, and adds no round (looping until N
    # kills once let the extra rounds drain the stream before the last kill)
    for _ in range(max(1, int(os.environ.get("METRICSMITH_CLUSTER_KILLS", "6")) // 2)):
        procs = [_cli_consumer(env, "--shards", "0-3") for _ in range(2)]
        for proc in procs:
            assert proc.stderr is not None
            proc.stderr.readline()
        time.sleep(rng.uniform(0.2, 1.0))
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            else:
                assert proc.stderr is not None
                exited.append(f"exit {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            proc.wait()
    svc = RealtimeMetricsService(settings)
    left = sum(svc.redis.xlen(svc.keys.stream_shard(s)) for s in range(4))
    assert kills > 0 and left > 0, f"no kill landed while the stream had entries ({kills} kills, {left} left): {exited}"
    final = _cli_consumer({**env, "METRICSMITH_REALTIME_FAULT_PAUSE_MS": ""}, "--until-idle", "--allow-quarantine",
                          "--shards", "0-3")
    _, err = final.communicate(timeout=240)
    assert final.returncode == 0, err.decode()
    for shard in range(4):
        assert svc.redis.xpending(svc.keys.stream_shard(shard), GROUP)["pending"] == 0
        assert svc.redis.xlen(svc.keys.stream_shard(shard)) == 0
    from test_realtime_stream import assert_matches

    assert_matches(svc, expected_from(events, settings.timezone), empty_events)
    reasons = sorted(r[0] for r in empty_events.execute("select reason from raw.events_quarantine").fetchall())
    assert reasons == sorted(reason for _, reason in BAD_EVENTS)
    svc.close()


# --------------------------------------------------------------------------- the cache on the cluster


def _cluster_cache(cluster: Cluster, settings: Settings, **overrides: Any) -> TwoTierCache:
    config = CacheConfig(**{**load_cache_config().__dict__, **overrides})
    cache = TwoTierCache(settings, config)
    assert cache.wait_until_listening(10)
    return cache


CHILD = """
import sys
from metricsmith.cache import TwoTierCache
cache = TwoTierCache()
assert cache.wait_until_listening(10)
for line in sys.stdin:
    value = cache.get_or_compute("k", lambda: sys.argv[1] + ":" + line.strip(), ttl=600, tags=["day:2024-01-02"])
    print(value, cache.local_stats().counters["l1_hits"], flush=True)
"""


def test_cache_on_the_cluster_invalidates_across_processes_and_computes_once(cluster: Cluster) -> None:
    settings = cluster.settings()
    # a generous Redis timeout: on a loaded 2-core machine a 0.5 s one opens the circuit (fail-open
    # then computes directly), which is the fail-open test's subject, not this one's
    cache = _cluster_cache(cluster, settings, redis_timeout=5.0)
    assert cache.keys.tagged and cache.health()["redis_mode"] == "cluster"
    child = subprocess.Popen([sys.executable, "-c", CHILD, "child"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=_cluster_env(cluster, settings))
    assert child.stdin is not None and child.stdout is not None

    def ask(what: str) -> tuple[str, int]:
        child.stdin.write(what + "\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        value, hits = child.stdout.readline().split()  # type: ignore[union-attr]
        return value, int(hits)

    try:
        assert ask("1") == ("child:1", 0)
        assert ask("2") == ("child:1", 1)  # the child's L1
        result = cache.invalidate(tags=["day:2024-01-02"])  # SPUBLISH; both processes confirm
        assert result.ok and result.processes_notified >= 2 and result.processes_confirmed == result.processes_notified
        assert ask("3") == ("child:3", 1)
        # the generation guard: a computation that began before an invalidation does not store
        started, release = threading.Event(), threading.Event()

        def slow() -> str:
            started.set()
            release.wait(5)
            return "old"

        t = threading.Thread(target=lambda: cache.get_or_compute("race", slow, ttl=60, tags=["day:2024-05-05"]))
        t.start()
        started.wait(5)
        cache.invalidate(tags=["day:2024-05-05"])
        release.set()
        t.join()
        assert cache.get_or_compute("race", lambda: "new", ttl=60) == "new"
        assert cache.local_stats().counters["stale_writes_refused"] == 1
    finally:
        child.stdin.close()
        child.wait(timeout=20)
    # 100 concurrent misses, one computation
    calls: list[int] = []
    gate = threading.Barrier(100)

    def compute() -> list[int]:
        calls.append(1)
        time.sleep(0.3)
        return [42]

    out: list[Any] = []

    def reader() -> None:
        gate.wait()
        out.append(cache.get_or_compute("stampede", compute, ttl=60))

    threads = [threading.Thread(target=reader) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.local_stats().counters["redis_errors"] == 0, cache.health()
    assert len(calls) == 1 and out == [[42]] * 100
    assert cache.invalidate(patterns=["*"]).ok  # SCAN over every master, one MULTI/EXEC
    cache.close()


# --------------------------------------------------------------------------- failover (last: it kills a master)


def test_a_master_killed_during_ingest_is_replaced_nothing_lost_nothing_twice(
        cluster: Cluster, empty_events: psycopg.Connection[Any]) -> None:
    settings = cluster.settings(shards=4)
    events = make_events(8000, seed=76)
    track_many(events, settings=settings)
    svc = RealtimeMetricsService(settings)
    for node in svc.redis.get_primaries():  # the events reached a replica before the kill
        svc.redis.execute_command("WAIT", 1, 5000, target_nodes=node)
    state_master = svc.redis.get_node_from_key(svc.keys.registry)
    # a cache whose slot is on the same master (every read goes to Redis: no L1)
    cache_settings = next(c for c in (dataclasses.replace(settings, redis_prefix=f"{settings.redis_prefix}c{i}:")
                                      for i in range(500))
                          if svc.redis.get_node_from_key(CacheKeys(c.redis_prefix, True).gen).name == state_master.name)
    cache = _cluster_cache(cluster, cache_settings, retry_after=0.3, l1_enabled=False)
    assert cache.get_or_compute("v", lambda: "from-pg", ttl=600) == "from-pg"
    consumer = ShardedConsumer(settings, shards=[0, 1, 2, 3], log=lambda _: None, batch_size=200,
                               claim_idle_ms=500, lock_ttl_ms=1500, retry_cap_s=2.0)
    done: list[Any] = []
    runner = threading.Thread(target=lambda: done.append(consumer.run(until_idle=True, max_retries=40)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 60
    while empty_events.execute("select count(*) from raw.events").fetchone()[0] < 1000:  # type: ignore[index]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cluster.local.kill(state_master.port)  # the master of the metric state, mid-ingest
    def replaced() -> bool:
        masters = [n for n in cluster.local.status() if n.role == "master" and n.slots]
        return len(masters) == 3 and cluster.local.state() == "ok"

    while not replaced():
        value = cache.get_or_compute("v", lambda: "from-pg", ttl=600)  # reads fail open meanwhile
        assert value == "from-pg"
        assert time.monotonic() < deadline + 30, "no replica took over"
        time.sleep(0.05)
    runner.join(timeout=90)
    assert not runner.is_alive() and done, "the consumers did not finish after the failover"
    consumer.close()
    assert done[0].retries >= 1  # batches were retried (the counts below show each event counted once)
    # every read during the election answered (from PostgreSQL while the circuit was open), never an error
    assert cache.local_stats().counters["redis_errors"] >= 1, "the cache never saw the outage"
    assert cache.get_or_compute("v", lambda: "from-pg", ttl=600) == "from-pg"
    back = time.monotonic() + 20
    while cache.health()["status"] != "ok":  # the circuit closes once the new master answers
        assert time.monotonic() < back, cache.health()
        cache.get_or_compute("v", lambda: "from-pg", ttl=600)
        time.sleep(0.2)
    assert sum(1 for n in cluster.local.status() if n.role == "master" and n.slots) == 3
    fresh = RealtimeMetricsService(settings)
    for shard in range(4):
        assert fresh.redis.xlen(fresh.keys.stream_shard(shard)) == 0
    from test_realtime_stream import assert_matches

    assert_matches(fresh, expected_from(events, settings.timezone), empty_events)
    health = cache.health()
    assert health["redis_mode"] == "cluster" and health["cluster"]["masters_failed"] >= 1
    cache.close()
    fresh.close()
    svc.close()

