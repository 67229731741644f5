"""Shared helpers of the realtime tests: deterministic events and a plain-Python expected result."""

from __future__ import annotations

import dataclasses
import os
import random
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from metricsmith.config import Settings, load_settings
from metricsmith.realtime.registry import PURCHASE_BUCKETS_CENTS


def private_settings(timezone: str | None = None) -> Settings:
    base = load_settings()
    assert base.redis_prefix == os.environ["METRICSMITH_REDIS_PREFIX"]
    return dataclasses.replace(base, redis_prefix=f"{base.redis_prefix}{secrets.token_hex(4)}:",
                               timezone=timezone or base.timezone)


def make_events(n: int, seed: int, *, now: datetime | None = None, users: int = 200) -> list[dict[str, Any]]:
    """Valid events spread over the last 30 hours (two local days, three before 06:00), some purchases and anonymous."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    events = []
    for _ in range(n):
        kind = rng.choices(["page_view", "purchase", "signup", "click"], [60, 15, 5, 20])[0]
        event: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "occurred_at": (now - timedelta(seconds=rng.uniform(0, 30 * 3600))).isoformat(),
            "event_type": kind,
        }
        if rng.random() > 0.1:
            event["user_id"] = f"user-{rng.randrange(users)}"
        if kind == "purchase":
            event["revenue_cents"] = rng.choice([0, 99, 100, 450, 999, 2500, 4999, 12_000, 75_000, 250_000])
        events.append(event)
    return events


BAD_EVENTS: list[tuple[Any, str]] = [
    ("{not json", "invalid_json"),
    ('["a list"]', "not_an_object"),
    ({"event_id": "not-a-uuid", "occurred_at": "2026-01-01T00:00:00Z", "event_type": "x"}, "bad_uuid"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "yesterday", "event_type": "x"}, "bad_timestamp"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "2026-01-01T00:00:00Z", "event_type": "  "}, "empty_event_type"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "2026-01-01T00:00:00Z", "event_type": "purchase",
      "revenue_cents": -5}, "negative_revenue"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "2026-01-01T00:00:00Z", "event_type": "purchase",
      "revenue_cents": 1.5}, "non_integer_revenue"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "2026-01-01T00:00:00Z", "event_type": "x",
      "colour": "red"}, "unknown_field"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "2099-01-01T00:00:00Z", "event_type": "x",
      "received_at": "2026-01-01T00:00:00Z"}, "occurred_in_future"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "2026-01-01T00:00:00Z", "event_type": "x",
      "properties": {"blob": "x" * 70_000}}, "oversize_properties"),
    ({"event_id": str(uuid.uuid4()), "occurred_at": "2026-01-01T00:00:00Z", "event_type": "x",
      "user_id": {"id": 1}}, "wrong_type"),
]


@dataclass
class Expected:
    events_by_day_type: Counter[tuple[str, str]] = field(default_factory=Counter)
    revenue_by_day: Counter[str] = field(default_factory=Counter)
    users_by_day: dict[str, set[str]] = field(default_factory=dict)
    purchase_buckets: dict[str, list[int]] = field(default_factory=dict)
    purchase_sum: Counter[str] = field(default_factory=Counter)
    ids: set[str] = field(default_factory=set)


def expected_from(events: list[dict[str, Any]], timezone: str) -> Expected:
    """Plain-Python truth: each distinct event_id once, by local day of occurred_at."""
    tz = ZoneInfo(timezone)
    out = Expected()
    for event in events:
        if event["event_id"] in out.ids:
            continue
        out.ids.add(event["event_id"])
        day = datetime.fromisoformat(event["occurred_at"]).astimezone(tz).date().isoformat()
        out.events_by_day_type[(day, event["event_type"])] += 1
        revenue = event.get("revenue_cents", 0)
        out.revenue_by_day[day] += revenue
        if event.get("user_id"):
            out.users_by_day.setdefault(day, set()).add(event["user_id"])
        if event["event_type"] == "purchase":
            buckets = out.purchase_buckets.setdefault(day, [0] * (len(PURCHASE_BUCKETS_CENTS) + 1))
            index = next((i for i, b in enumerate(PURCHASE_BUCKETS_CENTS) if revenue <= b), len(PURCHASE_BUCKETS_CENTS))
            buckets[index] += 1
            out.purchase_sum[day] += revenue
    return out
