"""The Redis key layout is built in one place; every Lua script gets every key it touches in KEYS.

Also: the apply lock is redis-py's ``Lock`` behind one helper, and the exposition's collectors are
plain callables.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from _realtime_events import expected_from, make_events, private_settings
from redis.lock import Lock

import metricsmith.realtime as realtime_pkg
from metricsmith.realtime import RealtimeMetricsService, StreamConsumer, track_many
from metricsmith.realtime.keys import Keys, apply_keys
from metricsmith.realtime.locks import apply_lock
from metricsmith.realtime.reconcile import reconcile
from metricsmith.realtime.registry import (
    ACTIVE_USERS,
    EVENTS_RATE,
    EVENTS_TOTAL,
    PURCHASE_VALUE,
    REVENUE_TOTAL,
)
from metricsmith.realtime.scripts import SCRIPTS

PACKAGE = Path(realtime_pkg.__file__).parent
#: the only string literals a script may contain: commands, hash fields and formats (never a key piece)
ALLOWED_LITERALS = {"HINCRBY", "HKEYS", "HDEL", "SMISMEMBER", "SADD", "HINCRBYFLOAT", "EXPIRE", "HSET", "SCARD",
                    "%d", "sum", "count", ""}


def _code(source: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in source.splitlines())


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text.strip():
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()]


def _scan(svc: RealtimeMetricsService, prefix: str) -> set[str]:
    return {k.decode() for k in svc.redis.scan_iter(match=prefix + "*", count=1000)}


def test_every_lua_file_is_a_script_or_the_shared_rate_function() -> None:
    files = {p.name for p in (PACKAGE / "lua").glob("*.lua")}
    assert files == {*SCRIPTS, "rate_add.lua"}
    for path in PACKAGE.glob("*.py"):  # no Lua left inline in Python
        assert "redis.call(" not in path.read_text(), path.name


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_builds_no_key_name(name: str) -> None:
    code = _code(SCRIPTS[name])
    literals = set(re.findall(r"'([^']*)'", code)) | set(re.findall(r'"([^"]*)"', code))
    assert literals <= ALLOWED_LITERALS, f"{name}: unexpected literal(s) {literals - ALLOWED_LITERALS}"
    # names bound to keys: locals assigned only from KEYS[...], and rate_add's `key` parameter
    key_names = {"key"}
    for names, values in re.findall(r"local\s+([\w\s,]+?)\s*=\s*(KEYS\[.*)", re.sub(r"=\s*\n\s*", "= ", code)):
        parts = _split_top_level(values)
        assert len(names.split(",")) == len(parts) and all(p.startswith("KEYS[") and p.endswith("]") for p in parts)
        key_names.update(n.strip() for n in names.split(","))
    calls = re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", code)
    assert calls
    for command, key in calls:
        key = key.strip()
        assert key.startswith("KEYS[") or key in key_names, f"{name}: {command} on {key!r}, not a KEYS entry"
    for first in re.findall(r"rate_add\(([^,]+),", code):
        if first.strip() != "key":  # the definition
            assert first.strip().startswith("KEYS["), f"{name}: rate_add on {first!r}"
    assert "ARGV" not in " ".join(k for _, k in calls)


def test_apply_writes_only_the_keys_it_is_given(empty_events: psycopg.Connection[Any]) -> None:
    """The batch of prefix A applied into the namespace of prefix B: B holds exactly the metrics,
    A holds none, and every key B holds is one the script received in KEYS."""
    settings = private_settings()
    other = private_settings()  # a sibling prefix (neither contains the other)
    events = make_events(800, seed=31)
    track_many(events + events[:50], settings=settings)
    consumer = StreamConsumer(settings, log=lambda _: None)
    target = RealtimeMetricsService(other)
    try:
        before = _scan(consumer.service, settings.redis_prefix)
        entries = consumer._read(">")
        batch = consumer.prepare(entries, datetime.now(UTC))
        days = list(dict.fromkeys(batch.args[1::6]))
        assert len(days) >= 2  # 30 hours back: two local days, three before 06:00
        new = consumer.apply_redis(batch, into=target.keys)
        assert new == len(events)
        given = set(apply_keys(target.keys, events_total=EVENTS_TOTAL.name, revenue_total=REVENUE_TOTAL.name,
                               active_users=ACTIVE_USERS.name, purchase_value=PURCHASE_VALUE.name,
                               events_rate=EVENTS_RATE.name, windows=EVENTS_RATE.windows, days=days))
        written = _scan(target, other.redis_prefix) - {target.keys.registry, target.keys.alive}
        assert written and written <= given
        assert target.keys.seen(days[0]) in written and target.keys.users(days[1]) in written
        # nothing under the consumer's own prefix (besides the stream it read) changed
        assert _scan(consumer.service, settings.redis_prefix) - {consumer.keys.stream} == before - {consumer.keys.stream}
        assert not [k for k in _scan(consumer.service, settings.redis_prefix) if ":c:" in k or ":seen:" in k]
        # the values in B are the plain-Python truth
        expected = expected_from(events, settings.timezone)
        got = {(labels["day"], labels["event_type"]): value for labels, value in target.series(EVENTS_TOTAL)}
        assert got == dict(expected.events_by_day_type)
        assert {labels["day"]: v for labels, v in target.series(REVENUE_TOTAL) if v} == \
            {d: v for d, v in expected.revenue_by_day.items() if v}
        assert {labels["day"]: v for labels, v in target.series(ACTIVE_USERS)} == \
            {d: len(u) for d, u in expected.users_by_day.items()}
        assert target.get_rate_count(EVENTS_RATE.name, 3600) == pytest.approx(len(events))
        # applied again: every id is in its day's seen set of B, nothing counted twice
        assert consumer.apply_redis(batch, into=target.keys) == 0
    finally:
        consumer.close()
        target.close()


def test_the_same_stream_on_two_prefixes_gives_the_same_metrics(empty_events: psycopg.Connection[Any]) -> None:
    events = make_events(600, seed=32)
    states = []
    for _ in range(2):
        settings = private_settings()
        track_many(events, settings=settings)
        consumer = StreamConsumer(settings, log=lambda _: None)
        try:
            stats = consumer.run(until_idle=True)
        finally:
            consumer.close()
        assert stats.applied == len(events)
        svc = RealtimeMetricsService(settings)
        keys = _scan(svc, settings.redis_prefix)
        assert keys and all(k.startswith(svc.keys.base) for k in keys)
        states.append(({(lb["day"], lb["event_type"]): v for lb, v in svc.series(EVENTS_TOTAL)},
                       {lb["day"]: v for lb, v in svc.series(ACTIVE_USERS)},
                       {tuple(lb.items()): h.as_dict() for lb, h in svc.series(PURCHASE_VALUE)}))
    assert states[0] == states[1]
    assert states[0][0] == dict(expected_from(events, settings.timezone).events_by_day_type)


def test_mark_writes_only_its_rate_keys() -> None:
    settings = private_settings()
    svc = RealtimeMetricsService(settings, declare_builtins=False)
    svc.declare_rate("logins", "logins", labels=("site",), windows=(60, 300))
    before = _scan(svc, settings.redis_prefix)
    svc.mark("logins", 3, {"site": "eu"})
    added = _scan(svc, settings.redis_prefix) - before
    assert added == {svc.keys.rate("logins", 60, "eu"), svc.keys.rate("logins", 300, "eu"),
                     svc.keys.rate_index("logins")}
    assert svc.get_rate_count("logins", 60, {"site": "eu"}) == 3


def test_keys_layout_is_the_existing_one() -> None:
    """Data written before the layout moved into keys.py is still found (names unchanged)."""
    keys = Keys("p:")
    assert (keys.base, keys.registry, keys.stream, keys.lock, keys.alive) == \
        ("p:rt:", "p:rt:registry", "p:rt:stream", "p:rt:lock", "p:rt:alive")
    assert keys.counter("m") == "p:rt:c:m" and keys.gauge("m") == "p:rt:g:m"
    assert keys.histogram("m", "a") == "p:rt:h:m:a" and keys.histogram_index("m") == "p:rt:hidx:m"
    assert keys.rate("m", 60, "") == "p:rt:r:m:60:" and keys.rate_index("m") == "p:rt:ridx:m"
    assert keys.seen("2026-01-02") == "p:rt:seen:2026-01-02" and keys.users("2026-01-02") == "p:rt:users:2026-01-02"


# --------------------------------------------------------------------------- the apply lock


def test_one_lock_helper_everywhere() -> None:
    for name in ("stream.py", "reconcile.py", "persistence.py"):
        source = (PACKAGE / name).read_text()
        assert "nx=True" not in source and "_RELEASE" not in source, name
        assert "apply_lock(" in source, name


def test_reconcile_waits_for_the_consumers_lock_and_times_out_clearly() -> None:
    settings = private_settings()
    svc = RealtimeMetricsService(settings)
    holder = Lock(svc.redis, svc.keys.lock, timeout=30, thread_local=False)
    assert holder.acquire(blocking=False)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="apply lock .* is busy"):
            reconcile(settings=settings, service=svc, lock_wait_s=0.3)
        assert 0.2 <= time.monotonic() - started < 5
        assert holder.owned()  # the failed attempt did not touch the holder's lock
    finally:
        holder.release()
    assert reconcile(settings=settings, service=svc, lock_wait_s=1).checked > 0
    assert svc.redis.get(svc.keys.lock) is None


def test_apply_lock_expires_and_never_releases_a_lock_taken_since() -> None:
    settings = private_settings()
    svc = RealtimeMetricsService(settings, declare_builtins=False)
    # a holder killed while holding it: the TTL frees it
    dead = Lock(svc.redis, svc.keys.lock, timeout=0.3, thread_local=False)
    assert dead.acquire(blocking=False)
    started = time.monotonic()
    with apply_lock(svc.redis, svc.keys, ttl_ms=200, wait_s=5) as lock:
        assert time.monotonic() - started >= 0.1
        assert lock.owned() and svc.redis.pttl(svc.keys.lock) <= 200
        time.sleep(0.35)  # our own lock expires inside the block ...
        other = Lock(svc.redis, svc.keys.lock, timeout=10, thread_local=False)
        assert other.acquire(blocking=False)  # ... and someone else takes it
    assert other.owned()  # leaving the block did not delete the other holder's lock
    other.release()
    # exclusive: two threads never inside at once
    inside, overlaps = [0], [0]

    def work() -> None:
        for _ in range(20):
            with apply_lock(svc.redis, svc.keys, ttl_ms=5_000, wait_s=30, sleep_s=0.001):
                inside[0] += 1
                overlaps[0] += inside[0] > 1
                time.sleep(0.001)
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps[0] == 0


# --------------------------------------------------------------------------- exposition


def test_cache_collector_is_a_plain_import() -> None:
    from metricsmith.cache import cache_metric_families
    from metricsmith.realtime import exposition

    assert exposition._collectors["cache"] is cache_metric_families
    assert "importlib" not in (PACKAGE / "exposition.py").read_text()
