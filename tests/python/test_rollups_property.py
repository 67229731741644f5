"""Property: random batches (late, out of order, re-sent, some invalid; received_at from the
batch's clock, as old as the event itself (before earlier runs), years ahead, or years
behind) loaded one after another with an incremental run after each; after every run the four marts (daily,
weekly, monthly, quarterly: the dates cross a quarter boundary inside an ISO week) equal the independent Python
computation of all data so far, and at the end a --full-refresh gives the same tables cell for cell. A batch's
events occur anywhere in the ~50 days or only in one side of the week that straddles the quarter (a late day
of one side must recompute, or be read by, the other: the islands, macros/rollups/state.sql).
12 examples by default (the explicit one and 11 random: CI runs the suite twice, new random examples each
time), 200 with METRICSMITH_DEEP=1."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rollups_reference import Event, diff_tables, fetch_tables, insert_events, reference

from metricsmith import rollups

TZ = "America/New_York"  # DST starts 2020-03-08 inside the range
BASE = datetime(2020, 2, 20, tzinfo=UTC)  # ~50 days: Feb 29, month ends, DST, Q1 / Q2 on Wednesday 2020-04-01
MINUTES = 50 * 24 * 60
AHEAD = datetime(2031, 6, 1, tzinfo=UTC)
BEHIND = datetime(2017, 6, 1, tzinfo=UTC)
EXAMPLES = 200 if os.environ.get("METRICSMITH_DEEP") == "1" else 11  # + the explicit example: 12 runs
#: no safety lag: each run reads only the batch that arrived since the last one (with the default
#: 600 s every run would re-read all batches of the example and recompute every day they touch)
NO_LAG = {"rollups_safety_lag_seconds": 0}


def _local(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=ZoneInfo(TZ))


#: where a batch's events occur: anywhere, or in the days of the ISO week of Monday 2020-03-30 before
#: the quarter (Mon-Tue, Q1) or from it (Wed-Sun, Q2)
WINDOWS = {
    "anywhere": (BASE, BASE + timedelta(minutes=MINUTES + 1)),
    "week_before_quarter": (_local(date(2020, 3, 30)), _local(date(2020, 4, 1))),
    "week_from_quarter": (_local(date(2020, 4, 1)), _local(date(2020, 4, 6))),
}

event_spec = st.tuples(
    st.integers(0, MINUTES),  # occurred minute in the batch's window (mod its length)
    st.sampled_from([None, "u1", "u2", "u3", "u4", "u5", "u6"]),
    st.sampled_from([None, "o1", "o2", "o3"]),
    st.sampled_from([None, "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"]),
    st.sampled_from(["page_view", "signup", "purchase"]),
    st.integers(0, 500),
    st.integers(0, 12 * 60),  # minutes between batch clock and this event's receipt
    # received_at: the batch clock (+ delay); when it occurred (+ delay: older than earlier
    # runs); years ahead (a client clock); years behind (occurred > 1 day after: invalid)
    st.sampled_from(["clock", "clock", "occurred", "ahead", "behind"]),
)
batch_spec = st.tuples(st.sampled_from(list(WINDOWS)), st.lists(event_spec, min_size=1, max_size=12),
                       st.integers(0, 3))  # window, events, re-sends
batches_spec = st.lists(batch_spec, min_size=1, max_size=4)


def _events(batch_no: int, window: str, specs: list[tuple[Any, ...]]) -> list[Event]:
    clock = BASE + timedelta(days=15 * batch_no)  # arrivals move on: older events become late
    start, end = WINDOWS[window]
    length = int((end - start).total_seconds()) // 60
    out = []
    for minute, user, org, session, kind, revenue, delay, received in specs:
        occurred = (start + timedelta(minutes=minute % length)).astimezone(UTC)
        base = {"clock": clock, "occurred": occurred, "ahead": AHEAD, "behind": BEHIND}[received]
        out.append(Event(occurred_at=occurred, received_at=base + timedelta(minutes=delay), event_type=kind,
                         user_id=user, organization_id=org, session_id=session,
                         revenue_cents=revenue if kind == "purchase" else 0))
    return out


def _in(day: int, hour: int, org: str, session: str) -> tuple[Any, ...]:
    """One valid page view of no user, ``day`` days and ``hour`` hours into its batch's window."""
    return ((day * 24 + hour) * 60, None, org, session, "page_view", 0, 0, "occurred")


#: the week that straddles the quarter, both ways (besides what the random batches find): o3 spans
#: Wednesday 1 - Sunday 5 April (so no zero day joins the spine later), o1 is active on Thursday 2
#: April (Q2), then late on Tuesday 31 March (Q1), which alone changed: Thursday's first-in-week count
#: must drop; o2 is active on Monday 30 March, then late on Friday 3 April: Friday must read Monday
#: (first in its week: no) without recomputing Q1
STRADDLING_WEEK = [("week_from_quarter", [_in(0, 9, "o3", "s3"), _in(4, 9, "o3", "s3"), _in(1, 10, "o1", "s1")], 0),
                   ("week_before_quarter", [_in(1, 10, "o1", "s1"), _in(0, 9, "o2", "s2")], 0),
                   ("week_from_quarter", [_in(2, 11, "o2", "s2")], 0)]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])
@given(batches=batches_spec)
@example(batches=STRADDLING_WEEK)
def test_incremental_runs_equal_full_refresh(empty_events: psycopg.Connection[Any], batches: list[Any]) -> None:
    conn = empty_events
    conn.execute("truncate raw.events")
    rollups.run_rollups(full_refresh=True, timezone=TZ, quiet=True, extra_vars=NO_LAG)
    loaded: list[Event] = []
    for number, (window, specs, resend) in enumerate(batches):
        batch = _events(number, window, specs)
        batch += loaded[:resend]  # re-sent events: same event_id, skipped on load
        insert_events(conn, batch)
        loaded += [e for e in batch if e not in loaded]
        rollups.run_rollups(timezone=TZ, quiet=True, extra_vars=NO_LAG)
        problems = diff_tables(reference(loaded, TZ), fetch_tables(conn))
        assert not problems, f"after batch {number}:\n" + "\n".join(problems)
    incremental = fetch_tables(conn)
    rollups.run_rollups(full_refresh=True, timezone=TZ, quiet=True, extra_vars=NO_LAG)
    assert fetch_tables(conn) == incremental
