"""Stream ingest on real Redis + Postgres: exactly-once effect, quarantine, claiming, reconciliation, restore."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest
from _realtime_events import BAD_EVENTS, Expected, expected_from, make_events, private_settings

from metricsmith.config import Settings
from metricsmith.realtime import RealtimeMetricsService, StreamConsumer, track, track_many
from metricsmith.realtime.persistence import restore, snapshot
from metricsmith.realtime.reconcile import reconcile
from metricsmith.realtime.registry import ACTIVE_USERS, DRIFT, EVENTS_TOTAL, PURCHASE_VALUE, REVENUE_TOTAL
from metricsmith.realtime.stream import GROUP


def redis_state(svc: RealtimeMetricsService) -> Expected:
    """What Redis holds, in the shape of the plain-Python expectation."""
    out = Expected()
    for labels, value in svc.series(EVENTS_TOTAL):
        out.events_by_day_type[(labels["day"], labels["event_type"])] = value
    for labels, value in svc.series(REVENUE_TOTAL):
        out.revenue_by_day[labels["day"]] = value
    for labels, value in svc.series(ACTIVE_USERS):
        members = {m.decode() for m in svc.redis.smembers(svc.keys.users(labels["day"]))}
        assert len(members) == value
        out.users_by_day[labels["day"]] = members
    for labels, hist in svc.series(PURCHASE_VALUE):
        previous, per_bucket = 0, []
        for total in hist.cumulative:
            per_bucket.append(total - previous)
            previous = total
        out.purchase_buckets[labels["day"]] = per_bucket
        out.purchase_sum[labels["day"]] = hist.sum
    return out


def assert_matches(svc: RealtimeMetricsService, expected: Expected, conn: psycopg.Connection[Any]) -> None:
    got = redis_state(svc)
    assert dict(got.events_by_day_type) == dict(expected.events_by_day_type)
    assert {k: v for k, v in got.revenue_by_day.items() if v} == {k: v for k, v in expected.revenue_by_day.items() if v}
    assert got.users_by_day == expected.users_by_day
    assert got.purchase_buckets == expected.purchase_buckets
    assert dict(got.purchase_sum) == dict(expected.purchase_sum)
    ids = {str(row[0]) for row in conn.execute("select event_id from raw.events").fetchall()}
    assert ids == expected.ids


def consume(settings: Settings, **kwargs: Any) -> Any:
    consumer = StreamConsumer(settings, log=lambda _: None, **kwargs)
    try:
        return consumer.run(until_idle=True)
    finally:
        consumer.close()


def test_stream_counts_equal_input_with_duplicates(empty_events: psycopg.Connection[Any]) -> None:
    settings = private_settings()
    events = make_events(3000, seed=1)
    # producer retries: 200 events sent twice, some in a later batch
    repeated = events + events[:200] + events[1500:1510]
    assert track_many(repeated, settings=settings) == len(repeated)
    stats = consume(settings, batch_size=700)
    expected = expected_from(events, settings.timezone)
    assert stats.entries == len(repeated)
    assert stats.applied == len(events) and stats.redis_duplicates == 210
    assert stats.loaded == len(events)
    assert stats.quarantined == 0
    svc = RealtimeMetricsService(settings)
    assert_matches(svc, expected, empty_events)
    # the same events again later (a replay): nothing changes anywhere
    track_many(events[:500], settings=settings)
    again = consume(settings)
    assert again.applied == 0 and again.loaded == 0 and again.pg_duplicates == 500
    assert_matches(svc, expected, empty_events)
    # the events/s rate counted each distinct event once
    assert svc.get_rate_count("metricsmith_events_per_second", 3600) == pytest.approx(len(events))
    # the stream is trimmed as it is acknowledged
    assert svc.redis.xlen(svc.keys.stream) == 0


def test_reporting_time_zone_decides_the_day(empty_events: psycopg.Connection[Any]) -> None:
    settings = private_settings("Pacific/Auckland")
    events = make_events(500, seed=2)
    track_many(events, settings=settings)
    consume(settings)
    expected = expected_from(events, "Pacific/Auckland")
    assert expected != expected_from(events, "UTC")  # the test data straddles a local midnight
    assert_matches(RealtimeMetricsService(settings), expected, empty_events)


def test_bad_events_are_quarantined_once_with_reason(empty_events: psycopg.Connection[Any]) -> None:
    settings = private_settings()
    good = make_events(100, seed=3)
    payloads = [bad for bad, _ in BAD_EVENTS]
    track_many([*good[:50], *payloads, *good[50:]], settings=settings)
    svc = RealtimeMetricsService(settings)
    # the first consumer dies after reading (entries pending, nothing applied)
    dead = StreamConsumer(settings, name="dead", claim_idle_ms=50, log=lambda _: None)
    entries = dead._read(">")
    assert len(entries) == 100 + len(BAD_EVENTS)
    # ... a second one processes half of them and dies before XACK
    half = StreamConsumer(settings, name="half", claim_idle_ms=50, log=lambda _: None)
    half.process(entries[: len(entries) // 2])
    # (simulate "died before XACK": re-add to its pending list by not acking - process() acked, so
    # re-deliver the same entries explicitly to a third consumer)
    stats = consume(settings, claim_idle_ms=50, name="rescuer")
    assert stats.claimed >= len(entries) - len(entries) // 2
    replay = StreamConsumer(settings, name="replay", log=lambda _: None)
    replay.process(entries)  # the whole batch once more (at-least-once delivery)
    rows = empty_events.execute("select reason, detail, raw_text, source from raw.events_quarantine").fetchall()
    assert sorted(r[0] for r in rows) == sorted(reason for _, reason in BAD_EVENTS)
    assert all(r[3] == "stream" and "stream entry" in r[1] for r in rows)
    assert any(r[2] == "{not json" for r in rows)
    assert_matches(svc, expected_from(good, settings.timezone), empty_events)
    for consumer in (dead, half, replay):
        consumer.close()


def test_crash_between_redis_and_postgres_is_repaired_on_redelivery(empty_events: psycopg.Connection[Any]) -> None:
    settings = private_settings()
    events = make_events(800, seed=4)
    track_many(events, settings=settings)
    crashing = StreamConsumer(settings, name="crashing", claim_idle_ms=100, log=lambda _: None)
    entries = crashing._read(">")
    batch = crashing.prepare(entries, __import__("datetime").datetime.now(__import__("datetime").UTC))
    # Lua applied, then the process died: no Postgres rows, no XACK
    assert crashing.apply_redis(batch) == len(events)
    assert empty_events.execute("select count(*) from raw.events").fetchone() == (0,)
    pending = crashing.redis.xpending(crashing.keys.stream, GROUP)["pending"]
    assert pending == len(entries)
    # another consumer claims them after the idle time: Postgres gets every row, Redis counts none twice
    stats = consume(settings, name="survivor", claim_idle_ms=100)
    assert stats.claimed == len(entries) and stats.applied == 0 and stats.loaded == len(events)
    assert_matches(RealtimeMetricsService(settings), expected_from(events, settings.timezone), empty_events)
    # consumers with nothing pending that have been idle long enough are removed from the group
    crashing._forget_dead_consumers(idle_ms=0)
    names = {c["name"] for c in crashing.redis.xinfo_consumers(crashing.keys.stream, GROUP)}
    assert names <= {b"crashing", "crashing"}
    crashing.close()


def test_reconciliation_finds_and_corrects_drift(empty_events: psycopg.Connection[Any]) -> None:
    settings = private_settings()
    events = make_events(2000, seed=5)
    track_many(events, settings=settings)
    consume(settings)
    svc = RealtimeMetricsService(settings)
    expected = expected_from(events, settings.timezone)
    days = sorted({day for day, _ in expected.events_by_day_type})
    day = days[-1]
    # inject drift: lost increments, a phantom event type, a wrong revenue, a lost user, histogram damage
    svc.redis.hincrbyfloat(svc.keys.counter(EVENTS_TOTAL.name), f"{day}\x1fpage_view", -7)
    svc.redis.hset(svc.keys.counter(EVENTS_TOTAL.name), f"{day}\x1fghost", 3)
    svc.redis.hincrbyfloat(svc.keys.counter(REVENUE_TOTAL.name), day, 12345)
    lost_user = sorted(expected.users_by_day[day])[0]
    svc.redis.srem(svc.keys.users(day), lost_user)
    svc.redis.hset(svc.keys.gauge(ACTIVE_USERS.name), day, len(expected.users_by_day[day]) - 1)
    svc.redis.hincrby(svc.keys.histogram(PURCHASE_VALUE.name, day), "count", 2)
    # events loaded straight into raw.events (not via the stream) are truth too
    extra = make_events(30, seed=55)
    from metricsmith.ingest import load_events
    load_events(extra)
    truth = expected_from(events + extra, settings.timezone)

    report = reconcile([date.fromisoformat(d) for d in days], settings=settings, service=svc)
    found = {(c.metric, tuple(sorted(c.labels.items()))): c for c in report.corrections}
    pv = found[(EVENTS_TOTAL.name, (("day", day), ("event_type", "page_view")))]
    extra_pv = truth.events_by_day_type[(day, "page_view")] - expected.events_by_day_type[(day, "page_view")]
    assert pv.drift == 7 + extra_pv
    ghost = found[(EVENTS_TOTAL.name, (("day", day), ("event_type", "ghost")))]
    assert ghost.expected == 0 and ghost.observed == 3 and ghost.drift == -3
    rev = found[(REVENUE_TOTAL.name, (("day", day),))]
    assert rev.drift == truth.revenue_by_day[day] - expected.revenue_by_day[day] - 12345
    assert (ACTIVE_USERS.name, (("day", day),)) in found
    assert_matches(svc, truth, empty_events)
    # recorded in Postgres, and the drift is a metric
    rows = empty_events.execute("select metric, expected, observed, drift from metricsmith.realtime_corrections "
                                "where run_id = %s", (report.run_id,)).fetchall()
    assert len(rows) == len(report.corrections)
    assert (EVENTS_TOTAL.name, 0.0, 3.0, -3.0) in rows
    assert svc.get_gauge(DRIFT.name, {"metric": REVENUE_TOTAL.name, "day": day}) == rev.drift
    assert svc.get_counter("metricsmith_realtime_corrections_total", {"metric": EVENTS_TOTAL.name}) >= 2
    # a second run finds nothing
    assert reconcile([date.fromisoformat(d) for d in days], settings=settings, service=svc).corrections == []
    assert svc.get_gauge(DRIFT.name, {"metric": REVENUE_TOTAL.name, "day": day}) == 0


def test_redis_emptied_restore_gives_the_right_values(empty_events: psycopg.Connection[Any]) -> None:
    settings = private_settings()
    svc = RealtimeMetricsService(settings)
    svc.declare_counter("api:calls", "API calls", labels=("route",))
    svc.declare_histogram("latency_seconds", "latency", buckets=(0.1, 1))
    svc.declare_gauge("queue_depth", "depth")
    svc.increment_counter("api:calls", 41, {"route": "/a"})
    for v in (0.05, 0.5, 5):
        svc.observe_histogram("latency_seconds", v)
    svc.set_gauge("queue_depth", 17)
    first = make_events(1500, seed=6)
    track_many(first, settings=settings)
    consume(settings)
    snap = snapshot(settings, service=svc)
    assert snap.rows > 5
    stored = empty_events.execute("select count(*) from metricsmith.realtime_metrics_cache where snapshot_id = %s",
                                  (snap.snapshot_id,)).fetchone()
    assert stored == (snap.rows,)
    # events after the snapshot
    later = make_events(700, seed=7)
    track_many(later, settings=settings)
    consume(settings)
    # Redis loses everything under our prefix (we never FLUSHALL a shared server)
    keys = list(svc.redis.scan_iter(match=settings.redis_prefix + "*", count=1000))
    svc.redis.delete(*keys)
    fresh = RealtimeMetricsService(settings, declare_builtins=False)
    assert restore(settings, service=None).restored
    assert not restore(settings).restored  # not empty any more
    fresh = RealtimeMetricsService(settings)
    assert fresh.get_counter("api:calls", {"route": "/a"}) == 41
    assert fresh.get_gauge("queue_depth") == 17
    hist = fresh.get_histogram("latency_seconds")
    assert list(hist.cumulative) == [1, 2, 3] and hist.sum == pytest.approx(5.55)
    assert_matches(fresh, expected_from(first + later, settings.timezone), empty_events)
    # the consumer keeps working on the restored state (its group is recreated)
    more = make_events(100, seed=8)
    track_many(more, settings=settings)
    consume(settings)
    assert_matches(fresh, expected_from(first + later + more, settings.timezone), empty_events)


def test_track_single_event_generates_an_id(empty_events: psycopg.Connection[Any]) -> None:
    settings = private_settings()
    event_id = track({"event_type": "signup", "occurred_at": "2026-01-01T10:00:00+00:00", "user_id": "u1"},
                     settings=settings)
    uuid.UUID(event_id)
    consume(settings)
    row = empty_events.execute("select event_type, user_id from raw.events where event_id = %s",
                               (event_id,)).fetchone()
    assert row == ("signup", "u1")


def test_postgres_unreachable_then_back_consumer_retries_without_loss(empty_events: psycopg.Connection[Any]) -> None:
    import dataclasses

    settings = private_settings()
    events = make_events(600, seed=9)
    track_many(events, settings=settings)
    broken = dataclasses.replace(settings, database_url="postgresql://postgres@127.0.0.1:1/nowhere")
    messages: list[str] = []
    consumer = StreamConsumer(broken, batch_size=200, log=messages.append)

    def log(message: str) -> None:
        messages.append(message)
        if len(messages) == 2:  # Postgres "comes back" after the second failed attempt
            consumer.settings = settings

    consumer.log = log
    try:
        stats = consumer.run(until_idle=True)
    finally:
        consumer.close()
    assert len(messages) == 2 and all("retrying" in m and "batch stays pending" in m for m in messages)
    assert stats.loaded == len(events)
    assert_matches(RealtimeMetricsService(settings), expected_from(events, settings.timezone), empty_events)


def test_cli_consume_export_reconcile_snapshot(empty_events: psycopg.Connection[Any], capsys: Any,
                                               monkeypatch: Any) -> None:
    from metricsmith.cli import main

    settings = private_settings()
    monkeypatch.setenv("METRICSMITH_REDIS_PREFIX", settings.redis_prefix)
    events = make_events(300, seed=10)
    track_many([*events, "{oops"], settings=settings)
    # quarantined entries: exit 1, like `metricsmith load` (the same rule and flag)
    assert main(["realtime", "consume", "--until-idle"]) == 1
    captured = capsys.readouterr()
    assert "raw.events loaded 300" in captured.out and "quarantined 1" in captured.out
    assert captured.err.strip().splitlines()[-1] == (
        "metricsmith realtime consume: 1 row(s) quarantined (see raw.events_quarantine); "
        "pass --allow-quarantine to accept")
    track_many(["{oops again"], settings=settings)
    assert main(["realtime", "consume", "--until-idle", "--allow-quarantine"]) == 0
    assert "quarantined 1" in capsys.readouterr().out
    assert main(["realtime", "consume", "--until-idle"]) == 0  # nothing quarantined
    capsys.readouterr()
    assert main(["realtime", "export", "--no-extra"]) == 0
    text = capsys.readouterr().out
    expected = expected_from(events, settings.timezone)
    for (day, event_type), n in expected.events_by_day_type.items():
        assert f'metricsmith_events_total{{day="{day}",event_type="{event_type}"}} {n}' in text
    assert main(["realtime", "reconcile", "--days", "2", "--fail-on-drift"]) == 0
    assert "0 corrected" in capsys.readouterr().out
    assert main(["realtime", "snapshot"]) == 0
    assert "series -> metricsmith.realtime_metrics_cache" in capsys.readouterr().out
    assert main(["realtime", "restore"]) == 0
    assert "nothing to restore" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        main(["realtime", "reconcile", "--day", "not-a-date"])
    assert bad.value.code == 2
    assert "'not-a-date' is not a date (YYYY-MM-DD)" in capsys.readouterr().err


POISON: list[tuple[Any, str]] = [
    ({"event_id": str(uuid.uuid4()), "occurred_at": "2024-02-30T10:00:00Z", "event_type": "x"}, "bad_timestamp"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "2025-13-40T99:00:00Z", "event_type": "x"}, "bad_timestamp"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "0000-01-01T00:00:00Z", "event_type": "x"}, "bad_timestamp"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "2024-06-30T23:59:60Z", "event_type": "x"}, "bad_timestamp"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "2024-03-01T10:00:00+25:00", "event_type": "x"}, "bad_timestamp"),
    (b'{"event_id": "%s", "occurred_at": "2024-03-01T10:00:00Z", "event_type": "caf\xe9"}'
     % str(uuid.uuid4()).encode(), "invalid_utf8"),
    (f'{{"event_id": "{uuid.uuid4()}", "occurred_at": "2024-03-01T10:00:00Z", "event_type": "a", "event_type": "b"}}',
     "duplicate_field"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "2199-01-01T00:00:00Z", "received_at": "2199-01-01T00:00:00Z",
      "event_type": "x"}, "received_in_future"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "1999-01-01T00:00:00Z", "event_type": "x"},
     "timestamp_out_of_range"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "2024-03-01T10:00:00Z", "event_type": "purchase",
      "revenue_cents": 2**63 - 1}, "revenue_too_large"),
]


@pytest.mark.parametrize(("poison", "reason"), POISON, ids=[f"{r}-{i}" for i, (_, r) in enumerate(POISON)])
def test_poison_entry_is_quarantined_once_and_the_stream_goes_on(empty_events: psycopg.Connection[Any],
                                                                  poison: Any, reason: str) -> None:
    settings = private_settings()
    good = make_events(50, seed=21)
    track_many([*good[:25], poison, *good[25:]], settings=settings)
    # a consumer reads the batch and dies before doing anything: all 51 entries are pending
    dead = StreamConsumer(settings, name="restarting", log=lambda _: None)
    assert len(dead._read(">")) == 51
    dead.close()
    # the restart under the same name re-reads its pending entries: all applied, the poison quarantined
    stats = consume(settings, name="restarting")
    assert (stats.entries, stats.loaded, stats.quarantined) == (51, 50, 1)
    again = StreamConsumer(settings, name="restarting", log=lambda _: None)
    try:
        assert again._pending_count() == 0
        assert again.redis.xlen(again.keys.stream) == 0
    finally:
        again.close()
    assert empty_events.execute("select count(*) from raw.events").fetchone() == (50,)
    rows = empty_events.execute("select reason, source from raw.events_quarantine").fetchall()
    assert rows == [(reason, "stream")]
    assert_matches(RealtimeMetricsService(settings), expected_from(good, settings.timezone), empty_events)


def test_revenue_counter_cannot_overflow(empty_events: psycopg.Connection[Any]) -> None:
    settings = private_settings()
    now = datetime.now(UTC).isoformat()
    huge = [{"event_id": str(uuid.uuid4()), "occurred_at": now, "event_type": "purchase",
             "revenue_cents": 2**63 - 1} for _ in range(2)]
    most = [{"event_id": str(uuid.uuid4()), "occurred_at": now, "event_type": "purchase",
             "revenue_cents": 10**12} for _ in range(3)]
    track_many([*huge, *most], settings=settings)
    stats = consume(settings)
    assert (stats.loaded, stats.quarantined) == (3, 2)
    svc = RealtimeMetricsService(settings)
    day = datetime.now(settings.tz).date().isoformat()
    stored = empty_events.execute("select sum(revenue_cents) from raw.events").fetchone()
    assert svc.get_counter(REVENUE_TOTAL.name, {"day": day}) == 3 * 10**12 == stored[0]  # type: ignore[index]


def test_realtime_demo_keeps_its_synthetic_events_out_of_the_sample_data(
        empty_events: psycopg.Connection[Any], capsys: Any, monkeypatch: Any) -> None:
    from metricsmith import db
    from metricsmith.config import load_settings
    from metricsmith.realtime import demo

    monkeypatch.setenv("METRICSMITH_REDIS_PREFIX", private_settings().redis_prefix)
    demo.step_realtime()
    out = capsys.readouterr().out
    assert "sandbox: database" in out and "stays out of the sample year's raw.events" in out
    assert empty_events.execute("select count(*) from raw.events").fetchone() == (0,)
    assert empty_events.execute("select count(*) from raw.events_quarantine").fetchone() == (0,)
    sandbox = demo.sandbox_settings(load_settings())
    assert sandbox.database_url != db.database_url(load_settings())
    try:
        with db.connect(sandbox) as conn:
            assert conn.execute("select count(*) from raw.events").fetchone() == (demo.DEMO_EVENTS,)
            assert conn.execute("select count(*) from raw.events_quarantine").fetchone() == (2,)
    finally:
        name = (sandbox.database_url or "").rsplit("/", 1)[1]
        empty_events.execute(f'drop database if exists "{name}" with (force)')
