"""Realistic, deterministic product events for demos, tests and benchmarks.

The same ``(seed, start, days, events_per_day)`` always gives the same events, day by day,
whatever the batch size. What the data looks like:

* volume grows ~80 % over a year, with weekly seasonality (weekends quieter) and day noise;
* users sign up over time (one ``signup`` event each, the day they first appear); returning
  users are drawn with a bias towards recent sign-ups, so a year of 5 M events has ~200 K users;
* ~90 % of users belong to one of many organizations; 1–3 sessions per user and day;
* ~6 % anonymous events (``user_id`` null, own sessions); ~2–4 % purchases with log-normal
  revenue; a small share of late-arriving events (received hours to 10 days later);
* never a time in the future: ``occurred_at <= received_at <= now`` (the generation time). A late
  arrival whose delay would reach past now is received now instead (so a range ending within the
  last ten days depends on when it is generated; an older range never does). A range past today
  is refused; today's events that would occur after now occur now.
* event ids are UUIDv7-like (time-ordered), which keeps the primary-key index append-mostly.

Columns are produced with numpy per day and streamed into ``raw.events`` with COPY.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
from psycopg.copy import QueuedLibpqWriter

from metricsmith.config import Settings
from metricsmith.db import connect
from metricsmith.progress import progress_bar

EVENT_TYPES = np.array(["page_view", "feature_used", "search", "click", "purchase", "logout"])
_BASE_TYPE_P = np.array([0.55, 0.20, 0.10, 0.10, 0.025, 0.025])
WEEKDAY_FACTOR = np.array([1.08, 1.10, 1.10, 1.07, 1.0, 0.72, 0.66])  # Mon..Sun
EVENTS_PER_USER_YEAR = 25.0
LATE_SHARE = 0.004
ANONYMOUS_SHARE = 0.06
_PATHS = [f'{{"path": "/{section}/{n}"}}' for section in ("docs", "app", "pricing", "blog") for n in range(12)]
_PLANS = ['{"plan": "starter"}', '{"plan": "team"}', '{"plan": "business"}', '{"plan": "enterprise"}']


@dataclass(frozen=True)
class DayBatch:
    day: date
    event_id: list[str]
    occurred_at: np.ndarray  # datetime64[ms]
    received_at: np.ndarray
    event_type: np.ndarray
    user_idx: np.ndarray  # -1 = anonymous
    org_idx: np.ndarray  # -1 = none
    session: list[str]
    revenue_cents: np.ndarray
    properties: list[str]

    def __len__(self) -> int:
        return len(self.event_id)


@dataclass
class GenerateResult:
    days: int
    events: int
    seconds: float
    start: date
    end: date
    users: int

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def render(self) -> str:
        return (f"generated {self.events:,} events over {self.days} days ({self.start} .. {self.end}), "
                f"{self.users:,} users, in {self.seconds:.1f} s ({self.events_per_second:,.0f} events/s)")


class EventGenerator:
    """Deterministic event source; iterate :meth:`days` for per-day numpy batches."""

    def __init__(self, *, days: int, events_per_day: int, seed: int, start: date | None = None,
                 now: datetime | None = None) -> None:
        if days < 1:
            raise ValueError("--days must be at least 1")
        if events_per_day < 1:
            raise ValueError("--events-per-day must be at least 1")
        self.now = now or datetime.now(UTC)
        self.now_ms = int(self.now.timestamp() * 1000)
        self.days = days
        self.events_per_day = events_per_day
        self.seed = seed
        self.start = start or (self.now.date() - timedelta(days=days))
        last = self.start + timedelta(days=days - 1)
        if last > self.now.date():
            raise ValueError(f"--start {self.start} with --days {days} reaches {last}, after today "
                             f"({self.now.date()} UTC): the generator writes no future events")
        plan = np.random.default_rng([seed, 0])
        offsets = np.arange(days)
        growth = np.exp(np.log(1.8) * offsets / 365.0)
        weekday = WEEKDAY_FACTOR[(self.start.weekday() + offsets) % 7]
        noise = plan.normal(1.0, 0.06, days).clip(0.7, 1.3)
        weight = growth * weekday * noise
        total = events_per_day * days
        self.counts = np.maximum(1, np.round(total * weight / weight.sum())).astype(np.int64)
        users_total = max(10, int(total / EVENTS_PER_USER_YEAR * min(1.0, days / 365) ** 0.3))
        signup_weight = growth * noise
        new_users = np.floor(users_total * signup_weight / signup_weight.sum()).astype(np.int64)
        new_users[0] = max(new_users[0], min(50, users_total))
        self.new_users = np.minimum(new_users, self.counts // 2 + 1)
        self.users_before = np.concatenate([[0], np.cumsum(self.new_users)[:-1]])
        self.users_total = int(self.new_users.sum())
        self.orgs = max(5, self.users_total // 40)
        self.user_org = plan.integers(0, self.orgs, self.users_total)
        self.user_org[plan.random(self.users_total) < 0.1] = -1
        self.total_events = int(self.counts.sum())

    # ------------------------------------------------------------------ per day
    def day(self, offset: int) -> DayBatch:
        rng = np.random.default_rng([self.seed, 1, offset])
        n = int(self.counts[offset])
        new = int(self.new_users[offset])
        known = int(self.users_before[offset]) + new
        day = self.start + timedelta(days=offset)
        # users: today's sign-ups first, then returning users biased to recent sign-ups
        user = np.empty(n, dtype=np.int64)
        first = np.arange(self.users_before[offset], self.users_before[offset] + new)
        user[:new] = first
        rest = n - new
        user[new:] = np.minimum(known - 1, np.floor(known * rng.random(rest) ** 0.45)).astype(np.int64)
        etype = np.empty(n, dtype=object)
        purchase_p = 0.02 + 0.015 * offset / max(1, self.days)
        probs = _BASE_TYPE_P.copy()
        probs[4] = purchase_p
        probs = probs / probs.sum()
        etype[:new] = "signup"
        etype[new:] = EVENT_TYPES[rng.choice(len(EVENT_TYPES), size=rest, p=probs)]
        anonymous = np.zeros(n, dtype=bool)
        anonymous[new:] = (rng.random(rest) < ANONYMOUS_SHARE) & (etype[new:] != "purchase")
        user[anonymous] = -1
        org = np.where(user >= 0, self.user_org[np.maximum(user, 0)], -1)
        # times: diurnal shape around 14:00 UTC, millisecond resolution
        seconds = np.mod(rng.normal(14 * 3600, 4.5 * 3600, n), 86400)
        ms = (seconds * 1000).astype(np.int64)
        day_ms = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
        occurred_ms = day_ms + ms
        delay = (rng.exponential(2.5, n) * 1000).astype(np.int64)
        late = rng.random(n) < LATE_SHARE
        delay[late] = (rng.uniform(3600, 10 * 86400, int(late.sum())) * 1000).astype(np.int64)
        # nothing in the future: occurred_at <= received_at <= now (generation time)
        np.minimum(occurred_ms, self.now_ms, out=occurred_ms)
        received_ms = np.minimum(occurred_ms + delay, self.now_ms)
        # sessions: 1-3 per user and day; anonymous visitors have their own
        slot = rng.integers(0, 3, n)
        anon_visitor = rng.integers(0, max(1, n // 8), n)
        user_list = user.tolist()
        slot_list = slot.tolist()
        anon_list = anon_visitor.tolist()
        session = [f"s{offset}-{u}-{s}" if u >= 0 else f"a{offset}-{a}"
                   for u, s, a in zip(user_list, slot_list, anon_list, strict=True)]
        revenue = np.zeros(n, dtype=np.int64)
        buys = etype == "purchase"
        revenue[buys] = (np.round(rng.lognormal(np.log(3500), 0.8, int(buys.sum())) / 100) * 100 - 1).clip(99)
        prop_pick = rng.integers(0, len(_PATHS), n).tolist()
        plan_pick = rng.integers(0, len(_PLANS), n).tolist()
        etype_list = etype.tolist()
        properties = [_PATHS[p] if t == "page_view" else _PLANS[q] if t == "purchase" else "{}"
                      for t, p, q in zip(etype_list, prop_pick, plan_pick, strict=True)]
        # UUIDv7-like ids: 48-bit ms timestamp, version 7, variant bits, random tail
        raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
        ts = occurred_ms.astype(">u8").view(np.uint8).reshape(n, 8)[:, 2:]
        raw[:, :6] = ts
        raw[:, 6] = (raw[:, 6] & 0x0F) | 0x70
        raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
        hexed = raw.tobytes().hex()
        ids = [hexed[i : i + 32] for i in range(0, 32 * n, 32)]
        return DayBatch(
            day=day, event_id=ids,
            occurred_at=occurred_ms.astype("datetime64[ms]"), received_at=received_ms.astype("datetime64[ms]"),
            event_type=etype, user_idx=user, org_idx=org, session=session, revenue_cents=revenue,
            properties=properties,
        )

    def days_iter(self) -> Iterator[DayBatch]:
        for offset in range(self.days):
            yield self.day(offset)

    # ------------------------------------------------------------------ formats
    @staticmethod
    def copy_text(batch: DayBatch) -> str:
        """The batch in PostgreSQL COPY text format (session time zone must be UTC)."""
        occurred = np.datetime_as_string(batch.occurred_at, unit="ms").tolist()
        received = np.datetime_as_string(batch.received_at, unit="ms").tolist()
        users = [f"u{u}" if u >= 0 else "\\N" for u in batch.user_idx.tolist()]
        orgs = [f"org{o}" if o >= 0 else "\\N" for o in batch.org_idx.tolist()]
        revenue = list(map(str, batch.revenue_cents.tolist()))
        rows = zip(batch.event_id, occurred, received, batch.event_type.tolist(), users, orgs, batch.session,
                   revenue, batch.properties, strict=True)
        return "\n".join(map("\t".join, rows)) + "\n"

    @staticmethod
    def records(batch: DayBatch) -> Iterator[dict[str, Any]]:
        """The batch as loader-shaped dicts (for the loader and for tests)."""
        occurred = np.datetime_as_string(batch.occurred_at, unit="ms").tolist()
        received = np.datetime_as_string(batch.received_at, unit="ms").tolist()
        for i, event_id in enumerate(batch.event_id):
            u = int(batch.user_idx[i])
            o = int(batch.org_idx[i])
            yield {
                "event_id": f"{event_id[:8]}-{event_id[8:12]}-{event_id[12:16]}-{event_id[16:20]}-{event_id[20:]}",
                "occurred_at": occurred[i] + "Z",
                "received_at": received[i] + "Z",
                "event_type": str(batch.event_type[i]),
                "user_id": f"u{u}" if u >= 0 else None,
                "organization_id": f"org{o}" if o >= 0 else None,
                "session_id": batch.session[i],
                "revenue_cents": int(batch.revenue_cents[i]),
                "properties": batch.properties[i],
            }


def generate_events(*, days: int, events_per_day: int, seed: int, start: date | None = None) -> Iterator[dict[str, Any]]:
    """All generated events as dicts, day by day (deterministic)."""
    gen = EventGenerator(days=days, events_per_day=events_per_day, seed=seed, start=start)
    for batch in gen.days_iter():
        yield from EventGenerator.records(batch)


def generate_to_db(
    *,
    days: int,
    events_per_day: int,
    seed: int,
    start: date | None = None,
    progress: bool = False,
    settings: Settings | None = None,
) -> GenerateResult:
    """Write generated events straight into raw.events with COPY (one transaction per ~day batch).

    Ids are deterministic, so generating the same range twice would collide: existing ids make
    the COPY fail with a clear error instead of silently doubling data.
    """
    gen = EventGenerator(days=days, events_per_day=events_per_day, seed=seed, start=start)
    began = time.perf_counter()
    written = 0
    columns = "event_id, occurred_at, received_at, event_type, user_id, organization_id, session_id, " \
              "revenue_cents, properties"
    with connect(settings) as conn, progress_bar("generating events", gen.total_events, enabled=progress,
                                                  unit="events") as advance:
        conn.execute("set time zone 'UTC'")
        conn.execute("set synchronous_commit = off")
        batches = gen.days_iter()
        exhausted = False
        while not exhausted:
            # one transaction per ~100 K events; the queued writer sends on a thread while
            # the next day is being generated, so client and server work overlap
            rows = 0
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f"copy raw.events ({columns}) from stdin", writer=QueuedLibpqWriter(cur)) as copy,
            ):
                while rows < 100_000:
                    batch = next(batches, None)
                    if batch is None:
                        exhausted = True
                        break
                    copy.write(EventGenerator.copy_text(batch))
                    rows += len(batch)
                    advance(len(batch))
            written += rows
    return GenerateResult(days=days, events=written, seconds=time.perf_counter() - began, start=gen.start,
                          end=gen.start + timedelta(days=days - 1), users=gen.users_total)
