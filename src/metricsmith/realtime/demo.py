"""Demo step: a few thousand events through the stream, consumed, read back, exported.

The realtime step runs in a sandbox: its own database on the same server (``<database>_realtime_demo``)
and its own Redis key prefix (``<prefix>realtime-demo:``). Its synthetic traffic (3,000 events of
the last ten minutes, by 400 made-up users with no sessions) goes through the real path - the
stream, the consumer, Redis and ``raw.events`` - but never into the ``raw.events`` of the sample
year, where it would make today look like a day of new users without sessions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from metricsmith import db, migrate
from metricsmith.config import Settings, load_settings

DEMO_EVENTS = 3_000
_NAMESPACE = uuid.UUID("6a1f3c2e-9d4b-4c1e-8f0a-5b7d2e3c4a10")


def demo_events(day_key: str, n: int = DEMO_EVENTS) -> list[dict[str, object]]:
    """Deterministic per day: a second demo run the same day tracks the same event_ids (no new data)."""
    rng = random.Random(day_key)
    now = datetime.now(UTC)
    events: list[dict[str, object]] = []
    for i in range(n):
        kind = rng.choices(["page_view", "click", "purchase", "signup"], [60, 25, 10, 5])[0]
        event: dict[str, object] = {
            "event_id": str(uuid.uuid5(_NAMESPACE, f"{day_key}-{i}")),
            "occurred_at": (now - timedelta(seconds=rng.uniform(0, 600))).isoformat(),
            "event_type": kind,
            "user_id": f"demo-user-{rng.randrange(400)}",
            "organization_id": f"org-{rng.randrange(20)}",
        }
        if kind == "purchase":
            event["revenue_cents"] = rng.choice([499, 999, 1999, 4999, 9999, 24999])
        events.append(event)
    # two bad events, quarantined with their reason (once, even on a second demo run)
    events.append({"event_id": str(uuid.uuid5(_NAMESPACE, f"{day_key}-bad-1")), "occurred_at": "soon",
                   "event_type": "click"})
    events.append({"event_id": str(uuid.uuid5(_NAMESPACE, f"{day_key}-bad-2")), "occurred_at": now.isoformat(),
                   "event_type": "purchase", "revenue_cents": -100})
    return events


SANDBOX_DATABASE_SUFFIX = "_realtime_demo"
SANDBOX_REDIS_PREFIX = "realtime-demo:"


def sandbox_settings(settings: Settings) -> Settings:
    """The realtime demo's own database (created and migrated when missing) and Redis prefix."""
    url = db.database_url(settings)
    parts = urlsplit(url)
    name = (parts.path.lstrip("/") or "postgres") + SANDBOX_DATABASE_SUFFIX
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is None:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # a concurrent demo created it
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    sandbox = dataclasses.replace(settings, database_url=urlunsplit(parts._replace(path=f"/{name}")),
                                  redis_prefix=settings.redis_prefix + SANDBOX_REDIS_PREFIX)
    migrate.upgrade(sandbox)
    return sandbox


def step_realtime() -> None:
    from metricsmith.realtime import RealtimeMetricsService, StreamConsumer, track_many
    from metricsmith.realtime.exposition import export_text
    from metricsmith.realtime.persistence import snapshot
    from metricsmith.realtime.reconcile import reconcile

    settings = sandbox_settings(load_settings())
    print(f"sandbox: database {urlsplit(settings.database_url or '').path.lstrip('/')}, Redis prefix "
          f"{settings.redis_prefix} (the synthetic stream traffic stays out of the sample year's raw.events)")
    today = datetime.now(settings.tz).date()
    events = demo_events(today.isoformat())
    with db.connect(settings) as conn:
        again = conn.execute("select 1 from raw.events where event_id = %s", (events[0]["event_id"],)).fetchone()
    if again:  # a second run today: same ids (de-duplicated everywhere); bad ones are not re-sent
        events = events[:-2]
    sent = track_many(events, settings=settings)
    consumer = StreamConsumer(settings, log=lambda _: None)
    try:
        stats = consumer.run(until_idle=True)
    finally:
        consumer.close()
    print(f"tracked {sent:,} events -> stream; consumer: {stats.render()}")
    report = reconcile([today], settings=settings)
    print(f"reconciliation vs raw.events: {report.checked} series checked, {len(report.corrections)} corrected"
          + (" (events loaded outside the stream today, e.g. by the generator)" if report.corrections else ""))
    svc = RealtimeMetricsService(settings)
    day = {"day": today.isoformat()}
    by_type = {labels["event_type"]: value for labels, value in svc.series(svc.spec("metricsmith_events_total"))  # type: ignore[arg-type]
               if labels["day"] == day["day"]}
    print(f"today ({settings.timezone} {today}): events by type {dict(sorted(by_type.items()))}")
    revenue = svc.get_counter("metricsmith_revenue_cents_total", day)
    print(f"  revenue {revenue / 100:,.2f}; active users {svc.get_gauge('metricsmith_active_users', day)}; "
          f"events/s over 1 m {svc.get_rate('metricsmith_events_per_second', 60):,.1f}")
    hist = svc.get_histogram("metricsmith_purchase_value_cents", day)
    if hist.count:
        print(f"  purchases {hist.count:,}: median ~{hist.quantile(0.5) / 100:,.2f}, "
              f"p90 ~{hist.quantile(0.9) / 100:,.2f} (bucket estimates)")
    print(snapshot(settings, service=svc).render())
    lines = [line for line in export_text(svc, extra=False).splitlines()
             if "metricsmith_events_total" in line or "metricsmith_active_users" in line][:8]
    print("`metricsmith realtime export` (head):")
    for line in lines:
        print(f"  {line}")
